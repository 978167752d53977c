-- demo.lua: fit a linear model y = X·w + b with autograd and AdamW, then
-- compare the fit with the truth. Runs in about a second.
--   lua5.4 examples/demo.lua
local D = require "diffusion"

D.manual_seed(0)
local n, d = 4096, 8
local X = D.randn(n, d)
local w_true = D.linspace(-1, 1, d):view(d, 1)
local b_true = 0.5
local y = X:matmul(w_true) + b_true + D.randn(n, 1) * 0.1 -- noisy targets

local model = D.nn.Linear(d, 1)
local opt = D.optim.AdamW(model:parameters(), { lr = 0.05, weight_decay = 0 })
local bar = D.progress{ total = 200, label = "fit", unit = "samples" }
for step = 1, 200 do
  local loss = D.mse_loss(model(X), y)
  opt:zero_grad()
  loss:backward() -- gradients of the loss for model.weight and model.bias
  opt:step()
  bar:update(step, { loss = loss:item() }, n)
end
bar:finish()

print("true w:", w_true:view(-1))
print("fit  w:", model.weight:view(-1))
print(string.format("true b: %.4f   fit b: %.4f", b_true, model.bias:item()))
print(string.format("max |w - w_true| = %.4f", (model.weight:view(-1) - w_true:view(-1)):abs():max():item()))
