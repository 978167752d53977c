-- bench_ops.lua: SiLU and GroupNorm, forward and forward+backward, on one
-- U-Net-sized activation, at 1 and 2 threads (median of `reps` runs, in ms).
--   lua5.4 examples/bench_ops.lua [reps]
-- The backward figure is (forward+backward) - forward; it includes handing
-- the gradient to the leaves, as a training step does.
local D = require "diffusion"

local reps = tonumber(arg and arg[1]) or 15
local shape = { 32, 64, 32, 32 }
local groups = 32

local function median_ms(fn)
  fn() -- warm up: first-touch page faults, the pool's threads
  local times = {}
  for i = 1, reps do
    local t0 = D.clock()
    fn()
    times[i] = (D.clock() - t0) * 1e3
  end
  table.sort(times)
  return times[(reps + 1) // 2]
end

D.manual_seed(0)
local x = D.randn(table.unpack(shape)):requires_grad_()
local g = D.randn(table.unpack(shape))
local w = D.randn(shape[2]):requires_grad_()
local b = D.randn(shape[2]):requires_grad_()

local function clear()
  x.grad, w.grad, b.grad = nil, nil, nil
end

local cases = {
  { "silu", function() return x:silu() end },
  { "group_norm", function() return D.group_norm(x, groups, w, b) end },
}

print(string.format("shape {%s}, %d groups, median of %d runs", table.concat(shape, ","), groups, reps))
print(string.format("%-12s %8s %12s %12s %12s", "op", "threads", "forward ms", "backward ms", "fwd+bwd ms"))
local previous = D.get_num_threads()
for _, threads in ipairs { 1, 2 } do
  D.set_num_threads(threads)
  for _, case in ipairs(cases) do
    local name, forward = case[1], case[2]
    local t_fwd = median_ms(function()
      local _ = forward()
    end)
    local t_both = median_ms(function()
      clear()
      forward():backward(g)
    end)
    clear()
    collectgarbage()
    print(string.format("%-12s %8d %12.2f %12.2f %12.2f", name, threads, t_fwd, t_both - t_fwd, t_both))
  end
end
D.set_num_threads(previous)
