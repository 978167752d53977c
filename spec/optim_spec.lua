-- Optimizers and friends: the update kernels (D._sgd_step, D._adam_step,
-- D.lerp_), optim.SGD / Adam / AdamW against hand-computed updates, a tiny
-- least-squares fit, state_dict round trips, clip_grad_norm, the learning-rate
-- schedules and the EMA of weights.
local D = require "diffusion"
local core = require "diffusion.core"
local optim = require "diffusion.optim"
local H = require "helpers"

--- helpers ----------------------------------------------------------------

-- H.assert_close with this file's default tolerance, 1e-6
local function assert_close(actual, expected, tol) H.assert_close(actual, expected, tol or 1e-6) end

-- Runs opt for each gradient in grads (p.grad set by hand) and returns p's values after each step.
local function run(opt, p, grads)
  local out = {}
  for _, g in ipairs(grads) do
    p.grad = D.tensor(g)
    opt:step()
    out[#out + 1] = p:detach():totable()
  end
  return out
end

--- kernels -------------------------------------------------------------------

describe("update kernels", function()
  it("lerp_ moves a toward b by w, as a function and a method", function()
    local a = D.tensor { 0, 1, 2 }
    local r = D.lerp_(a, D.tensor { 1, 3, 2 }, 0.25)
    assert.are.equal(a, r)
    assert_close(a, { 0.25, 1.5, 2 })
    a:lerp_(D.tensor { 1, 1, 1 }, 1)
    assert_close(a, { 1, 1, 1 })
  end)

  it("lerp_ works on strided tensors and on an overlapping view of itself", function()
    local a, b = D.zeros(3, 4):t(), D.ones(4, 3)
    a:lerp_(b, 0.5)
    assert_close(a, { { 0.5, 0.5, 0.5 }, { 0.5, 0.5, 0.5 }, { 0.5, 0.5, 0.5 }, { 0.5, 0.5, 0.5 } })
    local m = D.tensor { { 1, 2 }, { 3, 4 } }
    m:lerp_(m:t(), 0.5) -- reads the transpose before any write
    assert_close(m, { { 1, 2.5 }, { 2.5, 4 } })
  end)

  it("lerp_ bumps the version, so a graph that saved the tensor refuses a stale backward", function()
    local x, a = H.leaf { 1, 2 }, D.tensor { 3, 4 }
    local y = (x * a):sum()
    a:lerp_(D.zeros(2), 0.5)
    H.assert_error_with("modified in place", function() y:backward() end)
  end)

  it("lerp_ errors on a shape mismatch or a tensor requiring grad", function()
    H.assert_error_with("lerp_: the tensors have shapes {2} and {3} (shapes must match exactly)", D.lerp_, D.zeros(2),
      D.zeros(3), 0.5)
    H.assert_error_with("lerp_: in-place operation on a tensor that requires grad", D.lerp_, H.leaf { 1 }, D.zeros(1), 0.5)
  end)

  it("_sgd_step and _adam_step agree on strided, contiguous and large tensors", function()
    local g = D.Generator(1)
    for _, shape in ipairs { { 3, 5 }, { 300, 400 } } do
      local p0, g0 = D.randn(shape, g), D.randn(shape, g)
      local pc, pt = p0:clone(), p0:t():contiguous():t() -- same values, transposed layout
      local bc, bt = D.zeros(shape), D.zeros(shape[2], shape[1]):t()
      assert.is_false(pt:is_contiguous())
      for step = 1, 2 do
        core._sgd_step(pc, g0, bc, 0.1, 0.9, 0.1, 0.01, false, step == 1)
        core._sgd_step(pt, g0, bt, 0.1, 0.9, 0.1, 0.01, false, step == 1)
      end
      H.assert_identical(pc, pt)
      -- against the formula: buf1 = d1, buf2 = 0.9 buf1 + 0.9 d2
      local d1 = g0 + p0 * 0.01
      local p1 = p0 - d1 * 0.1
      local p2 = p1 - (d1 * 0.9 + (g0 + p1 * 0.01) * 0.9) * 0.1
      assert.is_true((pc - p2):abs():max():item() < 1e-5)
      local mc, vc, mt, vt = D.zeros(shape), D.zeros(shape), D.zeros(shape[2], shape[1]):t(), D.zeros(shape)
      core._adam_step(pc, g0, mc, vc, 1, 0.01, 0.9, 0.999, 1e-8, 0.1, true)
      core._adam_step(pt, g0, mt, vt, 1, 0.01, 0.9, 0.999, 1e-8, 0.1, true)
      H.assert_identical(pc, pt)
      H.assert_identical(mc, mt)
    end
  end)

  it("kernels check shapes, hyperparameters and grad mode", function()
    local p, g = D.zeros(2, 3), D.zeros(2, 3)
    H.assert_error_with("sgd: the gradient has shape {3,2} but the parameter has shape {2,3}", core._sgd_step, p,
      D.zeros(3, 2), nil, 0.1, 0, 0, 0, false, true)
    H.assert_error_with("sgd: the momentum buffer has shape {6} but the parameter has shape {2,3}", core._sgd_step, p, g,
      D.zeros(6), 0.1, 0.9, 0, 0, false, true)
    H.assert_error_with("sgd: momentum 0.9 needs a momentum buffer", core._sgd_step, p, g, nil, 0.1, 0.9, 0, 0, false,
      true)
    H.assert_error_with("sgd: lr must be >= 0, got -1", core._sgd_step, p, g, nil, -1, 0, 0, 0, false, true)
    H.assert_error_with("sgd: nesterov needs momentum > 0 and dampening = 0", core._sgd_step, p, g, nil, 0.1, 0, 0, 0,
      true, true)
    H.assert_error_with("sgd: in-place operation on a tensor that requires grad", core._sgd_step, H.leaf { 1 },
      D.zeros(1), nil, 0.1, 0, 0, 0, false, true)
    H.assert_error_with("adam: exp_avg_sq has shape {3} but the parameter has shape {2,3}", core._adam_step, p, g,
      D.zeros(2, 3), D.zeros(3), 1, 0.1, 0.9, 0.999, 1e-8, 0, false)
    H.assert_error_with("adam: step counts from 1, got 0", core._adam_step, p, g, D.zeros(2, 3), D.zeros(2, 3), 0, 0.1,
      0.9, 0.999, 1e-8, 0, false)
    H.assert_error_with("adamw: beta2 must be in [0, 1), got 1", core._adam_step, p, g, D.zeros(2, 3), D.zeros(2, 3), 1,
      0.1, 0.9, 1, 1e-8, 0, true)
    H.assert_error_with("sgd: the parameter and the gradient share memory", core._sgd_step, p, p:view(-1):view(2, 3),
      nil, 0.1, 0, 0, 0, false, true)
    local m = D.zeros(2, 3)
    H.assert_error_with("adam: exp_avg and exp_avg_sq share memory", core._adam_step, p, g, m, m, 1, 0.1, 0.9, 0.999,
      1e-8, 0, false)
    H.assert_error_with("adam: in-place operation on a tensor that requires grad", core._adam_step, H.leaf { 1 },
      D.zeros(1), D.zeros(1), D.zeros(1), 1, 0.1, 0.9, 0.999, 1e-8, 0, false)
  end)
end)

--- SGD -----------------------------------------------------------------------

describe("optim.SGD", function()
  it("plain: p = p - lr g", function()
    local p = H.leaf { 1, 2 }
    local got = run(optim.SGD({ p }, { lr = 0.1 }), p, { { 1, -1 }, { 0.5, 2 } })
    assert_close(got, { { 0.9, 2.1 }, { 0.85, 1.9 } })
  end)

  it("momentum 0.9: buf = g, then 0.9 buf + g", function()
    local p = H.leaf { 1 }
    local got = run(optim.SGD({ p }, { lr = 0.1, momentum = 0.9 }), p, { { 1 }, { 1 }, { 1 } })
    assert_close(got, { { 0.9 }, { 0.71 }, { 0.439 } })
  end)

  it("nesterov: p = p - lr (g + momentum buf)", function()
    local p = H.leaf { 1 }
    local got = run(optim.SGD({ p }, { lr = 0.1, momentum = 0.9, nesterov = true }), p, { { 1 }, { 1 }, { 1 } })
    assert_close(got, { { 0.81 }, { 0.539 }, { 0.1951 } })
  end)

  it("weight decay and dampening (the first step is not dampened)", function()
    local p = H.leaf { 2 }
    local got = run(optim.SGD({ p }, { lr = 0.1, momentum = 0.9, dampening = 0.5, weight_decay = 0.1 }), p,
      { { 1 }, { 1 } })
    -- d1 = 1 + 0.2 = 1.2 = buf1; d2 = 1 + 0.188; buf2 = 0.9 * 1.2 + 0.5 * 1.188
    assert_close(got, { { 1.88 }, { 1.7126 } })
  end)

  it("skips parameters without a gradient; zero_grad drops gradients; lr can be changed", function()
    local a, b = H.leaf { 1 }, H.leaf { 1 }
    local opt = optim.SGD({ a, b }, { lr = 0.5 })
    a.grad = D.tensor { 1 }
    opt:step()
    assert_close(a, { 0.5 })
    assert_close(b, { 1 })
    opt:zero_grad()
    assert.is_nil(a.grad)
    assert.is_nil(b.grad)
    opt.lr = 0.25
    a.grad = D.tensor { 2 }
    opt:step()
    assert_close(a, { 0 })
    assert.are.equal(2, opt.step_count)
  end)

  it("updates outside the graph, and restores grad mode even when a step fails", function()
    local p = H.leaf { 1, 2 }
    local opt = optim.SGD({ p }, { lr = 0.1 })
    p.grad = D.tensor { 1, 1 }
    opt:step()
    assert.is_true(p.is_leaf)
    assert.is_true(p.requires_grad)
    assert.is_nil(p.grad_fn)
    assert.is_true(D.is_grad_enabled())
    opt.lr = -1
    H.assert_error_with("sgd: lr must be >= 0, got -1", function() opt:step() end)
    assert.is_true(D.is_grad_enabled())
  end)

  it("bumps the parameter's version: a graph that saved it refuses a stale backward", function()
    local p = H.leaf { 1, 2 }
    local y = (p * p):sum()
    p.grad = D.tensor { 1, 1 }
    optim.SGD({ p }, { lr = 0.1 }):step()
    H.assert_error_with("modified in place", function() y:backward() end)
  end)

  it("checks its arguments", function()
    H.assert_error_with("SGD: lr is required", optim.SGD, { H.leaf { 1 } }, {})
    H.assert_error_with("SGD: momentum must be >= 0, got -0.5", optim.SGD, { H.leaf { 1 } }, { lr = 1, momentum = -0.5 })
    H.assert_error_with("SGD: nesterov needs momentum > 0 and dampening = 0", optim.SGD, { H.leaf { 1 } },
      { lr = 1, nesterov = true })
    H.assert_error_with("SGD: params[2] does not require grad", optim.SGD, { H.leaf { 1 }, D.zeros(1) }, { lr = 1 })
    H.assert_error_with("SGD: params[1] is computed by 'mul', not a leaf", optim.SGD, { H.leaf { 1 } * 2 }, { lr = 1 })
    H.assert_error_with("SGD: params[1] is a number, not a tensor", optim.SGD, { 3 }, { lr = 1 })
    H.assert_error_with("SGD: params is empty", optim.SGD, {}, { lr = 1 })
  end)
end)

--- Adam, AdamW ---------------------------------------------------------------

describe("optim.Adam and AdamW", function()
  it("Adam with bias correction, varying gradients", function()
    local p = H.leaf { 1, -0.5 }
    local got = run(optim.Adam({ p }, { lr = 0.1 }), p, { { 1, 0.3 }, { -2, 0.3 }, { 0.5, -1 } })
    assert_close(got, { { 0.900000001, -0.5999999966666668 }, { 0.9366103534720749, -0.6999999933333328 },
      { 0.9502794196738216, -0.6713574367941043 } }, 1e-6)
  end)

  it("Adam with other betas and eps", function()
    local p = H.leaf { 1 }
    local got = run(optim.Adam({ p }, { lr = 0.01, betas = { 0.5, 0.9 }, eps = 1e-3 }), p, { { 1 }, { -2 }, { 0.5 } })
    assert_close(got, { { 0.99000999000999 }, { 0.9962331133627899 }, { 0.9973216989606006 } }, 1e-6)
  end)

  it("AdamW decays the weights directly and differs from Adam's L2 decay", function()
    local pa, pw = H.leaf { 1 }, H.leaf { 1 }
    local adam = run(optim.Adam({ pa }, { lr = 0.1, weight_decay = 0.1 }), pa, { { 0.5 }, { 0.5 }, { 0.5 } })
    local adamw = run(optim.AdamW({ pw }, { lr = 0.1, weight_decay = 0.1 }), pw, { { 0.5 }, { 0.5 }, { 0.5 } })
    assert_close(adam, { { 0.9000000016666666 }, { 0.8000473404883315 }, { 0.7001745748141189 } }, 1e-6)
    assert_close(adamw, { { 0.890000002 }, { 0.7811000039800006 }, { 0.6732890059402006 } }, 1e-6)
  end)

  it("AdamW defaults to weight_decay 1e-2, Adam to 0", function()
    local p = H.leaf { 1 }
    assert.are.equal(0.01, optim.AdamW({ p }).weight_decay)
    assert.are.equal(0, optim.Adam({ p }).weight_decay)
    assert.are.equal(1e-3, optim.Adam({ p }).lr)
  end)

  it("keeps a step count per parameter (a skipped parameter doesn't advance)", function()
    local a, b = H.leaf { 1 }, H.leaf { 1 }
    local opt = optim.Adam({ a, b }, { lr = 0.1 })
    a.grad = D.tensor { 1 }
    opt:step()
    b.grad = D.tensor { 1 }
    opt:step()
    assert.are.equal(2, opt.state[1].step)
    assert.are.equal(1, opt.state[2].step)
    assert_close(b, { 0.9 }) -- b's first step: exactly lr
  end)

  it("checks its arguments", function()
    H.assert_error_with("Adam: beta1 must be in [0, 1), got 1", optim.Adam, { H.leaf { 1 } }, { betas = { 1, 0.9 } })
    H.assert_error_with("AdamW: eps must be >= 0, got -1", optim.AdamW, { H.leaf { 1 } }, { eps = -1 })
    H.assert_error_with("Adam: lr must be a number, got x", optim.Adam, { H.leaf { 1 } }, { lr = "x" })
  end)
end)

--- convergence and state_dict ------------------------------------------------

-- A least-squares problem: X (8, 3), y = X w_true (8, 1).
local function least_squares()
  local g = D.Generator(7)
  local X = D.randn(8, 3, g)
  local w_true = D.tensor { { 1 }, { -2 }, { 0.5 } }
  return X, X:matmul(w_true), w_true
end

local function loss_of(X, y, w) return D.mse_loss(X:matmul(w), y) end

describe("training", function()
  local cases = {
    { "SGD with momentum", function(p) return optim.SGD(p, { lr = 0.05, momentum = 0.9 }) end },
    { "SGD with nesterov", function(p) return optim.SGD(p, { lr = 0.05, momentum = 0.9, nesterov = true }) end },
    { "Adam", function(p) return optim.Adam(p, { lr = 0.05 }) end },
    { "AdamW", function(p) return optim.AdamW(p, { lr = 0.05, weight_decay = 1e-4 }) end },
  }
  for _, c in ipairs(cases) do
    it(c[1] .. " fits a tiny least-squares problem", function()
      local X, y, w_true = least_squares()
      local w = D.zeros(3, 1):requires_grad_()
      local opt = c[2] { w }
      local first
      for _ = 1, 300 do
        opt:zero_grad()
        local loss = loss_of(X, y, w)
        first = first or loss:item()
        loss:backward()
        opt:step()
      end
      local final = loss_of(X, y, w):item()
      assert.is_true(final < 1e-4 and final < first * 1e-4, ("loss %g -> %g"):format(first, final))
      assert.is_true((w:detach() - w_true):abs():max():item() < 1e-2)
    end)
  end

  local resumable = {
    { "SGD", function(p) return optim.SGD(p, { lr = 0.05, momentum = 0.9, weight_decay = 1e-3 }) end },
    { "Adam", function(p) return optim.Adam(p, { lr = 0.05 }) end },
    { "AdamW", function(p) return optim.AdamW(p, { lr = 0.05 }) end },
  }
  for _, c in ipairs(resumable) do
    it(c[1] .. ": state_dict round trip continues identically", function()
      local X, y = least_squares()
      local w, b = D.zeros(3, 1):requires_grad_(), D.zeros(1):requires_grad_()
      local function train(opt, params, n)
        for _ = 1, n do
          opt:zero_grad()
          D.mse_loss(X:matmul(params[1]) + params[2], y):backward()
          opt:step()
        end
      end
      local a = c[2] { w, b }
      train(a, { w, b }, 3)
      local sd = a:state_dict()
      assert.are.equal(3, sd.step)
      assert.are.equal(2, #sd.state)
      local w2, b2 = w:detach():clone():requires_grad_(), b:detach():clone():requires_grad_()
      train(a, { w, b }, 4)
      -- the saved state is a copy: later steps did not change it
      local key = c[1] == "SGD" and "momentum_buffer" or "exp_avg"
      assert.is_true(sd.state[1][key]:ne(a.state[1][key]):sum():item() > 0)

      local fresh = c[2] { w2, b2 }
      fresh.lr = 123 -- restored by load_state_dict
      fresh:load_state_dict(sd)
      assert.are.equal(0.05, fresh.lr)
      assert.are.equal(3, fresh.step_count)
      train(fresh, { w2, b2 }, 4)
      H.assert_identical(w:detach(), w2:detach())
      H.assert_identical(b:detach(), b2:detach())
    end)
  end

  it("load_state_dict lists every mismatch", function()
    local p, q = H.leaf { { 1, 2 } }, H.leaf { 1 }
    local opt = optim.Adam({ p, q })
    p.grad, q.grad = D.tensor { { 1, 1 } }, D.tensor { 1 }
    opt:step()
    local sd = opt:state_dict()
    local other = optim.Adam({ H.leaf { 1, 2 }, H.leaf { 1, 2 } })
    H.assert_error_with("Adam:load_state_dict: parameter 1: exp_avg has shape {1,2}, the parameter {2}", function()
      other:load_state_dict(sd)
    end)
    local ok, err = pcall(other.load_state_dict, other, sd)
    assert.is_false(ok)
    assert.truthy(err:find("parameter 2: exp_avg_sq has shape {1}, the parameter {2}", 1, true))
    H.assert_error_with("Adam:load_state_dict: the state has 2 parameters, the optimizer has 1", function()
      optim.Adam({ H.leaf { 1 } }):load_state_dict(sd)
    end)
    H.assert_error_with("SGD:load_state_dict: the state is for Adam, not SGD", function()
      optim.SGD({ p, q }, { lr = 1 }):load_state_dict(sd)
    end)
    H.assert_error_with("Adam:load_state_dict: expected a table made by state_dict", function()
      opt:load_state_dict(42)
    end)
  end)
end)

--- clip_grad_norm ----------------------------------------------------------------

describe("optim.clip_grad_norm", function()
  it("returns the total norm and leaves gradients below max_norm alone", function()
    local a, b, c = H.leaf { 3, 4 }, H.leaf { 12 }, H.leaf { 7 }
    a.grad, b.grad = D.tensor { 3, 4 }, D.tensor { 12 }
    assert_close(optim.clip_grad_norm({ a, b, c }, 26), 13) -- c has no grad: skipped
    assert_close(a.grad, { 3, 4 })
    assert_close(b.grad, { 12 })
    assert.is_nil(c.grad)
  end)

  it("scales every gradient by max_norm / norm above it", function()
    local a, b = H.leaf { 0, 0 }, H.leaf { 0 }
    a.grad, b.grad = D.tensor { 3, 4 }, D.tensor { 12 }
    assert_close(optim.clip_grad_norm({ a, b }, 6.5), 13)
    assert_close(a.grad, { 1.5, 2 })
    assert_close(b.grad, { 6 })
    assert_close(optim.clip_grad_norm({ a, b }, 100), 6.5)
  end)

  it("handles gradients whose squares overflow float", function()
    local a = H.leaf { 0, 0 }
    a.grad = D.tensor { 3e20, 4e20 }
    assert_close(optim.clip_grad_norm({ a }, 1), 5e20, 1e-5)
    assert_close(a.grad, { 0.6, 0.8 }, 1e-5)
  end)

  it("raises naming the parameter whose gradient holds NaN or Inf", function()
    local a, b = H.leaf { 0 }, H.leaf { 0, 0 }
    a.grad, b.grad = D.tensor { 1 }, D.tensor { 1, 0 / 0 }
    H.assert_error_with("clip_grad_norm: the gradient of parameter 2 contains NaN or Inf", optim.clip_grad_norm,
      { a, b }, 1)
    b.grad = D.tensor { math.huge, 1 }
    H.assert_error_with("clip_grad_norm: the gradient of parameter 2 contains NaN or Inf", optim.clip_grad_norm,
      { a, b }, 1)
    H.assert_error_with("clip_grad_norm: max_norm must be a positive number, got 0", optim.clip_grad_norm, { a }, 0)
    assert.is_true(D.is_grad_enabled())
  end)
end)

--- schedules -------------------------------------------------------------------

describe("optim.schedule", function()
  it("constant", function()
    local f = optim.schedule.constant(0.1)
    assert.are.equal(0.1, f(1))
    assert.are.equal(0.1, f(10000))
  end)

  it("warmup: linear from lr / warmup to lr, then lr", function()
    local f = optim.schedule.warmup(1, 4)
    assert_close({ f(1), f(2), f(3), f(4), f(5), f(100) }, { 0.25, 0.5, 0.75, 1, 1, 1 })
  end)

  it("cosine: warm-up, then cosine decay to min_lr", function()
    local f = optim.schedule.cosine { 1, 10, warmup = 2, min_lr = 0.1 }
    assert_close(f(1), 0.5)
    assert_close(f(2), 1)
    assert_close(f(4), 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25))) -- 0.868198...
    assert_close(f(4), 0.8681980515339464)
    assert_close(f(6), 0.55)
    assert_close(f(10), 0.1)
    assert_close(f(50), 0.1)
    local g = optim.schedule.cosine { lr = 2, total = 4 }
    assert_close({ g(0), g(1), g(2), g(4) }, { 2, 2 * 0.5 * (1 + math.cos(math.pi / 4)), 1, 0 })
  end)

  it("checks its arguments", function()
    H.assert_error_with("schedule.cosine: warmup (10) must be less than total (10)", optim.schedule.cosine,
      { 1, 10, warmup = 10 })
    H.assert_error_with("schedule.cosine: min_lr (2) is above lr (1)", optim.schedule.cosine, { 1, 10, min_lr = 2 })
    H.assert_error_with("schedule.warmup: warmup_steps must be a number >= 1, got 0", optim.schedule.warmup, 1, 0)
    H.assert_error_with("schedule.constant: lr must be a number >= 0", optim.schedule.constant, "x")
  end)
end)

