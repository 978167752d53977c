-- Reductions: sum mean var std max min argmax argmin over all elements, one
-- dim or several, keepdim, correction, empty and NaN inputs, non-contiguous
-- inputs and the blocked, thread-count-independent large path.
local D = require "diffusion"
local H = require "helpers"

local NAN, INF = 0 / 0, math.huge

--- helpers ----------------------------------------------------------------

local function is_nan(v) return v ~= v end

local function shape_of(t)
  local s = {}
  while type(t) == "table" do s[#s + 1] = #t; t = t[1] end
  return s
end

local function nest(flat, shape)
  if #shape == 0 then return flat[1] end
  local pos = 0
  local function build(d)
    local r = {}
    for i = 1, shape[d] do
      if d == #shape then pos = pos + 1; r[i] = flat[pos] else r[i] = build(d + 1) end
    end
    return r
  end
  return build(1)
end

local function combine(op, vals, correction)
  local n = #vals
  if op == "sum" or op == "mean" or op == "var" or op == "std" then
    local s = 0
    for _, v in ipairs(vals) do s = s + v end
    if op == "sum" then return s end
    local mean = s / n
    if op == "mean" then return mean end
    local q = 0
    for _, v in ipairs(vals) do q = q + (v - mean) ^ 2 end
    local denom = n - correction
    local var = denom > 0 and q / denom or NAN
    return op == "var" and var or math.sqrt(var)
  end
  local best, at = vals[1], 1
  for i = 1, n do
    local v = vals[i]
    if is_nan(v) then return v, i end
    if (op == "max" and v > best) or (op == "min" and v < best) then best, at = v, i end
  end
  return best, at
end

-- Reference reduction of nested table t over the (1-based, positive) dims
-- (nil: all), as a nested table (a number when nothing is left), plus the
-- 1-based positions for max/min.
local function ref_reduce(t, op, dims, keepdim, correction)
  correction = correction or 1
  local shape, flat = shape_of(t), H.flatten(t)
  local nd = #shape
  local reduced = {}
  if dims == nil then
    for d = 1, nd do reduced[d] = true end
  else
    for _, d in ipairs(dims) do reduced[d] = true end
  end
  local out_shape, kept = {}, {}
  for d = 1, nd do
    if not reduced[d] then out_shape[#out_shape + 1] = shape[d]; kept[#kept + 1] = d
    elseif keepdim then out_shape[#out_shape + 1] = 1 end
  end
  local groups, order = {}, {}
  local idx = {}
  for d = 1, nd do idx[d] = 1 end
  for i = 1, #flat do
    local key = {}
    for _, d in ipairs(kept) do key[#key + 1] = idx[d] end
    local k = table.concat(key, ",")
    if not groups[k] then groups[k] = {}; order[#order + 1] = k end
    table.insert(groups[k], flat[i])
    for d = nd, 1, -1 do
      idx[d] = idx[d] + 1
      if idx[d] <= shape[d] then break end
      idx[d] = 1
    end
  end
  local values, positions = {}, {}
  for i, k in ipairs(order) do values[i], positions[i] = combine(op, groups[k], correction) end
  return nest(values, out_shape), nest(positions, out_shape), out_shape
end

local function range_table(shape, f)
  local function build(d, idx)
    local r = {}
    for i = 1, shape[d] do
      idx[d] = i
      if d == #shape then r[i] = f(table.unpack(idx)) else r[i] = build(d + 1, idx) end
    end
    return r
  end
  return build(1, {})
end

-- A 2x3x4 table of irregular values (exactly representable in float32).
local T3 = range_table({ 2, 3, 4 }, function(i, j, k) return ((i * 7 + j * 5 + k * 3) % 11) - 4.5 + 0.25 * k end)

--- basics ------------------------------------------------------------------

describe("full reductions", function()
  local x = D.tensor { { 1, 2, 3 }, { 4, 5, 6 } }

  it("return 0-d tensors", function()
    for _, name in ipairs { "sum", "mean", "var", "std", "max", "min", "argmax", "argmin" } do
      local r = x[name](x)
      assert.are.equal(0, r:dim(), name)
      H.assert_shape(r, {})
      assert.are.equal(1, r:numel())
    end
  end)

  it("give hand-computed values", function()
    assert.are.equal(21, x:sum():item())
    assert.are.equal(3.5, x:mean():item())
    H.assert_close(x:var():item(), 3.5) -- 17.5 / 5
    H.assert_close(x:std():item(), math.sqrt(3.5))
    assert.are.equal(6, x:max():item())
    assert.are.equal(1, x:min():item())
    assert.are.equal(6, x:argmax():item())
    assert.are.equal(1, x:argmin():item())
    assert.are.equal(21, D.sum(x):item())
    assert.are.equal(6, D.max(x):item())
    assert.are.equal(6, D.argmax(x):item())
  end)

  it("var and std use the unbiased estimate unless correction is given", function()
    H.assert_close(x:var(nil, false, 0):item(), 17.5 / 6)
    H.assert_close(x:std(nil, false, 0):item(), math.sqrt(17.5 / 6))
    H.assert_close(x:var(nil, false, 1):item(), 3.5)
    H.assert_close(x:var(nil, false, 2):item(), 17.5 / 4)
    local y = D.tensor { 2, 4, 4, 4, 5, 5, 7, 9 }
    H.assert_close(y:std(nil, false, 0):item(), 2)
    H.assert_close(y:var():item(), 32 / 7)
  end)

  it("var of a single element is NaN unbiased, 0 with correction 0", function()
    local one = D.tensor { 3 }
    assert.is_true(is_nan(one:var():item()))
    assert.is_true(is_nan(one:std():item()))
    assert.are.equal(0, one:var(nil, false, 0):item())
  end)

  it("keepdim keeps every dim as size 1", function()
    local r = x:sum(nil, true)
    H.assert_shape(r, { 1, 1 })
    assert.are.same({ { 21 } }, r:totable())
    H.assert_shape(x:max({ 1, 2 }, true), { 1, 1 })
    local a = x:argmax(nil, true) -- flat position, every dim kept as size 1
    H.assert_shape(a, { 1, 1 })
    assert.are.same({ { 6 } }, a:totable())
  end)

  it("0-d input", function()
    local s = D.tensor(4)
    assert.are.equal(4, s:sum():item())
    assert.are.equal(4, s:max():item())
    assert.are.equal(1, s:argmax():item())
    assert.are.equal(0, s:var(nil, false, 0):item())
  end)
end)

describe("reductions over dims", function()
  local X = { { 1, 5, 3 }, { 7, 2, 7 } }
  local x = D.tensor(X)

  it("one dim, positive and negative", function()
    assert.are.same({ 8, 7, 10 }, x:sum(1):totable())
    assert.are.same({ 9, 16 }, x:sum(2):totable())
    assert.are.same({ 9, 16 }, x:sum(-1):totable())
    assert.are.same({ 8, 7, 10 }, x:sum(-2):totable())
    assert.are.same({ 4, 3.5, 5 }, x:mean(1):totable())
    H.assert_close(x:var(2), { 4, 8.333333333333334 })
    H.assert_close(x:var(1), { 18, 4.5, 8 })
    H.assert_close(x:var(2, false, 0), { 8 / 3, 50 / 9 })
    H.assert_close(x:std(-1, false, 0), { math.sqrt(8 / 3), math.sqrt(50 / 9) })
    H.assert_shape(x:sum(1), { 3 })
  end)

  it("keepdim", function()
    local r = x:sum(1, true)
    H.assert_shape(r, { 1, 3 })
    assert.are.same({ { 8, 7, 10 } }, r:totable())
    r = x:mean(-1, true)
    H.assert_shape(r, { 2, 1 })
    H.assert_close(r, { { 3 }, { 16 / 3 } })
  end)

  it("max/min with a dim return values and 1-based positions; the first of equal extremes wins", function()
    local v, i = x:max(2)
    assert.are.same({ 5, 7 }, v:totable())
    assert.are.same({ 2, 1 }, i:totable())
    v, i = x:min(1)
    assert.are.same({ 1, 2, 3 }, v:totable())
    assert.are.same({ 1, 2, 1 }, i:totable())
    v, i = x:max(-2, true)
    H.assert_shape(v, { 1, 3 })
    H.assert_shape(i, { 1, 3 })
    assert.are.same({ { 7, 5, 7 } }, v:totable())
    assert.are.same({ { 2, 1, 2 } }, i:totable())
    v, i = D.min(D.tensor { { 2, 1, 1 }, { 0, 0, 0 } }, 2)
    assert.are.same({ 1, 0 }, v:totable())
    assert.are.same({ 2, 1 }, i:totable())
  end)

  it("max/min without a dim return only the values", function()
    assert.are.equal(1, select("#", x:max()))
    assert.are.equal(1, select("#", x:min()))
    assert.are.equal(2, select("#", x:max(1)))
  end)

  it("argmax/argmin with a dim and no keepdim drop that dim", function()
    local m = D.tensor { { 1, 5 }, { 7, 2 }, { 0, 9 } }
    local r = m:argmax(1)
    H.assert_shape(r, { 2 })
    assert.are.same({ 2, 3 }, r:totable())
    H.assert_shape(m:argmin(2), { 3 })
    assert.are.same({ 1, 2, 1 }, m:argmin(2):totable())
    H.assert_shape(D.argmax(m, -1), { 3 })
    H.assert_shape(m:argmax(1, false), { 2 })
  end)

  it("argmax/argmin: flat 1-based without dim, along a dim with one", function()
    assert.are.equal(4, x:argmax():item()) -- the first 7
    assert.are.equal(1, x:argmin():item())
    assert.are.same({ 2, 1, 2 }, x:argmax(1):totable())
    assert.are.same({ 2, 1 }, x:argmax(2):totable())
    assert.are.same({ 1, 2 }, x:argmin(-1):totable())
    local r = x:argmax(2, true)
    H.assert_shape(r, { 2, 1 })
    assert.are.same({ { 2 }, { 1 } }, r:totable())
    assert.are.equal(1, D.argmax(D.tensor { 3, 1, 3 }):item())
    assert.are.equal(2, D.argmin(D.tensor { 2, 1, 1 }):item())
  end)

  it("argmax over a 3-d tensor flattens in row-major order", function()
    local t = D.tensor(T3)
    local _, flat_pos = ref_reduce(T3, "max")
    local _, flat_min = ref_reduce(T3, "min")
    assert.are.equal(flat_pos, t:argmax():item())
    assert.are.equal(flat_min, t:argmin():item())
    local y = D.zeros(2, 3, 4)
    y:set(9, 2, 1, 3)
    assert.are.equal(15, y:argmax():item()) -- (2-1)*12 + (1-1)*4 + 3
  end)

  local function check_all(t, dims, keepdim)
    local x3 = D.tensor(t)
    for _, op in ipairs { "sum", "mean", "var", "std", "max", "min" } do
      local expected, _, out_shape = ref_reduce(t, op, dims, keepdim)
      local arg = dims
      local r = x3[op](x3, arg, keepdim)
      assert.are.same(out_shape, r:shape(), op)
      H.assert_close(r, expected, 1e-5)
    end
    local pop = ref_reduce(t, "var", dims, keepdim, 0)
    H.assert_close(x3:var(dims, keepdim, 0), pop, 1e-5)
  end

  it("several dims {1,3} on a 3-d tensor", function()
    check_all(T3, { 1, 3 }, false)
    check_all(T3, { 1, 3 }, true)
    local x3 = D.tensor(T3)
    H.assert_shape(x3:sum({ 1, 3 }), { 3 })
    H.assert_shape(x3:sum({ 1, 3 }, true), { 1, 3, 1 })
  end)

  it("dims given in any order or negative pick the same dims", function()
    local x3 = D.tensor(T3)
    local expected = ref_reduce(T3, "sum", { 1, 3 })
    H.assert_shape(x3:sum({ 3, 1 }), { 3 })
    H.assert_close(x3:sum({ 3, 1 }), expected)
    H.assert_close(x3:sum({ -1, 1 }), expected)
    H.assert_close(x3:sum({ -3, -1 }), expected)
    H.assert_close(x3:var({ -1, -3 }), (ref_reduce(T3, "var", { 1, 3 })))
  end)

  it("every single dim and pair of dims on a 3-d tensor", function()
    for _, dims in ipairs { { 1 }, { 2 }, { 3 }, { 1, 2 }, { 2, 3 }, { 1, 2, 3 } } do
      check_all(T3, dims, false)
      check_all(T3, dims, true)
    end
    local x3 = D.tensor(T3)
    H.assert_shape(x3:sum({ 1, 2, 3 }), {})
    H.assert_shape(x3:sum({ 1, 2, 3 }, true), { 1, 1, 1 })
  end)

  it("max/min along each dim of a 3-d tensor give the reference positions", function()
    local x3 = D.tensor(T3)
    for d = 1, 3 do
      for _, op in ipairs { "max", "min" } do
        local ev, ei = ref_reduce(T3, op, { d })
        local v, i = x3[op](x3, d)
        H.assert_close(v, ev, 0)
        assert.are.same(ei, i:totable())
      end
    end
    for d = 1, 3 do
      for _, op in ipairs { "max", "min" } do
        local _, ei = ref_reduce(T3, op, { d })
        local argname = "arg" .. op
        assert.are.same(ei, x3[argname](x3, d):totable())
        assert.are.same(ei, x3[argname](x3, d - 4):totable())
      end
    end
  end)

  it("rejects bad dims", function()
    local x3 = D.tensor(T3)
    local ok, err = pcall(x3.sum, x3, 4)
    assert.is_false(ok)
    assert.matches("dim 4 out of range for a 3-d tensor", err, 1, true)
    assert.has_error(function() x3:sum(-4) end)
    assert.has_error(function() x3:sum(0) end)
    ok, err = pcall(x3.sum, x3, { 1, 1 })
    assert.is_false(ok)
    assert.matches("given twice", err, 1, true)
    assert.has_error(function() x3:sum({ 1, -3 }) end)
    assert.has_error(function() x3:sum({}) end)
    assert.has_error(function() x3:mean({ 1, 2, 3, 1 }) end)
    assert.has_error(function() x3:argmax(4) end)
    assert.has_error(function() x3:max(5) end)
  end)
end)

--- empty and NaN -----------------------------------------------------------

describe("zero-size inputs", function()
  it("sum of nothing is 0, mean of nothing is NaN", function()
    assert.are.equal(0, D.zeros(0):sum():item())
    assert.are.equal(0, D.tensor {}:sum():item())
    assert.are.same({ 0, 0, 0 }, D.zeros(0, 3):sum(1):totable())
    assert.is_true(is_nan(D.zeros(0):mean():item()))
    local r = D.zeros(0, 3):sum(2)
    H.assert_shape(r, { 0 })
    H.assert_shape(D.zeros(0, 3):sum(2, true), { 0, 1 })
    H.assert_shape(D.zeros(2, 0, 3):sum({ 1, 3 }), { 0 })
    assert.are.same({ { 0, 0 }, { 0, 0 } }, D.zeros(2, 0, 2):sum(2):totable())
    assert.are.same({ { { 0, 0 } }, { { 0, 0 } } }, D.zeros(2, 0, 2):sum(2, true):totable())
  end)

  it("max/min/argmax/argmin of nothing fail", function()
    local ok, err = pcall(function() return D.zeros(0):max() end)
    assert.is_false(ok)
    assert.matches("max: cannot reduce over zero elements", err, 1, true)
    ok, err = pcall(function() return D.zeros(0):min() end)
    assert.is_false(ok)
    assert.matches("min: cannot reduce over zero elements", err, 1, true)
    assert.has_error(function() D.zeros(0):argmax() end)
    assert.has_error(function() D.zeros(0):argmin() end)
    assert.has_error(function() D.zeros(0, 3):max(1) end)
    assert.has_error(function() D.zeros(0, 3):argmin(1) end)
    assert.has_error(function() D.zeros(3, 0):max({ 1, 2 }) end)
  end)

  it("max along a non-empty dim of an empty tensor is empty", function()
    local v, i = D.zeros(0, 3):max(2)
    H.assert_shape(v, { 0 })
    H.assert_shape(i, { 0 })
  end)
end)

describe("NaN", function()
  it("propagates through max and min, and argmax/argmin pick it", function()
    local x = D.tensor { 1, NAN, 3, -5 }
    assert.is_true(is_nan(x:max():item()))
    assert.is_true(is_nan(x:min():item()))
    assert.are.equal(2, x:argmax():item())
    assert.are.equal(2, x:argmin():item())
    local first = D.tensor { NAN, 5, 7 }
    assert.is_true(is_nan(first:max():item()))
    assert.are.equal(1, first:argmax():item())
    assert.are.equal(1, first:argmin():item())
    local last = D.tensor { 9, 5, NAN }
    assert.is_true(is_nan(last:max():item()))
    assert.are.equal(3, last:argmax():item())
    local two = D.tensor { 0, NAN, 9, NAN }
    assert.are.equal(2, two:argmax():item())
  end)

  it("propagates along a dim, per row", function()
    local x = D.tensor { { 1, NAN, 3 }, { 4, 5, 6 }, { 7, 8, NAN } }
    local v, i = x:max(2)
    H.assert_close(v, { NAN, 6, NAN })
    assert.are.same({ 2, 3, 3 }, i:totable())
    v, i = x:min(1)
    H.assert_close(v, { 1, NAN, NAN })
    assert.are.same({ 1, 1, 3 }, i:totable())
    H.assert_close(x:sum(2), { NAN, 15, NAN })
    H.assert_close(x:max({ 1, 2 }), NAN)
    assert.are.same({ 2, 3, 3 }, x:argmax(2):totable())
    assert.are.same({ 2, 1, 3 }, x:argmin(2):totable())
  end)

  it("propagates through sum, mean, var", function()
    local x = D.tensor { 1, 2, NAN }
    assert.is_true(is_nan(x:sum():item()))
    assert.is_true(is_nan(x:mean():item()))
    assert.is_true(is_nan(x:var():item()))
    assert.is_true(is_nan(x:std():item()))
  end)

  it("infinities are ordinary extremes", function()
    local x = D.tensor { 1, -INF, INF, 3 }
    assert.are.equal(INF, x:max():item())
    assert.are.equal(-INF, x:min():item())
    assert.are.equal(3, x:argmax():item())
    assert.are.equal(2, x:argmin():item())
    assert.is_true(is_nan(x:sum():item()))
  end)
end)

--- non-contiguous ----------------------------------------------------------

describe("non-contiguous inputs", function()
  local base = D.tensor(T3)

  local cases = {
    { "transposed", function() return base:transpose(1, 3) end },
    { "permuted", function() return base:permute(2, 3, 1) end },
    { "sliced with step", function() return base:slice(3, 1, -1, 2) end },
    { "narrowed", function() return base:narrow(2, 2, 2) end },
    { "expanded", function() return D.tensor { { 1.5 }, { -2 }, { 4 } }:expand(3, 5) end },
    { "selected", function() return base:select(3, 2) end },
  }

  for _, case in ipairs(cases) do
    it("match the reference on a " .. case[1] .. " view", function()
      local v = case[2]()
      assert.is_false(v:is_contiguous())
      local t = v:totable()
      for _, op in ipairs { "sum", "mean", "var", "std", "max", "min" } do
        H.assert_close(v[op](v), (ref_reduce(t, op)), 1e-5)
        for d = 1, v:dim() do
          H.assert_close(v[op](v, d), (ref_reduce(t, op, { d })), 1e-5)
        end
        if v:dim() == 3 then
          H.assert_close(v[op](v, { 1, 3 }), (ref_reduce(t, op, { 1, 3 })), 1e-5)
        end
      end
      local _, pmax = ref_reduce(t, "max")
      local _, pmin = ref_reduce(t, "min")
      assert.are.equal(pmax, v:argmax():item())
      assert.are.equal(pmin, v:argmin():item())
      for d = 1, v:dim() do
        local _, pd = ref_reduce(t, "max", { d })
        assert.are.same(pd, v:argmax(d):totable())
      end
    end)
  end

  it("argmax of a transposed matrix counts in the view's order", function()
    local x = D.tensor { { 1, 9 }, { 3, 4 } }
    assert.are.equal(2, x:argmax():item())
    assert.are.equal(3, x:t():argmax():item())
    assert.are.same({ 10, 7 }, x:t():sum(1):totable())
    assert.are.same({ 4, 13 }, x:t():sum(2):totable())
  end)

  it("an expanded tensor counts each repeated element", function()
    local e = D.tensor { 1, 2, 3 }:expand(4, 3)
    assert.are.equal(24, e:sum():item())
    assert.are.same({ 4, 8, 12 }, e:sum(1):totable())
    H.assert_close(e:var(), (ref_reduce(e:totable(), "var")))
  end)
end)

--- large tensors -----------------------------------------------------------

describe("large tensors", function()
  local saved
  before_each(function() saved = D.get_num_threads() end)
  after_each(function() D.set_num_threads(saved) end)

  local N = 2000000
  local x = (D.arange(N) * 0.001):sin() * 3 + 0.25
  local xs = x:totable()
  local dsum = 0
  for i = 1, N do dsum = dsum + xs[i] end

  it("sum matches a double-precision Lua sum within 1e-6 relative", function()
    local s = x:sum():item()
    assert.is_true(math.abs(s - dsum) <= 1e-6 * math.abs(dsum),
      string.format("sum %.10g vs Lua %.10g", s, dsum))
    local m = x:mean():item()
    assert.is_true(math.abs(m - dsum / N) <= 1e-6 * math.abs(dsum / N))
  end)

  it("a sum of many equal values does not drift", function()
    local ones = D.ones(N) * 0.1
    local expected = N * string.unpack("f", string.pack("f", 0.1))
    local s = ones:sum():item()
    assert.is_true(math.abs(s - expected) <= 1e-6 * expected, string.format("%.10g vs %.10g", s, expected))
  end)

  it("var, max, argmax match Lua on the large tensor", function()
    local mean = dsum / N
    local q, best, at = 0, -INF, 0
    for i = 1, N do
      local v = xs[i]
      q = q + (v - mean) ^ 2
      if v > best then best, at = v, i end
    end
    H.assert_close(x:var():item(), q / (N - 1), 1e-5)
    H.assert_close(x:var(nil, false, 0):item(), q / N, 1e-5)
    assert.are.equal(best, x:max():item())
    assert.are.equal(at, x:argmax():item())
  end)

  it("rows of several blocks sum right along a dim", function()
    local m = x:view(4, N // 4)
    local rows = m:sum(2):totable()
    local per = N // 4
    for r = 1, 4 do
      local s = 0
      for i = (r - 1) * per + 1, r * per do s = s + xs[i] end
      assert.is_true(math.abs(rows[r] - s) <= 1e-6 * math.max(1, math.abs(s)), string.format("row %d: %.9g vs %.9g", r, rows[r], s))
    end
    local cols = x:view(2000, 1000):sum(1)
    local c7 = 0
    for i = 7, N, 1000 do c7 = c7 + xs[i] end
    assert.is_true(math.abs(cols[7] - c7) <= 1e-5 * math.max(1, math.abs(c7)))
  end)

  it("a NaN in a late block wins max and argmax", function()
    local y = x:clone()
    y:set(NAN, 1500001)
    assert.is_true(is_nan(y:max():item()))
    assert.is_true(is_nan(y:min():item()))
    assert.are.equal(1500001, y:argmax():item())
    assert.is_true(is_nan(y:sum():item()))
  end)

  it("sums with heavy cancellation are bitwise identical at 1, 2 and 3 threads", function()
    -- v spans magnitudes 1e-13 .. 1e13; y holds v and a permutation of -v,
    -- so the exact sum is 0 and the result is the double rounding residue,
    -- which changes with any change in how the elements are grouped
    local M = 1000000
    local i = D.arange(M)
    local v = (i * 0.37):sin() * D.exp((i * 0.013):cos() * 30)
    local w = v:view(1000, 1000):t():contiguous():view(-1)
    local y = D.cat({ v, -w }, 1)
    local r = {}
    for _, n in ipairs { 1, 2, 3 } do
      D.set_num_threads(n)
      r[n] = { y:sum():item(), y:mean():item(), y:var():item(), y:view(4, M // 2):sum(2):totable(),
        y:view(M // 2, 4):sum(1):totable() }
    end
    assert.is_true(math.abs(r[1][1]) < 1e6) -- tiny against the 1e13 terms
    assert.are.same(r[1], r[2])
    assert.are.same(r[1], r[3])
  end)

  it("results are bitwise identical at 1, 2 and 3 threads", function()
    local function compute()
      local t = x:view(2000, 1000)
      return {
        x:sum():item(), x:mean():item(), x:var():item(), x:std(nil, false, 0):item(),
        x:max():item(), x:min():item(), x:argmax():item(), x:argmin():item(),
        t:sum(1):totable(), t:sum(2):totable(), t:var(1):totable(),
        x:view(4, N // 4):sum(2):totable(), t:t():mean(2):totable(),
        select(2, t:max(2)):totable(),
      }
    end
    D.set_num_threads(1)
    local one = compute()
    D.set_num_threads(2)
    local two = compute()
    D.set_num_threads(3)
    local three = compute()
    assert.are.same(one, two)
    assert.are.same(one, three)
  end)
end)
