-- bench_tensor.lua: matmul against raw cblas_sgemm, and elementwise bandwidth.
--   make bench        (or: lua5.4 examples/bench_tensor.lua [n] [reps])
-- Both matmul figures are the best of `reps` runs at the same size and thread
-- count, taken alternately, so their ratio shows what the tensor layer costs
-- over plain BLAS: `matmul` runs single-threaded OpenBLAS on blocks split over
-- the library's pool (df_gemm), raw sgemm runs OpenBLAS's own threads.
local D = require "diffusion"

local n = tonumber(arg and arg[1]) or 1024
local reps = tonumber(arg and arg[2]) or 7

local function best_seconds(reps_, fn)
  local best = math.huge
  for _ = 1, reps_ do
    local t0 = D.clock()
    fn()
    best = math.min(best, D.clock() - t0)
  end
  return best
end

print(string.format("OpenBLAS: %s", D.blas_info()))
print(string.format("%-8s %14s %14s %8s %14s", "threads", "matmul GF/s", "sgemm GF/s", "ratio", "add GB/s"))
for _, threads in ipairs({1, 2}) do
  D.set_num_threads(threads)
  D.manual_seed(0)
  local a, b = D.randn(n, n), D.randn(n, n)
  a:matmul(b) -- warm up BLAS buffers and threads
  -- alternate the two, so both see the same machine load
  local t_mm, raw_gflops = math.huge, 0
  for _ = 1, reps do
    t_mm = math.min(t_mm, best_seconds(3, function() local _ = a:matmul(b) end))
    raw_gflops = math.max(raw_gflops, D.raw_sgemm_gflops(n, 3)) -- its first call warms its buffers
  end
  local mm_gflops = 2 * n ^ 3 / t_mm / 1e9

  local m = 1 << 24 -- 64 MiB per operand
  local x, y = D.randn(m), D.randn(m)
  local _ = x + y
  local t_add = best_seconds(reps, function() local _ = x + y end)
  local add_gbs = 3 * 4 * m / t_add / 1e9 -- read x, read y, write the result
  print(string.format("%-8d %14.1f %14.1f %8.3f %14.2f", threads, mm_gflops, raw_gflops, mm_gflops / raw_gflops, add_gbs))
  x, y, a, b = nil, nil, nil, nil
  collectgarbage()
end
