-- The autograd engine (csrc/autograd/engine.c) as seen from Lua: hand-computed
-- gradients, accumulation, views, detach, grad mode (no_grad,
-- set_grad_enabled), backward's arguments and errors, retain_graph, in-place
-- checks on leaves and on saved tensors, the requires_grad / grad / is_leaf /
-- grad_fn fields, long chains and memory. Gradients of each op over many
-- shapes are checked numerically in gradcheck_spec.lua.
local D = require "diffusion"
local H = require "helpers"

--- helpers --------------------------------------------------------------------

-- H.assert_close with this file's default tolerance, 1e-6
local function assert_close(actual, expected, tol) H.assert_close(actual, expected, tol or 1e-6) end

local function run_child(code) return H.try_child("", code) end

--- gradients by hand ------------------------------------------------------------

describe("backward computes", function()
  it("y = x * x: grad 2x", function()
    local x = H.leaf { 1, -2, 3 }
    local y = x * x
    y:sum():backward()
    assert_close(x.grad, { 2, -4, 6 })
  end)

  it("grads of a 0-d leaf", function()
    local x = D.tensor(3):requires_grad_()
    ;(x * x * x):backward()
    assert_close(x.grad, 27)
    assert.are.same({}, x.grad:shape())
  end)

  it("a tensor used twice gets both contributions: y = x * x + x gives 2x + 1", function()
    local x = H.leaf { 1, -2, 3 }
    ;(x * x + x):sum():backward()
    assert_close(x.grad, { 3, -3, 7 })
  end)

  it("a non-leaf used twice (its node has two edges into one node)", function()
    -- in a child process: releasing such a graph has crashed (see "releasing graphs")
    local ok, out = run_child [[
      local D = require "diffusion"
      local x = D.tensor { 1, 2 }:requires_grad_()
      local h = x * 3 -- dh/dx = 3
      ;(h * h):sum():backward() -- d/dh = 2h = 6x, times 3
      print(x.grad[1], x.grad[2])
      h = nil
      collectgarbage()
      collectgarbage()
      print("done")
    ]]
    assert.is_true(ok, "the child failed:\n" .. out)
    assert.are.equal("18.0\t36.0\ndone\n", out)
  end)

  it("gradients accumulate across two backward calls", function()
    local x = H.leaf { 1, -2, 3 }
    ;(x * x + x):sum():backward()
    ;(x * x + x):sum():backward()
    assert_close(x.grad, { 6, -6, 14 })
    ;(x * 10):sum():backward()
    assert_close(x.grad, { 16, 4, 24 })
  end)

  it("the chain rule through several ops: sum(exp(3x))", function()
    local x = H.leaf { 0, 1, -1 }
    ;(x * 3):exp():sum():backward()
    assert_close(x.grad, { 3, 3 * math.exp(3), 3 * math.exp(-3) }, 1e-5)
  end)

  it("both inputs of a binary op, with broadcasting summed back", function()
    local a = H.leaf { { 1, 2, 3 }, { 4, 5, 6 } } -- {2,3}
    local b = H.leaf { 10, 20, 30 } -- {3}, broadcast over the rows
    ;(a * b):sum():backward()
    assert_close(a.grad, { { 10, 20, 30 }, { 10, 20, 30 } })
    assert_close(b.grad, { 5, 7, 9 })
    local c = H.leaf { { 1 }, { 2 } } -- {2,1}
    local d = D.tensor(2):requires_grad_() -- 0-d
    ;(c - d):sum():backward()
    assert_close(c.grad, { { 1 }, { 1 } })
    assert.are.same({ 2, 1 }, c.grad:shape())
    assert_close(d.grad, -2)
  end)

  it("matmul: dA = G Bt and dB = At G", function()
    local a = H.leaf { { 1, 2 }, { 3, 4 } }
    local b = H.leaf { { 5 }, { 6 } }
    a:matmul(b):sum():backward()
    assert_close(a.grad, { { 5, 6 }, { 5, 6 } })
    assert_close(b.grad, { { 4 }, { 6 } })
  end)

  it("sum, mean and var over a dim", function()
    local x = H.leaf { { 1, 2, 3 }, { 4, 5, 9 } }
    x:sum(2):backward(D.tensor { 1, 2 })
    assert_close(x.grad, { { 1, 1, 1 }, { 2, 2, 2 } })
    x.grad = nil
    x:mean(1):sum():backward()
    assert_close(x.grad, { { 0.5, 0.5, 0.5 }, { 0.5, 0.5, 0.5 } })
    x.grad = nil
    x:var(2):sum():backward() -- 2 (x - mean) / (n - 1): means 2 and 6
    assert_close(x.grad, { { -1, 0, 1 }, { -2, -1, 3 } })
  end)

  it("max and min over all elements share the gradient between ties", function()
    local x = H.leaf { 1, 5, 2, 5 }
    x:max():backward()
    assert_close(x.grad, { 0, 0.5, 0, 0.5 })
    x.grad = nil
    x:min():backward()
    assert_close(x.grad, { 1, 0, 0, 0 })
  end)

  it("max(dim) sends each row's gradient to its maximum (ties: 1 in all over the tied places)", function()
    local x = H.leaf { { 1, 7, 3 }, { 4, 4, 2 } }
    local values, indices = x:max(2)
    assert.is_false(indices.requires_grad)
    values:backward(D.tensor { 10, 20 })
    local g = x.grad:totable()
    assert_close(g[1], { 0, 10, 0 })
    assert.are.equal(0, g[2][3])
    assert_close(g[2][1] + g[2][2], 20)
  end)

  it("maximum and minimum split ties evenly", function()
    local a, b = H.leaf { 1, 2, 3 }, H.leaf { 3, 2, 1 }
    a:maximum(b):sum():backward()
    assert_close(a.grad, { 0, 0.5, 1 })
    assert_close(b.grad, { 1, 0.5, 0 })
  end)

  it("clamp passes the gradient inside the bounds, bounds included", function()
    local x = H.leaf { -2, -1, 0, 1, 2 }
    x:clamp(-1, 1):sum():backward()
    assert_close(x.grad, { 0, 1, 1, 1, 0 })
  end)

  it("relu and abs have gradient 0 at 0", function()
    local x = H.leaf { -1, 0, 2 }
    ;(x:relu() + x:abs()):sum():backward()
    assert_close(x.grad, { -1, 0, 2 })
  end)

  it("pow at a zero base: d/dx x^2 = 0 and d/dy 0^y = 0 (not NaN)", function()
    local x, y = H.leaf { 0, 3 }, H.leaf { 2, 2 }
    ;(x ^ y):sum():backward()
    assert_close(x.grad, { 0, 6 })
    assert_close(y.grad, { 0, 9 * math.log(3) }, 1e-5)
  end)

  it("where sends the gradient to the branch each element came from", function()
    local a, b = H.leaf { 1, 2, 3 }, H.leaf { 4 }
    D.where(D.tensor { 1, 0, 1 }, a, b):sum():backward()
    assert_close(a.grad, { 1, 0, 1 })
    assert_close(b.grad, { 1 })
  end)

  it("cat and stack hand each input its part", function()
    local a, b = H.leaf { 1, 2 }, H.leaf { 3 }
    ;(D.cat { a, b } * D.tensor { 10, 20, 30 }):sum():backward()
    assert_close(a.grad, { 10, 20 })
    assert_close(b.grad, { 30 })
    local c, d = H.leaf { 1, 2 }, H.leaf { 3, 4 }
    ;(D.stack({ c, d }, 2) * D.tensor { { 1, 2 }, { 3, 4 } }):sum():backward()
    assert_close(c.grad, { 1, 3 })
    assert_close(d.grad, { 2, 4 })
  end)

  it("only into inputs that require grad", function()
    local x, c = H.leaf { 1, 2 }, D.tensor { 3, 4 }
    ;(x * c):sum():backward()
    assert_close(x.grad, { 3, 4 })
    assert.is_nil(c.grad)
  end)

  it("nothing into a leaf the result doesn't depend on", function()
    local x, unused = H.leaf { 1 }, H.leaf { 2 }
    local _ = unused * 2
    ;(x * 2):sum():backward()
    assert.is_nil(unused.grad)
  end)
end)

