-- The fast paths of a U-Net step's activations and normalisation: exp,
-- sigmoid and silu (and silu's gradient) on the vector forms of
-- csrc/core/vmath.h, and group_norm's vectorised row passes. These check
-- what the speed must not cost: accuracy against double precision over the
-- whole float range, exact limits at ±inf and huge inputs, NaN propagation,
-- and results that are the same bits whatever the thread count, the layout
-- and the SIMD form. (Speed itself is measured by examples/bench_ops.lua.)
local D = require "diffusion"
local H = require "helpers"
local A = require "activation_accuracy"

local INF, NAN = math.huge, 0 / 0
local ULPS = 4          -- the bound on the error in float ulps
local ABS_NEAR_ZERO = 1e-7 -- where a gradient cancels (see below): the bound on the absolute error

local run_child = H.run_child

-- for child chunks: fnv(t) -> a FNV-1a hash of a tensor's float bits, so
-- two processes' results compare as a few numbers
local FNV = [[
  local function fnv(t)
    local h = 2166136261
    for _, v in ipairs(t:flatten():totable()) do
      h = ((h ~ string.unpack("<I4", string.pack("<f", v))) * 16777619) & 0xffffffff
    end
    return h
  end
]]

-- The accuracy bounds every SIMD form must meet, from A.measure's results.
local function assert_accurate(results, form)
  for _, name in ipairs { "exp", "sigmoid", "silu" } do
    local r = results[name]
    assert.is_true(r.ulps <= ULPS, ("%s (%s): %.3g ulps at x = %.9g"):format(name, form, r.ulps, r.at or 0))
  end
  -- silu'(x) = s (1 + x (1 - s)) crosses 0 near x = -1.28, where any float
  -- evaluation cancels: there the bound is absolute.
  -- sigmoid' is computed from the saved output y as y (1 - y) (as PyTorch
  -- does), which cancels where y is near 1.
  for _, name in ipairs { "silu_grad", "sigmoid_grad" } do
    local r = results[name]
    assert.is_true(r.abs_over <= ABS_NEAR_ZERO,
      ("%s (%s): error %.3g where it exceeds %d ulps"):format(name, form, r.abs_over, ULPS))
  end
  -- results below A.FLOOR (silu of x < -87: a subnormal sigmoid times x)
  for _, name in ipairs(A.names) do
    local r = results[name]
    assert.is_true(r.abs_small <= A.FLOOR, ("%s (%s): error %.3g on a result below %g"):format(name, form, r.abs_small, A.FLOOR))
  end
end

--- accuracy ----------------------------------------------------------------

describe("exp, sigmoid, silu and their gradients", function()
  it("are within 4 ulps of double precision over the float range (the widest SIMD form here)", function()
    local results = A.measure(ULPS)
    assert_accurate(results, "default")
    -- the measurement can fail: a result off by 1e-6 relative is 8+ ulps
    assert.is_true(A.ulp_error(H.f32(1 + 1e-6), 1) > ULPS)
  end)

  for _, form in ipairs { "avx2", "scalar" } do
    it("are within 4 ulps of double precision in the " .. form .. " form too", function()
      local out = run_child("DIFFUSION_SIMD=" .. form,
        'local A = require "activation_accuracy"\nio.write(A.report(A.measure(4)))')
      local results = A.parse(out)
      for _, name in ipairs(A.names) do assert.is_table(results[name], out) end
      assert_accurate(results, form)
    end)
  end

  it("give exact limits for huge and infinite inputs and propagate NaN", function()
    local x = D.tensor { -INF, INF, -1e30, 1e30, -200, 200, NAN, 0 }
    assert.are.same({ 0, INF, 0, INF, 0, INF }, H.values(D.exp(x:narrow(1, 1, 6))))
    assert.are.same({ 0, 1, 0, 1, 0, 1 }, H.values(D.sigmoid(x:narrow(1, 1, 6))))
    local silu = H.values(D.silu(x))
    assert.are.same({ 0, INF, 0, H.f32(1e30), 0, 200 }, { table.unpack(silu, 1, 6) })
    assert.is_true(silu[7] ~= silu[7])
    assert.are.equal(0, silu[8])
    for _, name in ipairs { "exp", "sigmoid" } do
      local y = H.values(D[name](x))
      assert.is_true(y[7] ~= y[7], name .. "(NaN)")
    end
    local leaf = x:detach():requires_grad_()
    D.silu(leaf):backward(D.ones(8))
    local g = H.values(leaf.grad)
    assert.are.same({ 0, 1, 0, 1, 0, 1 }, { table.unpack(g, 1, 6) })
    assert.is_true(g[7] ~= g[7], "silu'(NaN)")
    assert.are.equal(0.5, g[8])
  end)
end)

