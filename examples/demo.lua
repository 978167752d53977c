-- demo.lua: fit a linear model y = X·w + b by gradient descent, written with
-- tensors only (the gradients by hand; autograd comes in a later release).
--   lua5.4 examples/demo.lua
local D = require "diffusion"

D.manual_seed(0)
local n, d = 4096, 8
local X = D.randn(n, d)
local w_true = D.linspace(-1, 1, d):view(d, 1)
local b_true = 0.5
local y = X:matmul(w_true) + b_true + D.randn(n, 1) * 0.1 -- noisy targets

local w, b, lr = D.zeros(d, 1), 0.0, 0.1
local t0 = D.clock()
for step = 1, 100 do
  local err = X:matmul(w) + b - y                -- (n, 1)
  local loss = (err ^ 2):mean():item()
  local grad_w = X:t():matmul(err) * (2 / n)     -- d loss / d w, (d, 1)
  local grad_b = 2 * err:mean():item()
  w:sub_(grad_w * lr)
  b = b - lr * grad_b
  if step % 10 == 0 then
    io.write(string.format("\rstep %3d/100  loss %.5f  (%.0f steps/s)", step, loss, step / (D.clock() - t0)))
    io.flush()
  end
end
print()
print("true w:", w_true:view(-1))
print("fit  w:", w:view(-1))
print(string.format("true b: %.4f   fit b: %.4f", b_true, b))
print(string.format("max |w - w_true| = %.4f", (w - w_true):abs():max():item()))