--- views --------------------------------------------------------------------------

describe("gradients through views", function()
  it("a sum of a slice: ones in the slice, zeros elsewhere", function()
    local x = H.leaf { { 1, 2, 3, 4 }, { 5, 6, 7, 8 }, { 9, 10, 11, 12 } }
    x:slice(2, 2, 3):sum():backward()
    assert_close(x.grad, { { 0, 1, 1, 0 }, { 0, 1, 1, 0 }, { 0, 1, 1, 0 } })
    x.grad = nil
    x:slice(1, 1, -1, 2):slice(2, 2, 4, 2):sum():backward() -- rows 1, 3; columns 2, 4
    assert_close(x.grad, { { 0, 1, 0, 1 }, { 0, 0, 0, 0 }, { 0, 1, 0, 1 } })
  end)

  it("select, x[i] and narrow", function()
    local x = H.leaf { { 1, 2, 3 }, { 4, 5, 6 } }
    ;(x[2] * D.tensor { 1, 2, 3 }):sum():backward()
    assert_close(x.grad, { { 0, 0, 0 }, { 1, 2, 3 } })
    x.grad = nil
    x:select(2, 3):sum():backward()
    assert_close(x.grad, { { 0, 0, 1 }, { 0, 0, 1 } })
    x.grad = nil
    x:narrow(2, 1, 2):sum():backward()
    assert_close(x.grad, { { 1, 1, 0 }, { 1, 1, 0 } })
  end)

  it("overlapping views accumulate", function()
    local x = H.leaf { 1, 2, 3 }
    ;(x:narrow(1, 1, 2):sum() + x:narrow(1, 2, 2):sum() * 10):backward()
    assert_close(x.grad, { 1, 11, 10 })
  end)

  it("transpose, permute and a copying reshape route each element back", function()
    local x = H.leaf { { 1, 2, 3 }, { 4, 5, 6 } }
    local w = D.tensor { { 1, 2 }, { 3, 4 }, { 5, 6 } }
    ;(x:t() * w):sum():backward()
    assert_close(x.grad, { { 1, 3, 5 }, { 2, 4, 6 } })
    x.grad = nil
    ;(x:t():reshape(6) * D.tensor { 1, 2, 3, 4, 5, 6 }):sum():backward() -- x:t() flat is 1 4 2 5 3 6
    assert_close(x.grad, { { 1, 3, 5 }, { 2, 4, 6 } })
    x.grad = nil
    local y = H.leaf { { { 1, 2 } }, { { 3, 4 } } } -- {2,1,2}
    ;(y:permute(3, 1, 2):squeeze(3) * D.tensor { { 1, 2 }, { 3, 4 } }):sum():backward()
    assert_close(y.grad, { { { 1, 3 } }, { { 2, 4 } } })
  end)

  it("expand sums the gradient back over the expanded dims", function()
    local x = H.leaf { { 1 }, { 2 } }
    ;(x:expand(2, 3) * D.tensor { { 1, 2, 3 }, { 4, 5, 6 } }):sum():backward()
    assert_close(x.grad, { { 6 }, { 15 } })
    local s = D.tensor(1):requires_grad_()
    s:expand(2, 2):sum():backward()
    assert_close(s.grad, 4)
  end)

  it("views of a leaf are not leaves and require grad", function()
    local x = H.leaf { 1, 2, 3, 4 }
    local v = x:view(2, 2)
    assert.is_true(v.requires_grad)
    assert.is_false(v.is_leaf)
    assert.are.equal("view", v.grad_fn)
    assert.is_true(v:same_storage(x))
    v:sum():backward()
    assert.is_nil(v.grad)
    assert_close(x.grad, { 1, 1, 1, 1 })
  end)
end)

