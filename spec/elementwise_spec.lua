-- Elementwise ops: unary maps, binary ops with NumPy broadcasting, the
-- operators, in-place forms, clamp, where, and the threaded path.
local D = require "diffusion"
local H = require "helpers"

local NAN, INF = 0 / 0, math.huge

--- helpers ----------------------------------------------------------------

-- Maps f over a nested table.
local function map(t, f)
  if type(t) ~= "table" then return f(t) end
  local r = {}
  for i = 1, #t do r[i] = map(t[i], f) end
  return r
end

local function map2(a, b, f)
  if type(a) ~= "table" then return f(a, b) end
  local r = {}
  for i = 1, #a do r[i] = map2(a[i], b[i], f) end
  return r
end

-- erf by its Taylor series (accurate to ~1e-12 for |x| <= 4).
local function erf(x)
  local sum, term, n = x, x, 0
  repeat
    n = n + 1
    term = -term * x * x / n
    local add = term / (2 * n + 1)
    sum = sum + add
  until math.abs(add) < 1e-17 * math.max(1, math.abs(sum)) or n > 200
  return 2 / math.sqrt(math.pi) * sum
end

local function tanh(x)
  if x > 20 then return 1 elseif x < -20 then return -1 end
  local e = math.exp(2 * x)
  return (e - 1) / (e + 1)
end

local function sigmoid(x) return 1 / (1 + math.exp(-x)) end

local unary_ref = {
  neg = function(x) return -x end,
  abs = math.abs,
  exp = math.exp,
  log = function(x) return math.log(x) end,
  sqrt = math.sqrt,
  rsqrt = function(x) return 1 / math.sqrt(x) end,
  sin = math.sin,
  cos = math.cos,
  tanh = tanh,
  sigmoid = sigmoid,
  relu = function(x) return x > 0 and x or 0 end,
  silu = function(x) return x * sigmoid(x) end,
  gelu = function(x) return 0.5 * x * (1 + erf(x / math.sqrt(2))) end,
}
local unary_names = { "neg", "abs", "exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid", "relu", "silu", "gelu" }
local positive_only = { log = true, sqrt = true, rsqrt = true }

local GENERAL = { -4, -3, -1.5, -0.5, -0.125, 0, 0.25, 1, 2.5, 4 }
local POSITIVE = { 0.0625, 0.25, 1, 2, 6.25, 100 }

