-- Losses: mse_loss (with per-sample weights), l1_loss, bce_with_logits,
-- cross_entropy (1-based classes, label smoothing): hand-computed values and
-- gradients, finite-difference gradient checks, stability at large logits,
-- non-contiguous and large (blocked, multi-threaded) inputs, and every error.
local D = require "diffusion"
local H = require "helpers"

--- helpers ----------------------------------------------------------------

local function all_finite(t)
  for _, v in ipairs(t:contiguous():view(-1):totable()) do
    if v ~= v or v == math.huge or v == -math.huge then return false end
  end
  return true
end

-- a target at distance >= 0.2 from pred, so |pred - target| stays away from 0 under ±eps
local function away_from(pred, gen)
  local sign = D.rand(pred:shape(), gen):gt(0.5) * 2 - 1
  return pred + sign * (D.rand(pred:shape(), gen) + 0.2)
end

local SHAPES = { { 5 }, { 3, 4 }, { 2, 3, 2 }, { 2, 1, 3, 2 } }

--- mse_loss -----------------------------------------------------------------

describe("mse_loss", function()
  it("is the mean of squared errors, with gradients for pred and target", function()
    local p, t = H.leaf { { 1, 2 }, { 3, 4 } }, H.leaf { { 0, 2 }, { 1, 1 } }
    local l = D.mse_loss(p, t)
    assert.are.same({}, l:shape())
    H.assert_close(l, 3.5) -- (1 + 0 + 4 + 9) / 4
    assert.are.equal("mse_loss", l.grad_fn)
    l:backward()
    H.assert_close(p.grad, { { 0.5, 0 }, { 1, 1.5 } }) -- 2 (p - t) / 4
    H.assert_close(t.grad, { { -0.5, 0 }, { -1, -1.5 } })
  end)

  it("weighs each sample's elements by weight[n]", function()
    local p, t, w = H.leaf { { 1, 2 }, { 3, 4 } }, D.tensor { { 0, 2 }, { 1, 1 } }, H.leaf { 1, 0.5 }
    local l = D.mse_loss(p, t, w)
    H.assert_close(l, 1.875) -- (1 * (1 + 0) + 0.5 * (4 + 9)) / 4
    l:backward()
    H.assert_close(p.grad, { { 0.5, 0 }, { 0.5, 0.75 } }) -- 2 w (p - t) / 4
    H.assert_close(w.grad, { 0.25, 3.25 })                -- sum of the sample's squares / 4
    assert.is_nil(t.grad)
  end)

  it("weights of ones give the unweighted loss; 1-d pred weighs each element", function()
    local p, t = D.randn(3, 5, D.Generator(1)), D.randn(3, 5, D.Generator(2))
    H.assert_close(D.mse_loss(p, t, D.ones(3)), D.mse_loss(p, t):item())
    H.assert_close(D.mse_loss(D.tensor { 1, 2 }, D.tensor { 0, 0 }, D.tensor { 2, 0 }), 1) -- (2 * 1 + 0 * 4) / 2
  end)

  it("matches ((p - t)^2):mean() on non-contiguous and large inputs", function()
    local g = D.Generator(3)
    local p, t = D.randn(6, 5, g):t(), D.randn(5, 6, g)
    assert.is_false(p:is_contiguous())
    H.assert_close(D.mse_loss(p, t), ((p - t) * (p - t)):mean():item(), 1e-5)
    local big_p, big_t = D.randn(70001, g), D.randn(70001, g) -- several blocks
    H.assert_close(D.mse_loss(big_p, big_t), ((big_p - big_t) * (big_p - big_t)):mean():item(), 1e-5)
  end)

  it("gives the same bits at any thread count", function()
    local g = D.Generator(4)
    local p, t, w = D.randn(40, 3000, g), D.randn(40, 3000, g), D.rand(40, g)
    local prev, values = D.get_num_threads(), {}
    for _, n in ipairs { 1, 3 } do
      D.set_num_threads(n)
      local pp = p:clone():requires_grad_()
      local l = D.mse_loss(pp, t, w)
      l:backward()
      values[#values + 1] = { l:item(), pp.grad:sum():item() }
    end
    D.set_num_threads(prev)
    assert.are.same(values[1], values[2])
  end)

  it("records nothing under no_grad", function()
    local p = H.leaf { 1, 2 }
    local l = D.no_grad(function() return D.mse_loss(p, D.tensor { 0, 0 }) end)
    assert.is_false(l.requires_grad)
    H.assert_close(l, 2.5)
  end)

  for i, shape in ipairs(SHAPES) do
    it("gradcheck for pred, target and weight, shape " .. i, function()
      local g = D.Generator(10 + i)
      local p, t, w = D.randn(shape, g), D.randn(shape, g), D.rand(shape[1], g) + 0.5
      local ok, report = D.gradcheck(function(a, b) return D.mse_loss(a, b) end, { p, t }, { atol = 1e-3, rtol = 1e-3 })
      assert.is_true(ok, report)
      ok, report = D.gradcheck(function(a, b, c) return D.mse_loss(a, b, c) end, { p, t, w }, { atol = 1e-3, rtol = 1e-3 })
      assert.is_true(ok, report)
    end)
  end

  it("gradcheck catches a wrong mse_loss backward", function()
    local p, t = D.randn(3, 4, D.Generator(5)), D.randn(3, 4, D.Generator(6))
    D._debug_corrupt_backward("mse_loss", 1.05)
    local ok = pcall(function()
      assert.is_false((D.gradcheck(function(a, b) return D.mse_loss(a, b) end, { p, t }, { atol = 1e-3, rtol = 1e-3 })))
    end)
    D._debug_corrupt_backward(nil)
    assert.is_true(ok)
  end)

  it("errors on shape mismatches, naming both shapes", function()
    H.assert_error_with("mse_loss: pred has shape {2,3} but target has shape {3,2} (shapes must match exactly)",
      D.mse_loss, D.zeros(2, 3), D.zeros(3, 2))
    H.assert_error_with("mse_loss: pred has shape {4} but target has shape {4,1}", D.mse_loss, D.zeros(4), D.zeros(4, 1))
    H.assert_error_with("mse_loss: weight has shape {3}, expected {2} (one weight per sample of pred {2,5})",
      D.mse_loss, D.zeros(2, 5), D.zeros(2, 5), D.ones(3))
    H.assert_error_with("mse_loss: weight has shape {2,1}, expected {2}", D.mse_loss, D.zeros(2, 5), D.zeros(2, 5),
      D.ones(2, 1))
    H.assert_error_with("mse_loss: a per-sample weight needs pred with a batch dim", D.mse_loss, D.tensor(1),
      D.tensor(2), D.ones(1))
    H.assert_error_with("Tensor expected", D.mse_loss, D.zeros(2), 3)
  end)
end)

--- l1_loss ------------------------------------------------------------------

describe("l1_loss", function()
  it("is the mean absolute error; its gradient is sign(p - t) / n, 0 where equal", function()
    local p, t = H.leaf { { 1, 2 }, { 0, 4 } }, H.leaf { { 0, 2 }, { 1, 1 } }
    local l = D.l1_loss(p, t)
    H.assert_close(l, 1.25) -- (1 + 0 + 1 + 3) / 4
    l:backward()
    H.assert_close(p.grad, { { 0.25, 0 }, { -0.25, 0.25 } })
    H.assert_close(t.grad, { { -0.25, 0 }, { 0.25, -0.25 } })
  end)

  for i, shape in ipairs(SHAPES) do
    it("gradcheck, shape " .. i, function()
      local g = D.Generator(20 + i)
      local p = D.randn(shape, g)
      local ok, report = D.gradcheck(function(a, b) return D.l1_loss(a, b) end, { p, away_from(p, g) },
        { atol = 1e-3, rtol = 1e-3 })
      assert.is_true(ok, report)
    end)
  end

  it("errors on a shape mismatch", function()
    H.assert_error_with("l1_loss: pred has shape {3} but target has shape {2}", D.l1_loss, D.zeros(3), D.zeros(2))
  end)
end)

--- bce_with_logits ----------------------------------------------------------

describe("bce_with_logits", function()
  it("is mean(max(x, 0) - x y + log(1 + exp(-|x|))), d/dx = sigmoid(x) - y, d/dy = -x", function()
    local x, y = H.leaf { 0, 2, -1 }, H.leaf { 1, 0, 0.5 }
    local l = D.bce_with_logits(x, y)
    H.assert_close(l, 1.2111122930403804)
    l:backward()
    H.assert_close(x.grad, { -0.16666666666666666, 0.29359902599262744, -0.07701952621000163 })
    H.assert_close(y.grad, { 0, -0.6666666666666666, 0.3333333333333333 })
  end)

  it("agrees with -(y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))) at moderate logits", function()
    local g = D.Generator(7)
    local x, y = D.randn(4, 6, g) * 3, D.rand(4, 6, g)
    local s = x:sigmoid()
    local naive = -(y * s:log() + (1 - y) * (1 - s):log()):mean()
    H.assert_close(D.bce_with_logits(x, y), naive:item(), 1e-5)
  end)

  it("stays finite and exact at logits of ±100", function()
    local x, y = H.leaf { 100, -100, 100, -100 }, D.tensor { 1, 0, 0, 1 }
    local l = D.bce_with_logits(x, y)
    H.assert_close(l, 50) -- 0, 0, 100, 100
    l:backward()
    H.assert_close(x.grad, { 0, 0, 0.25, -0.25 })
    assert.is_true(all_finite(x.grad))
    local huge = H.leaf { 1e30, -1e30 }
    local l2 = D.bce_with_logits(huge, D.tensor { 1, 0 })
    H.assert_close(l2, 0)
    l2:backward()
    assert.is_true(all_finite(huge.grad))
  end)

  for i, shape in ipairs(SHAPES) do
    it("gradcheck for logits and target, shape " .. i, function()
      local g = D.Generator(30 + i)
      local x, y = D.randn(shape, g) * 2, D.rand(shape, g)
      local ok, report = D.gradcheck(function(a, b) return D.bce_with_logits(a, b) end, { x, y },
        { atol = 1e-3, rtol = 1e-3 })
      assert.is_true(ok, report)
    end)
  end

  it("errors on a shape mismatch", function()
    H.assert_error_with("bce_with_logits: logits has shape {2,2} but target has shape {4}", D.bce_with_logits,
      D.zeros(2, 2), D.zeros(4))
  end)
end)

--- cross_entropy ------------------------------------------------------------

describe("cross_entropy", function()
  it("takes 1-based classes: mean of -log softmax(x)[target]", function()
    local x = H.leaf { { 1, 2, 3 }, { 0, 0, 0 } }
    local l = D.cross_entropy(x, D.tensor { 3, 1 })
    H.assert_close(l, 0.7531091265562452) -- (3.4076 - 3 + log 3) / 2
    l:backward()
    H.assert_close(x.grad, { { 0.04501528658519022, 0.12236423552739879, -0.16737952211258916 },
      { -0.33333333333333337, 0.16666666666666666, 0.16666666666666666 } })
  end)

  it("with label smoothing targets (1 - eps) onehot + eps / C", function()
    local x = H.leaf { { 1, 2, 3 }, { 0, 0, 0 } }
    local l = D.cross_entropy(x, D.tensor { 3, 1 }, { label_smoothing = 0.3 })
    H.assert_close(l, 0.9031091265562452)
    l:backward()
    H.assert_close(x.grad, { { -0.0049847134148097785, 0.07236423552739879, -0.06737952211258913 },
      { -0.2333333333333333, 0.11666666666666667, 0.11666666666666667 } })
    -- label_smoothing = 0 and an empty options table are the default
    H.assert_close(D.cross_entropy(x, D.tensor { 3, 1 }, { label_smoothing = 0 }), 0.7531091265562452)
    H.assert_close(D.cross_entropy(x, D.tensor { 3, 1 }, {}), 0.7531091265562452)
  end)

  it("agrees with -log_softmax picked by hand", function()
    local g = D.Generator(8)
    local x = D.randn(5, 7, g)
    local target = { 2, 7, 1, 4, 4 }
    local expected = 0
    for n = 1, 5 do
      local row, m, s = x[n], -math.huge, 0
      for c = 1, 7 do m = math.max(m, row[c]) end
      for c = 1, 7 do s = s + math.exp(row[c] - m) end
      expected = expected + (m + math.log(s) - row[target[n]]) / 5
    end
    H.assert_close(D.cross_entropy(x, D.tensor(target)), expected, 1e-5)
  end)

  it("stays finite at logits of ±100 and beyond", function()
    local x = H.leaf { { 100, -100, 0 } }
    local l = D.cross_entropy(x, D.tensor { 1 })
    H.assert_close(l, 0)
    l:backward()
    H.assert_close(x.grad, { { 0, 0, 0 } })
    x = H.leaf { { 100, -100, 0 } }
    l = D.cross_entropy(x, D.tensor { 2 }, { label_smoothing = 0.1 })
    H.assert_close(l, 190) -- 100 - 0.9 (-100) - 0.1 / 3 * 0
    l:backward()
    H.assert_close(x.grad, { { 0.9666666666666667, -0.9333333333333333, -0.03333333333333333 } })
    local big = H.leaf { { 1e4, -1e4 }, { -3e4, 3e4 } }
    local l2 = D.cross_entropy(big, D.tensor { 2, 2 })
    H.assert_close(l2, 1e4)
    l2:backward()
    assert.is_true(all_finite(big.grad))
  end)

  it("gives the target no gradient", function()
    local x, t = H.leaf { { 1, 2 } }, H.leaf { 2 }
    D.cross_entropy(x, t):backward()
    assert.is_not_nil(x.grad)
    assert.is_nil(t.grad)
  end)

  it("handles many rows (blocked) and a non-contiguous input", function()
    local g = D.Generator(9)
    local x = D.randn(7, 20000, g):t() -- 20000 rows of 7 classes, strided
    local target = D.randint(1, 8, 20000, g)
    local l = D.cross_entropy(x, target)
    local lc = D.cross_entropy(x:contiguous(), target)
    H.assert_close(l, lc:item(), 1e-6)
    assert.is_true(l:item() > 1 and l:item() < 4)
  end)

  for i, c in ipairs { { 1, 2 }, { 3, 4 }, { 5, 3 }, { 4, 6 } } do
    for _, eps in ipairs { 0, 0.1 } do
      it(string.format("gradcheck, (%d, %d), label_smoothing %g", c[1], c[2], eps), function()
        local g = D.Generator(40 + i)
        local x = D.randn(c[1], c[2], g) * 2
        local t = {}
        for n = 1, c[1] do t[n] = (n * 7) % c[2] + 1 end
        local target = D.tensor(t)
        local ok, report = D.gradcheck(function(a) return D.cross_entropy(a, target, { label_smoothing = eps }) end,
          { x }, { atol = 1e-3, rtol = 1e-3 })
        assert.is_true(ok, report)
      end)
    end
  end

  it("gradcheck catches a wrong cross_entropy backward", function()
    local x, target = D.randn(3, 4, D.Generator(50)), D.tensor { 1, 4, 2 }
    D._debug_corrupt_backward("cross_entropy", 1.05)
    local ok, passed = pcall(D.gradcheck, function(a) return D.cross_entropy(a, target) end, { x },
      { atol = 1e-3, rtol = 1e-3 })
    D._debug_corrupt_backward(nil)
    assert.is_true(ok, passed)
    assert.is_false(passed)
  end)

  it("errors on a bad class index, naming it (1-based)", function()
    local x = D.zeros(3, 5)
    H.assert_error_with("cross_entropy: target[2] = 6 is not a class index in 1..5", D.cross_entropy, x,
      D.tensor { 1, 6, 2 })
    H.assert_error_with("cross_entropy: target[1] = 0 is not a class index in 1..5", D.cross_entropy, x,
      D.tensor { 0, 1, 2 })
    H.assert_error_with("cross_entropy: target[3] = 1.5 is not a class index in 1..5", D.cross_entropy, x,
      D.tensor { 1, 2, 1.5 })
    H.assert_error_with("cross_entropy: target[1] = -1 is not a class index", D.cross_entropy, x, D.tensor { -1, 1, 1 })
  end)

  it("errors on bad shapes and options", function()
    H.assert_error_with("cross_entropy: logits must be (N, C), got shape {5}", D.cross_entropy, D.zeros(5), D.tensor { 1 })
    H.assert_error_with("cross_entropy: target has shape {2}, expected {3} (one class index per row of logits {3,5})",
      D.cross_entropy, D.zeros(3, 5), D.tensor { 1, 2 })
    H.assert_error_with("cross_entropy: target has shape {3,1}, expected {3}", D.cross_entropy, D.zeros(3, 5),
      D.ones(3, 1))
    H.assert_error_with("cross_entropy: label_smoothing must be in [0, 1], got 1.5", D.cross_entropy, D.zeros(2, 3),
      D.tensor { 1, 2 }, { label_smoothing = 1.5 })
    H.assert_error_with("cross_entropy: label_smoothing must be in [0, 1], got -0.1", D.cross_entropy, D.zeros(2, 3),
      D.tensor { 1, 2 }, { label_smoothing = -0.1 })
    H.assert_error_with("label_smoothing must be a number, got string", D.cross_entropy, D.zeros(2, 3),
      D.tensor { 1, 2 }, { label_smoothing = "a" })
  end)
end)