--- empty tensors ------------------------------------------------------------------

describe("gradients of empty tensors", function()
  it("have the empty shape", function()
    local x = D.zeros(0, 3):requires_grad_()
    x:exp():sum():backward()
    assert.are.same({ 0, 3 }, x.grad:shape())
    local y = D.zeros(2, 0):requires_grad_()
    y:sum(2):sum():backward()
    assert.are.same({ 2, 0 }, y.grad:shape())
  end)

  it("matmul with an empty inner dim gives zero gradients of the right shapes", function()
    local a, b = D.zeros(2, 0):requires_grad_(), D.zeros(0, 3):requires_grad_()
    a:matmul(b):sum():backward()
    assert.are.same({ 2, 0 }, a.grad:shape())
    assert.are.same({ 0, 3 }, b.grad:shape())
    local c, d = D.zeros(0, 2):requires_grad_(), D.ones(2, 3):requires_grad_()
    c:matmul(d):sum():backward()
    assert.are.same({ 0, 2 }, c.grad:shape())
    assert_close(d.grad, { { 0, 0, 0 }, { 0, 0, 0 } })
  end)

  it("an empty piece of a cat, an empty slice, an empty operand of a broadcast", function()
    local a, b = D.zeros(0, 3):requires_grad_(), H.leaf { { 1, 2, 3 } }
    D.cat({ a, b }):sum():backward()
    assert.are.same({ 0, 3 }, a.grad:shape())
    assert_close(b.grad, { { 1, 1, 1 } })
    local c = H.leaf { 1, 2, 3 }
    c:slice(1, 3, 2):sum():backward()
    assert_close(c.grad, { 0, 0, 0 })
    local e, f = D.ones(0, 3):requires_grad_(), H.leaf { 1, 2, 3 }
    ;(e * f):sum():backward()
    assert_close(f.grad, { 0, 0, 0 })
  end)
end)

--- detach -------------------------------------------------------------------------