local function b2n(b) return b and 1 or 0 end
local binary_ref = {
  add = function(x, y) return x + y end,
  sub = function(x, y) return x - y end,
  mul = function(x, y) return x * y end,
  div = function(x, y) return x / y end,
  pow = function(x, y) return x ^ y end,
  maximum = function(x, y) return (x ~= x or y ~= y) and NAN or math.max(x, y) end,
  minimum = function(x, y) return (x ~= x or y ~= y) and NAN or math.min(x, y) end,
  eq = function(x, y) return b2n(x == y) end,
  ne = function(x, y) return b2n(x ~= y) end,
  lt = function(x, y) return b2n(x < y) end,
  le = function(x, y) return b2n(x <= y) end,
  gt = function(x, y) return b2n(x > y) end,
  ge = function(x, y) return b2n(x >= y) end,
}
local binary_names = { "add", "sub", "mul", "div", "pow", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge" }

local A = { { 1, -2, 3, 0.5 }, { 4, -1, 2, 0 } }
local B = { { 2, 2, -3, 0.5 }, { -4, 0.25, 2, 1 } }

--- unary -------------------------------------------------------------------

describe("unary ops", function()
  it("the erf reference itself matches known values", function()
    assert.is_true(math.abs(erf(1) - 0.8427007929497149) < 1e-12)
    assert.is_true(math.abs(erf(-0.5) + 0.5204998778130465) < 1e-12)
    assert.is_true(math.abs(erf(3) - 0.9999779095030014) < 1e-12)
  end)

  for _, name in ipairs(unary_names) do
    local input = positive_only[name] and POSITIVE or GENERAL
    local expected = map(input, unary_ref[name])

    it(name .. " as a method and as D." .. name .. " matches math.*", function()
      local x = D.tensor(input)
      local y = x[name](x)
      H.assert_shape(y, { #input })
      H.assert_close(y, expected, 1e-5)
      H.assert_close(D[name](x), expected, 1e-5)
      assert.is_false(rawequal(x, y))
      assert.are.same(input, x:totable()) -- the input is untouched
    end)

    it(name .. "_ works in place and returns the tensor itself", function()
      local x = D.tensor({ input, input })
      local r = x[name .. "_"](x)
      assert.is_true(rawequal(r, x))
      H.assert_close(x, { expected, expected }, 1e-5)
      local y = D.tensor(input)
      assert.is_true(rawequal(D[name .. "_"](y), y))
      H.assert_close(y, expected, 1e-5)
    end)

    it(name .. " propagates NaN and keeps 0-d and empty shapes", function()
      local y = D[name](D.tensor { NAN })
      assert.is_true(y[1] ~= y[1])
      local s = D[name](D.tensor(positive_only[name] and 4 or -0.5))
      assert.are.equal(0, s:dim())
      H.assert_close(s:item(), unary_ref[name](positive_only[name] and 4 or -0.5), 1e-5)
      local e = D[name](D.zeros(2, 0, 3))
      H.assert_shape(e, { 2, 0, 3 })
      assert.are.equal(0, e:numel())
    end)
  end

  it("gelu is the exact erf form, not the tanh approximation", function()
    local y = D.gelu(D.tensor { 1, -1, 2, -3 }):totable()
    H.assert_close(y, { 0.8413447460685429, -0.15865525393145707, 1.9544997361036416, -0.0040496602074654 }, 2e-6)
    -- the tanh approximation gives 0.841192 at 1: more than 1e-4 away
    assert.is_true(math.abs(y[1] - 0.8411919906082768) > 1e-4)
  end)

  it("handles infinities and out-of-domain inputs", function()
    H.assert_close(D.log(D.tensor { 0, -1, INF }), { -INF, NAN, INF })
    H.assert_close(D.sqrt(D.tensor { -1, 0, INF }), { NAN, 0, INF })
    H.assert_close(D.rsqrt(D.tensor { 0, INF, -4 }), { INF, 0, NAN })
    H.assert_close(D.exp(D.tensor { -INF, INF, 100 }), { 0, INF, INF }) -- exp(100) overflows float32
    H.assert_close(D.sigmoid(D.tensor { -INF, INF, -100, 100 }), { 0, 1, 0, 1 }, 1e-6)
    H.assert_close(D.tanh(D.tensor { -INF, INF, 30 }), { -1, 1, 1 })
    H.assert_close(D.relu(D.tensor { -INF, INF, NAN }), { 0, INF, NAN })
    H.assert_close(D.abs(D.tensor { -INF, -0.0 }), { INF, 0 })
    H.assert_close(D.neg(D.tensor { INF, 0 }), { -INF, 0 })
  end)

  it("unary minus is neg", function()
    local x = D.tensor { { 1, -2 }, { 0.5, 0 } }
    H.assert_close(-x, { { -1, 2 }, { -0.5, 0 } })
    H.assert_close(-(-x), x)
  end)

  it("rejects non-tensors", function()
    assert.has_error(function() D.exp(3) end)
    assert.has_error(function() D.exp("x") end)
  end)
end)

--- binary ------------------------------------------------------------------

describe("binary ops", function()
  for _, name in ipairs(binary_names) do
    local f = binary_ref[name]

    it(name .. ": tensor with tensor, as D." .. name .. " and as a method", function()
      local a, b = D.tensor(A), D.tensor(B)
      local expected = map2(A, B, f)
      local r = D[name](a, b)
      H.assert_shape(r, { 2, 4 })
      H.assert_close(r, expected, 1e-6)
      H.assert_close(a[name](a, b), expected, 1e-6)
      assert.are.same(A, a:totable())
      assert.are.same(B, b:totable())
    end)

    it(name .. ": tensor with number and number with tensor", function()
      local a = D.tensor(A)
      for _, s in ipairs { 2, -0.5, 0 } do
        H.assert_close(D[name](a, s), map(A, function(x) return f(x, s) end), 1e-6)
        H.assert_close(a[name](a, s), map(A, function(x) return f(x, s) end), 1e-6)
        H.assert_close(D[name](s, a), map(A, function(x) return f(s, x) end), 1e-6)
      end
    end)

    it(name .. "_ in place with a tensor, a broadcast row and a number", function()
      local x = D.tensor(A)
      local r = x[name .. "_"](x, D.tensor(B))
      assert.is_true(rawequal(r, x))
      H.assert_close(x, map2(A, B, f), 1e-6)

      local row = { 2, -1, 0.5, 3 }
      x = D.tensor(A)
      x[name .. "_"](x, D.tensor(row))
      local expected = {}
      for i = 1, 2 do
        expected[i] = {}
        for j = 1, 4 do expected[i][j] = f(A[i][j], row[j]) end
      end
      H.assert_close(x, expected, 1e-6)

      x = D.tensor(A)
      assert.is_true(rawequal(D[name .. "_"](x, 2), x))
      H.assert_close(x, map(A, function(v) return f(v, 2) end), 1e-6)
    end)
  end

  it("comparisons return 0/1 tensors of the broadcast shape", function()
    local x = D.tensor { { 1, 2, 3 }, { 3, 2, 1 } }
    local y = D.tensor { 2, 2, 2 }
    H.assert_shape(x:lt(y), { 2, 3 })
    assert.are.same({ { 1, 0, 0 }, { 0, 0, 1 } }, x:lt(y):totable())
    assert.are.same({ { 1, 1, 0 }, { 0, 1, 1 } }, x:le(y):totable())
    assert.are.same({ { 0, 0, 1 }, { 1, 0, 0 } }, x:gt(y):totable())
    assert.are.same({ { 0, 1, 1 }, { 1, 1, 0 } }, x:ge(y):totable())
    assert.are.same({ { 0, 1, 0 }, { 0, 1, 0 } }, x:eq(y):totable())
    assert.are.same({ { 1, 0, 1 }, { 1, 0, 1 } }, x:ne(y):totable())
    assert.are.same({ { 0, 0, 1 }, { 1, 0, 0 } }, D.lt(2, x):totable())
  end)

  it("comparisons with NaN: only ne is true", function()
    local x, n = D.tensor { NAN, 1 }, D.tensor { NAN, NAN }
    assert.are.same({ 0, 0 }, D.eq(x, n):totable())
    assert.are.same({ 1, 1 }, D.ne(x, n):totable())
    assert.are.same({ 0, 0 }, D.lt(x, n):totable())
    assert.are.same({ 0, 0 }, D.le(x, n):totable())
    assert.are.same({ 0, 0 }, D.gt(x, n):totable())
    assert.are.same({ 0, 0 }, D.ge(x, n):totable())
  end)

  it("maximum and minimum propagate NaN from either side", function()
    local x = D.tensor { NAN, 1, 2, NAN, -1 }
    local y = D.tensor { 1, NAN, 1, NAN, 3 }
    H.assert_close(D.maximum(x, y), { NAN, NAN, 2, NAN, 3 })
    H.assert_close(D.minimum(x, y), { NAN, NAN, 1, NAN, -1 })
    H.assert_close(D.maximum(x, 0), { NAN, 1, 2, NAN, 0 })
    H.assert_close(D.minimum(0, x), { NAN, 0, 0, NAN, -1 })
    H.assert_close(D.maximum(D.tensor { 1, 2 }, NAN), { NAN, NAN })
    local z = D.tensor { 1, NAN, 5 }
    z:maximum_(D.tensor { NAN, 0, 0 })
    H.assert_close(z, { NAN, NAN, 5 })
  end)

  it("division by zero gives infinities and NaN", function()
    H.assert_close(D.tensor { 1, -1, 0 } / 0, { INF, -INF, NAN })
    H.assert_close(D.div(1, D.tensor { 0, 4 }), { INF, 0.25 })
  end)

  it("rejects operands that are neither tensors nor numbers", function()
    local x = D.tensor { 1, 2 }
    assert.has_error(function() D.add(x, "a") end, "bad argument #2 to 'add' (add: expected a number or a Tensor, got string)")
    local ok, err = pcall(function() return x + {} end)
    assert.is_false(ok)
    assert.matches("add: expected a number or a Tensor, got table", err, 1, true)
    ok, err = pcall(D.mul, 1, 2)
    assert.is_false(ok)
    assert.matches("mul: expected at least one Tensor, got number and number", err, 1, true)
    ok, err = pcall(function() return x:sub_(true) end)
    assert.is_false(ok)
    assert.matches("sub: expected a number or a Tensor, got boolean", err, 1, true)
  end)
end)

describe("operators", function()
  local a, b = D.tensor(A), D.tensor(B)

  it("+ - * / ^ with two tensors", function()
    H.assert_close(a + b, map2(A, B, binary_ref.add))
    H.assert_close(a - b, map2(A, B, binary_ref.sub))
    H.assert_close(a * b, map2(A, B, binary_ref.mul))
    H.assert_close(a / b, map2(A, B, binary_ref.div))
    H.assert_close(a ^ b, map2(A, B, binary_ref.pow))
  end)

  it("+ - * / ^ with a number on either side", function()
    H.assert_close(a + 1.5, map(A, function(x) return x + 1.5 end))
    H.assert_close(1.5 + a, map(A, function(x) return 1.5 + x end))
    H.assert_close(a - 3, map(A, function(x) return x - 3 end))
    H.assert_close(3 - a, map(A, function(x) return 3 - x end))
    H.assert_close(a * -2, map(A, function(x) return x * -2 end))
    H.assert_close(-2 * a, map(A, function(x) return -2 * x end))
    H.assert_close(a / 4, map(A, function(x) return x / 4 end))
    H.assert_close(4 / b, map(B, function(x) return 4 / x end))
    H.assert_close(a ^ 2, map(A, function(x) return x ^ 2 end))
    H.assert_close(2 ^ a, map(A, function(x) return 2 ^ x end))
    H.assert_close(a ^ 0.5, map(A, function(x) return x ^ 0.5 end)) -- NaN for negative bases
  end)

  it("unary minus and chained expressions", function()
    H.assert_close(-a, map(A, function(x) return -x end))
    H.assert_close((a + b) * 2 - a / 2, map2(A, B, function(x, y) return (x + y) * 2 - x / 2 end))
  end)

  it("operators broadcast", function()
    local m = D.tensor { { 1, 2, 3 }, { 4, 5, 6 } }
    H.assert_close(m + D.tensor { 10, 20, 30 }, { { 11, 22, 33 }, { 14, 25, 36 } })
    H.assert_close(D.tensor { { 1 }, { 2 } } * D.tensor { 1, 2, 3 }, { { 1, 2, 3 }, { 2, 4, 6 } })
  end)
end)

--- broadcasting ------------------------------------------------------------

describe("broadcasting", function()
  it("{2,3} + {3}", function()
    local r = D.tensor { { 1, 2, 3 }, { 4, 5, 6 } } + D.tensor { 10, 20, 30 }
    H.assert_shape(r, { 2, 3 })
    assert.are.same({ { 11, 22, 33 }, { 14, 25, 36 } }, r:totable())
    local r2 = D.tensor { 10, 20, 30 } - D.tensor { { 1, 2, 3 }, { 4, 5, 6 } }
    assert.are.same({ { 9, 18, 27 }, { 6, 15, 24 } }, r2:totable())
  end)

  it("{2,1} + {1,3}", function()
    local r = D.tensor { { 1 }, { 2 } } + D.tensor { { 10, 20, 30 } }
    H.assert_shape(r, { 2, 3 })
    assert.are.same({ { 11, 21, 31 }, { 12, 22, 32 } }, r:totable())
  end)

  it("{4,1,3} + {2,1}", function()
    local a = D.arange(12):view(4, 1, 3)
    local b = D.tensor { { 100 }, { 200 } }
    local r = a + b
    H.assert_shape(r, { 4, 2, 3 })
    local expected = {}
    for i = 1, 4 do
      expected[i] = {}
      for j = 1, 2 do
        expected[i][j] = {}
        for k = 1, 3 do expected[i][j][k] = (i - 1) * 3 + (k - 1) + 100 * j end
      end
    end
    assert.are.same(expected, r:totable())
    assert.are.same(expected, (b + a):totable())
  end)

  it("a 0-d tensor with an n-d tensor, and two 0-d tensors", function()
    local s = D.tensor(5)
    local m = D.tensor { { 1, 2 }, { 3, 4 } }
    H.assert_shape(s + m, { 2, 2 })
    assert.are.same({ { 6, 7 }, { 8, 9 } }, (s + m):totable())
    assert.are.same({ { -4, -3 }, { -2, -1 } }, (m - s):totable())
    assert.are.same({ { 5, 5 }, { 5, 5 } }, D.maximum(s, m):totable())
    local z = s * D.tensor(3)
    assert.are.equal(0, z:dim())
    assert.are.equal(15, z:item())
    assert.is_true(rawequal(m:add_(s), m))
    assert.are.same({ { 6, 7 }, { 8, 9 } }, m:totable())
  end)

  it("zero-size operands", function()
    local r = D.zeros(0, 3) + D.ones(3)
    H.assert_shape(r, { 0, 3 })
    assert.are.equal(0, r:numel())
    H.assert_shape(D.ones(2, 1) * D.zeros(0), { 2, 0 })
    H.assert_shape(D.zeros(0) + D.tensor(1), { 0 })
    H.assert_shape(D.zeros(0, 1) + D.zeros(1, 0), { 0, 0 })
    assert.has_error(function() return D.zeros(0) + D.zeros(2) end)
  end)

  it("incompatible shapes fail naming both shapes", function()
    local ok, err = pcall(D.add, D.zeros(2, 3), D.zeros(2))
    assert.is_false(ok)
    assert.matches("add: shapes {2,3} and {2} cannot broadcast", err, 1, true)
    ok, err = pcall(function() return D.zeros(4, 1, 3) * D.zeros(2, 2) end)
    assert.is_false(ok)
    assert.matches("mul: shapes {4,1,3} and {2,2} cannot broadcast", err, 1, true)
  end)
end)

--- in place ----------------------------------------------------------------

describe("in-place binary ops", function()
  it("broadcast the right side over rows and columns", function()
    local x = D.tensor { { 1, 2, 3 }, { 4, 5, 6 } }
    assert.is_true(rawequal(x:add_(D.tensor { 10, 20, 30 }), x))
    assert.are.same({ { 11, 22, 33 }, { 14, 25, 36 } }, x:totable())
    x:mul_(D.tensor { { 2 }, { -1 } })
    assert.are.same({ { 22, 44, 66 }, { -14, -25, -36 } }, x:totable())
    x:sub_(D.tensor(2))
    assert.are.same({ { 20, 42, 64 }, { -16, -27, -38 } }, x:totable())
    x:div_(2)
    assert.are.same({ { 10, 21, 32 }, { -8, -13.5, -19 } }, x:totable())
  end)

  it("fail when the result shape would differ, leaving the tensor unchanged", function()
    local x = D.ones(3)
    local ok, err = pcall(x.add_, x, D.zeros(2, 3))
    assert.is_false(ok)
    assert.matches("add_: result shape {2,3} differs from the in-place tensor's {3}", err, 1, true)
    assert.are.same({ 1, 1, 1 }, x:totable())
    local y = D.ones(2, 1)
    ok, err = pcall(y.mul_, y, D.zeros(1, 3))
    assert.is_false(ok)
    assert.matches("mul_: result shape {2,3} differs from the in-place tensor's {2,1}", err, 1, true)
    assert.are.same({ { 1 }, { 1 } }, y:totable())
    local s = D.tensor(1)
    assert.has_error(function() s:add_(D.ones(2)) end)
    assert.has_error(function() D.ones(2, 3):add_(D.ones(3, 2)) end)
  end)

  it("x:add_(x:t()) on a square matrix uses the original values", function()
    local x = D.tensor { { 1, 2 }, { 3, 4 } }
    x:add_(x:t())
    assert.are.same({ { 2, 5 }, { 5, 8 } }, x:totable())

    local n = 5
    local y = D.arange(n * n):view(n, n)
    local orig = y:totable()
    y:sub_(y:t())
    local expected = {}
    for i = 1, n do
      expected[i] = {}
      for j = 1, n do expected[i][j] = orig[i][j] - orig[j][i] end
    end
    assert.are.same(expected, y:totable())

    local z = D.arange(1, 10):view(3, 3)
    orig = z:totable()
    z:mul_(z:t())
    assert.are.same({ { 1, 8, 21 }, { 8, 25, 48 }, { 21, 48, 81 } }, z:totable())
  end)

  it("an overlapping shifted view of the same storage reads the original values", function()
    local v = D.arange(6)
    v:narrow(1, 2, 5):add_(v:narrow(1, 1, 5))
    assert.are.same({ 0, 1, 3, 5, 7, 9 }, v:totable())
    local w = D.arange(6)
    w:narrow(1, 1, 5):add_(w:narrow(1, 2, 5))
    assert.are.same({ 1, 3, 5, 7, 9, 5 }, w:totable())
    local m = D.arange(6):view(2, 3)
    m:add_(m[1]) -- a row of itself, broadcast
    assert.are.same({ { 0, 2, 4 }, { 3, 5, 7 } }, m:totable())
  end)

  it("write through non-contiguous views into the base tensor", function()
    local x = D.arange(6):view(2, 3)
    x:t():add_(D.tensor { 10, 20 })
    assert.are.same({ { 10, 11, 12 }, { 23, 24, 25 } }, x:totable())
    x:slice(2, 1, 3, 2):mul_(-1)
    assert.are.same({ { -10, 11, -12 }, { -23, 24, -25 } }, x:totable())
    x:t():neg_()
    assert.are.same({ { 10, -11, 12 }, { 23, -24, 25 } }, x:totable())
    x[2]:abs_()
    assert.are.same({ { 10, -11, 12 }, { 23, 24, 25 } }, x:totable())
  end)

  it("are no-ops on zero-size tensors", function()
    local x = D.zeros(0, 3)
    assert.is_true(rawequal(x:add_(1), x))
    assert.is_true(rawequal(x:mul_(D.ones(3)), x))
    H.assert_shape(x, { 0, 3 })
    for _, shape in ipairs { { 3, 0 }, { 2, 0, 3 } } do
      local y = D.zeros(shape)
      assert.is_true(rawequal(y:add_(1), y))
      assert.is_true(rawequal(y:sub_(D.zeros(shape)), y))
      assert.is_true(rawequal(y:exp_(), y))
      assert.is_true(rawequal(y:clamp_(0, 1), y))
      H.assert_shape(y, shape)
      assert.are.equal(0, y:numel())
    end
  end)

  it("refuse to write into an expanded tensor", function()
    local e = D.zeros(3):expand(2, 3)
    local ok, err = pcall(e.add_, e, 1)
    assert.is_false(ok)
    assert.matches("expanded", err, 1, true)
    assert.has_error(function() e:exp_() end)
    assert.has_error(function() e:clamp_(0, 1) end)
    assert.has_error(function() e:mul_(D.ones(2, 3)) end)
  end)
end)

--- non-contiguous inputs ---------------------------------------------------

describe("non-contiguous inputs", function()
  local base = D.arange(1, 25):view(4, 6) * 0.25 - 3
  local views = {
    transposed = function() return base:t() end,
    ["sliced with step"] = function() return base:slice(2, 1, -1, 2) end,
    ["sliced on both dims"] = function() return base:slice(1, 2, -1, 2):slice(2, 2, -1, 3) end,
    narrowed = function() return base:narrow(2, 2, 3) end,
    selected = function() return base:select(2, 3) end,
    expanded = function() return D.tensor { -1.5, 0.5, 2, 3.25 }:view(4, 1):expand(4, 5) end,
    permuted = function() return D.arange(24):view(2, 3, 4):permute(3, 1, 2) * 0.1 end,
  }
  local order = { "transposed", "sliced with step", "sliced on both dims", "narrowed", "selected", "expanded", "permuted" }

  for _, vname in ipairs(order) do
    it("unary ops on a " .. vname .. " view match the contiguous result", function()
      local v = views[vname]()
      if vname ~= "permuted" then assert.is_false(v:is_contiguous()) end
      local c = v:contiguous()
      assert.is_true(c:is_contiguous())
      for _, name in ipairs { "neg", "abs", "exp", "sin", "tanh", "sigmoid", "relu", "silu", "gelu" } do
        local r = D[name](v)
        assert.is_true(r:is_contiguous())
        assert.are.same(c:shape(), r:shape())
        H.assert_close(r, D[name](c), 1e-6)
        H.assert_close(r, map(c:totable(), unary_ref[name]), 1e-5)
      end
      H.assert_close(D.sqrt(D.abs(v)), map(c:totable(), function(x) return math.sqrt(math.abs(x)) end), 1e-5)
    end)

    it("binary ops and clamp on a " .. vname .. " view match the contiguous result", function()
      local v = views[vname]()
      local c = v:contiguous()
      local w = D.cos(c) -- contiguous, same shape
      for _, name in ipairs(binary_names) do
        H.assert_close(D[name](v, w), D[name](c, w), 1e-6)
        H.assert_close(D[name](w, v), D[name](w, c), 1e-6)
        H.assert_close(D[name](v, v), D[name](c, c), 1e-6)
        H.assert_close(D[name](v, 0.75), D[name](c, 0.75), 1e-6)
      end
      H.assert_close(v:clamp(-1, 1), c:clamp(-1, 1))
      H.assert_close(D.where(v:gt(0), v, w), D.where(c:gt(0), c, w))
    end)
  end

  it("two transposed operands", function()
    local x = D.arange(6):view(2, 3)
    local y = D.arange(10, 16):view(2, 3)
    assert.are.same({ { 10, 16 }, { 12, 18 }, { 14, 20 } }, (x:t() + y:t()):totable())
  end)
end)

--- clamp -------------------------------------------------------------------

describe("clamp", function()
  local vals = { -3, -1, 0, 0.5, 2, 5, NAN, -INF, INF }

  it("clamps to both bounds, NaN stays NaN", function()
    local x = D.tensor(vals)
    H.assert_close(x:clamp(-1, 2), { -1, -1, 0, 0.5, 2, 2, NAN, -1, 2 })
    H.assert_close(D.clamp(x, -1, 2), { -1, -1, 0, 0.5, 2, 2, NAN, -1, 2 })
    H.assert_close(x, vals) -- untouched
  end)

  it("takes one bound when the other is nil", function()
    local x = D.tensor(vals)
    H.assert_close(x:clamp(nil, 2), { -3, -1, 0, 0.5, 2, 2, NAN, -INF, 2 })
    H.assert_close(x:clamp(-1), { -1, -1, 0, 0.5, 2, 5, NAN, -1, INF })
    H.assert_close(x:clamp(-1, nil), { -1, -1, 0, 0.5, 2, 5, NAN, -1, INF })
    H.assert_close(x:clamp(), vals)
    H.assert_close(x:clamp(0.5, 0.5), { 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, NAN, 0.5, 0.5 })
  end)

  it("rejects bounds with min > max or NaN", function()
    local x = D.tensor { 1, 2 }
    local ok, err = pcall(x.clamp, x, 2, -1)
    assert.is_false(ok)
    assert.matches("clamp: bounds must satisfy min <= max", err, 1, true)
    assert.has_error(function() x:clamp(NAN, 1) end)
    assert.has_error(function() x:clamp(0, NAN) end)
    assert.has_error(function() x:clamp(NAN) end)
    assert.has_error(function() x:clamp_(3, 1) end)
    assert.has_error(function() x:clamp("a", 1) end)
    assert.are.same({ 1, 2 }, x:totable())
  end)

  it("clamp_ works in place and returns the tensor", function()
    local x = D.tensor { { -2, 0.25 }, { 7, NAN } }
    assert.is_true(rawequal(x:clamp_(-1, 1), x))
    H.assert_close(x, { { -1, 0.25 }, { 1, NAN } })
    local y = D.tensor { -2, 3 }
    D.clamp_(y, nil, 0)
    assert.are.same({ -2, 0 }, y:totable())
    local m = D.arange(6):view(2, 3)
    m:t():clamp_(1, 4)
    assert.are.same({ { 1, 1, 2 }, { 3, 4, 4 } }, m:totable())
  end)
end)

--- where -------------------------------------------------------------------

describe("where", function()
  local cond = D.tensor { { 1, 0, 1 }, { 0, 0, 2 } }
  local a = D.tensor { { 1, 2, 3 }, { 4, 5, 6 } }
  local b = D.tensor { { -1, -2, -3 }, { -4, -5, -6 } }

  it("picks from a where cond is nonzero, else from b", function()
    assert.are.same({ { 1, -2, 3 }, { -4, -5, 6 } }, D.where(cond, a, b):totable())
    assert.are.same({ { 1, -2, 3 }, { -4, -5, 6 } }, cond:where(a, b):totable())
  end)

  it("accepts numbers for either branch", function()
    assert.are.same({ { 1, 0, 3 }, { 0, 0, 6 } }, D.where(cond, a, 0):totable())
    assert.are.same({ { 7, -2, 7 }, { -4, -5, 7 } }, D.where(cond, 7, b):totable())
    local r = D.where(cond, 7, 8)
    H.assert_shape(r, { 2, 3 })
    assert.are.same({ { 7, 8, 7 }, { 8, 8, 7 } }, r:totable())
  end)

  it("broadcasts cond and both branches together", function()
    local r = D.where(D.tensor { 1, 0, 1 }, D.tensor { { 10 }, { 20 } }, D.tensor(-1))
    H.assert_shape(r, { 2, 3 })
    assert.are.same({ { 10, -1, 10 }, { 20, -1, 20 } }, r:totable())
    local r2 = D.where(D.tensor { { 1 }, { 0 } }, D.tensor { 1, 2, 3 }, D.tensor { -1, -2, -3 })
    assert.are.same({ { 1, 2, 3 }, { -1, -2, -3 } }, r2:totable())
    local x = D.tensor { -2, 0.5, NAN, 3 }
    H.assert_close(D.where(x:gt(0), x, 0), { 0, 0.5, 0, 3 })
  end)

  it("treats NaN as a nonzero condition", function()
    assert.are.same({ 1, 2 }, D.where(D.tensor { NAN, 0 }, 1, 2):totable())
  end)

  it("fails on shapes that don't broadcast or bad branches", function()
    local ok, err = pcall(D.where, D.ones(2), D.ones(3), 0)
    assert.is_false(ok)
    assert.matches("where: shapes {2} and {3} cannot broadcast", err, 1, true)
    assert.has_error(function() D.where(D.ones(2), D.ones(2), D.ones(3)) end)
    assert.has_error(function() D.where(D.ones(2), "x", 1) end)
    assert.has_error(function() D.where(1, 2, 3) end)
  end)
end)

--- the threaded path -------------------------------------------------------

describe("large tensors (threaded path)", function()
  local saved
  before_each(function() saved = D.get_num_threads() end)
  after_each(function() D.set_num_threads(saved) end)

  local N = 300007
  local function sample_positions(n)
    local pos = { 1, 2, n - 1, n }
    for i = 3, n - 2, 7919 do pos[#pos + 1] = i end
    local mid = n // 2
    for i = mid - 3, mid + 3 do pos[#pos + 1] = i end
    return pos
  end

  it("unary ops match math.* at sampled positions", function()
    local x = D.linspace(-4, 4, N)
    local xs = x:totable()
    for _, name in ipairs { "exp", "sin", "tanh", "sigmoid", "gelu", "silu", "relu", "abs" } do
      local y = D[name](x)
      H.assert_shape(y, { N })
      for _, i in ipairs(sample_positions(N)) do
        local e = unary_ref[name](xs[i])
        assert.is_true(H.close(y[i], e, 1e-5), string.format("%s at %d: expected %.9g, got %.9g", name, i, e, y[i]))
      end
    end
  end)

  it("binary ops with broadcasting match a Lua loop at sampled positions", function()
    local rows, cols = 600, 503
    local m = D.linspace(-1, 1, rows * cols):view(rows, cols)
    local v = D.linspace(0.5, 2, cols)
    local col = D.linspace(-3, 3, rows):view(rows, 1)
    local r1, r2, r3 = m * v, m + col, D.pow(v, col)
    for _, i in ipairs { 1, 2, 97, 300, 599, 600 } do
      for _, j in ipairs { 1, 2, 250, 502, 503 } do
        local mv, vv, cv = m:get(i, j), v[j], col:get(i, 1)
        assert.is_true(H.close(r1:get(i, j), H.f32(mv * vv), 1e-6))
        assert.is_true(H.close(r2:get(i, j), H.f32(mv + cv), 1e-6))
        assert.is_true(H.close(r3:get(i, j), vv ^ cv, 1e-5))
      end
    end
  end)

  it("in-place ops and aliasing transposes are right on large matrices", function()
    local n = 400
    local x = D.linspace(0, 1, n * n):view(n, n)
    local orig = x:clone()
    x:add_(x:t())
    for _, i in ipairs { 1, 2, 77, 200, 399, 400 } do
      for _, j in ipairs { 1, 3, 150, 400 } do
        local e = H.f32(orig:get(i, j) + orig:get(j, i))
        assert.are.equal(e, x:get(i, j))
      end
    end
    local y = D.linspace(-2, 2, N)
    local ys = y:totable()
    y:mul_(3):add_(1)
    for _, i in ipairs(sample_positions(N)) do
      assert.are.equal(H.f32(H.f32(ys[i] * 3) + 1), y[i])
    end
  end)

  it("gives bitwise equal results with 1 and 2 threads", function()
    local function compute()
      local x = D.linspace(-3, 3, N)
      local m = D.linspace(-1, 1, 700 * 500):view(700, 500)
      return {
        D.gelu(x):totable(),
        D.exp(x):totable(),
        (x * 1.7 + x:sin()):totable(),
        D.maximum(m, m:t():contiguous():view(700, 500)):view(-1):totable(),
        (m + D.linspace(0, 1, 500)):view(-1):totable(),
        D.exp(m:t()):contiguous():view(-1):totable(),
        m:t():clamp(-0.5, 0.5):view(-1):totable(),
      }
    end
    D.set_num_threads(1)
    local one = compute()
    D.set_num_threads(2)
    local two = compute()
    for k = 1, #one do
      assert.are.equal(#one[k], #two[k])
      local diff = 0
      for i = 1, #one[k] do
        if one[k][i] ~= two[k][i] then diff = diff + 1 end
      end
      assert.are.equal(0, diff, "result " .. k .. " differs at " .. diff .. " positions")
    end
  end)

  it("non-contiguous large inputs match their contiguous copies", function()
    local m = D.linspace(-2, 2, 600 * 500):view(600, 500)
    local t = m:t()
    local c = t:contiguous()
    local r1, r2 = D.sin(t), D.sin(c)
    local s1 = (t + m:t()):totable()
    local s2 = (c + c):totable()
    for _, i in ipairs { 1, 2, 250, 499, 500 } do
      for _, j in ipairs { 1, 2, 300, 599, 600 } do
        assert.are.equal(r2:get(i, j), r1:get(i, j))
        assert.are.equal(s2[i][j], s1[i][j])
        assert.is_true(H.close(r1:get(i, j), math.sin(m:get(j, i)), 1e-6))
      end
    end
    local st = m:slice(2, 1, -1, 3)
    local sr = D.exp(st)
    local sc = D.exp(st:contiguous())
    assert.are.same(sc:shape(), sr:shape())
    for _, i in ipairs { 1, 300, 600 } do
      for _, j in ipairs { 1, 84, 167 } do assert.are.equal(sc:get(i, j), sr:get(i, j)) end
    end
  end)
end)
