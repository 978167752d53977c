--- diffusion.gradcheck: compare autograd's gradients with central differences.
--
--   local ok, report = D.gradcheck(function(x, w) return x:matmul(w):tanh() end,
--                                  {D.randn(3, 4), D.randn(4, 2)})
--
-- The output y is reduced to a scalar as sum(y * r) with a fixed random r, so
-- every output element counts with its own weight. Each input element is then
-- moved by ±eps and the change of that scalar compared with the gradient
-- backward computed: |analytic - numeric| <= atol + rtol * |numeric|.
-- Tensors are float32, so eps and the tolerances are per op (see the specs).
local core = require "diffusion.core"
local no_grad = require("diffusion.util").no_grad

-- sum(y * r) in double precision
local function project(y, r)
  local ys, rs = y:contiguous():view(-1), r
  local total = 0.0
  for i = 1, ys:numel() do total = total + ys[i] * rs[i] end
  return total
end

--- gradcheck(fn, inputs [, opts]) -> ok, report
-- opts: eps (1e-2), atol (1e-2), rtol (1e-2), wrt (list of input positions to
-- check; default all), seed (for r).
return function(fn, inputs, opts)
  opts = opts or {}
  local eps, atol, rtol = opts.eps or 1e-2, opts.atol or 1e-2, opts.rtol or 1e-2
  local wrt = opts.wrt
  if not wrt then
    wrt = {}
    for i = 1, #inputs do wrt[i] = i end
  end
  -- leaves of our own, so the caller's tensors are untouched
  local leaves = {}
  for i, x in ipairs(inputs) do
    leaves[i] = no_grad(function() return x:clone() end)
  end
  for _, i in ipairs(wrt) do leaves[i]:requires_grad_(true) end

  local y = fn(table.unpack(leaves, 1, #inputs))
  local r = core.randn(y:shape(), core.Generator(opts.seed or 1234))
  local r_flat = r:view(-1)
  ;(y * r):sum():backward()

  local worst, report = -math.huge, "ok"
  for _, i in ipairs(wrt) do
    local x = leaves[i]
    local analytic = x.grad and x.grad:contiguous():view(-1) or core.zeros(x:numel())
    local flat = x:view(-1) -- leaves are contiguous clones
    for j = 1, x:numel() do
      local numeric = no_grad(function()
        local saved = flat[j]
        flat[j] = saved + eps
        local plus = project(fn(table.unpack(leaves, 1, #inputs)), r_flat)
        flat[j] = saved - eps
        local minus = project(fn(table.unpack(leaves, 1, #inputs)), r_flat)
        flat[j] = saved
        return (plus - minus) / (2 * eps)
      end)
      local a = analytic[j]
      local excess = math.abs(a - numeric) - (atol + rtol * math.abs(numeric))
      if excess ~= excess then excess = math.huge end -- NaN fails
      if excess > worst then
        worst = excess
        report = string.format("input %d element %d: autograd %.6g, finite differences %.6g", i, j, a, numeric)
      end
    end
  end
  return worst <= 0, report
end
