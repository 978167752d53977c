-- What a training step keeps for backward, made smaller without changing a
-- bit of the results: group_norm_silu (silu(group_norm(x)) fused, keeping
-- only x and the group statistics instead of two full-size tensors),
-- dropout that draws its mask again in backward from the generator's
-- (seed, offset) instead of keeping it, and add and sub, which keep no
-- operands. Checked here: the fused op against the pair (forward bitwise,
-- in every SIMD form; gradients to 1e-5), finite-difference gradients, its
-- errors; dropout's gradient bitwise the mask of the forward times g, twice
-- over with retain_graph; the bytes each op leaves live; and the bytes a
-- U-Net forward leaves live, against a count of the tensors its backward
-- reads.
local D = require "diffusion"
local H = require "helpers"

--- helpers ----------------------------------------------------------------

local function gen(seed) return D.Generator(seed) end

-- the float32 bits of a tensor's values, as one string (NaN-safe equality)
local function bits(t)
  local parts = {}
  for i, v in ipairs(H.values(t)) do parts[i] = string.pack("<f", v) end
  return table.concat(parts)
end

local function assert_bitwise(a, b, what)
  assert.are.same(a:shape(), b:shape(), what)
  assert(bits(a) == bits(b), ("%s: not the same bits (%d elements differ)"):format(what, H.ndiff(a, b)))
end

