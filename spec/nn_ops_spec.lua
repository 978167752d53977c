-- nn ops: linear, group_norm, layer_norm, softmax, log_softmax,
-- scaled_dot_product_attention, dropout, embedding, timestep_embedding.
-- Each has hand-computed small cases, a comparison with a plain-Lua reference
-- on random inputs, finite-difference gradient checks over several shapes
-- (with a tolerance per op), and its error messages.
local D = require "diffusion"
local H = require "helpers"

local INF = math.huge

--- helpers ----------------------------------------------------------------

-- |a - e| <= tol * max(1, |e|) elementwise; expected is a tensor or a (nested) table.
local function assert_close(actual, expected, tol)
  tol = tol or 1e-5
  local a = H.values(actual)
  local e = type(expected) == "table" and H.flatten(expected) or H.values(expected)
  assert.are.equal(#e, #a, "element count")
  for i = 1, #e do
    local ok = math.abs(a[i] - e[i]) <= tol * math.max(1, math.abs(e[i]))
    assert.is_true(ok, string.format("element %d: expected %.9g, got %.9g", i, e[i], a[i]))
  end
end

local function gen(seed) return D.Generator(seed) end

local function randn(shape, seed) return D.randn(shape, gen(seed)) end

local function gradcheck(fn, inputs, opts)
  local ok, report = D.gradcheck(fn, inputs, opts)
  assert.is_true(ok, report)
end

local function has_nan(t)
  for _, v in ipairs(H.values(t)) do if v ~= v then return true end end
  return false
end

-- Lua reference: out[r][o] = sum_i x[r][i] w[o][i] + b[o]; x as (rows, in).
local function ref_linear(x, w, b)
  local xs, ws, bs = H.values(x), H.values(w), b and H.values(b)
  local nin, nout = w:size(2), w:size(1)
  local rows = #xs // math.max(nin, 1)
  if nin == 0 then rows = x:numel() == 0 and 1 or rows end
  local out = {}
  for r = 0, rows - 1 do
    for o = 0, nout - 1 do
      local s = bs and bs[o + 1] or 0
      for i = 0, nin - 1 do s = s + xs[r * nin + i + 1] * ws[o * nin + i + 1] end
      out[#out + 1] = s
    end
  end
  return out
end

-- Lua reference for normalising rows of `len` with per-element affine index
-- aff(r, j) (1-based into w/b tables); returns a flat table.
local function ref_norm(xs, rows, len, aff, w, b, eps)
  local out = {}
  for r = 0, rows - 1 do
    local mean, var = 0, 0
    for j = 1, len do mean = mean + xs[r * len + j] end
    mean = mean / len
    for j = 1, len do var = var + (xs[r * len + j] - mean) ^ 2 end
    var = var / len
    for j = 1, len do
      local a = aff(r, j)
      local y = (xs[r * len + j] - mean) / math.sqrt(var + eps)
      out[r * len + j] = y * (w and w[a] or 1) + (b and b[a] or 0)
    end
  end
  return out
end

-- Lua reference softmax of the lines of x (a tensor) along dim (1-based).
local function ref_softmax(x, dim, log)
  local shape = x:shape()
  local outer, n, inner = 1, shape[dim], 1
  for d = 1, dim - 1 do outer = outer * shape[d] end
  for d = dim + 1, #shape do inner = inner * shape[d] end
  local xs, out = H.values(x), {}
  for o = 0, outer - 1 do
    for i = 0, inner - 1 do
      local function at(k) return o * n * inner + k * inner + i + 1 end
      local mx = -INF
      for k = 0, n - 1 do mx = math.max(mx, xs[at(k)]) end
      local sum = 0
      for k = 0, n - 1 do sum = sum + math.exp(xs[at(k)] - mx) end
      for k = 0, n - 1 do
        out[at(k)] = log and xs[at(k)] - mx - math.log(sum) or math.exp(xs[at(k)] - mx) / sum
      end
    end
  end
  return out
end

-- Lua reference attention over flat (batches, n, d) data; mask_at(b, i, j) -> bool.
local function ref_attention(q, k, v, mask_at, scale)
  local qs, ks, vs = H.values(q), H.values(k), H.values(v)
  local nd = q:dim()
  local nq, nk, d, dv = q:size(nd - 1), k:size(nd - 1), q:size(nd), v:size(nd)
  local batches = q:numel() // (nq * d)
  scale = scale or 1 / math.sqrt(d)
  local out = {}
  for b = 0, batches - 1 do
    for i = 0, nq - 1 do
      local s, mx, any = {}, -INF, false
      for j = 0, nk - 1 do
        if not mask_at or mask_at(b, i, j) then
          local dot = 0
          for e = 0, d - 1 do dot = dot + qs[(b * nq + i) * d + e + 1] * ks[(b * nk + j) * d + e + 1] end
          s[j] = dot * scale
          mx = math.max(mx, s[j])
          any = true
        end
      end
      local sum = 0
      for j = 0, nk - 1 do if s[j] then sum = sum + math.exp(s[j] - mx) end end
      for e = 0, dv - 1 do
        local acc = 0
        if any then
          for j = 0, nk - 1 do
            if s[j] then acc = acc + math.exp(s[j] - mx) / sum * vs[(b * nk + j) * dv + e + 1] end
          end
        end
        out[#out + 1] = acc
      end
    end
  end
  return out
end

--- linear -----------------------------------------------------------------

describe("linear", function()
  it("computes x Wᵀ + b by hand", function()
    local x = D.tensor { { 1, 2 }, { 3, 4 } }
    local w = D.tensor { { 1, 0 }, { 0, 1 }, { 1, 1 } }
    local b = D.tensor { 10, 20, 30 }
    assert_close(D.linear(x, w, b), { { 11, 22, 33 }, { 13, 24, 37 } })
    assert_close(D.linear(x, w), { { 1, 2, 3 }, { 3, 4, 7 } })
    assert_close(x:linear(w, b), { { 11, 22, 33 }, { 13, 24, 37 } })
    assert.are.same({ 2, 3 }, D.linear(x, w, b):shape())
  end)

  it("takes a 1-d input and flattens leading dims, matching a Lua reference", function()
    local w, b = randn({ 5, 4 }, 2), randn({ 5 }, 3)
    local x1 = randn({ 4 }, 1)
    assert.are.same({ 5 }, D.linear(x1, w, b):shape())
    assert_close(D.linear(x1, w, b), ref_linear(x1, w, b), 1e-5)
    local x3 = randn({ 2, 3, 4 }, 4)
    local y = D.linear(x3, w, b)
    assert.are.same({ 2, 3, 5 }, y:shape())
    assert_close(y, ref_linear(x3, w, b), 1e-5)
  end)

  it("accepts non-contiguous inputs and weights", function()
    local x, wt, b = randn({ 4, 3 }, 5), randn({ 4, 6 }, 6), randn({ 6 }, 7)
    local xt = x:t() -- (3, 4), non-contiguous
    local w = wt:t() -- (6, 4), non-contiguous
    assert.is_false(w:is_contiguous())
    assert_close(D.linear(xt, w, b), D.linear(xt:contiguous(), w:contiguous(), b), 1e-6)
  end)

  it("handles empty batches and zero input features", function()
    assert.are.same({ 0, 4 }, D.linear(D.zeros(0, 3), D.ones(4, 3), D.ones(4)):shape())
    -- no input features: every row is the bias
    assert_close(D.linear(D.zeros(2, 0), D.zeros(3, 0), D.tensor { 1, 2, 3 }), { { 1, 2, 3 }, { 1, 2, 3 } })
    assert_close(D.linear(D.zeros(2, 0), D.zeros(3, 0)), { { 0, 0, 0 }, { 0, 0, 0 } })
  end)

  it("has correct gradients for x, w and b over several shapes", function()
    gradcheck(function(x, w, b) return D.linear(x, w, b) end, { randn({ 3, 4 }, 1), randn({ 2, 4 }, 2), randn({ 2 }, 3) })
    gradcheck(function(x, w) return D.linear(x, w) end, { randn({ 2, 3, 5 }, 4), randn({ 1, 5 }, 5) })
    gradcheck(function(x, w, b) return D.linear(x, w, b) end, { randn({ 4 }, 6), randn({ 3, 4 }, 7), randn({ 3 }, 8) })
    gradcheck(function(x, w, b) return x:linear(w, b) end, { randn({ 1, 2, 1, 3 }, 9), randn({ 5, 3 }, 10), randn({ 5 }, 11) })
  end)

  it("the gradient check catches a wrong linear backward", function()
    D._debug_corrupt_backward("linear", 1.1)
    local ok = D.gradcheck(function(x, w) return D.linear(x, w) end, { randn({ 2, 3 }, 1), randn({ 2, 3 }, 2) })
    D._debug_corrupt_backward(nil)
    assert.is_false(ok)
  end)

  it("fails on bad shapes, naming them", function()
    H.assert_error_with({ "linear: weight must be 2-d (out, in), got {3}" }, D.linear, D.zeros(2, 3), D.zeros(3))
    H.assert_error_with({ "linear: input {2,3} has 3 features, weight {4,5} expects 5" }, D.linear, D.zeros(2, 3), D.zeros(4, 5))
    H.assert_error_with({ "linear: bias must have shape {4} for weight {4,3}, got {3}" }, D.linear, D.zeros(2, 3), D.zeros(4, 3),
      D.zeros(3))
    H.assert_error_with({ "linear: bias must have shape {4}", "got {1,4}" }, D.linear, D.zeros(2, 3), D.zeros(4, 3), D.zeros(1, 4))
    H.assert_error_with({ "linear: input must have at least 1 dim, got a 0-d tensor" }, D.linear, D.tensor(1), D.zeros(4, 1))
    H.assert_error_with({ "bad argument #2" }, D.linear, D.zeros(2, 3), 5)
  end)
end)

--- group_norm -------------------------------------------------------------

describe("group_norm", function()
  it("normalises by the formula on a tiny tensor", function()
    local x = D.tensor { { { 1, 3 }, { 5, 7 } } } -- (1, 2, 2)
    -- one group: mean 4, biased variance (9 + 1 + 1 + 9) / 4 = 5
    local s = math.sqrt(5 + 1e-5)
    assert_close(D.group_norm(x, 1), { { { -3 / s, -1 / s }, { 1 / s, 3 / s } } })
    -- two groups: {1, 3} and {5, 7}, each mean +-1, variance 1
    local r = 1 / math.sqrt(1 + 1e-5)
    assert_close(D.group_norm(x, 2), { { { -r, r }, { -r, r } } })
    -- affine per channel: channel 1 * 2 + 1, channel 2 * 3 - 1
    assert_close(D.group_norm(x, 2, D.tensor { 2, 3 }, D.tensor { 1, -1 }), { { { 1 - 2 * r, 1 + 2 * r }, { -1 - 3 * r, -1 + 3 * r } } })
    -- eps as given
    local r2 = 1 / math.sqrt(1 + 0.5)
    assert_close(D.group_norm(x, 2, nil, nil, 0.5), { { { -r2, r2 }, { -r2, r2 } } })
    assert_close(x:group_norm(2), { { { -r, r }, { -r, r } } })
  end)

  it("maps a constant group to the bias", function()
    local x = D.full({ 2, 4, 3 }, 7)
    assert_close(D.group_norm(x, 2, D.ones(4), D.tensor { 1, 2, 3, 4 }),
      D.tensor { 1, 2, 3, 4 }:view(1, 4, 1):expand(2, 4, 3))
  end)

  it("matches a Lua reference on random inputs with w and b", function()
    for _, case in ipairs { { { 2, 6, 3, 2 }, 3 }, { { 3, 4 }, 2 }, { { 2, 5, 7 }, 5 }, { { 1, 6, 2, 2 }, 1 } } do
      local shape, groups = case[1], case[2]
      local x = randn(shape, 1)
      local c = shape[2]
      local w, b = randn({ c }, 2), randn({ c }, 3)
      local span = x:numel() // (shape[1] * c)
      local cg = c // groups
      local len = cg * span
      local aff = function(r, j) return (r % groups) * cg + (j - 1) // span + 1 end
      local expected = ref_norm(H.values(x), shape[1] * groups, len, aff, H.values(w), H.values(b), 1e-5)
      assert_close(D.group_norm(x, groups, w, b), expected, 1e-4)
    end
  end)

  it("accepts a non-contiguous input", function()
    local x = randn({ 3, 2, 4 }, 9):transpose(1, 2) -- (2, 3, 4)
    assert_close(D.group_norm(x, 3), D.group_norm(x:contiguous(), 3), 1e-6)
  end)

  it("has correct gradients with groups = 1 and groups = C, affine or not", function()
    local tol = { atol = 2e-2, rtol = 2e-2 }
    gradcheck(function(x, w, b) return D.group_norm(x, 1, w, b) end, { randn({ 2, 4, 3 }, 1), randn({ 4 }, 2), randn({ 4 }, 3) }, tol)
    gradcheck(function(x, w, b) return D.group_norm(x, 4, w, b) end, { randn({ 2, 4, 3 }, 4), randn({ 4 }, 5), randn({ 4 }, 6) }, tol)
    gradcheck(function(x, w, b) return D.group_norm(x, 2, w, b) end, { randn({ 1, 6, 2, 2 }, 7), randn({ 6 }, 8), randn({ 6 }, 9) }, tol)
    gradcheck(function(x) return D.group_norm(x, 3) end, { randn({ 2, 3, 5 }, 10) }, tol)    -- odd dims, no affine
    gradcheck(function(x, w) return D.group_norm(x, 1, w) end, { randn({ 3, 2 }, 11), randn({ 2 }, 12) }, tol) -- no spatial dims
    gradcheck(function(x, b) return D.group_norm(x, 2, nil, b) end, { randn({ 2, 2, 3 }, 13), randn({ 2 }, 14) }, tol)
  end)

  it("the gradient check catches a wrong group_norm backward", function()
    D._debug_corrupt_backward("group_norm", 1.1)
    local ok = D.gradcheck(function(x, w) return D.group_norm(x, 2, w) end, { randn({ 2, 4, 3 }, 1), randn({ 4 }, 2) },
      { atol = 2e-2, rtol = 2e-2 })
    D._debug_corrupt_backward(nil)
    assert.is_false(ok)
  end)

  it("fails on bad shapes, groups and eps, naming them", function()
    H.assert_error_with({ "group_norm: expected an input (N, C, ...), got {6}" }, D.group_norm, D.zeros(6), 2)
    H.assert_error_with({ "group_norm: 6 channels of input {2,6,3} do not divide into 4 groups" }, D.group_norm, D.zeros(2, 6, 3), 4)
    H.assert_error_with({ "group_norm: groups must be >= 1, got 0" }, D.group_norm, D.zeros(2, 6, 3), 0)
    H.assert_error_with({ "group_norm: weight must have shape {6} (the channels of input {2,6,3}), got {3}" },
      D.group_norm, D.zeros(2, 6, 3), 2, D.zeros(3))
    H.assert_error_with({ "group_norm: bias must have shape {6}", "got {6,1}" }, D.group_norm, D.zeros(2, 6, 3), 2, D.zeros(6), D.zeros(6, 1))
    H.assert_error_with({ "group_norm: eps must be finite and >= 0, got -1" }, D.group_norm, D.zeros(2, 6, 3), 2, nil, nil, -1)
    H.assert_error_with({ "bad argument #2" }, D.group_norm, D.zeros(2, 6, 3), "two")
  end)
end)

--- layer_norm -------------------------------------------------------------

describe("layer_norm", function()
  it("normalises the last dim by the formula", function()
    -- {1,2,3,4}: mean 2.5, biased variance 1.25
    local s = math.sqrt(1.25 + 1e-5)
    local e = { -1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s }
    assert_close(D.layer_norm(D.tensor { 1, 2, 3, 4 }, { 4 }), e)
    assert_close(D.layer_norm(D.tensor { { 1, 2, 3, 4 }, { 11, 12, 13, 14 } }, { 4 }), { e, e }, 1e-4)
    assert_close(D.layer_norm(D.tensor { 1, 2, 3, 4 }, 4, D.tensor { 1, 2, 1, 2 }, D.tensor { 0, 0, 1, 1 }),
      { e[1], 2 * e[2], e[3] + 1, 2 * e[4] + 1 })
    assert_close(D.tensor { 1, 2, 3, 4 }:layer_norm({ 4 }), e)
  end)

  it("normalises over {H, W} with w and b of that shape, matching a Lua reference", function()
    for _, case in ipairs { { { 2, 3, 4 }, { 3, 4 } }, { { 2, 3, 4 }, { 4 } }, { { 5 }, { 5 } }, { { 3, 1, 7 }, { 1, 7 } } } do
      local shape, ns = case[1], case[2]
      local x = randn(shape, 1)
      local w, b = randn(ns, 2), randn(ns, 3)
      local len = 1
      for _, n in ipairs(ns) do len = len * n end
      local expected = ref_norm(H.values(x), x:numel() // len, len, function(_, j) return j end, H.values(w), H.values(b), 1e-5)
      local y = D.layer_norm(x, ns, w, b)
      assert.are.same(shape, y:shape())
      assert_close(y, expected, 1e-4)
    end
  end)

  it("has correct gradients for x, w and b over several shapes", function()
    local tol = { atol = 2e-2, rtol = 2e-2 }
    gradcheck(function(x, w, b) return D.layer_norm(x, { 4 }, w, b) end, { randn({ 2, 3, 4 }, 1), randn({ 4 }, 2), randn({ 4 }, 3) }, tol)
    gradcheck(function(x, w, b) return D.layer_norm(x, { 3, 5 }, w, b) end, { randn({ 2, 3, 5 }, 4), randn({ 3, 5 }, 5), randn({ 3, 5 }, 6) }, tol)
    gradcheck(function(x) return D.layer_norm(x, { 5 }) end, { randn({ 5 }, 7) }, tol)
    gradcheck(function(x, w) return D.layer_norm(x, { 7 }, w) end, { randn({ 3, 7 }, 8), randn({ 7 }, 9) }, tol)
    gradcheck(function(x, b) return x:layer_norm({ 3 }, nil, b) end, { randn({ 1, 2, 3 }, 10), randn({ 3 }, 11) }, tol)
  end)

  it("the gradient check catches a wrong layer_norm backward", function()
    D._debug_corrupt_backward("layer_norm", 1.1)
    local ok = D.gradcheck(function(x, b) return D.layer_norm(x, { 3 }, nil, b) end, { randn({ 2, 3 }, 1), randn({ 3 }, 2) })
    D._debug_corrupt_backward(nil)
    assert.is_false(ok)
  end)

  it("fails on a normalized_shape, weight or eps that doesn't fit", function()
    H.assert_error_with({ "layer_norm: normalized_shape {3} does not match the last dims of input {2,4}" }, D.layer_norm, D.zeros(2, 4), { 3 })
    H.assert_error_with({ "layer_norm: normalized_shape {1,2,4} does not match the last dims of input {2,4}" }, D.layer_norm, D.zeros(2, 4), { 1, 2, 4 })
    H.assert_error_with({ "layer_norm: normalized_shape {} does not match" }, D.layer_norm, D.zeros(2, 4), {})
    H.assert_error_with({ "layer_norm: weight of shape {2,4} does not match the normalised shape {4} of input {2,4}" },
      D.layer_norm, D.zeros(2, 4), { 4 }, D.zeros(2, 4))
    H.assert_error_with({ "layer_norm: bias of shape {3} does not match the normalised shape {4}" }, D.layer_norm, D.zeros(2, 4), { 4 }, nil, D.zeros(3))
    H.assert_error_with({ "layer_norm: eps must be finite and >= 0, got -0.5" }, D.layer_norm, D.zeros(2, 4), { 4 }, nil, nil, -0.5)
    H.assert_error_with({ "bad argument #2" }, D.layer_norm, D.zeros(2, 4), "4")
  end)
end)

--- softmax, log_softmax ---------------------------------------------------

describe("softmax and log_softmax", function()
  it("give the hand-computed values for {1, 2, 3}", function()
    local z = math.exp(1) + math.exp(2) + math.exp(3)
    assert_close(D.softmax(D.tensor { 1, 2, 3 }, 1), { math.exp(1) / z, math.exp(2) / z, math.exp(3) / z })
    assert_close(D.softmax(D.tensor { 1, 2, 3 }, 1), { 0.09003057, 0.24472847, 0.66524096 })
    assert_close(D.log_softmax(D.tensor { 1, 2, 3 }, 1), { -2.40760596, -1.40760596, -0.40760596 })
    assert_close(D.tensor { 1, 2, 3 }:softmax(-1), { 0.09003057, 0.24472847, 0.66524096 })
    assert_close(D.tensor { 1, 2, 3 }:log_softmax(1), { -2.40760596, -1.40760596, -0.40760596 })
  end)

  it("are stable for large inputs and handle -inf", function()
    assert_close(D.softmax(D.tensor { 1000, 1001, 1002 }, 1), { 0.09003057, 0.24472847, 0.66524096 })
    assert_close(D.log_softmax(D.tensor { -1000, -999, -998 }, 1), { -2.40760596, -1.40760596, -0.40760596 })
    assert_close(D.softmax(D.tensor { 0, -INF, 0 }, 1), { 0.5, 0, 0.5 })
    local ls = D.log_softmax(D.tensor { 0, -INF }, 1)
    assert.are.equal(0, ls[1])
    assert.are.equal(-INF, ls[2])
  end)

  it("match a Lua reference along every dim, and rows sum to 1", function()
    local x = randn({ 2, 3, 4 }, 1)
    for dim = 1, 3 do
      assert_close(D.softmax(x, dim), ref_softmax(x, dim, false), 1e-5)
      assert_close(D.log_softmax(x, dim), ref_softmax(x, dim, true), 1e-5)
      for _, total in ipairs(H.values(D.softmax(x, dim):sum(dim))) do assert.is_true(math.abs(total - 1) < 1e-6) end
    end
    assert_close(D.softmax(x, -1), D.softmax(x, 3), 0)
    local xt = x:transpose(1, 3) -- non-contiguous (4, 3, 2)
    assert_close(D.softmax(xt, 2), ref_softmax(xt:contiguous(), 2, false), 1e-5)
  end)

  it("have correct gradients along every dim", function()
    local x = randn({ 2, 3, 4 }, 2)
    for dim = 1, 3 do
      gradcheck(function(a) return D.softmax(a, dim) end, { x }, { atol = 5e-3, rtol = 1e-2 })
      gradcheck(function(a) return D.log_softmax(a, dim) end, { x }, { atol = 5e-3, rtol = 1e-2 })
    end
    gradcheck(function(a) return a:softmax(1) end, { randn({ 7 }, 3) }, { atol = 5e-3, rtol = 1e-2 })
    gradcheck(function(a) return a:log_softmax(2) end, { randn({ 1, 5 }, 4) }, { atol = 5e-3, rtol = 1e-2 })
  end)

  it("the gradient check catches a wrong softmax backward", function()
    D._debug_corrupt_backward("log_softmax", 1.1)
    local ok = D.gradcheck(function(a) return D.log_softmax(a, 1) end, { randn({ 4 }, 1) })
    D._debug_corrupt_backward(nil)
    assert.is_false(ok)
  end)

  it("fail on a dim out of range", function()
    H.assert_error_with({ "softmax", "dim 3 out of range for a 2-d tensor" }, D.softmax, D.zeros(2, 2), 3)
    H.assert_error_with({ "log_softmax", "dim -3 out of range for a 2-d tensor" }, D.log_softmax, D.zeros(2, 2), -3)
    H.assert_error_with({ "softmax", "dim 1 out of range for a 0-d tensor" }, D.softmax, D.tensor(1), 1)
    H.assert_error_with({ "bad argument #2" }, D.softmax, D.zeros(2))
  end)
end)

--- scaled_dot_product_attention -------------------------------------------

describe("scaled_dot_product_attention", function()
  local sdpa = D.scaled_dot_product_attention

  it("computes softmax(q kᵀ scale) v by hand", function()
    local q = D.tensor { 1, 0 }:view(1, 1, 1, 2)
    local k = D.tensor { { 1, 0 }, { 0, 1 } }:view(1, 1, 2, 2)
    local v = D.tensor { { 1, 2 }, { 3, 4 } }:view(1, 1, 2, 2)
    local e = math.exp(1)
    local p1, p2 = e / (e + 1), 1 / (e + 1)
    assert_close(sdpa(q, k, v, nil, 1), { { { { p1 * 1 + p2 * 3, p1 * 2 + p2 * 4 } } } })
    -- default scale 1 / sqrt(2)
    local e2 = math.exp(1 / math.sqrt(2))
    local r1, r2 = e2 / (e2 + 1), 1 / (e2 + 1)
    assert_close(sdpa(q, k, v), { { { { r1 + 3 * r2, 2 * r1 + 4 * r2 } } } })
    assert_close(q:scaled_dot_product_attention(k, v, nil, 1), { { { { p1 * 1 + p2 * 3, p1 * 2 + p2 * 4 } } } })
  end)

  it("with a one-hot mask selects rows of v", function()
    local q, k, v = randn({ 2, 2, 3, 4 }, 1), randn({ 2, 2, 3, 4 }, 2), randn({ 2, 2, 3, 5 }, 3)
    assert_close(sdpa(q, k, v, D.eye(3)), v, 1e-6)
    -- query i attends only key 4 - i: the rows of v in reverse
    local rev = D.tensor { { 0, 0, 1 }, { 0, 1, 0 }, { 1, 0, 0 } }
    local y = sdpa(q, k, v, rev)
    for b = 1, 2 do
      for h = 1, 2 do
        for i = 1, 3 do assert_close(y[b][h][i], v[b][h][4 - i], 1e-6) end
      end
    end
  end)

  it("gives a zero row, not NaN, for a query that may attend nothing", function()
    local q, k, v = randn({ 1, 1, 2, 3 }, 1), randn({ 1, 1, 4, 3 }, 2), randn({ 1, 1, 4, 2 }, 3)
    local mask = D.tensor { { 1, 1, 0, 1 }, { 0, 0, 0, 0 } }
    local y = sdpa(q, k, v, mask)
    assert.is_false(has_nan(y))
    assert_close(y[1][1][2], { 0, 0 }, 0)
    assert_close(y, ref_attention(q, k, v, function(_, i, j) return H.values(mask)[i * 4 + j + 1] ~= 0 end), 1e-5)
    -- and its gradients are finite, zero where nothing was attended
    local qq, kk, vv = q:clone():requires_grad_(true), k:clone():requires_grad_(true), v:clone():requires_grad_(true)
    sdpa(qq, kk, vv, D.zeros(2, 4)):sum():backward()
    assert_close(qq.grad, D.zeros(1, 1, 2, 3), 0)
    assert_close(kk.grad, D.zeros(1, 1, 4, 3), 0)
    assert_close(vv.grad, D.zeros(1, 1, 4, 2), 0)
  end)

  it("matches a Lua reference with broadcast masks, given and default scales", function()
    local q, k, v = randn({ 2, 3, 4, 5 }, 4), randn({ 2, 3, 6, 5 }, 5), randn({ 2, 3, 6, 3 }, 6)
    assert_close(sdpa(q, k, v), ref_attention(q, k, v), 1e-5)
    assert_close(sdpa(q, k, v, nil, 0.3), ref_attention(q, k, v, nil, 0.3), 1e-5)
    -- (1, 1, Nq, Nk) random keep-mask
    local m = D.rand({ 1, 1, 4, 6 }, gen(7)):ge(0.4)
    local ms = H.values(m)
    assert_close(sdpa(q, k, v, m), ref_attention(q, k, v, function(_, i, j) return ms[i * 6 + j + 1] ~= 0 end), 1e-5)
    -- (B, 1, 1, Nk) padding mask: batch 1 sees keys 1..4, batch 2 keys 1..2
    local pad = D.tensor { { 1, 1, 1, 1, 0, 0 }, { 1, 1, 0, 0, 0, 0 } }:view(2, 1, 1, 6)
    local ps = H.values(pad)
    assert_close(sdpa(q, k, v, pad), ref_attention(q, k, v, function(b, _, j) return ps[(b // 3) * 6 + j + 1] ~= 0 end), 1e-5)
    -- 0-d mask
    assert_close(sdpa(q, k, v, D.tensor(1)), sdpa(q, k, v), 0)
  end)

  it("accepts 3-d and non-contiguous inputs", function()
    local q, k, v = randn({ 2, 3, 4 }, 1), randn({ 2, 5, 4 }, 2), randn({ 2, 5, 2 }, 3)
    assert_close(sdpa(q, k, v), ref_attention(q, k, v), 1e-5)
    local qt = randn({ 2, 3, 2, 4 }, 4):transpose(2, 3) -- (B, N, H, d) -> (B, H, N, d)
    local kt = randn({ 2, 5, 2, 4 }, 5):transpose(2, 3)
    local vt = randn({ 2, 5, 2, 3 }, 6):transpose(2, 3)
    assert.is_false(qt:is_contiguous())
    assert_close(sdpa(qt, kt, vt), sdpa(qt:contiguous(), kt:contiguous(), vt:contiguous()), 1e-6)
  end)

  it("has correct gradients for q, k and v, with and without masks", function()
    local tol = { atol = 1e-2, rtol = 2e-2 }
    local q, k, v = randn({ 1, 2, 3, 4 }, 1), randn({ 1, 2, 5, 4 }, 2), randn({ 1, 2, 5, 3 }, 3)
    gradcheck(function(a, b, c) return sdpa(a, b, c) end, { q, k, v }, tol)
    gradcheck(function(a, b, c) return sdpa(a, b, c, nil, 0.7) end, { q, k, v }, tol)
    local m = D.tensor { { 1, 0, 1, 1, 0 }, { 0, 0, 0, 0, 0 }, { 1, 1, 1, 1, 1 } } -- (Nq, Nk), a fully masked row
    gradcheck(function(a, b, c) return sdpa(a, b, c, m) end, { q, k, v }, tol)
    local pad = D.tensor { 1, 1, 1, 0, 0 }:view(1, 1, 1, 5)
    gradcheck(function(a, b, c) return sdpa(a, b, c, pad) end, { q, k, v }, tol)
    local per_head = D.tensor { 1, 0 }:view(1, 2, 1, 1) -- head 2 fully masked
    gradcheck(function(a, b, c) return sdpa(a, b, c, per_head) end, { q, k, v }, tol)
    -- odd dims, 3-d
    gradcheck(function(a, b, c) return sdpa(a, b, c) end, { randn({ 3, 1, 3 }, 4), randn({ 3, 3, 3 }, 5), randn({ 3, 3, 1 }, 6) }, tol)
    -- causal mask, batch 2
    local causal = D.tensor { { 1, 0, 0 }, { 1, 1, 0 }, { 1, 1, 1 } }
    gradcheck(function(a, b, c) return sdpa(a, b, c, causal) end,
      { randn({ 2, 1, 3, 2 }, 7), randn({ 2, 1, 3, 2 }, 8), randn({ 2, 1, 3, 2 }, 9) }, tol)
  end)

  it("the gradient check catches a wrong attention backward", function()
    D._debug_corrupt_backward("scaled_dot_product_attention", 1.1)
    local ok = D.gradcheck(function(a, b, c) return sdpa(a, b, c) end,
      { randn({ 1, 1, 2, 3 }, 1), randn({ 1, 1, 3, 3 }, 2), randn({ 1, 1, 3, 2 }, 3) })
    D._debug_corrupt_backward(nil)
    assert.is_false(ok)
  end)

  it("fails on shapes that don't fit, naming them", function()
    local N = "scaled_dot_product_attention: "
    H.assert_error_with({ N .. "q, k and v must have the same number of dims", "{2,3,4}, {1,2,3,4} and {1,2,3,4}" },
      sdpa, D.zeros(2, 3, 4), D.zeros(1, 2, 3, 4), D.zeros(1, 2, 3, 4))
    H.assert_error_with({ N .. "q, k and v must have the same number of dims" }, sdpa, D.zeros(4), D.zeros(4), D.zeros(4))
    H.assert_error_with({ N .. "the batch dims of q {1,2,3,4}, k {1,3,3,4} and v {1,3,3,4} differ" },
      sdpa, D.zeros(1, 2, 3, 4), D.zeros(1, 3, 3, 4), D.zeros(1, 3, 3, 4))
    H.assert_error_with({ N .. "q {1,2,3,4} and k {1,2,3,5} have different feature sizes (4 and 5)" },
      sdpa, D.zeros(1, 2, 3, 4), D.zeros(1, 2, 3, 5), D.zeros(1, 2, 3, 4))
    H.assert_error_with({ N .. "k {1,2,3,4} and v {1,2,6,4} have different numbers of keys (3 and 6)" },
      sdpa, D.zeros(1, 2, 3, 4), D.zeros(1, 2, 3, 4), D.zeros(1, 2, 6, 4))
    H.assert_error_with({ N .. "mask {2,3} does not broadcast to the attention shape {1,2,5,3}" },
      sdpa, D.zeros(1, 2, 5, 4), D.zeros(1, 2, 3, 4), D.zeros(1, 2, 3, 4), D.zeros(2, 3))
    H.assert_error_with({ N .. "mask {1,1,1,5,3} does not broadcast" },
      sdpa, D.zeros(1, 2, 5, 4), D.zeros(1, 2, 3, 4), D.zeros(1, 2, 3, 4), D.ones(1, 1, 1, 5, 3))
    H.assert_error_with({ N .. "scale must be finite, got inf" }, sdpa, D.zeros(1, 1, 2, 2), D.zeros(1, 1, 2, 2), D.zeros(1, 1, 2, 2), nil, INF)
    H.assert_error_with({ "bad argument #4" }, sdpa, D.zeros(1, 1, 2, 2), D.zeros(1, 1, 2, 2), D.zeros(1, 1, 2, 2), 3)
  end)
end)

--- dropout ----------------------------------------------------------------

describe("dropout", function()
  it("keeps about 1 - p of 1e5 elements and scales them by 1 / (1 - p)", function()
    local n = 100000
    for _, p in ipairs { 0.3, 0.9 } do
      local y = D.dropout(D.ones(n), p, true, gen(11))
      local kept = y:ne(0):sum():item()
      local sd = math.sqrt(p * (1 - p) / n)
      assert.is_true(math.abs(kept / n - (1 - p)) < 6 * sd, string.format("p = %g: kept %d of %d", p, kept, n))
      local scale = 1 / (1 - p)
      -- every kept value is 1 / (1 - p) (to float32 rounding)
      assert.are.equal(kept, (y - scale):abs():lt(1e-6 * scale):sum():item())
      assert.is_true(math.abs(y:mean():item() - 1) < 6 * sd * scale)
    end
  end)

  it("is deterministic for a seed, and the generator advances", function()
    local x = D.randn({ 1000 }, gen(1))
    local a = D.dropout(x, 0.5, true, gen(42))
    local b = D.dropout(x, 0.5, true, gen(42))
    assert_close(a, b, 0)
    local g = gen(42)
    local c1, c2 = D.dropout(x, 0.5, true, g), D.dropout(x, 0.5, true, g)
    assert_close(c1, a, 0)
    assert.is_true(c1:ne(c2):sum():item() > 100)
    assert.is_true(D.dropout(x, 0.5, true, gen(43)):ne(a):sum():item() > 100)
    -- the default generator, through manual_seed
    D.manual_seed(7)
    local d1 = D.dropout(x, 0.5)
    D.manual_seed(7)
    assert_close(x:dropout(0.5), d1, 0)
  end)

  it("masks with the draws D.rand makes from the same generator, for contiguous and strided x alike", function()
    -- contiguous x takes the one-pass kernel, a transposed view the draw-mask-multiply path
    for _, shape in ipairs { { 7, 13 }, { 3, 4099 }, { 64, 65 } } do
      local x = D.randn(shape, gen(4))
      local p, scale = 0.25, 1 / (1 - 0.25) -- exact in float32, as the kernel has them
      local g1, g2 = gen(21), gen(21)
      local y = D.dropout(x, p, true, g1)
      local u = D.rand(shape, g2)
      assert_close(y, u:ge(p) * scale * x, 0)
      assert_close(D.rand({ 5 }, g1), D.rand({ 5 }, g2), 0) -- both advanced alike
      local xt = x:t()
      assert.is_false(xt:is_contiguous())
      local yt = D.dropout(xt, p, true, gen(21))
      assert_close(yt, D.rand(xt:size(), gen(21)):ge(p) * scale * xt, 0)
    end
  end)

  it("is the identity in eval mode and for p = 0, gradient included", function()
    local x = D.randn({ 3, 4 }, gen(2))
    assert_close(D.dropout(x, 0.5, false), x, 0)
    assert_close(D.dropout(x, 0), x, 0)
    local leaf = x:clone():requires_grad_(true)
    local y = D.dropout(leaf, 0.7, false)
    assert.is_true(y.requires_grad)
    local total = (y * 3):sum()
    total:backward()
    assert_close(leaf.grad, D.full({ 3, 4 }, 3), 0)
  end)

  it("passes the gradient through the kept elements, scaled", function()
    local x = D.ones(200):requires_grad_(true)
    local y = D.dropout(x, 0.25, true, gen(5))
    y:sum():backward()
    assert_close(x.grad, y:detach(), 0) -- x is ones: y is the scaled mask
    gradcheck(function(a) return D.dropout(a, 0.4, true, gen(9)) end, { D.randn({ 3, 5 }, gen(3)) }, { atol = 1e-3 })
  end)

  it("fails on p outside [0, 1)", function()
    H.assert_error_with({ "dropout: p must be in [0, 1), got 1" }, D.dropout, D.ones(3), 1)
    H.assert_error_with({ "dropout: p must be in [0, 1), got -0.1" }, D.dropout, D.ones(3), -0.1)
    H.assert_error_with({ "dropout: p must be in [0, 1), got 1.5" }, D.dropout, D.ones(3), 1.5, false)
    H.assert_error_with({ "bad argument #4" }, D.dropout, D.ones(3), 0.5, true, 3)
  end)
end)

--- embedding --------------------------------------------------------------

describe("embedding", function()
  local weight = D.tensor { { 1, 2 }, { 3, 4 }, { 5, 6 } }

  it("picks rows by 1-based index, in any index shape", function()
    assert_close(D.embedding(D.tensor { 3, 1 }, weight), { { 5, 6 }, { 1, 2 } })
    local y = D.embedding(D.tensor { { 1, 2 }, { 3, 3 } }, weight)
    assert.are.same({ 2, 2, 2 }, y:shape())
    assert_close(y, { { { 1, 2 }, { 3, 4 } }, { { 5, 6 }, { 5, 6 } } })
    assert_close(D.embedding(D.tensor(2), weight), { 3, 4 })
    assert.are.same({ 0, 2 }, D.embedding(D.zeros(0), weight):shape())
    assert_close(D.tensor { 2 }:embedding(weight), { { 3, 4 } })
    assert_close(D.embedding(D.tensor { 1, 3 }, weight:t():contiguous():t()), { { 1, 2 }, { 5, 6 } }) -- non-contiguous weight
  end)

  it("scatter-adds the gradient into weight, repeated indices accumulating", function()
    local w = weight:clone():requires_grad_(true)
    local y = D.embedding(D.tensor { 1, 1, 3 }, w)
    local total = (y * D.tensor { { 1, 10 }, { 2, 20 }, { 4, 40 } }):sum()
    total:backward()
    assert_close(w.grad, { { 3, 30 }, { 0, 0 }, { 4, 40 } }, 0)
    gradcheck(function(a) return D.embedding(D.tensor { { 2, 4 }, { 4, 1 } }, a) end, { D.randn({ 4, 3 }, gen(1)) }, { atol = 1e-3 })
    gradcheck(function(a) return D.embedding(D.tensor { 5, 5, 5 }, a) end, { D.randn({ 5, 1 }, gen(2)) }, { atol = 1e-3 })
  end)

  it("fails on indices out of range or not integers, naming the bad value", function()
    H.assert_error_with({ "embedding: index 0 (element 2) is not a row of the weight {3,2}: expected an integer in 1..3" },
      D.embedding, D.tensor { 1, 0 }, weight)
    H.assert_error_with({ "embedding: index 4 (element 1)", "1..3" }, D.embedding, D.tensor { 4 }, weight)
    H.assert_error_with({ "embedding: index -2 (element 3)" }, D.embedding, D.tensor { 1, 2, -2 }, weight)
    H.assert_error_with({ "embedding: index 1.5 (element 1)" }, D.embedding, D.tensor { 1.5 }, weight)
    H.assert_error_with({ "embedding: index ", "nan (element 1)" }, D.embedding, D.tensor { 0 / 0 }, weight)
    H.assert_error_with({ "embedding: weight must be 2-d (num, dim), got {3}" }, D.embedding, D.tensor { 1 }, D.zeros(3))
    H.assert_error_with({ "bad argument #2" }, D.embedding, D.tensor { 1 }, 3)
  end)
end)

--- timestep_embedding -----------------------------------------------------

describe("timestep_embedding", function()
  it("gives sin then cos of t max_period^(-i / half) by hand", function()
    -- dim 4: half 2, frequencies 1 and 10000^(-1/2) = 0.01
    assert_close(D.timestep_embedding(D.tensor { 0, 1 }, 4),
      { { 0, 0, 1, 1 }, { math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01) } }, 1e-6)
    -- max_period 100: frequencies 1 and 0.1
    assert_close(D.timestep_embedding(D.tensor { 2 }, 4, 100), { { math.sin(2), math.sin(0.2), math.cos(2), math.cos(0.2) } }, 1e-6)
    -- an odd dim ends with a zero column; dim 1 is all zeros
    assert_close(D.timestep_embedding(D.tensor { 3 }, 5), { { math.sin(3), math.sin(0.03), math.cos(3), math.cos(0.03), 0 } }, 1e-6)
    assert_close(D.timestep_embedding(D.tensor { 3, 4 }, 1), { { 0 }, { 0 } }, 0)
    assert_close(D.tensor { 1 }:timestep_embedding(2), { { math.sin(1), math.cos(1) } }, 1e-6)
  end)

  it("lies in [-1, 1] with distinct rows for t = 0..999", function()
    local dim = 32
    local y = D.timestep_embedding(D.arange(0, 1000), dim)
    assert.are.same({ 1000, dim }, y:shape())
    assert.is_true(y:max():item() <= 1 and y:min():item() >= -1)
    local ys, seen = H.values(y), {}
    for r = 0, 999 do
      local parts = {}
      for c = 1, dim do parts[c] = string.format("%.6f", ys[r * dim + c]) end
      local key = table.concat(parts, ",")
      assert.is_nil(seen[key], "rows " .. tostring(seen[key]) .. " and " .. r .. " are equal")
      seen[key] = r
    end
  end)

  it("records no gradient", function()
    local t = D.tensor { 1, 2 }:requires_grad_(true)
    assert.is_false(D.timestep_embedding(t, 4).requires_grad)
  end)

  it("fails on bad shapes, dims and periods", function()
    H.assert_error_with({ "timestep_embedding: expected timesteps of shape (N), got {2,1}" }, D.timestep_embedding, D.zeros(2, 1), 4)
    H.assert_error_with({ "timestep_embedding: dim must be >= 1, got 0" }, D.timestep_embedding, D.zeros(2), 0)
    H.assert_error_with({ "timestep_embedding: max_period must be finite and > 0, got 0" }, D.timestep_embedding, D.zeros(2), 4, 0)
    H.assert_error_with({ "bad argument #2" }, D.timestep_embedding, D.zeros(2))
  end)
end)

--- threads ----------------------------------------------------------------

describe("nn ops", function()
  it("give the same values and gradients with 1 and 2 threads (our kernels; BLAS aside)", function()
    local function run()
      local x = D.randn({ 4, 8, 32, 32 }, gen(1)):requires_grad_(true)
      local w, b = D.randn({ 8 }, gen(2)):requires_grad_(true), D.randn({ 8 }, gen(3)):requires_grad_(true)
      local lw = D.randn({ 32 }, gen(4)):requires_grad_(true)
      local q = D.randn({ 2, 2, 64, 16 }, gen(5)):requires_grad_(true)
      local e = D.randn({ 50, 64 }, gen(6)):requires_grad_(true)
      local idx = D.randint(1, 51, { 300 }, gen(7))
      local causal = D.arange(1, 65):view(64, 1):ge(D.arange(1, 65):view(1, 64))
      local outs = {
        D.group_norm(x, 4, w, b), D.layer_norm(x, { 32 }, lw), D.softmax(x, 3), D.log_softmax(x, 4),
        D.scaled_dot_product_attention(q, q, q, causal), D.embedding(idx, e), D.dropout(x, 0.5, true, gen(8)),
      } -- not linear: OpenBLAS may split a tall, thin product differently per thread count
      local loss = D.tensor(0)
      for i, y in ipairs(outs) do loss = loss + (y * D.randn(y:shape(), gen(100 + i))):sum() end
      loss:backward()
      local results = { x.grad, w.grad, b.grad, lw.grad, q.grad, e.grad }
      for _, y in ipairs(outs) do results[#results + 1] = y:detach() end
      return results
    end
    local previous = D.get_num_threads()
    D.set_num_threads(1)
    local one = run()
    D.set_num_threads(2)
    local two = run()
    D.set_num_threads(previous)
    for i = 1, #one do
      assert.are.equal(0, (one[i] - two[i]):abs():max():item(), "result " .. i)
    end
  end)
end)