describe("detach", function()
  it("gives a leaf sharing storage that doesn't require grad", function()
    local x = H.leaf { 1, 2 }
    local y = x * 2
    local d = y:detach()
    assert.is_false(d.requires_grad)
    assert.is_true(d.is_leaf)
    assert.is_nil(d.grad_fn)
    assert.is_true(d:same_storage(y))
    assert_close(d, { 2, 4 })
    assert.is_false(D.detach(x).requires_grad)
  end)

  it("cuts the graph: x * x:detach() has gradient x, not 2x", function()
    local x = H.leaf { 1, -2, 3 }
    ;(x * x:detach()):sum():backward()
    assert_close(x.grad, { 1, -2, 3 })
  end)

  it("a graph built only on detached tensors doesn't require grad", function()
    local x = H.leaf { 1, 2 }
    local y = (x:detach() * 3):exp()
    assert.is_false(y.requires_grad)
    assert.is_nil(y.grad_fn)
    H.assert_error_matching("does not require grad", function() y:sum():backward() end)
  end)

  it("can be written in place, and the writes show in the original", function()
    local x = H.leaf { 1, 2 }
    local d = x:detach()
    d:add_(1)
    assert_close(x, { 2, 3 })
  end)
end)

--- grad mode ----------------------------------------------------------------------

describe("no_grad and set_grad_enabled", function()
  it("no_grad records nothing", function()
    local x = H.leaf { 1, 2, 3 }
    local y, v = D.no_grad(function()
      assert.is_false(D.is_grad_enabled())
      return x * 2, x:view(3, 1)
    end)
    assert.is_true(D.is_grad_enabled())
    for _, t in ipairs { y, v } do
      assert.is_false(t.requires_grad)
      assert.is_nil(t.grad_fn)
      assert.is_true(t.is_leaf)
    end
    H.assert_error_matching("does not require grad", function() y:sum():backward() end)
  end)

  it("no_grad passes arguments and returns every result, nils included", function()
    local a, b, c, n = D.no_grad(function(p, q) return p, nil, q, select("#", p, q) end, 1, 2)
    assert.are.equal(1, a)
    assert.is_nil(b)
    assert.are.equal(2, c)
    assert.are.equal(2, n)
    assert.are.equal(3, select("#", D.no_grad(function() return 1, nil, nil end)))
  end)

  it("no_grad restores the mode after an error inside and passes the error on", function()
    local err = H.error_of(D.no_grad, function() error("boom inside") end)
    assert.is_truthy(err:find("boom inside", 1, true), err)
    assert.is_true(D.is_grad_enabled())
    err = H.error_of(D.no_grad, function() return D.ones(2) + D.ones(3) end)
    assert.is_truthy(err:find("cannot broadcast", 1, true), err)
    assert.is_true(D.is_grad_enabled())
    -- nested in a disabled region: restored to disabled
    local previous = D.set_grad_enabled(false)
    finally(function() D.set_grad_enabled(true) end)
    assert.is_true(previous)
    H.error_of(D.no_grad, function() error("again") end)
    assert.is_false(D.is_grad_enabled())
  end)

  it("set_grad_enabled switches recording and returns the previous mode", function()
    finally(function() D.set_grad_enabled(true) end)
    local x = H.leaf { 1, 2 }
    assert.is_true(D.set_grad_enabled(false))
    assert.is_false(D.is_grad_enabled())
    local y = x * x
    assert.is_false(y.requires_grad)
    assert.is_false(D.set_grad_enabled(false))
    assert.is_false(D.set_grad_enabled(true))
    local z = x * x
    assert.is_true(z.requires_grad)
    assert.are.equal("mul", z.grad_fn)
    H.assert_error_matching("boolean expected", D.set_grad_enabled, 1)
    H.assert_error_matching("boolean expected", D.set_grad_enabled)
  end)

  it("backward inside no_grad still runs the recorded graph and keeps the mode", function()
    local x = H.leaf { 1, 2 }
    local y = (x * x):sum()
    D.no_grad(function()
      y:backward()
      assert.is_false(D.is_grad_enabled())
    end)
    assert_close(x.grad, { 2, 4 })
  end)

  it("in-place ops on a leaf that requires grad are allowed inside no_grad (an optimizer step)", function()
    local x = H.leaf { 1, 2 }
    ;(x * x):sum():backward()
    D.no_grad(function() x:sub_(x.grad * 0.5) end)
    assert_close(x, { 0, 0 })
    assert.is_true(x.requires_grad)
    assert.is_true(x.is_leaf)
  end)
end)

--- backward's arguments and errors ------------------------------------------------