--- the same bits everywhere -------------------------------------------------

describe("the vector activations", function()
  local N = 300007 -- not a multiple of any vector width: every run has a tail

  local function compute()
    local x = D.linspace(-30, 30, N)
    local leaf = x:detach():requires_grad_()
    local gy = D.linspace(-1, 2, N)
    D.silu(leaf):backward(gy)
    return { D.exp(x), D.sigmoid(x), D.silu(x), leaf.grad }
  end

  it("give bitwise equal results with 1 and 2 threads", function()
    local one = H.with_threads(1, compute)
    local two = H.with_threads(2, compute)
    for i = 1, #one do H.assert_identical(one[i], two[i], "result " .. i) end
  end)

  it("give the same bits for strided, in-place and contiguous inputs", function()
    local m = D.linspace(-20, 20, 333 * 271):view(333, 271)
    local t, c = m:t(), m:t():contiguous()
    for _, name in ipairs { "exp", "sigmoid", "silu" } do
      H.assert_identical(D[name](t), D[name](c), name .. " of a transpose")
      local inplace = c:clone()
      inplace[name .. "_"](inplace)
      H.assert_identical(inplace, D[name](c), name .. "_")
      -- every position is right, not only the same as the contiguous run
      local xs, ys = H.values(c), H.values(D[name](t))
      for _, i in ipairs { 1, 2, 15, 16, 17, 271, 272, 333 * 271 - 1, 333 * 271 } do
        local e = A.reference[name](xs[i])
        assert.is_true(A.ulp_error(ys[i], e) <= ULPS, ("%s at %d: %.9g, expected %.9g"):format(name, i, ys[i], e))
      end
    end
    local gy = D.linspace(1, 2, 333 * 271):view(271, 333)
    local function silu_grad(x)
      local leaf = x:detach():requires_grad_()
      D.silu(leaf):backward(gy)
      return leaf.grad
    end
    H.assert_identical(silu_grad(t), silu_grad(c), "silu's gradient of a transpose")
  end)

  it("give the same bits in the AVX2 form as in the widest one", function()
    local code = [[
      local D = require "diffusion"
      local x = D.linspace(-100, 100, 100003)
      local leaf = x:detach():requires_grad_()
      D.silu(leaf):backward(D.linspace(-1, 1, 100003))
      local outs = { D.exp(x), D.sigmoid(x), D.silu(x), leaf.grad }
      for _, t in ipairs(outs) do io.write(fnv(t), " ") end
    ]]
    local widest, avx2 = run_child("", FNV .. code), run_child("DIFFUSION_SIMD=avx2", FNV .. code)
    assert.is_truthy(widest:match("^%d+ %d+ %d+ %d+ $"), widest)
    assert.are.equal(widest, avx2)
  end)
end)

--- group_norm ----------------------------------------------------------------

-- group_norm forward and backward in double from the float inputs: returns
-- y, dx, dw, db as flat lists, for x (N, C, S...) flattened, gy the upstream
-- gradient.
local function ref_group_norm(xs, gys, ws, bs, n, c, span, groups, eps)
  local per = c // groups
  local y, dx, dw, db = {}, {}, {}, {}
  for ch = 1, c do dw[ch], db[ch] = 0, 0 end
  for s = 0, n - 1 do
    for g = 0, groups - 1 do
      local first = (s * c + g * per) * span + 1
      local len = per * span
      local sum = 0
      for i = first, first + len - 1 do sum = sum + xs[i] end
      local mean = sum / len
      local sq = 0
      for i = first, first + len - 1 do sq = sq + (xs[i] - mean) ^ 2 end
      local rstd = 1 / math.sqrt(sq / len + eps)
      local m1, m2 = 0, 0
      for i = first, first + len - 1 do
        local ch = g * per + (i - first) // span + 1
        local xhat = (xs[i] - mean) * rstd
        y[i] = xhat * ws[ch] + bs[ch]
        local dxhat = gys[i] * ws[ch]
        m1, m2 = m1 + dxhat, m2 + dxhat * xhat
        dw[ch], db[ch] = dw[ch] + gys[i] * xhat, db[ch] + gys[i]
      end
      m1, m2 = m1 / len, m2 / len
      for i = first, first + len - 1 do
        local ch = g * per + (i - first) // span + 1
        local xhat = (xs[i] - mean) * rstd
        dx[i] = rstd * (gys[i] * ws[ch] - m1 - xhat * m2)
      end
    end
  end
  return y, dx, dw, db
