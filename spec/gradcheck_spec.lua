-- Gradient checks: D.gradcheck (central differences against autograd) for
-- the backward of every differentiable foundation op over several shapes,
-- each with its own tolerance; every check is also run with that op's
-- backward scaled by 1.1 (D._debug_corrupt_backward) and must then fail, so
-- no check here passes by being too loose. Inputs are seeded and kept away
-- from kinks (abs, relu, maximum, clamp, max), ties and domain edges (log,
-- sqrt, division by small numbers).
local D = require "diffusion"
local H = require "helpers"

--- inputs -------------------------------------------------------------------

local seed = 0
local function gen()
  seed = seed + 1
  return D.Generator(seed)
end

local function randn(shape) return D.randn(shape, gen()) end

-- uniform in [lo, hi)
local function uniform(shape, lo, hi) return D.rand(shape, gen()) * (hi - lo) + lo end

-- |x| uniform in [lo, hi) with a random sign: away from 0 (the kink of abs and relu)
local function away(shape, lo, hi)
  local sign = D.randint(0, 2, shape, gen()) * 2 - 1
  return uniform(shape, lo, hi) * sign
end

local function numel(shape)
  local n = 1
  for _, s in ipairs(shape) do n = n * s end
  return n
end

-- A shuffled grid of values offset + k * spacing (k = -n/2 .. about n/2):
-- no ties, and every gap far wider than the finite-difference step, so
-- max/min/maximum/clamp never switch sides under it.
local function grid(shape, spacing, offset)
  local n = numel(shape)
  local values = {}
  for i = 1, n do values[i] = (i - 1 - n // 2) * spacing + (offset or 0) end
  local state = 12345 + seed
  seed = seed + 1
  for i = n, 2, -1 do -- Fisher-Yates with a fixed LCG
    state = (state * 1103515245 + 12345) % 2147483648
    local j = state % i + 1
    values[i], values[j] = values[j], values[i]
  end
  return D.tensor(values):reshape(shape)
end

--- cases ----------------------------------------------------------------------

-- check(name, op, fn, inputs, tol): one `it` that gradchecks fn at inputs with
-- tol = {eps, atol, rtol, wrt}, and one that scales op's backward by 1.1 and
-- requires the check to fail.
local function check(name, op, fn, inputs, tol)
  it(name, function()
    local ok, report = D.gradcheck(fn, inputs, tol)
    assert.is_true(ok, name .. ": " .. report)
  end)
  it(name .. " (fails with " .. op .. "'s backward scaled by 1.1)", function()
    finally(function() D._debug_corrupt_backward() end)
    D._debug_corrupt_backward(op, 1.1)
    local ok, report = D.gradcheck(fn, inputs, tol)
    assert.is_false(ok, name .. " passed with a corrupted backward: " .. report)
  end)
end

local TIGHT = { eps = 1e-2, atol = 1e-3, rtol = 1e-3 }

--- the checker itself -------------------------------------------------------

describe("gradcheck itself", function()
  local x = randn { 3, 4 }
  local sigmoid = function(a) return a:sigmoid() end

  it("passes a correct backward", function()
    local ok, report = D.gradcheck(sigmoid, { x }, TIGHT)
    assert.is_true(ok, report)
  end)

  it("fails when sigmoid's backward is scaled by 1.1, and passes again after the reset", function()
    finally(function() D._debug_corrupt_backward() end)
    D._debug_corrupt_backward("sigmoid", 1.1)
    local ok, report = D.gradcheck(sigmoid, { x }, TIGHT)
    assert.is_false(ok)
    assert.is_truthy(report:find("autograd", 1, true), report)
    assert.is_truthy(report:find("finite differences", 1, true), report)
    D._debug_corrupt_backward()
    ok, report = D.gradcheck(sigmoid, { x }, TIGHT)
    assert.is_true(ok, report)
  end)

  it("also fails for a corrupted binary op (mul, div), for either input, and passes after the reset", function()
    finally(function() D._debug_corrupt_backward() end)
    local a, b = randn { 2, 3 }, away({ 2, 3 }, 0.5, 2)
    local mul = function(p, q) return p * q end
    local div = function(p, q) return p / q end
    for _, c in ipairs { { "mul", mul }, { "div", div } } do
      for wrt = 1, 2 do
        local tol = { eps = 1e-2, atol = 1e-3, rtol = 1e-3, wrt = { wrt } }
        D._debug_corrupt_backward(c[1], 1.1)
        local ok = D.gradcheck(c[2], { a, b }, tol)
        assert.is_false(ok, c[1] .. " input " .. wrt)
        D._debug_corrupt_backward()
        local report
        ok, report = D.gradcheck(c[2], { a, b }, tol)
        assert.is_true(ok, c[1] .. " input " .. wrt .. ": " .. report)
      end
    end
  end)

  it("corrupting one op leaves the others' checks passing", function()
    finally(function() D._debug_corrupt_backward() end)
    D._debug_corrupt_backward("sigmoid", 1.1)
    local ok, report = D.gradcheck(function(a) return a:tanh() end, { x }, TIGHT)
    assert.is_true(ok, report)
  end)

  it("reports the worst element", function()
    finally(function() D._debug_corrupt_backward() end)
    D._debug_corrupt_backward("exp", 2)
    local ok, report = D.gradcheck(function(a) return a:exp() end, { D.tensor { 0, 0, 3 } }, TIGHT)
    assert.is_false(ok)
    assert.is_truthy(report:find("input 1 element 3", 1, true), report)
  end)

  it("leaves the caller's inputs untouched and not requiring grad", function()
    local a = D.tensor { 1, 2, 3 }
    D.gradcheck(function(p) return p * p end, { a })
    assert.are.same({ 1, 2, 3 }, a:totable())
    assert.is_false(a.requires_grad)
    assert.is_nil(a.grad)
  end)
end)

--- unary ----------------------------------------------------------------------

describe("gradcheck of unary ops", function()
  local shapes = { { 5 }, { 2, 3 }, { 2, 3, 2 }, {} }
  -- inputs per op: anything, away from 0, or positive
  local unary = {
    { "neg", randn, TIGHT },
    { "abs", function(s) return away(s, 0.1, 2) end, TIGHT },
    { "exp", function(s) return uniform(s, -2, 2) end, TIGHT },
    { "log", function(s) return uniform(s, 0.5, 3) end, TIGHT },
    { "sqrt", function(s) return uniform(s, 0.5, 3) end, TIGHT },
    { "rsqrt", function(s) return uniform(s, 0.5, 3) end, TIGHT },
    { "sin", function(s) return uniform(s, -3, 3) end, TIGHT },
    { "cos", function(s) return uniform(s, -3, 3) end, TIGHT },
    { "tanh", function(s) return uniform(s, -2, 2) end, TIGHT },
    { "sigmoid", function(s) return uniform(s, -4, 4) end, TIGHT },
    { "relu", function(s) return away(s, 0.1, 2) end, TIGHT },
    { "silu", function(s) return uniform(s, -4, 4) end, TIGHT },
    { "gelu", function(s) return uniform(s, -3, 3) end, TIGHT },
  }
  for _, u in ipairs(unary) do
    local op, make, tol = u[1], u[2], u[3]
    for _, shape in ipairs(shapes) do
      check(op .. " " .. H.shape_string(shape), op, function(a) return a[op](a) end, { make(shape) }, tol)
    end
    -- through the method, the D.function and on a non-contiguous input
    check(op .. " of a transposed input", op, function(a) return D[op](a:t()) end, { make { 3, 2 } }, tol)
  end
  check("unary minus", "neg", function(a) return -a end, { randn { 2, 3 } }, TIGHT)
end)

--- binary -----------------------------------------------------------------------

describe("gradcheck of binary ops", function()
  -- operand pairs: same shape, {2,3}+{3}, {2,1}+{1,3}, {4,1,3}+{2,1}, with a 0-d on either side
  local pairs_ = { { { 2, 3 }, { 2, 3 } }, { { 2, 3 }, { 3 } }, { { 2, 1 }, { 1, 3 } }, { { 4, 1, 3 }, { 2, 1 } },
                   { { 2, 3 }, {} }, { {}, { 3 } }, { {}, {} } }
  -- how to make each operand: a, b
  local binary = {
    { "add", randn, randn, function(a, b) return a + b end, TIGHT },
    { "sub", randn, randn, function(a, b) return a - b end, TIGHT },
    { "mul", randn, randn, function(a, b) return a * b end, TIGHT },
    { "div", randn, function(s) return away(s, 0.5, 2) end, function(a, b) return a / b end,
      { eps = 1e-2, atol = 2e-3, rtol = 2e-3 } },
    { "pow", function(s) return uniform(s, 0.5, 2) end, function(s) return uniform(s, -2, 2) end,
      function(a, b) return a ^ b end, { eps = 1e-2, atol = 2e-3, rtol = 2e-3 } },
    -- a on the grid k/2, b on k/2 + 1/4: every pair differs by at least 1/4
    { "maximum", function(s) return grid(s, 0.5) end, function(s) return grid(s, 0.5, 0.25) end,
      function(a, b) return a:maximum(b) end, TIGHT },
    { "minimum", function(s) return grid(s, 0.5) end, function(s) return grid(s, 0.5, 0.25) end,
      function(a, b) return D.minimum(a, b) end, TIGHT },
  }
  for _, c in ipairs(binary) do
    local op, make_a, make_b, fn, tol = c[1], c[2], c[3], c[4], c[5]
    for _, p in ipairs(pairs_) do
      local a, b = make_a(p[1]), make_b(p[2])
      check(op .. " " .. H.shape_string(p[1]) .. " with " .. H.shape_string(p[2]), op, fn, { a, b }, tol)
    end
  end

  -- broadcasting where each side is expanded and both need grad
  check("mul {3,1} with {1,4} (both broadcast)", "mul", function(a, b) return a * b end,
    { randn { 3, 1 }, randn { 1, 4 } }, TIGHT)
  check("maximum {2,1} with {1,3} (no ties)", "maximum", function(a, b) return a:maximum(b) end,
    { D.tensor { { -3 }, { 3 } }, D.tensor { { -1, 0.5, 2 } } }, TIGHT)
  check("minimum {2,1} with {1,3} (no ties)", "minimum", function(a, b) return a:minimum(b) end,
    { D.tensor { { -3 }, { 3 } }, D.tensor { { -1, 0.5, 2 } } }, TIGHT)
  -- only one input differentiated
  check("div, gradient for the denominator only", "div", function(a, b) return a / b end,
    { randn { 2, 3 }, away({ 3 }, 0.5, 2) }, { eps = 1e-2, atol = 2e-3, rtol = 2e-3, wrt = { 2 } })
end)

describe("gradcheck of binary ops with a number", function()
  local shapes = { { 4 }, { 2, 3 }, {} }
  for _, shape in ipairs(shapes) do
    local s = H.shape_string(shape)
    check("x + 2 " .. s, "add", function(a) return a + 2 end, { randn(shape) }, TIGHT)
    check("2 + x " .. s, "add", function(a) return 2 + a end, { randn(shape) }, TIGHT)
    check("x - 2 " .. s, "sub", function(a) return a - 2 end, { randn(shape) }, TIGHT)
    check("2 - x " .. s, "sub", function(a) return 2 - a end, { randn(shape) }, TIGHT)
    check("x * 2 " .. s, "mul", function(a) return a * 2 end, { randn(shape) }, TIGHT)
    check("2 * x " .. s, "mul", function(a) return 2 * a end, { randn(shape) }, TIGHT)
    check("x / 2 " .. s, "div", function(a) return a / 2 end, { randn(shape) }, TIGHT)
    check("2 / x " .. s, "div", function(a) return 2 / a end, { away(shape, 0.5, 2) },
      { eps = 1e-2, atol = 5e-3, rtol = 2e-3 })
    check("x ^ 3 " .. s, "pow", function(a) return a ^ 3 end, { uniform(shape, -2, 2) }, TIGHT)
    check("x ^ 0.5 " .. s, "pow", function(a) return a ^ 0.5 end, { uniform(shape, 0.5, 3) }, TIGHT)
    check("2 ^ x " .. s, "pow", function(a) return 2 ^ a end, { uniform(shape, -2, 2) }, TIGHT)
    -- the grids k/2 + 0.55 and k/2 - 0.45 stay 0.25 from 0.3 (and a 0-d
    -- input, k = 0, sits on the side where the gradient flows)
    check("maximum(x, 0.3) " .. s, "maximum", function(a) return a:maximum(0.3) end, { grid(shape, 0.5, 0.55) }, TIGHT)
    check("minimum(0.3, x) " .. s, "minimum", function(a) return D.minimum(0.3, a) end, { grid(shape, 0.5, -0.45) },
      TIGHT)
  end
end)

--- clamp and where ---------------------------------------------------------------

describe("gradcheck of clamp", function()
  -- the grid k * 0.1 + 0.05 keeps every value 0.05 from the bounds ±0.5
  local function near(shape) return grid(shape, 0.1, 0.05) end
  for _, shape in ipairs { { 12 }, { 3, 4 }, { 2, 3, 2 } } do
    local s = H.shape_string(shape)
    check("clamp(x, -0.5, 0.5) " .. s, "clamp", function(a) return a:clamp(-0.5, 0.5) end, { near(shape) }, TIGHT)
    check("clamp(x, -0.5) " .. s, "clamp", function(a) return a:clamp(-0.5) end, { near(shape) }, TIGHT)
    check("clamp(x, nil, 0.5) " .. s, "clamp", function(a) return a:clamp(nil, 0.5) end, { near(shape) }, TIGHT)
  end
  check("clamp of a 0-d tensor inside the bounds", "clamp", function(a) return D.clamp(a, -1, 1) end,
    { D.tensor(0.25) }, TIGHT)
end)

describe("gradcheck of where", function()
  local function mask(shape) return D.randint(0, 2, shape, gen()) end
  local function w(c) return function(a, b) return D.where(c, a, b) end end
  local cond = mask { 2, 3 }
  check("where, same shapes", "where", w(cond), { randn { 2, 3 }, randn { 2, 3 } }, TIGHT)
  check("where, a broadcast {3}", "where", w(cond), { randn { 3 }, randn { 2, 3 } }, TIGHT)
  check("where, b broadcast {2,1}", "where", w(cond), { randn { 2, 3 }, randn { 2, 1 } }, TIGHT)
  check("where, cond {2,1} broadcast against a {3}, b {}", "where", w(mask { 2, 1 }), { randn { 3 }, randn {} },
    TIGHT)
  check("where, cond {3} with a and b {2,3}", "where", w(D.tensor { 1, 0, 1 }), { randn { 2, 3 }, randn { 2, 3 } },
    TIGHT)
  check("where with a number for b", "where", function(a) return D.where(cond, a, 0.5) end, { randn { 2, 3 } }, TIGHT)
  check("where with a number for a", "where", function(b) return D.where(cond, -1, b) end, { randn { 2, 3 } }, TIGHT)
  check("where, only the first branch differentiated", "where", w(cond), { randn { 2, 3 }, randn { 2, 3 } },
    { eps = 1e-2, atol = 1e-3, rtol = 1e-3, wrt = { 1 } })
end)

--- reductions -------------------------------------------------------------------

describe("gradcheck of reductions", function()
  -- dims: nil (all), one dim, several, negative; keepdim both ways
  local variants = {
    { "all", nil, false },
    { "dim 1", 1, false },
    { "dim -1 keepdim", -1, true },
    { "dims {1,3}", { 1, 3 }, false },
    { "dims {3,2} keepdim", { 3, 2 }, true },
    { "dims {1,2,3}", { 1, 2, 3 }, false },
  }
  local shape = { 2, 3, 4 }
  for _, op in ipairs { "sum", "mean" } do
    for _, v in ipairs(variants) do
      check(op .. " " .. v[1], op, function(a) return a[op](a, v[2], v[3]) end, { randn(shape) }, TIGHT)
    end
    check(op .. " of a 1-d tensor", op, function(a) return a[op](a) end, { randn { 5 } }, TIGHT)
    check(op .. " of a 0-d tensor", op, function(a) return a[op](a) end, { randn {} }, TIGHT)
    check(op .. " of a transposed tensor over dim 2", op, function(a) return a:t()[op](a:t(), 2) end,
      { randn { 3, 4 } }, TIGHT)
  end
  for _, op in ipairs { "var", "std" } do
    for _, correction in ipairs { 0, 1 } do
      for _, v in ipairs(variants) do
        check(op .. " " .. v[1] .. " correction " .. correction, op,
          function(a) return a[op](a, v[2], v[3], correction) end, { randn(shape) }, TIGHT)
      end
    end
    check(op .. " of a 1-d tensor (default correction)", op, function(a) return a[op](a) end, { randn { 6 } }, TIGHT)
  end
  for _, op in ipairs { "max", "min" } do
    -- values 0.25 apart: no ties, nothing moves past a neighbour under eps
    check(op .. " over all", op, function(a) return a[op](a) end, { grid(shape, 0.25) }, TIGHT)
    check(op .. " over dims {1,3}", op, function(a) return a[op](a, { 1, 3 }) end, { grid(shape, 0.25) }, TIGHT)
    check(op .. " over dims {2,3} keepdim", op, function(a) return a[op](a, { 2, 3 }, true) end,
      { grid(shape, 0.25) }, TIGHT)
    -- one dim: the values (first result) of max(dim) / min(dim)
    for _, d in ipairs { 1, 2, -1 } do
      check(op .. "(dim " .. d .. ") values", op, function(a) return (a[op](a, d)) end, { grid(shape, 0.25) },
        TIGHT)
    end
    check(op .. "(dim 2, keepdim) values", op, function(a)
      local values = a[op](a, 2, true)
      return values
    end, { grid(shape, 0.25) }, TIGHT)
    check(op .. " of a 1-d tensor", op, function(a) return a[op](a) end, { grid({ 7 }, 0.25) }, TIGHT)
  end
end)

--- matmul -------------------------------------------------------------------------

describe("gradcheck of matmul", function()
  local mm = function(a, b) return a:matmul(b) end
  local cases = {
    { { 3, 4 }, { 4, 2 } },
    { { 1, 3 }, { 3, 1 } },
    { { 2, 3, 4 }, { 2, 4, 5 } },
    { { 2, 1, 3, 2 }, { 3, 2, 2 } }, -- batch dims broadcast: {2,1} with {3}
    { { 3, 4 }, { 2, 4, 3 } },       -- a matrix against a batch
    { { 2, 3, 4 }, { 4, 2 } },
    { { 4 }, { 4, 3 } },             -- vector cases
    { { 3, 4 }, { 4 } },
    { { 4 }, { 4 } },
    { { 2, 3, 4 }, { 4 } },
    { { 4 }, { 2, 4, 3 } },
  }
  for _, c in ipairs(cases) do
    check("matmul " .. H.shape_string(c[1]) .. " x " .. H.shape_string(c[2]), "matmul", mm, { randn(c[1]), randn(c[2]) }, TIGHT)
  end
  check("matmul of transposed operands", "matmul", function(a, b) return a:t():matmul(b:t()) end,
    { randn { 4, 3 }, randn { 2, 4 } }, TIGHT)
  check("matmul with a non-BLAS layout (a slice with step)", "matmul",
    function(a, b) return a:slice(2, 1, -1, 2):matmul(b) end, { randn { 3, 8 }, randn { 4, 2 } }, TIGHT)
  check("matmul of a tensor with itself", "matmul", function(a) return a:matmul(a) end, { randn { 3, 3 } }, TIGHT)
  check("matmul, gradient for b only", "matmul", mm, { randn { 3, 4 }, randn { 4, 2 } },
    { eps = 1e-2, atol = 1e-3, rtol = 1e-3, wrt = { 2 } })
end)

--- views, clone, cat, stack -------------------------------------------------------

describe("gradcheck of views", function()
  -- each result is multiplied by a fixed non-uniform tensor inside gradcheck
  -- (sum(y * r)), so a gradient routed to the wrong element is caught
  local x234 = function() return randn { 2, 3, 4 } end
  local cases = {
    { "view {6,4}", "view", function(a) return a:view(6, 4) end },
    { "view {-1}", "view", function(a) return a:view(-1) end },
    { "view {4,-1} as a table", "view", function(a) return a:view { 4, -1 } end },
    { "reshape {3,8}", "view", function(a) return a:reshape(3, 8) end },
    { "reshape of a transposed tensor (copies)", "clone", function(a) return a:transpose(1, 3):reshape(4, 6) end },
    { "reshape of a transposed tensor (view node)", "view", function(a) return a:transpose(1, 3):reshape(-1) end },
    { "transpose(1, 3)", "transpose", function(a) return a:transpose(1, 3) end },
    { "transpose(-1, 2)", "transpose", function(a) return a:transpose(-1, 2) end },
    { "permute(3, 1, 2)", "permute", function(a) return a:permute(3, 1, 2) end },
    { "permute{2, 3, 1}", "permute", function(a) return a:permute { 2, 3, 1 } end },
    { "narrow(2, 2, 2)", "slice", function(a) return a:narrow(2, 2, 2) end },
    { "narrow(-1, 1, 3)", "slice", function(a) return a:narrow(-1, 1, 3) end },
    { "slice(3, 1, -1, 2)", "slice", function(a) return a:slice(3, 1, -1, 2) end },
    { "slice(2, 2, 3)", "slice", function(a) return a:slice(2, 2, 3) end },
    { "slice(1, 2, 2, 3)", "slice", function(a) return a:slice(1, 2, 2, 3) end },
    { "select(2, 3)", "select", function(a) return a:select(2, 3) end },
    { "select(-1, 1)", "select", function(a) return a:select(-1, 1) end },
    { "x[2] (select)", "select", function(a) return a[2] end },
    { "unsqueeze(1)", "unsqueeze", function(a) return a:unsqueeze(1) end },
    { "unsqueeze(-1)", "unsqueeze", function(a) return a:unsqueeze(-1) end },
    { "flatten", "view", function(a) return a:flatten() end },
    { "flatten of a permuted tensor", "clone", function(a) return a:permute(2, 3, 1):flatten() end },
    { "contiguous of a transposed tensor", "clone", function(a) return a:transpose(1, 2):contiguous() end },
    { "clone", "clone", function(a) return a:clone() end },
    { "expand with new leading dims", "expand", function(a) return a:expand(3, 2, 3, 4) end },
    { "chained views", "select",
      function(a) return a:transpose(1, 3):slice(1, 1, -1, 2):select(3, 2):unsqueeze(1) end },
  }
  for _, c in ipairs(cases) do check(c[1], c[2], c[3], { x234() }, TIGHT) end

  check("squeeze() of {2,1,3,1}", "squeeze", function(a) return a:squeeze() end, { randn { 2, 1, 3, 1 } }, TIGHT)
  check("squeeze(2) of {2,1,3,1}", "squeeze", function(a) return a:squeeze(2) end, { randn { 2, 1, 3, 1 } }, TIGHT)
  check("squeeze(-1) of {2,1,3,1}", "squeeze", function(a) return a:squeeze(-1) end, { randn { 2, 1, 3, 1 } }, TIGHT)
  check("t of a {3,4}", "transpose", function(a) return a:t() end, { randn { 3, 4 } }, TIGHT)
  check("expand {3,1} to {3,4}", "expand", function(a) return a:expand(3, 4) end, { randn { 3, 1 } }, TIGHT)
  check("expand {1,3} to {2,2,3}", "expand", function(a) return a:expand { 2, 2, 3 } end, { randn { 1, 3 } }, TIGHT)
  check("expand with -1", "expand", function(a) return a:expand(-1, 5) end, { randn { 2, 1 } }, TIGHT)
  check("expand_as", "expand", function(a) return a:expand_as(D.zeros(4, 2, 3)) end, { randn { 2, 1 } }, TIGHT)
  check("expand of a 0-d tensor", "expand", function(a) return a:expand(2, 3) end, { randn {} }, TIGHT)
  check("view of a 0-d tensor as {1,1}", "view", function(a) return a:view(1, 1) end, { randn {} }, TIGHT)
  check("view of a {1} as 0-d", "view", function(a) return a:view {} end, { randn { 1 } }, TIGHT)
  check("expanded then used by an op", "expand", function(a) return a:expand(3, 4):sigmoid() end,
    { randn { 3, 1 } }, TIGHT)
  check("a view used twice", "select", function(a) return a:select(1, 1) * a:select(1, 2) end, { randn { 2, 3 } },
    TIGHT)
end)

describe("gradcheck of cat and stack", function()
  local cat = function(dim) return function(...) return D.cat({ ... }, dim) end end
  local stack = function(dim) return function(...) return D.stack({ ... }, dim) end end
  check("cat of {2,3},{1,3},{3,3} along dim 1", "cat", cat(1), { randn { 2, 3 }, randn { 1, 3 }, randn { 3, 3 } }, TIGHT)
  check("cat of {2,3},{2,1} along dim 2", "cat", cat(2), { randn { 2, 3 }, randn { 2, 1 } }, TIGHT)
  check("cat of {2,2,3},{2,2,1} along dim -1", "cat", cat(-1), { randn { 2, 2, 3 }, randn { 2, 2, 1 } }, TIGHT)
  check("cat of {2,1,2},{2,3,2} along dim 2", "cat", cat(2), { randn { 2, 1, 2 }, randn { 2, 3, 2 } }, TIGHT)
  check("cat along the default dim", "cat", cat(), { randn { 2, 3 }, randn { 2, 3 } }, TIGHT)
  check("cat of a tensor with itself", "cat", function(a) return D.cat({ a, a:exp() }, 1) end, { randn { 2, 2 } },
    TIGHT)
  check("cat, only the second input differentiated", "cat", cat(1), { randn { 2, 3 }, randn { 1, 3 } },
    { eps = 1e-2, atol = 1e-3, rtol = 1e-3, wrt = { 2 } })
  check("cat of transposed inputs", "cat", function(a, b) return D.cat({ a:t(), b }, 2) end,
    { randn { 2, 3 }, randn { 3, 1 } }, TIGHT)
  for _, dim in ipairs { 1, 2, 3, -1 } do
    check("stack of three {2,3} along dim " .. dim, "stack", stack(dim), { randn { 2, 3 }, randn { 2, 3 }, randn { 2, 3 } },
      TIGHT)
  end
  check("stack of 0-d tensors", "stack", stack(1), { randn {}, randn {}, randn {} }, TIGHT)
  check("stack, only the first input differentiated", "stack", stack(2), { randn { 3 }, randn { 3 } },
    { eps = 1e-2, atol = 1e-3, rtol = 1e-3, wrt = { 1 } })
end)

--- strided and expanded inputs ---------------------------------------------------

describe("gradcheck of ops on expanded (stride-0) and strided inputs", function()
  check("var across the rows of an expanded tensor", "var", function(a) return a:expand(3, 4):var(1) end,
    { randn { 3, 1 } }, TIGHT)
  check("std over all of an expanded tensor", "std", function(a) return a:expand(2, 3):std() end, { randn { 1, 3 } },
    TIGHT)
  -- the copies of one element tie for the maximum: their even shares sum back to 1
  check("max(dim) of an expanded tensor (ties between copies)", "max", function(a) return (a:expand(2, 3):max(1)) end,
    { randn { 1, 3 } }, TIGHT)
  check("matmul with an expanded matrix", "matmul", function(a, b) return a:expand(3, 4):matmul(b) end,
    { randn { 3, 1 }, randn { 4, 2 } }, TIGHT)
  check("matmul with an expanded batch", "matmul", function(a, b) return a:expand(2, 3, 4):matmul(b) end,
    { randn { 3, 4 }, randn { 2, 4, 2 } }, TIGHT)
  check("matmul with inner dim 1", "matmul", function(a, b) return a:matmul(b) end, { randn { 3, 1 }, randn { 1, 2 } },
    TIGHT)
  check("cat of an expanded and a transposed tensor", "cat", function(a, b) return D.cat({ a:expand(2, 3), b:t() }, 1) end,
    { randn { 1, 3 }, randn { 3, 2 } }, TIGHT)
  check("stack of an expanded tensor", "stack", function(a, b) return D.stack({ a:expand(3), b }, 2) end,
    { randn { 1 }, randn { 3 } }, TIGHT)
  check("reshape of an expanded tensor (copies)", "clone", function(a) return a:expand(2, 3):reshape(6) end,
    { randn { 1, 3 } }, TIGHT)
  check("select of an expanded tensor", "select", function(a) return a:expand(4, 3):select(1, 2) end, { randn { 3 } },
    TIGHT)
  check("a slice of a slice with steps", "slice", function(a) return a:slice(1, 2, -1, 2):slice(1, 1, -1, 2) end,
    { randn { 9 } }, TIGHT)
end)

--- compositions -------------------------------------------------------------------

describe("gradcheck of compositions", function()
  check("a small MLP layer: tanh(x W + b)", "matmul",
    function(x, w, b) return (x:matmul(w) + b):tanh() end, { randn { 3, 4 }, randn { 4, 2 }, randn { 2 } }, TIGHT)
  check("softmax from primitives", "exp", function(x)
    local e = (x - x:max(2, true)):exp()
    return e / e:sum(2, true)
  end, { grid({ 2, 4 }, 0.3) }, TIGHT)
  check("layer norm from primitives", "rsqrt", function(x)
    local mu = x:mean(-1, true)
    return (x - mu) * (x:var(-1, true, 0) + 1e-5):rsqrt()
  end, { randn { 3, 5 } }, { eps = 1e-2, atol = 2e-3, rtol = 2e-3 })
  check("a tensor reused through several paths", "mul", function(x) return x * x:sin() + x:t():t() * 3 end,
    { randn { 2, 3 } }, TIGHT)
end)