describe("backward", function()
  it("on a non-scalar without a gradient errors with a clear message", function()
    local x = H.leaf { 1, 2, 3 }
    local err = H.error_of(function() (x * 2):backward() end)
    assert.is_truthy(err:find("a gradient must be given for a non-scalar tensor of shape {3}", 1, true), err)
    assert.is_nil(x.grad)
  end)

  it("takes an explicit gradient", function()
    local x = H.leaf { 1, 2, 3 }
    local g = D.tensor { 1, 0.5, -1 }
    ;(x * x):backward(g)
    assert_close(x.grad, { 2, 2, -6 })
    assert_close(g, { 1, 0.5, -1 }) -- untouched
    local m = H.leaf { { 1, 2 }, { 3, 4 } }
    m:t():backward(D.tensor { { 1, 2 }, { 3, 4 } })
    assert_close(m.grad, { { 1, 3 }, { 2, 4 } })
  end)

  it("copies the explicit gradient: changing it afterwards changes no grad", function()
    local x = H.leaf { 1, 2 }
    local g = D.tensor { 5, 6 }
    x:clone():backward(g)
    g:fill_(0)
    assert_close(x.grad, { 5, 6 })
    assert.is_false(x.grad:same_storage(g))
  end)

  it("takes the explicit gradient's values only, never its graph: grads don't require grad", function()
    local g = D.tensor { 1, 2, 3 }:requires_grad_()
    local roots = {
      function(x) return x end, -- a leaf root: its grad is the seed itself
      function(x) return x * 2 end,
      function(x) return x:clone() end,
    }
    for i, root in ipairs(roots) do
      local x = H.leaf { 1, 1, 1 }
      root(x):backward(g)
      assert.is_false(x.grad.requires_grad, "root " .. i)
      assert.is_nil(x.grad.grad_fn, "root " .. i)
      assert.is_true(x.grad.is_leaf, "root " .. i)
    end
    assert.is_nil(g.grad)
  end)

  it("rejects a gradient of the wrong shape or type", function()
    local x = H.leaf { 1, 2, 3 }
    H.assert_error_matching("gradient of shape {2} given for a tensor of shape {3}", function() (x * 2):backward(D.ones(2)) end)
    H.assert_error_matching("gradient of shape {1} given for a tensor of shape {}", function() x:sum():backward(D.ones(1)) end)
    H.assert_error_matching("diffusion.Tensor expected", function() (x * 2):backward(1) end)
    assert.is_nil(x.grad)
  end)

  it("on a leaf seeds its own gradient", function()
    local x = D.tensor(2):requires_grad_()
    x:backward()
    x:backward()
    assert_close(x.grad, 2)
    local v = H.leaf { 1, 2 }
    v:backward(D.tensor { 3, 4 })
    assert_close(v.grad, { 3, 4 })
  end)

  it("on a tensor that doesn't require grad errors", function()
    H.assert_error_matching("backward: the tensor does not require grad", function() D.tensor { 1 }:backward() end)
    H.assert_error_matching("does not require grad", function() (D.ones(2) * 3):sum():backward() end)
    local x = H.leaf { 1 }
    H.assert_error_matching("does not require grad", function() (x:gt(0)):sum():backward() end)
  end)

  it("twice without retain_graph errors (the graph was freed)", function()
    local x = H.leaf { 1, 2 }
    local y = (x * x):sum()
    y:backward()
    local err = H.error_of(function() y:backward() end)
    assert.is_truthy(err:find("freed", 1, true), err)
    assert.is_truthy(err:find("retain_graph", 1, true), err)
    assert_close(x.grad, { 2, 4 }) -- the failed call added nothing
    assert.is_true(D.is_grad_enabled())
  end)

  it("a graph freed through a shared part errors for the other result too", function()
    local x = H.leaf { 1, 2 }
    local h = x:exp()
    local a, b = h:sum(), (h * 2):sum()
    a:backward()
    H.assert_error_matching("freed", function() b:backward() end)
  end)

  it("twice with retain_graph works and accumulates; the last call may free it", function()
    local x = H.leaf { 1, 2 }
    local y = (x * x):sum()
    y:backward(nil, true)
    y:backward(nil, true)
    assert_close(x.grad, { 4, 8 })
    y:backward(D.tensor(0.5), true)
    assert_close(x.grad, { 5, 10 })
    y:backward()
    assert_close(x.grad, { 7, 14 })
    H.assert_error_matching("freed", function() y:backward() end)
  end)

  it("keeps working after the root's Lua value is gone", function()
    local x = H.leaf { 1, 2 }
    do
      local y = (x * 3):sum()
      y:backward()
    end
    collectgarbage()
    assert_close(x.grad, { 3, 3 })
  end)
end)

--- in-place checks --------------------------------------------------------------

