-- The benchmark's pieces: D.cpu_simd, D.fma_peak (the machine's FMA peak)
-- and examples/benchmark.lua run end to end on a tiny setting (our side only).
-- No timing is compared: the figures depend on the machine and its load.
local D = require "diffusion"

local SIMD_ORDER = { scalar = 1, avx2 = 2, avx512f = 3 }

local function is_positive_finite(x)
  return type(x) == "number" and x > 0 and x < math.huge
end

describe("D.cpu_simd", function()
  it("names the widest SIMD, one of avx512f, avx2, scalar", function()
    assert.is_not_nil(SIMD_ORDER[D.cpu_simd()], D.cpu_simd())
  end)
end)

describe("D.fma_peak", function()
  it("measures a positive, finite GFLOP/s on one thread", function()
    local gf = D.fma_peak{ threads = 1, seconds = 0.05 }
    assert.is_true(is_positive_finite(gf), tostring(gf))
  end)

  it("runs the SIMD kernels the CPU has and refuses the others by name", function()
    local widest = SIMD_ORDER[D.cpu_simd()]
    for name, rank in pairs(SIMD_ORDER) do
      local ok, res = pcall(D.fma_peak, { threads = 1, seconds = 0.02, simd = name })
      if rank <= widest then
        assert.is_true(ok, res)
        assert.is_true(is_positive_finite(res), name .. ": " .. tostring(res))
      else
        assert.is_false(ok)
        assert.matches("this CPU has no " .. name, res, 1, true)
      end
    end
    assert.is_true(is_positive_finite(D.fma_peak{ threads = 1, seconds = 0.02, simd = "best" }))
  end)

  it("runs several threads at once", function()
    assert.is_true(is_positive_finite(D.fma_peak{ threads = 2, seconds = 0.02 }))
  end)

  it("rejects bad arguments with a message naming the problem", function()
    local cases = {
      { { threads = 0 }, "threads must be 1 to 256, got 0" },
      { { threads = 257 }, "threads must be 1 to 256, got 257" },
      { { threads = 1.5 }, "threads must be an integer, got 1.5" },
      { { threads = "2" }, "threads must be an integer, got '2'" },
      { { seconds = 0 }, "seconds must be > 0 and <= 60, got 0" },
      { { seconds = -1 }, "seconds must be > 0 and <= 60, got -1" },
      { { seconds = 61 }, "seconds must be > 0 and <= 60, got 61" },
      { { seconds = 0 / 0 }, "seconds must be > 0 and <= 60, got nan" },
      { { seconds = "short" }, "seconds must be a number, got 'short'" },
      { { simd = "sse" }, 'simd must be "best", "avx512f", "avx2" or "scalar", got "sse"' },
      { { simd = true }, "simd must be a string, got boolean" },
      { { thread = 2 }, "unknown option 'thread' (expected threads, seconds, simd)" },
      { { 2 }, "unknown option 1" },
    }
    for _, case in ipairs(cases) do
      local ok, err = pcall(D.fma_peak, case[1])
      assert.is_false(ok)
      assert.matches("fma_peak: " .. case[2], err, 1, true)
    end
    local ok, err = pcall(D.fma_peak, 2)
    assert.is_false(ok)
    assert.matches("table expected, got number", err, 1, true)
  end)
end)

describe("examples/benchmark.lua", function()
  -- runs the benchmark with these options; returns its exit status, stdout and stderr
  local function run(options)
    local err_path = os.tmpname()
    local p = io.popen(string.format("lua5.4 examples/benchmark.lua %s 2>%s; echo \"exit=$?\"", options, err_path))
    local out = p:read("a")
    p:close()
    local f = io.open(err_path)
    local err = f and f:read("a") or ""
    if f then f:close() end
    os.remove(err_path)
    local status = tonumber(out:match("exit=(%d+)%s*$"))
    return status, out, err
  end

  it("measures our tiny U-Net and prints the table with the machine's peak", function()
    local status, out, err = run("--no-torch --configs tiny --threads 1 --batches 2 --steps 1 --warmup 0 "
      .. "--sample-n 2 --ddim-steps 2 --fma-seconds 0.05 --repeats 2")
    assert.are.equal(0, status, out .. err)
    assert.matches("OpenBLAS: [^\n]*core %S+", out)
    assert.matches("CPU: widest SIMD " .. D.cpu_simd() .. "; FMA peak %(GFLOP/s[^\n]*%): 1 thread %d+", out)
    assert.matches("\nmodel +thr +row +ours img/s +torch +ratio +ours GF/s +torch +ours %%pk +torch +ours MiB", out)
    -- our figures are numbers, torch's columns are empty; GF/s and % of peak
    -- need the reference's FLOP count, "-" where its Python can't run (under
    -- the sanitizers' LD_PRELOAD)
    local rate, gf, pct, mib = out:match("\ntiny +1 +train b2 +([%d.]+) +%- +%- +([%d.-]+) +%- +([%d.-]+) +%- +(%d+) +%- +%-")
    assert.is_truthy(rate, out)
    assert.is_true(tonumber(rate) > 0 and tonumber(mib) > 0, out)
    assert.are.equal(gf == "-", pct == "-", out)
    if gf ~= "-" then assert.is_true(tonumber(gf) > 0 and tonumber(pct) > 0, out) end
    local sanitized = (os.getenv("LD_PRELOAD") or ""):find("libasan", 1, true) ~= nil
    assert.matches("\ntiny +1 +sample 2x2 +[%d.]+ +%-", out)
    -- the training rows hold the images as bytes, the dataset's 61.4 MB (58.6 MiB):
    -- a float copy alone would be 245.8 MB (234.4 MiB)
    if out:find("training data: ours: fashion-mnist", 1, true) then
      -- (AddressSanitizer's shadow memory and quarantine lift RSS past any bound of ours)
      assert.is_true(tonumber(mib) > 58.6 and (sanitized or tonumber(mib) < 234.4), out)
    else
      assert.matches("training data: ours: synthetic", out)
    end
    assert.matches("tiny 1 threads train b2: ours", err) -- progress on stderr
    -- each row measured twice: one progress line after the first of the two
    assert.matches("tiny 1 threads train b2, 1 of 2: ours [%d.]+ img/s, torch %- img/s so far", err)
    assert.matches("tiny 1 threads sample, 1 of 2: ours [%d.]+ img/s", err)
    assert.is_nil(err:find("2 of 2", 1, true), err)
  end)

  it("refuses bad options before measuring anything", function()
    for options, message in pairs({
      ["--configs huge --no-torch"] = "unknown config 'huge'",
      ["--threads 0 --no-torch"] = "--threads must list integers >= 1, got '0'",
      ["--batches 32,x --no-torch"] = "--batches must list integers >= 1, got '32,x'",
      ["--ddim-steps 2000 --no-torch"] = "--ddim-steps must be an integer in [1, 1000]",
      ["--repeats 0 --no-torch"] = "--repeats must be an integer >= 1",
      ["--fma-also sse --no-torch"] = "--fma-also lists avx512f, avx2, scalar or none, got 'sse'",
      ["--torch /nonexistent/torch_unet.py"] = "the reference /nonexistent/torch_unet.py is missing",
    }) do
      local status, out, err = run(options)
      assert.are_not.equal(0, status, options)
      assert.matches("benchmark.lua: " .. message, err, 1, true)
      assert.is_nil(out:find("model +thr"), options)
    end
  end)
end)