end

local function run_group_norm(x, gy, w, b, groups)
  local xl, wl, bl = x:detach():requires_grad_(), w:detach():requires_grad_(), b:detach():requires_grad_()
  local y = D.group_norm(xl, groups, wl, bl)
  y:backward(gy)
  return y:detach(), xl.grad, wl.grad, bl.grad
end

-- |got - expected| <= tol * max(1, |expected|) for each element
local function assert_matches(got, expected, tol, what)
  local g = H.values(got)
  assert.are.equal(#expected, #g, what .. ": element count")
  for i = 1, #expected do
    local ok = math.abs(g[i] - expected[i]) <= tol * math.max(1, math.abs(expected[i]))
    assert.is_true(ok, ("%s[%d]: expected %.9g, got %.9g"):format(what, i, expected[i], g[i]))
  end
end

describe("group_norm's vectorised passes", function()
  local cases = {
    -- spatial size 63: lanes of 16 and a tail of 15; 3 channels a group
    { shape = { 3, 6, 7, 9 }, groups = 2, offset = 0, scale = 1 },
    -- rows of 9600: two whole blocks of the statistics pass and a partial
    -- one, merged; data far from 0 (but not so far that the float mean
    -- itself, which the output subtracts, loses digits), where a one-pass
    -- E[x^2] - E[x]^2 in float would lose much of the variance
    { shape = { 2, 2, 80, 60 }, groups = 1, offset = 50, scale = 1 },
    -- spatial size 5: no whole lane vector, the tail only
    { shape = { 2, 4, 5 }, groups = 4, offset = -3, scale = 2 },
  }

  for _, case in ipairs(cases) do
    local shape = case.shape
    it(("match a double-precision reference, forward and backward, on %s"):format(H.shape_string(shape)), function()
      local g = D.Generator(7)
      local x = D.randn(shape, g) * case.scale + case.offset
      local gy = D.randn(shape, g)
      local w, b = D.randn({ shape[2] }, g), D.randn({ shape[2] }, g)
      local span = 1
      for d = 3, #shape do span = span * shape[d] end
      local y, dx, dw, db = run_group_norm(x, gy, w, b, case.groups)
      local ry, rdx, rdw, rdb = ref_group_norm(H.values(x), H.values(gy), H.values(w), H.values(b), shape[1], shape[2],
        span, case.groups, 1e-5)
      assert_matches(y, ry, 1e-5, "y")
      assert_matches(dx, rdx, 1e-4, "dx")
      assert_matches(dw, rdw, 1e-4, "dw")
      assert_matches(db, rdb, 1e-5, "db")
    end)
  end

  it("pass a finite-difference gradient check with whole lanes and a tail", function()
    local g = D.Generator(3)
    local ok, report = D.gradcheck(function(x, w, b) return D.group_norm(x, 2, w, b) end,
      { D.randn({ 2, 4, 5, 5 }, g), D.randn({ 4 }, g), D.randn({ 4 }, g) }, { atol = 2e-2, rtol = 2e-2 }) -- nn_ops_spec's group_norm tolerance
    assert.is_true(ok, report)
  end)

  local function outputs()
    local g = D.Generator(11)
    local shape = { 8, 64, 16, 16 }
    return table.pack(run_group_norm(D.randn(shape, g), D.randn(shape, g), D.randn({ 64 }, g), D.randn({ 64 }, g), 32))
  end

  it("give bitwise equal results with 1 and 2 threads", function()
    local one = H.with_threads(1, outputs)
    local two = H.with_threads(2, outputs)
    for i = 1, 4 do H.assert_identical(one[i], two[i], "result " .. i) end
  end)

  it("give the same bits in the portable compilation as in the AVX-512 one", function()
    local code = [[
      local D = require "diffusion"
      local g = D.Generator(11)
      local shape = { 4, 64, 9, 13 }
      local x = D.randn(shape, g):requires_grad_()
      local w, b = D.randn({ 64 }, g):requires_grad_(), D.randn({ 64 }, g):requires_grad_()
      local y = D.group_norm(x, 16, w, b)
      y:backward(D.randn(shape, g))
      for _, t in ipairs { y:detach(), x.grad, w.grad, b.grad } do io.write(fnv(t), " ") end
    ]]
    local widest, portable = run_child("", FNV .. code), run_child("DIFFUSION_SIMD=scalar", FNV .. code)
    assert.is_truthy(widest:match("^%d+ %d+ %d+ %d+ $"), widest)
    assert.are.equal(widest, portable)
  end)
end)