describe("in-place ops and autograd", function()
  local INPLACE = "in%-place operation on a tensor that requires grad"

  it("on a leaf that requires grad error and change nothing", function()
    local x = H.leaf { 1, 2, 3 }
    local writes = {
      function() x:add_(1) end,
      function() x:mul_(D.tensor { 2, 2, 2 }) end,
      function() x:exp_() end,
      function() x:clamp_(0, 1) end,
      function() x:fill_(0) end,
      function() x:zero_() end,
      function() x:copy_(D.zeros(3)) end,
      function() x[1] = 5 end,
      function() x:set(5, 2) end,
      function() x:uniform_() end,
    }
    for i, write in ipairs(writes) do
      local err = H.error_of(write)
      assert.is_truthy(err:find(INPLACE), "write " .. i .. ": " .. err)
    end
    assert_close(x, { 1, 2, 3 })
  end)

  it("on a result that requires grad error too", function()
    local x = H.leaf { 1, 2, 3 }
    local y = x * 2
    H.assert_error_matching(INPLACE, function() y:add_(1) end)
    H.assert_error_matching(INPLACE, function() y:view(3, 1):fill_(1) end)
  end)

  it("on a saved tensor (inside no_grad) make backward error", function()
    local x = H.leaf { 1, 2, 3 }
    local y = x:exp() -- exp saves its output
    local s = y:sum()
    D.no_grad(function() y:add_(1) end)
    local err = H.error_of(function() s:backward() end)
    assert.is_truthy(err:find("modified in place", 1, true), err)
    assert.is_truthy(err:find("'exp'", 1, true), err)
    assert.is_true(D.is_grad_enabled())
  end)

  it("on a saved input that doesn't require grad make backward error", function()
    local x = H.leaf { 1, 2, 3 }
    local w = D.tensor { 1, 1, 1 }
    local s = (x * w):sum()
    w:mul_(2) -- allowed: w doesn't require grad, but mul saved it
    H.assert_error_matching("modified in place", function() s:backward() end)
  end)

  it("through another view of the saved storage are caught too", function()
    local x = H.leaf { 1, 2, 3, 4 }
    local y = x:sigmoid()
    local s = y:sum()
    y:detach():view(2, 2)[1]:fill_(0)
    H.assert_error_matching("modified in place", function() s:backward() end)
  end)

  it("on a tensor nothing saved don't block backward", function()
    local x = H.leaf { 1, 2, 3 }
    local s = x:view(3, 1):sum() -- view and sum save nothing
    D.no_grad(function() x:add_(1) end)
    s:backward()
    assert_close(x.grad, { 1, 1, 1 })
  end)
end)

--- fields -------------------------------------------------------------------------