--- EMA ---------------------------------------------------------------------------

local function model_of(params)
  local m = { params = params }
  function m:named_parameters()
    local out = {}
    for i, pair in ipairs(self.params) do out[i] = { pair[1], pair[2] } end
    return out
  end
  return m
end

local function set(t, values)
  D.no_grad(function() t:copy_(D.tensor(values)) end)
end

describe("optim.EMA", function()
  it("with warm-up: d = min(decay, (1 + t) / (10 + t))", function()
    local w = H.leaf { 0, 10 }
    local ema = optim.EMA(model_of { { "w", w } }, 0.9)
    local expected = { { 0.9, 10 }, { 1.8, 10 }, { 2.7, 10 } } -- d = 0.1, 2/11, 0.25
    for i = 1, 3 do
      set(w, { i, 10 })
      ema:update()
      assert_close(ema.shadow[1], expected[i], 1e-6)
    end
    assert.are.equal(3, ema.num_updates)
    assert_close(w, { 3, 10 }) -- the model is untouched
  end)

  it("without warm-up: d = decay", function()
    local w = H.leaf { 0 }
    local ema = optim.EMA(model_of { { "w", w } }, 0.5, { warmup = false })
    local expected = { 0.5, 1.25, 2.125 }
    for i = 1, 3 do
      set(w, { i })
      ema:update()
      assert_close(ema.shadow[1], { expected[i] })
    end
    -- the decay caps the warm-up: after many updates d = decay
    local ema2 = optim.EMA(model_of { { "w", w } }, 0.5)
    assert_close(ema2:current_decay(), 0.1)
    ema2.num_updates = 100
    assert_close(ema2:current_decay(), 0.5)
  end)

  it("shadows are copies without grad", function()
    local w = H.leaf { 1, 2 }
    local ema = optim.EMA(model_of { { "w", w } }, 0.9)
    assert.is_false(ema.shadow[1].requires_grad)
    assert.is_false(ema.shadow[1]:same_storage(w))
  end)

  it("copy_to writes the shadow; swap exchanges, and twice is the identity", function()
    local w, b = H.leaf { 1, 2 }, H.leaf { 3 }
    local model = model_of { { "w", w }, { "b", b } }
    local ema = optim.EMA(model, 0.5, { warmup = false })
    set(w, { 5, 6 })
    set(b, { 7 })
    ema:update() -- shadow: {3, 4}, {5}
    ema:swap(model)
    assert_close(w, { 3, 4 })
    assert_close(b, { 5 })
    assert_close(ema.shadow[1], { 5, 6 })
    assert_close(ema.shadow[2], { 7 })
    assert.is_true(w.requires_grad and w.is_leaf)
    ema:swap(model)
    assert_close(w, { 5, 6 })
    assert_close(b, { 7 })
    assert_close(ema.shadow[1], { 3, 4 })
    assert_close(ema.shadow[2], { 5 })
    ema:copy_to(model)
    assert_close(w, { 3, 4 })
    assert_close(b, { 5 })
    assert.is_true(D.is_grad_enabled())
  end)

  it("state_dict round trip", function()
    local w = H.leaf { 1, 2 }
    local model = model_of { { "w", w } }
    local ema = optim.EMA(model, 0.9)
    set(w, { 3, 4 })
    ema:update()
    local sd = ema:state_dict()
    local other = optim.EMA(model, 0.5, { warmup = false })
    other:load_state_dict(sd)
    assert.are.equal(0.9, other.decay)
    assert.is_true(other.warmup)
    assert.are.equal(1, other.num_updates)
    H.assert_identical(other.shadow[1], ema.shadow[1])
    ema:update()
    other:update()
    H.assert_identical(other.shadow[1], ema.shadow[1])
    assert.is_false(sd.shadow.w:same_storage(ema.shadow[1])) -- cloned
  end)

  it("load_state_dict and update report mismatches", function()
    local w, b = H.leaf { 1, 2 }, H.leaf { 3 }
    local ema = optim.EMA(model_of { { "w", w }, { "b", b } }, 0.9)
    H.assert_error_with("EMA:load_state_dict: 'w' has shape {3}, expected {2}; missing 'b'; unexpected 'c'", function()
      ema:load_state_dict { shadow = { w = D.zeros(3), c = D.zeros(1) } }
    end)
    H.assert_error_with("EMA:update: the model has 1 parameters, the EMA 2", function()
      ema:update(model_of { { "w", w } })
    end)
    H.assert_error_with("EMA:swap: parameter 2 is 'x' in the model, 'b' in the EMA", function()
      ema:swap(model_of { { "w", w }, { "x", b } })
    end)
    H.assert_error_with("EMA:copy_to: 'b' has shape {2} in the model, {1} in the EMA", function()
      ema:copy_to(model_of { { "w", w }, { "b", w } })
    end)
    H.assert_error_with("EMA: decay must be a number in [0, 1], got 2", optim.EMA, model_of { { "w", w } }, 2)
    H.assert_error_with("EMA: the model must have a named_parameters() method", optim.EMA, {}, 0.9)
  end)
end)