-- |a - e| <= rtol * max(|e|, the largest |e| * 1e-2) elementwise: relative,
-- with a floor for elements that cancel to near 0
local function assert_rel(a, e, rtol, what)
  local av, ev = H.values(a), H.values(e)
  assert.are.equal(#ev, #av, what)
  local scale = 0
  for _, v in ipairs(ev) do scale = math.max(scale, math.abs(v)) end
  for i = 1, #ev do
    local tol = rtol * math.max(math.abs(ev[i]), scale * 1e-2)
    assert(math.abs(av[i] - ev[i]) <= tol, ("%s element %d: %.9g, expected %.9g"):format(what, i, av[i], ev[i]))
  end
end

local run_child = H.run_child

-- x (shape), w, b (C) from a seed; which = "wb", "w", "b" or "" picks the affine parts
local function inputs(shape, seed, which)
  local g = gen(seed)
  local x = D.randn(shape, g) * 2 + 0.5
  local c = shape[2]
  local w = D.randn({ c }, g) + 1
  local b = D.randn({ c }, g)
  return x, (which or "wb"):find("w") and w or nil, (which or "wb"):find("b") and b or nil
end

-- group count, shape: spans of 1 (N, C), odd sizes, vector tails (33, 5x7), the U-Net's
local CASES = {
  { 8, { 4, 32, 16, 16 } },
  { 3, { 3, 6, 5, 7 } },
  { 4, { 5, 12 } },
  { 1, { 2, 4, 3 } },
  { 2, { 2, 8, 33 } },
  { 4, { 2, 4, 1, 1 } },
}

--- group_norm_silu: the pair's results ----------------------------------------

describe("group_norm_silu", function()
  it("gives bitwise the output of silu(group_norm(x)), with or without w and b", function()
    for _, case in ipairs(CASES) do
      for _, which in ipairs { "wb", "w", "b", "" } do
        local groups, shape = case[1], case[2]
        local x, w, b = inputs(shape, 1, which)
        local what = H.shape_string(shape) .. " groups " .. groups .. " affine '" .. which .. "'"
        assert_bitwise(D.group_norm_silu(x, groups, w, b), D.group_norm(x, groups, w, b):silu(), what)
      end
    end
    -- eps as given, and through the method
    local x, w, b = inputs({ 2, 6, 4 }, 2)
    assert_bitwise(x:group_norm_silu(3, w, b, 0.5), D.group_norm(x, 3, w, b, 0.5):silu(), "eps 0.5")
  end)

  it("gives the same bits on a non-contiguous input, and where w makes SiLU saturate", function()
    local x = D.randn({ 4, 2, 5 }, gen(3)):transpose(1, 2) -- (2, 4, 5), strided
    assert_bitwise(D.group_norm_silu(x, 2), D.group_norm(x, 2):silu(), "transposed")
    -- weights of 1e3 and 1e30 push the normalised values far past where
    -- sigmoid is exactly 0 or 1, and to ±inf
    local w = D.tensor { 1, 1e3, -1e3, 1e30 }
    local y = D.randn({ 3, 4, 6 }, gen(4))
    assert_bitwise(D.group_norm_silu(y, 2, w), D.group_norm(y, 2, w):silu(), "saturated")
  end)

  it("matches the pair in the AVX2 and scalar forms too (same bits, gradients included)", function()
    local code = [[
      local D = require "diffusion"
      local function bits(t)
        local p = {}
        for i, v in ipairs(t:flatten():totable()) do p[i] = string.pack("<f", v) end
        return table.concat(p)
      end
      local same = true
      for _, case in ipairs { { 8, { 4, 32, 16, 16 } }, { 3, { 3, 6, 5, 7 } }, { 4, { 5, 12 } }, { 2, { 2, 8, 33 } } } do
        local function run(fused)
          local g = D.Generator(11)
          local x = (D.randn(case[2], g) * 3):requires_grad_()
          local w = (D.randn({ case[2][2] }, g) + 1):requires_grad_()
          local b = D.randn({ case[2][2] }, g):requires_grad_()
          local gy = D.randn(case[2], g)
          local y = fused and D.group_norm_silu(x, case[1], w, b) or D.group_norm(x, case[1], w, b):silu()
          y:backward(gy)
          return { y, x.grad, w.grad, b.grad }
        end
        local a, f = run(false), run(true)
        for i = 1, 4 do same = same and bits(a[i]) == bits(f[i]) end
      end
      io.write(same and "same" or "different")
    ]]
    for _, form in ipairs { "avx2", "scalar" } do
      local out = run_child("DIFFUSION_SIMD=" .. form, code)
      assert.are.equal("same", out, form)
    end
  end)

  it("has the gradients of the pair, to 1e-5 relative, for x, w and b", function()
    for _, case in ipairs(CASES) do
      for _, which in ipairs { "wb", "" } do
        local groups, shape = case[1], case[2]
        local function run(fused)
          local x, w, b = inputs(shape, 5, which)
          x:requires_grad_()
          if w then w:requires_grad_() end
          if b then b:requires_grad_() end
          local gy = D.randn(shape, gen(6))
          local y = fused and D.group_norm_silu(x, groups, w, b) or D.group_norm(x, groups, w, b):silu()
          y:backward(gy)
          return x.grad, w and w.grad, b and b.grad
        end
        local what = H.shape_string(shape) .. " groups " .. groups .. " affine '" .. which .. "'"
        local px, pw, pb = run(false)
        local fx, fw, fb = run(true)
        assert_rel(fx, px, 1e-5, what .. " dx")
        if pw then assert_rel(fw, pw, 1e-5, what .. " dw") end
        if pb then assert_rel(fb, pb, 1e-5, what .. " db") end
      end
    end
  end)

  it("gives w and b their gradients when x needs none", function()
    for _, shape in ipairs { { 3, 4, 5 }, { 6, 4 } } do
      local function run(fused)
        local x, w, b = inputs(shape, 7)
        w:requires_grad_()
        b:requires_grad_()
        local y = fused and D.group_norm_silu(x, 2, w, b) or D.group_norm(x, 2, w, b):silu()
        y:backward(D.randn(shape, gen(8)))
        return w.grad, b.grad
      end
      local pw, pb = run(false)
      local fw, fb = run(true)
      assert_rel(fw, pw, 1e-5, H.shape_string(shape) .. " dw")
      assert_rel(fb, pb, 1e-5, H.shape_string(shape) .. " db")
    end
  end)

  it("backward twice with retain_graph gives the same gradient twice", function()
    local x, w, b = inputs({ 2, 4, 3, 3 }, 9)
    x:requires_grad_()
    local y = D.group_norm_silu(x, 2, w, b)
    local gy = D.randn({ 2, 4, 3, 3 }, gen(10))
    y:backward(gy, true)
    local first = x.grad:clone()
    x.grad = nil
    y:backward(gy)
    assert_bitwise(x.grad, first, "second backward")
    H.assert_error_matching("freed", function() y:backward(gy) end)
  end)

  it("keeps only x (shared) and its statistics: the forward adds just its output's bytes", function()
    local shape, numel = { 4, 32, 16, 16 }, 4 * 32 * 16 * 16
    local x, w, b = inputs(shape, 11)
    x:requires_grad_()
    local m0 = H.settled()
    local y = D.group_norm_silu(x, 8, w, b)
    assert.are.equal(m0 + 4 * numel, H.settled())
    y = nil
    assert.are.equal(m0, H.settled())
    -- the pair keeps group_norm's output too: the measurement sees the difference
    local z = D.group_norm(x, 8, w, b):silu()
    assert.is_true(H.settled() >= m0 + 8 * numel)
    z = nil
    assert.are.equal(m0, H.settled())
  end)

  it("fails on bad shapes, groups and eps, naming itself", function()
    H.assert_error_with({ "group_norm_silu: expected an input (N, C, ...), got {6}" }, D.group_norm_silu, D.zeros(6), 2)
    H.assert_error_with({ "group_norm_silu: 6 channels of input {2,6,3} do not divide into 4 groups" },
      D.group_norm_silu, D.zeros(2, 6, 3), 4)
    H.assert_error_with({ "group_norm_silu: groups must be >= 1, got 0" }, D.group_norm_silu, D.zeros(2, 6, 3), 0)
    H.assert_error_with({ "group_norm_silu: weight must have shape {6} (the channels of input {2,6,3}), got {3}" },
      D.group_norm_silu, D.zeros(2, 6, 3), 2, D.zeros(3))
    H.assert_error_with({ "group_norm_silu: bias must have shape {6}", "got {6,1}" }, D.group_norm_silu,
      D.zeros(2, 6, 3), 2, D.zeros(6), D.zeros(6, 1))
    H.assert_error_with({ "group_norm_silu: eps must be finite and >= 0, got -1" }, D.group_norm_silu,
      D.zeros(2, 6, 3), 2, nil, nil, -1)
    H.assert_error_with({ "bad argument #2" }, D.group_norm_silu, D.zeros(2, 6, 3), "two")
    H.assert_error_with({ "bad argument #1" }, D.group_norm_silu, "x", 2)
    H.assert_error_with({ "bad argument #3" }, D.group_norm_silu, D.zeros(2, 6, 3), 2, "w")
  end)
end)

--- group_norm_silu: finite differences ------------------------------------------

describe("gradcheck of group_norm_silu", function()
  -- check(name, fn, inputs, tol): one `it` that gradchecks fn, and one that
  -- scales group_norm_silu's backward by 1.1 and requires the check to fail
  -- (as spec/gradcheck_spec.lua does for the foundation ops)
  local function check(name, fn, ins, tol)
    it(name, function()
      local ok, report = D.gradcheck(fn, ins, tol)
      assert.is_true(ok, name .. ": " .. report)
    end)
    it(name .. " (fails with group_norm_silu's backward scaled by 1.1)", function()
      finally(function() D._debug_corrupt_backward() end)
      D._debug_corrupt_backward("group_norm_silu", 1.1)
      local ok, report = D.gradcheck(fn, ins, tol)
      assert.is_false(ok, name .. " passed with a corrupted backward: " .. report)
    end)
  end
  local tol = { atol = 2e-2, rtol = 2e-2 } -- group_norm's tolerance in nn_ops_spec
  local function r(shape, seed) return D.randn(shape, gen(100 + seed)) end
  check("groups 2, w and b, spatial {2,2}", function(x, w, b) return D.group_norm_silu(x, 2, w, b) end,
    { r({ 2, 4, 2, 2 }, 1), r({ 4 }, 2), r({ 4 }, 3) }, tol)
  check("groups = C, w and b", function(x, w, b) return D.group_norm_silu(x, 4, w, b) end,
    { r({ 2, 4, 3 }, 4), r({ 4 }, 5), r({ 4 }, 6) }, tol)
  check("one group, no affine", function(x) return D.group_norm_silu(x, 1) end, { r({ 2, 3, 5 }, 7) }, tol)
  check("no spatial dims (N, C), w only", function(x, w) return D.group_norm_silu(x, 2, w) end,
    { r({ 3, 4 }, 8), r({ 4 }, 9) }, tol)
  check("b only", function(x, b) return D.group_norm_silu(x, 2, nil, b) end, { r({ 2, 2, 3 }, 10), r({ 2 }, 11) }, tol)
  check("a transposed input", function(x) return D.group_norm_silu(x:transpose(1, 2), 2) end,
    { r({ 4, 3, 2 }, 12) }, tol)
end)

--- dropout ----------------------------------------------------------------

describe("dropout without a saved mask", function()
  -- the scaled mask the forward drew: uniform u >= p keeps, as 1 / (1 - p) in float32
  local function mask_of(shape, p, state)
    local g = gen(0)
    g:set_state(state)
    local u = D.rand(shape, g)
    return D.where(u:ge(p), D.tensor(1 / (1 - H.f32(p))), 0) -- the C code's float scale
  end

  it("gives bitwise g times the mask the forward used, and the forward is x times it", function()
    for _, case in ipairs { { { 1000 }, 0.3 }, { { 3, 5, 7 }, 0.5 }, { { 2, 3 }, 0.9 } } do
      local shape, p = case[1], case[2]
      local g = gen(21)
      D.rand({ 7 }, g) -- an offset that is not 0
      local state = g:get_state()
      local x = D.randn(shape, gen(22)):requires_grad_()
      local y = D.dropout(x, p, true, g)
      local mask = mask_of(shape, p, state)
      local gy = D.randn(shape, gen(23))
      y:backward(gy)
      local what = H.shape_string(shape) .. " p " .. p
      assert_bitwise(y, x:detach() * mask, what .. " forward")
      assert_bitwise(x.grad, gy * mask, what .. " gradient")
    end
  end)

  it("draws from the default generator when none is given, and backward leaves it alone", function()
    D.manual_seed(5)
    local state = D.get_rng_state()
    local x = D.randn({ 4, 6 }, gen(24)):requires_grad_()
    local y = x:dropout(0.4)
    local after_forward = D.get_rng_state()
    local gy = D.randn({ 4, 6 }, gen(25))
    y:backward(gy)
    assert.are.same(after_forward, D.get_rng_state())
    assert_bitwise(x.grad, gy * mask_of({ 4, 6 }, 0.4, state), "default generator")
  end)

  it("gives the same gradient when backward runs twice (retain_graph)", function()
    local x = D.randn({ 64, 33 }, gen(26)):requires_grad_()
    local g = gen(27)
    local y = D.dropout(x, 0.5, true, g)
    local after_forward = g:get_state()
    local gy = D.randn({ 64, 33 }, gen(28))
    y:backward(gy, true)
    local first = x.grad:clone()
    x.grad = nil
    y:backward(gy)
    assert_bitwise(x.grad, first, "second backward")
    assert.are.same(after_forward, g:get_state())
    assert.is_true(first:eq(0):sum():item() > 100) -- some elements were dropped
  end)

  it("passes the gradient through a non-contiguous input", function()
    local base = D.randn({ 6, 4 }, gen(29)):requires_grad_()
    local g = gen(30)
    local state = g:get_state()
    local y = D.dropout(base:t(), 0.5, true, g) -- (4, 6), strided
    local gy = D.randn({ 4, 6 }, gen(31))
    y:backward(gy)
    assert_bitwise(base.grad, (gy * mask_of({ 4, 6 }, 0.5, state)):t(), "transposed")
  end)

  it("keeps no mask: the forward adds just its output's bytes", function()
    local x = D.randn({ 256, 64 }, gen(32)):requires_grad_()
    local m0 = H.settled()
    local y = D.dropout(x, 0.5, true, gen(33))
    assert.are.equal(m0 + 4 * 256 * 64, H.settled())
    y = nil
    assert.are.equal(m0, H.settled())
  end)
end)

--- add and sub ----------------------------------------------------------------

describe("add and sub", function()
  it("keep no operands: the forward adds just its output's bytes, and the gradients are g and -g", function()
    local a, b = D.randn({ 64, 32 }, gen(50)):requires_grad_(), D.randn({ 32 }, gen(51)):requires_grad_()
    local m0 = H.settled()
    -- the operands are temporaries (neg keeps nothing either): only the results stay
    local y = (-a) - (-b)
    local z = 2 - (-a)
    local w = (-a) + (-b)
    assert.are.equal(m0 + 3 * 4 * 64 * 32, H.settled())
    local g = D.randn({ 64, 32 }, gen(52))
    y:backward(g)
    assert_bitwise(a.grad, -g, "d((-a) - (-b))/da")
    assert_bitwise(b.grad, g:sum(1), "d((-a) - (-b))/db")
    a.grad, b.grad = nil, nil
    z:backward(g)
    assert_bitwise(a.grad, g, "d(2 - (-a))/da")
    a.grad = nil
    w:backward(g)
    assert_bitwise(a.grad, -g, "d((-a) + (-b))/da")
    assert_bitwise(b.grad, -g:sum(1), "d((-a) + (-b))/db")
  end)
end)

--- a U-Net forward ----------------------------------------------------------------

describe("a U-Net forward in training mode", function()
  local N, C, S = 4, 8, 16
  local A = N * C * S * S * 4 -- bytes of one (N, C, S, S) activation

  -- the tensor bytes a forward leaves live (the graph's saved tensors and
  -- the output), parameters excluded
  local function kept(res_blocks, dropout)
    D.manual_seed(1)
    local model = D.UNet { channels = C, groups = 4, mult = { 1 }, res_blocks = res_blocks, attention = {},
      image_size = S, dropout = dropout }
    local x, t = D.randn { N, 1, S, S }, D.full({ N }, 10)
    local before = H.settled()
    local y = model(x, t)
    local after = H.settled()
    assert.is_true(y.requires_grad)
    return after - before
  end

  it("keeps no dropout masks", function()
    assert.are.equal(kept(1, 0), kept(1, 0.1))
  end)

  it("keeps per ResBlock only what its backward reads", function()
    -- One level (no resampling), so one more res_block adds one ResBlock
    -- going down (C -> C) and one going up (cat 2C -> C, with a 1x1 skip
    -- conv), all at S x S. In units of A, what their backward keeps:
    --   down: gn2's input 1, the block's output (a skip) 1              = 2
    --   up:   the cat (gn1's and the skip conv's input) 2, gn2's input 1 = 3
    -- The convolutions' inputs (silu(gn1(x)), and dropout(silu(gn2(h))))
    -- are recomputed in backward from what the GroupNorms keep; gn1's own
    -- input is the previous block's output, counted there; the adds keep
    -- nothing; plus (N, 4C)-sized time embeddings. Unfused gn + silu, a kept
    -- dropout mask and adds that kept their operands made it 22; keeping
    -- the convolutions' inputs, 10.
    local extra = kept(2, 0.1) - kept(1, 0.1)
    local bound = 5 * A + N * 4 * C * 4 * 8
    assert.is_true(extra <= bound, ("one more res_block keeps %.3f A, bound %.3f A"):format(extra / A, bound / A))
  end)

  it("gives the same gradients whatever the thread count, dropout included", function()
    local function grads(threads)
      return H.with_threads(threads, function()
        D.manual_seed(2)
        local model = D.UNet { channels = 8, groups = 4, mult = { 1, 2 }, res_blocks = 1, attention = { 4 },
          image_size = 8, dropout = 0.3 }
        local x, t = D.randn { 3, 1, 8, 8 }, D.full({ 3 }, 20)
        model(x, t):pow(2):mean():backward()
        local out = {}
        for i, p in ipairs(model:parameters()) do out[i] = p.grad end
        return out
      end)
    end
    local one, two = grads(1), grads(2)
    for i = 1, #one do assert_bitwise(two[i], one[i], "parameter " .. i) end
  end)
end)

--- inputs recomputed in backward --------------------------------------------------

describe("a convolution after group_norm_silu (and dropout)", function()
  local shape, numel = { 2, 8, 8, 8 }, 2 * 8 * 8 * 8

  -- x.grad, w.grad, conv weight and bias grads of conv(f(group_norm_silu(x)))
  local function grads(between, seed)
    local x, w, b = inputs(shape, seed)
    x:requires_grad_()
    w:requires_grad_()
    local cw, cb = (D.randn({ 6, 8, 3, 3 }, gen(seed + 1)) * 0.2):requires_grad_(), D.zeros({ 6 }):requires_grad_()
    local y = D.conv2d(between(D.group_norm_silu(x, 4, w, b)), cw, cb, { padding = 1 })
    y:backward(D.randn(y:shape(), gen(seed + 2)))
    return { x.grad, w.grad, cw.grad, cb.grad }
  end

  it("keeps no copy of its input: the forward adds just its output's bytes", function()
    local x, w, b = inputs(shape, 50)
    x:requires_grad_()
    local cw = D.randn({ 6, 8, 3, 3 }, gen(51)):requires_grad_()
    local m0 = H.settled()
    local y = D.conv2d(D.group_norm_silu(x, 4, w, b), cw, nil, { padding = 1 })
    assert.are.equal(m0 + 4 * 2 * 6 * 8 * 8, H.settled())
    -- after a view of it, the convolution keeps the view's storage
    y = D.conv2d(D.group_norm_silu(x, 4, w, b):view(shape), cw, nil, { padding = 1 })
    assert.are.equal(m0 + 4 * 2 * 6 * 8 * 8 + 4 * numel, H.settled())
    y = nil
    assert.are.equal(m0, H.settled())
  end)

  it("gives bitwise the gradients it gives when the input is kept", function()
    -- x * 1 is x exactly, but its product is no op that can run again: the
    -- convolution keeps it, as before the recomputation existed
    local kept = grads(function(h) return h * 1 end, 60)
    local again = grads(function(h) return h end, 60)
    for i = 1, 4 do assert_bitwise(again[i], kept[i], "gradient " .. i) end
  end)

  it("recomputes dropout's output too, with the same mask (training and eval mode)", function()
    for _, train in ipairs { true, false } do
      local kept = grads(function(h) return D.dropout(h * 1, 0.3, train, gen(70)) end, 61)
      local again = grads(function(h) return D.dropout(h, 0.3, train, gen(70)) end, 61)
      for i = 1, 4 do assert_bitwise(again[i], kept[i], ("gradient %d (train %s)"):format(i, train)) end
    end
    local x, w, b = inputs(shape, 62)
    x:requires_grad_()
    local cw = D.randn({ 6, 8, 3, 3 }, gen(63)):requires_grad_()
    local m0 = H.settled()
    local y = D.conv2d(D.dropout(D.group_norm_silu(x, 4, w, b), 0.3, true, gen(64)), cw, nil, { padding = 1 })
    assert.are.equal(m0 + 4 * 2 * 6 * 8 * 8, H.settled())
    y = nil
  end)

  it("keeps its input after all when that was written in place before the convolution", function()
    local function scaled(h)
      D.no_grad(function() h:mul_(2) end)
      return h
    end
    local kept = grads(function(h) return scaled(h * 1) end, 65)
    local again = grads(scaled, 65)
    for i = 1, 4 do assert_bitwise(again[i], kept[i], "gradient " .. i) end
    -- and when dropout's input was
    kept = grads(function(h) return D.dropout(scaled(h * 1), 0.3, true, gen(66)) end, 67)
    again = grads(function(h) return D.dropout(scaled(h), 0.3, true, gen(66)) end, 67)
    for i = 1, 4 do assert_bitwise(again[i], kept[i], "gradient " .. i .. " (dropout)") end
  end)

  it("backward twice with retain_graph gives the same gradients twice", function()
    local x, w, b = inputs(shape, 80)
    x:requires_grad_()
    local cw = D.randn({ 6, 8, 3, 3 }, gen(81)):requires_grad_()
    local y = D.conv2d(D.dropout(D.group_norm_silu(x, 4, w, b), 0.3, true, gen(82)), cw, nil, { padding = 1 })
    local gy = D.randn(y:shape(), gen(83))
    y:backward(gy, true)
    local first, firstw = x.grad:clone(), cw.grad:clone()
    x.grad, cw.grad = nil, nil
    y:backward(gy)
    assert_bitwise(x.grad, first, "x.grad")
    assert_bitwise(cw.grad, firstw, "conv weight grad")
    H.assert_error_matching("freed", function() y:backward(gy) end)
  end)

  it("refuses a backward after the GroupNorm's input changed in place", function()
    local x, w, b = inputs(shape, 90)
    local leaf = x:clone():requires_grad_()
    local xin = leaf * 1
    local cw = D.randn({ 6, 8, 3, 3 }, gen(91)):requires_grad_()
    local y = D.conv2d(D.group_norm_silu(xin, 4, w, b), cw, nil, { padding = 1 })
    D.no_grad(function() xin:add_(1) end)
    H.assert_error_with({ "group_norm_silu", "modified in place" }, function() y:sum():backward() end)
  end)
end)

--- allocation failures -------------------------------------------------------------

describe("allocation failures in group_norm_silu and dropout", function()
  after_each(function() D._debug.reset() end)

  it("are clean errors about memory, and the same call succeeds afterwards", function()
    local x0, w, b = inputs({ 2, 4, 3, 3 }, 40)
    local gy = D.randn({ 2, 4, 3, 3 }, gen(41))
    local function op()
      local x = x0:clone():requires_grad_()
      local y = D.dropout(D.group_norm_silu(x, 2, w, b), 0.5, true, gen(42))
      y:backward(gy)
      return x.grad:sum():item()
    end
    local expected = op()
    for _, kind in ipairs { "core", "lua" } do
      local failures, n = 0, 0
      while true do
        n = n + 1
        assert(n <= 5000, "never ran free of injected failures")
        D._debug.fail_alloc_at(n, kind)
        local ok, err = pcall(op)
        local pending = D._debug.alloc_pending()
        D._debug.reset()
        if ok and pending > 0 then break end
        if not ok then
          failures = failures + 1
          local msg = tostring(err)
          assert(msg:find("memory") or msg:find("allocate"), ("allocation %d (%s): %s"):format(n, kind, msg))
        end
      end
      assert.is_true(failures > 0, kind)
      assert.are.equal(expected, op())
    end
  end)
end)