describe("requires_grad, is_leaf, grad_fn and grad", function()
  it("requires_grad_ sets the flag on a leaf and returns the tensor", function()
    local x = D.ones(2)
    assert.is_false(x.requires_grad)
    assert.is_true(x.is_leaf)
    assert.are.equal(x, x:requires_grad_())
    assert.is_true(x.requires_grad)
    x:requires_grad_(false)
    assert.is_false(x.requires_grad)
    x.requires_grad = true
    assert.is_true(x.requires_grad)
    x.requires_grad = false
    assert.is_false(x.requires_grad)
    assert.is_true(D.requires_grad_(x).requires_grad)
  end)

  it("requires_grad must be a boolean", function()
    local x = D.ones(2)
    H.assert_error_matching("requires_grad: expected a boolean, got number", function() x.requires_grad = 1 end)
    H.assert_error_matching("requires_grad: expected a boolean, got nil", function() x.requires_grad = nil end)
  end)

  it("a computed tensor's requires_grad cannot be turned off", function()
    local x = H.leaf { 1, 2 }
    local y = x * 2
    assert.is_true(y.requires_grad)
    assert.is_false(y.is_leaf)
    H.assert_error_matching("only leaves can stop requiring grad", function() y.requires_grad = false end)
    H.assert_error_matching("only leaves can stop requiring grad", function() y:requires_grad_(false) end)
    assert.is_true(y.requires_grad)
    y.requires_grad = true -- already on: fine
    y:sum():backward()
    assert_close(x.grad, { 2, 2 })
  end)

  it("results require grad exactly when an input does", function()
    local x, c = H.leaf { 1, 2 }, D.tensor { 3, 4 }
    assert.is_false((c * c).requires_grad)
    assert.is_nil((c * c).grad_fn)
    assert.is_true((c * x).requires_grad)
    assert.is_true((c + x:sum()).requires_grad)
    assert.is_true(D.cat({ c, x }).requires_grad)
    assert.is_true(D.where(D.tensor { 1, 0 }, c, x).requires_grad)
  end)

  it("grad_fn names the op that made the tensor", function()
    local x = H.leaf { { 1, 2 }, { 3, 4 } }
    local names = {
      mul = x * 2, add = x + x, sub = 1 - x, div = x / 2, pow = x ^ 2, neg = -x, exp = x:exp(),
      maximum = x:maximum(0), clamp = x:clamp(0, 1), where = D.where(x:gt(2), x, 0),
      sum = x:sum(), mean = x:mean(1), var = x:var(), max = x:max(), min = (x:min(2)),
      matmul = x:matmul(x), view = x:view(4), transpose = x:t(), permute = x:permute(2, 1),
      slice = x:narrow(1, 1, 1), select = x[1], squeeze = x:view(1, 4):squeeze(), unsqueeze = x:unsqueeze(1),
      expand = x:view(1, 2, 2):expand(2, 2, 2), clone = x:clone(), cat = D.cat { x, x }, stack = D.stack { x, x },
    }
    for name, t in pairs(names) do
      assert.are.equal(name, t.grad_fn, name)
      assert.is_false(t.is_leaf, name)
    end
    assert.is_nil(x.grad_fn)
    assert.are.equal("clone", x:t():contiguous().grad_fn)
  end)

  it("grad is nil until a backward, then has the leaf's shape", function()
    local x = H.leaf { { 1, 2, 3 } }
    assert.is_nil(x.grad)
    x:sum():backward()
    assert.are.same({ 1, 3 }, x.grad:shape())
    assert.is_false(x.grad.requires_grad)
    assert.is_true(x.grad:is_contiguous())
  end)

  it("grad stays nil on non-leaves", function()
    local x = H.leaf { 1, 2 }
    local y = x * 3
    y:sum():backward()
    assert.is_nil(y.grad)
  end)

  it("x.grad = nil clears it, and the next backward starts from zero", function()
    local x = H.leaf { 1, 2 }
    ;(x * 3):sum():backward()
    assert_close(x.grad, { 3, 3 })
    x.grad = nil
    assert.is_nil(x.grad)
    ;(x * 5):sum():backward()
    assert_close(x.grad, { 5, 5 })
  end)

  it("x.grad = t sets it and backward accumulates onto it", function()
    local x = H.leaf { 1, 2 }
    x.grad = D.tensor { 10, 20 }
    assert_close(x.grad, { 10, 20 })
    ;(x * 3):sum():backward()
    assert_close(x.grad, { 13, 23 })
  end)

  it("x.grad must have the tensor's shape", function()
    local x = H.leaf { 1, 2 }
    H.assert_error_matching("grad: the gradient must have the tensor's shape", function() x.grad = D.ones(3) end)
    H.assert_error_matching("grad: the gradient must have the tensor's shape", function() x.grad = D.ones(2, 1) end)
    H.assert_error_matching("diffusion.Tensor expected", function() x.grad = 1 end)
    assert.is_nil(x.grad)
  end)

  it("an expanded tensor given as x.grad is refused or accumulated onto correctly", function()
    -- either is fine; what is not is a later backward failing inside the engine
    local x = H.leaf { 1, 2, 3 }
    local ok = pcall(function() x.grad = D.tensor { 10 }:expand(3) end)
    if ok then
      local ok2, err = pcall(function() (x * 2):sum():backward() end)
      assert.is_true(ok2, "backward after x.grad = expanded tensor: " .. tostring(err))
      assert_close(x.grad, { 12, 12, 12 })
    end
  end)

  it("other fields cannot be set", function()
    local x = D.ones(2)
    H.assert_error_matching("cannot set field 'is_leaf'", function() x.is_leaf = false end)
    H.assert_error_matching("cannot set field 'grad_fn'", function() x.grad_fn = "mul" end)
  end)
end)

--- comparisons --------------------------------------------------------------------

describe("comparison ops", function()
  it("don't propagate gradients: their results don't require grad", function()
    local x = H.leaf { -1, 0, 2 }
    for _, op in ipairs { "eq", "ne", "lt", "le", "gt", "ge" } do
      for _, r in ipairs { x[op](x, 0), x[op](x, x * 2), D[op](1, x) } do
        assert.is_false(r.requires_grad, op)
        assert.is_nil(r.grad_fn, op)
      end
    end
    assert.is_false(x:argmax().requires_grad)
  end)

  it("work as masks inside a differentiable expression", function()
    local x = H.leaf { -1, 0, 2, 3 }
    ;(x * x:gt(0.5) * x):sum():backward() -- x^2 where x > 0.5
    assert_close(x.grad, { 0, 0, 4, 6 })
  end)
end)

--- releasing graphs ----------------------------------------------------------------

