-- The thread pool: the thread count setting, and results that do not depend
-- on it.
local D = require "diffusion"
local H = require "helpers"

-- Runs fn at 1, 2 and 3 threads; returns the three lists of results.
local function at_thread_counts(fn)
  local out = {}
  for _, n in ipairs { 1, 2, 3 } do
    out[#out + 1] = table.pack(H.with_threads(n, fn))
  end
  return out
end

local function assert_all_identical(runs)
  local ref = runs[1]
  for r = 2, #runs do
    assert.are.equal(ref.n, runs[r].n)
    for i = 1, ref.n do H.assert_identical(ref[i], runs[r][i], ("result %d at run %d"):format(i, r)) end
  end
end

describe("threads", function()
  it("get_num_threads defaults to at least 1", function()
    local n = D.get_num_threads()
    assert.are.equal("integer", math.type(n))
    assert.is_true(n >= 1)
  end)

  it("set_num_threads round-trips 1 and 2", function()
    local prev = D.get_num_threads()
    finally(function() D.set_num_threads(prev) end)
    assert.is_nil(D.set_num_threads(1))
    assert.are.equal(1, D.get_num_threads())
    D.set_num_threads(2)
    assert.are.equal(2, D.get_num_threads())
    D.set_num_threads(prev)
    assert.are.equal(prev, D.get_num_threads())
  end)

  it("accepts more threads than cores", function()
    local prev = D.get_num_threads()
    finally(function() D.set_num_threads(prev) end)
    D.set_num_threads(4)
    assert.are.equal(4, D.get_num_threads())
    local x = D.ones(200000)
    assert.are.equal(200000, x:sum():item())
    assert.are.equal(400000, (x * 2):sum():item())
  end)

  it("rejects invalid counts and keeps the old one", function()
    local prev = D.get_num_threads()
    finally(function() D.set_num_threads(prev) end)
    D.set_num_threads(2)
    for _, bad in ipairs { 0, -1, 257, 1000 } do
      H.assert_error_with_twice("expected 1 to 256 threads", D.set_num_threads, bad)
      assert.are.equal(2, D.get_num_threads())
    end
    H.assert_error_with_twice("number expected", D.set_num_threads, "x")
    H.assert_error_with_twice("integer", D.set_num_threads, 1.5)
    assert.has_error(function() D.set_num_threads() end)
    assert.has_error(function() D.set_num_threads(0 / 0) end)
    assert.are.equal(2, D.get_num_threads())
  end)

  it("survives switching counts between many parallel calls", function()
    local prev = D.get_num_threads()
    finally(function() D.set_num_threads(prev) end)
    local x = D.ones(100000)
    for i = 1, 40 do
      D.set_num_threads(i % 3 + 1)
      assert.are.equal(100000 + 100000 * i, (x + i):sum():item())
    end
  end)

  describe("results identical at 1, 2 and 3 threads", function()
    it("elementwise ops on large inputs", function()
      D.manual_seed(10)
      local x = D.randn(700, 1000)
      local y = D.randn(1000)
      local runs = at_thread_counts(function()
        local inplace = x:clone()
        inplace:mul_(3):add_(y):tanh_()
        return x:exp(), x:sin():mul(x:cos()), x + y, x / (y:abs() + 1), x:gelu(), x:sigmoid(),
            x:t():contiguous(), x:t() * 2, x:gt(0.5), x:maximum(y), inplace, x:clamp(-0.5, 0.5),
            x:pow(2), D.where(x:gt(0), x, y)
      end)
      assert_all_identical(runs)
      -- and they are right, not just consistent
      local r = runs[2]
      assert.is_true((r[3] - (x + y)):abs():max():item() == 0)
      assert.are.same({ 1000, 700 }, r[7]:shape())
      assert.are.equal(x:get(3, 5), r[7]:get(5, 3))
    end)

    it("reductions on large inputs", function()
      D.manual_seed(11)
      local x = D.randn(600, 1100)
      local runs = at_thread_counts(function()
        local mx, imx = x:max(2)
        local mn, imn = x:min(1)
        return x:sum(), x:mean(), x:var(), x:std(), x:max(), x:min(), x:argmax(), x:argmin(),
            x:sum(1), x:sum(2), x:mean(1), x:var(2), x:sum({ 1, 2 }), mx, imx, mn, imn,
            x:argmax(1), x:argmax(2), x:t():sum(1), x:var(nil, false, 0)
      end)
      assert_all_identical(runs)
    end)

    it("reductions agree with the flat formula", function()
      local x = D.arange(1, 400001) -- 1 .. 400000, exact in float32
      local s, m, am = H.with_threads(2, function() return x:sum():item(), x:max():item(), x:argmax():item() end)
      -- summed in double, then rounded once to float32
      local exact = string.unpack("f", string.pack("f", 400000 * 400001 / 2))
      assert.are.equal(exact, s)
      assert.are.equal(400000, m)
      assert.are.equal(400000, am)
    end)

    -- OpenBLAS orders its sums by its own thread split, so matmul is exact
    -- only at a fixed thread count; across counts it agrees to rounding
    -- (the next test), as DESIGN.md allows.
    it("matmul is bitwise reproducible at a fixed thread count", function()
      D.manual_seed(12)
      local a, b = D.randn(300, 700), D.randn(700, 200)
      local ab = D.randn(4, 64, 96)
      local bb = D.randn(96, 80)
      for _, threads in ipairs({ 1, 2 }) do
        local first = { H.with_threads(threads, function() return D.matmul(a, b), D.matmul(b:t(), a:t()), D.matmul(ab, bb) end) }
        local again = { H.with_threads(threads, function() return D.matmul(a, b), D.matmul(b:t(), a:t()), D.matmul(ab, bb) end) }
        for i = 1, 3 do H.assert_identical(first[i], again[i], ("matmul %d at %d threads"):format(i, threads)) end
      end
    end)

    it("matmul at different thread counts agrees to rounding", function()
      D.manual_seed(12)
      local a, b = D.randn(300, 700), D.randn(700, 200)
      local runs = at_thread_counts(function() return D.matmul(a, b) end)
      local scale = runs[1][1]:abs():max():item()
      for r = 2, 3 do
        assert.is_true((runs[1][1] - runs[r][1]):abs():max():item() <= 1e-5 * scale)
      end
    end)

    it("random draws", function()
      local runs = at_thread_counts(function()
        D.manual_seed(13)
        return D.randn(250000), D.rand(100003), D.randint(0, 7, { 70001 }), D.zeros(500, 300):t():normal_(1, 2)
      end)
      assert_all_identical(runs)
    end)
  end)
end)