-- Each case builds a graph in which one node is reachable from another along
-- two edges, drops it in some order and checks that every storage is freed.
describe("releasing graphs with shared nodes", function()
  local cases = {
    { "a node used twice by one op (y * y), y dropped first", [[
      local y = x * 3
      local z = y * y
      y = nil; collectgarbage()
      z = nil; collectgarbage()
    ]] },
    { "a node used twice by one op (y * y), y still alive and used after", [[
      local y = x * 3
      local z = y * y
      z = nil; collectgarbage()
      assert(y.grad_fn == "mul" and y:sum():item() == 9)
      y:sum():backward()
      assert(x.grad[1] == 3)
      x.grad = nil
    ]] },
    { "a diamond (e / e:sum(), as in softmax)", [[
      local e = x:exp()
      local s = (e / e:sum()):sum()
      e = nil; collectgarbage()
      s = nil; collectgarbage()
    ]] },
    { "a diamond after a backward", [[
      local e = x:exp()
      local s = (e / e:sum()):sum()
      s:backward()
      e = nil; collectgarbage()
      s = nil; collectgarbage()
      x.grad = nil
    ]] },
    { "cat {y, y} and matmul(y, y)", [[
      local y = x:view(1, 2) * 2
      local c = D.cat { y, y, y }
      local m = y:t():matmul(y)
      y = nil; collectgarbage()
      c = nil; m = nil; collectgarbage()
    ]] },
    { "10000 diamonds in a chain (y = y + y:sin() * 0)", [[
      local y = x
      for _ = 1, 10000 do y = y + y:sin() * 0 end
      y:sum():backward()
      assert(x.grad[1] == 1 and x.grad[2] == 1)
      x.grad = nil
      y = nil; collectgarbage()
    ]] },
  }
  for _, case in ipairs(cases) do
    local name, body = case[1], case[2]
    it(name, function()
      local ok, out = run_child([[
        local D = require "diffusion"
        local x = D.tensor { 1, 2 }:requires_grad_()
        collectgarbage(); collectgarbage()
        local m0 = D.memory_allocated()
        do
]] .. body .. [[
        end
        collectgarbage(); collectgarbage()
        print("leftover bytes: " .. (D.memory_allocated() - m0))
      ]])
      assert.is_true(ok, "the child failed:\n" .. out)
      assert.is_truthy(out:find("leftover bytes: 0\n", 1, true), out)
    end)
  end
end)

--- chains and memory ----------------------------------------------------------------

describe("long chains and memory", function()
  it("backward through a chain of 10000 ops works and releases it", function()
    local x = H.leaf { 1, 2, 3 }
    local m0 = H.settled()
    local y = x
    for _ = 1, 5000 do
      y = y * 2
      y = y * 0.5
    end
    assert.is_true(H.settled() > m0) -- the chain keeps its saved inputs
    y:sum():backward()
    assert_close(x.grad, { 1, 1, 1 })
    assert_close(y, { 1, 2, 3 })
    x.grad = nil
    y = nil
    assert.are.equal(m0, H.settled())
  end)

  it("a chain of 200000 nodes is freed without recursion (no C stack overflow)", function()
    local x = H.leaf { 1, 2 }
    local y = x
    for _ = 1, 200000 do y = y:view(2) end
    y = nil
    collectgarbage()
    collectgarbage()
    -- and one backward through as many
    y = x
    for _ = 1, 200000 do y = y:view(2) end
    y:sum():backward()
    assert_close(x.grad, { 1, 1 })
  end)

  it("dropping the result frees the graph and the activations it saved", function()
    local x = D.randn(1000):requires_grad_()
    local m0 = H.settled()
    local y = x:exp():exp():sum() -- both exp outputs are saved: 2 * 4000 bytes, and y: 4
    assert.are.equal(m0 + 8004, H.settled())
    y = nil
    assert.are.equal(m0, H.settled())
  end)

  it("backward frees the saved tensors as it goes, unless retain_graph", function()
    local x = D.randn(1000):requires_grad_()
    local m0 = H.settled()
    local y = x:exp():exp():sum()
    y:backward(nil, true)
    assert.are.equal(m0 + 8004 + 4000, H.settled()) -- and x.grad
    y:backward()
    assert.are.equal(m0 + 4 + 4000, H.settled()) -- y and x.grad are left
    x.grad = nil
    y = nil
    assert.are.equal(m0, H.settled())
  end)

  it("a 200-step training loop on fixed shapes keeps memory_allocated flat", function()
    local gen = D.Generator(7)
    local inputs, target = D.randn({ 16, 8 }, gen), D.randn({ 16, 4 }, gen)
    local w1 = (D.randn({ 8, 12 }, gen) * 0.3):requires_grad_()
    local b1 = D.zeros(12):requires_grad_()
    local w2 = (D.randn({ 12, 4 }, gen) * 0.3):requires_grad_()
    local params = { w1, b1, w2 }
    local first_loss, loss_value
    local baseline
    for step = 1, 200 do
      local h = (inputs:matmul(w1) + b1):tanh()
      local out = h:matmul(w2)
      local loss = ((out - target) ^ 2):mean()
      loss:backward()
      loss_value = loss:item()
      first_loss = first_loss or loss_value
      D.no_grad(function()
        for _, p in ipairs(params) do
          p:sub_(p.grad * 0.05)
          p.grad:zero_()
        end
      end)
      h, out, loss = nil, nil, nil
      local m = H.settled()
      if step == 5 then baseline = m end
      if step > 5 then
        assert(m == baseline, ("step %d: %d bytes allocated, %d at step 5"):format(step, m, baseline))
      end
    end
    assert.is_true(loss_value < first_loss * 0.8, ("loss %g -> %g"):format(first_loss, loss_value))
  end)
end)
