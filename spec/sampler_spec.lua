-- The DDPM and DDIM samplers (lua/diffusion/sample.lua) on a case with a
-- closed form: data x0 ~ N(mu, s^2) per pixel, for which the exact noise
-- predictor is E[eps | x_t] = sqrt(1 - ab) (x_t - sqrt(ab) mu) / (ab s^2 + 1 - ab).
--
-- With that predictor every step is affine in x plus Gaussian noise, so the
-- mean m and variance v of the samplers' output follow an exact scalar
-- recursion (m' = K m + c, v' = K^2 v + sigma^2), computed here in double.
-- The tolerances come from it:
--   * the samples must match the recursion's (m, v) within 4.5 standard
--     errors of n = 4000 x 4 iid pixels (SE(mean) = sqrt(v / 16000),
--     SE(var) = v sqrt(2 / 16000), 1.1 %) -- this checks the implementation;
--   * the recursion must approach (mu, s^2) -- this checks the method: the
--     discretisation leaves a bias that shrinks with the step count (with a
--     perfect predictor, DDIM is first order in the step size and DDPM with
--     beta_tilde under-disperses by the missing Var[x0 | x_t] term), bounded
--     below per configuration.
local D = require "diffusion"
local schedule = require "diffusion.schedule"
local sample = require "diffusion.sample"
local H = require "helpers"

local MU, S2 = 0.2, 0.09 -- data N(0.2, 0.3^2): inside [-1, 1] but for 0.4 % of the pixels
local N, SHAPE = 4000, { 1, 2, 2 }

-- The exact predictors for N(mu, s2) data; mu may be a number or a (N, 1, 1, 1) tensor.
local function gaussian_model(sched, prediction, mu, s2)
  mu, s2 = mu or MU, s2 or S2
  local ab_of = sched._values.alpha_bar
  return function(x, t, _)
    local ab = ab_of[t[1]]
    local eps = (x - mu * math.sqrt(ab)) * (math.sqrt(1 - ab) / (ab * s2 + 1 - ab))
    if prediction == nil or prediction == "epsilon" then return eps end
    local x0 = (x - eps * math.sqrt(1 - ab)) * (1 / math.sqrt(ab)) -- = E[x0 | x_t]
    if prediction == "x0" then return x0 end
    return eps * math.sqrt(ab) - x0 * math.sqrt(1 - ab) -- v
  end
end

-- Mean and variance of the sampler's output for that predictor (no clipping).
local function exact_moments(sched, kind, steps, eta, variance)
  local ab_of = sched._values.alpha_bar
  local ts = sample.timesteps(sched.T, steps)
  local m, v = 0, 1
  for i, t in ipairs(ts) do
    local tp = ts[i + 1] or 0
    local a, ap = ab_of[t], tp > 0 and ab_of[tp] or 1
    local g = math.sqrt(a) * S2 / (a * S2 + 1 - a) -- E[x0 | x] = mu + g (x - sqrt(a) mu)
    local cx, c0, sig2                             -- x_prev = cx x + c0 E[x0 | x] + sigma z
    if kind == "ddim" then
      sig2 = eta ^ 2 * (1 - ap) / (1 - a) * (1 - a / ap)
      local k = math.sqrt((1 - ap - sig2) / (1 - a))
      cx, c0 = k, math.sqrt(ap) - k * math.sqrt(a)
    else
      local beta = 1 - a / ap
      cx, c0 = (1 - ap) * math.sqrt(1 - beta) / (1 - a), beta * math.sqrt(ap) / (1 - a)
      sig2 = tp == 0 and 0 or variance == "beta" and beta or (1 - ap) / (1 - a) * beta
    end
    local K = cx + c0 * g
    m, v = K * m + c0 * (MU - g * math.sqrt(a) * MU), K * K * v + sig2
  end
  return m, v
end

local function check_moments(x, m, v, label)
  local count = x:numel()
  local mean, var = x:mean():item(), x:var():item()
  local se_mean, se_var = math.sqrt(v / count), v * math.sqrt(2 / count)
  assert.is_true(math.abs(mean - m) < 4.5 * se_mean,
    string.format("%s: mean %.5f, expected %.5f +- %.5f", label, mean, m, 4.5 * se_mean))
  assert.is_true(math.abs(var - v) < 4.5 * se_var,
    string.format("%s: variance %.5f, expected %.5f +- %.5f", label, var, v, 4.5 * se_var))
end

describe("timesteps", function()
  it("sample.timesteps is schedule.timesteps (leading by default)", function()
    assert.are.equal(schedule.timesteps, sample.timesteps)
    assert.are.same({ 801, 601, 401, 201, 1 }, sample.timesteps(1000, 5))
  end)
end)

describe("samplers on Gaussian data", function()
  local sched = schedule.linear {}
  local eps_model = gaussian_model(sched)

  it("DDPM (T = 1000 steps) gives N(mu, s^2): beta_tilde and beta", function()
    for _, variance in ipairs { "beta_tilde", "beta" } do
      local x = sample.ddpm(eps_model, sched, { n = N, shape = SHAPE, seed = 1, clip_x0 = false, variance = variance })
      assert.are.same({ N, 1, 2, 2 }, x:shape())
      local m, v = exact_moments(sched, "ddpm", 1000, 0, variance)
      check_moments(x, m, v, "ddpm " .. variance)
      assert.is_true(math.abs(m - MU) < 1e-3 and math.abs(v / S2 - 1) < 0.03, variance .. ": v = " .. v)
    end
  end)

  it("DDIM with 50 and 200 steps, eta = 0 and 1", function()
    -- discretisation bounds on |v / s^2 - 1| for the recursion (its values: 0.16, 0.043, 0.29, 0.10)
    local bound = { [50] = { [0] = 0.18, [1] = 0.31 }, [200] = { [0] = 0.05, [1] = 0.11 } }
    local previous = {}
    for _, steps in ipairs { 50, 200 } do
      for _, eta in ipairs { 0, 1 } do
        local x = sample.ddim(eps_model, sched, { n = N, shape = SHAPE, steps = steps, eta = eta, seed = 2, clip_x0 = false })
        local m, v = exact_moments(sched, "ddim", steps, eta)
        local label = string.format("ddim %d steps eta %g", steps, eta)
        check_moments(x, m, v, label)
        assert.is_true(math.abs(m - MU) < 0.01, label .. ": m = " .. m)
        assert.is_true(math.abs(v / S2 - 1) < bound[steps][eta], label .. ": v = " .. v)
        -- more steps, closer to s^2
        if previous[eta] then assert.is_true(math.abs(v - S2) < math.abs(previous[eta] - S2)) end
        previous[eta] = v
      end
    end
  end)

  it("DDIM with eta = 1 matches DDPM: step for step over all T, and in variance at 200 steps", function()
    local a = sample.ddim(eps_model, sched, { n = 64, shape = SHAPE, steps = 1000, eta = 1, seed = 3, clip_x0 = false })
    local b = sample.ddpm(eps_model, sched, { n = 64, shape = SHAPE, seed = 3, clip_x0 = false })
    assert.is_true(H.max_diff(a, b) < 1e-4, "max diff " .. H.max_diff(a, b))
    local _, v_ddim = exact_moments(sched, "ddim", 200, 1)
    local _, v_ddpm = exact_moments(sched, "ddpm", 200, 0, "beta_tilde")
    assert.is_true(math.abs(v_ddim - v_ddpm) < 1e-9) -- the same chain
    local x = sample.ddpm(eps_model, sched, { n = N, shape = SHAPE, steps = 200, seed = 4, clip_x0 = false })
    check_moments(x, exact_moments(sched, "ddpm", 200, 0, "beta_tilde"))
  end)

  it("other schedules: cosine DDIM, sigmoid DDPM", function()
    local cos = schedule.cosine {}
    local x = sample.ddim(gaussian_model(cos), cos, { n = N, shape = SHAPE, steps = 100, seed = 5, clip_x0 = false })
    check_moments(x, exact_moments(cos, "ddim", 100, 0))
    local sig = schedule.sigmoid { T = 200 }
    x = sample.ddpm(gaussian_model(sig), sig, { n = N, shape = SHAPE, seed = 6, clip_x0 = false })
    check_moments(x, exact_moments(sig, "ddpm", 200, 0, "beta_tilde"))
  end)

  it("prediction types x0 and v give the epsilon results within float error", function()
    for _, kind in ipairs { "ddim", "ddpm" } do
      local opts = { n = 32, shape = SHAPE, steps = 50, seed = 7, clip_x0 = false, eta = kind == "ddim" and 0.5 or nil }
      local base = sample[kind](eps_model, sched, opts)
      for _, p in ipairs { "x0", "v" } do
        local o = {}
        for k, v in pairs(opts) do o[k] = v end
        o.prediction = p
        local x = sample[kind](gaussian_model(sched, p), sched, o)
        assert.is_true(H.max_diff(x, base) < 1e-4, kind .. " " .. p .. ": " .. H.max_diff(x, base))
      end
    end
  end)
end)

describe("sampler options", function()
  local sched = schedule.linear { T = 100 }
  local model = gaussian_model(sched)

  it("follows a reference loop written with plain tensor ops (clipping, both variances, eta)", function()
    local pull = gaussian_model(sched, nil, 0.8, 0.25) -- x0 predictions beyond 1: clipping matters
    local function reference(kind, steps, variance, eta)
      local g = D.Generator(21)
      local ab = sched._values.alpha_bar
      local ts = sample.timesteps(100, steps)
      local x = D.randn({ 3, 1, 2, 2 }, g)
      for i, t in ipairs(ts) do
        local tp = ts[i + 1] or 0
        local a, ap = ab[t], tp > 0 and ab[tp] or 1
        local eps = pull(x, D.full({ 3 }, t))
        local x0 = ((x - eps * math.sqrt(1 - a)) / math.sqrt(a)):clamp(-1, 1)
        if kind == "ddpm" then
          local beta = 1 - a / ap
          local var = variance == "beta" and beta or (1 - ap) / (1 - a) * beta
          x = x0 * (beta * math.sqrt(ap) / (1 - a)) + x * ((1 - ap) * math.sqrt(1 - beta) / (1 - a))
          if tp > 0 then x = x + D.randn({ 3, 1, 2, 2 }, g) * math.sqrt(var) end
        else
          local e = (x - x0 * math.sqrt(a)) / math.sqrt(1 - a) -- eps consistent with the clipped x0
          local sigma = eta * math.sqrt((1 - ap) / (1 - a) * (1 - a / ap))
          x = x0 * math.sqrt(ap) + e * math.sqrt(1 - ap - sigma ^ 2)
          if tp > 0 and eta > 0 then x = x + D.randn({ 3, 1, 2, 2 }, g) * sigma end
        end
      end
      return x
    end
    for _, case in ipairs { { "ddpm", 100, "beta_tilde" }, { "ddpm", 100, "beta" }, { "ddpm", 7, "beta" },
      { "ddim", 10, nil, 0 }, { "ddim", 10, nil, 0.5 }, { "ddim", 33, nil, 1 } } do
      local kind, steps, variance, eta = case[1], case[2], case[3], case[4]
      local x = sample[kind](pull, sched, { n = 3, shape = SHAPE, steps = steps, variance = variance, eta = eta, seed = 21 })
      local want = reference(kind, steps, variance, eta)
      assert.is_true(H.max_diff(x, want) < 1e-4, string.format("%s %d %s %s: %g", kind, steps, tostring(variance),
        tostring(eta), H.max_diff(x, want)))
    end
  end)

  it("the same seed gives the same samples, another seed others, a generator works too", function()
    local opts = { n = 8, shape = { 2, 3, 3 }, steps = 10, eta = 0.5, seed = 42 }
    local a, b = sample.ddim(model, sched, opts), sample.ddim(model, sched, opts)
    assert.are.same(a:totable(), b:totable())
    local c = sample.ddim(model, sched, { n = 8, shape = { 2, 3, 3 }, steps = 10, eta = 0.5, seed = 43 })
    assert.is_true(H.max_diff(a, c) > 0.1)
    local d = sample.ddpm(model, sched, { n = 8, shape = { 2, 3, 3 }, steps = 10, generator = D.Generator(42) })
    local e = sample.ddpm(model, sched, { n = 8, shape = { 2, 3, 3 }, steps = 10, seed = 42 })
    assert.are.same(d:totable(), e:totable())
  end)

  it("calls the model with (x, t, y) under no_grad, t all equal and descending", function()
    local calls, seen = 0, {}
    local y = D.tensor { 1, 2, 3 }
    local function spy(x, t, labels)
      calls = calls + 1
      assert.is_false(D.is_grad_enabled())
      assert.are.same({ 3, 1, 2, 2 }, x:shape())
      assert.are.same({ 3 }, t:shape())
      assert.are.equal(t:min():item(), t:max():item())
      assert.are.equal(y, labels)
      seen[#seen + 1] = t[1]
      return model(x, t)
    end
    assert.is_true(D.is_grad_enabled())
    sample.ddim(spy, sched, { n = 3, shape = SHAPE, steps = 4, y = y })
    assert.is_true(D.is_grad_enabled())
    assert.are.equal(4, calls)
    assert.are.same({ 76, 51, 26, 1 }, seen)
    -- grad mode is restored when the model raises
    H.expect_error(function() sample.ddim(function() error("boom") end, sched, { n = 1, shape = SHAPE }) end, "boom")
    assert.is_true(D.is_grad_enabled())
  end)

  it("classifier-free guidance: one batched call; w = 1 is the conditional model, w = 0 the unconditional", function()
    local means = { 0.5, -0.5, 0 } -- class 3 is the null class
    local calls = 0
    local function conditional(x, t, y)
      calls = calls + 1
      local n = x:size(1)
      local mu = D.zeros(n, 1, 1, 1)
      for i = 1, n do mu:set(means[y[i]], i, 1, 1, 1) end
      local ab = sched._values.alpha_bar[t[1]]
      return (x - mu * math.sqrt(ab)) * (math.sqrt(1 - ab) / (ab * S2 + 1 - ab))
    end
    local y = D.tensor { 1, 2, 1, 2 }
    local opts = { n = 4, shape = SHAPE, steps = 20, seed = 9, y = y, null_class = 3 }
    local plain = sample.ddim(conditional, sched, opts)
    calls = 0
    opts.guidance = 1
    local w1 = sample.ddim(conditional, sched, opts)
    assert.are.equal(20, calls) -- one model call of 2n per step
    assert.is_true(H.max_diff(w1, plain) < 1e-5, "w = 1: " .. H.max_diff(w1, plain))
    opts.guidance = 0
    local w0 = sample.ddim(conditional, sched, opts)
    local uncond = sample.ddim(conditional, sched, { n = 4, shape = SHAPE, steps = 20, seed = 9, y = D.full({ 4 }, 3) })
    assert.is_true(H.max_diff(w0, uncond) < 1e-5, "w = 0: " .. H.max_diff(w0, uncond))
    -- w = 3 pushes the class means apart (3 times the conditional shift, before clipping)
    opts.guidance, opts.n, opts.y, opts.clip_x0 = 3, 2, D.tensor { 1, 2 }, false
    local x = sample.ddim(conditional, sched, opts)
    assert.is_true(x[1]:mean():item() > 1 and x[2]:mean():item() < -1)
    -- labels as a Lua list
    local listed = sample.ddim(conditional, sched, { n = 4, shape = SHAPE, steps = 20, seed = 9, y = { 1, 2, 1, 2 } })
    assert.are.same(plain:totable(), listed:totable())
  end)

  it("clip_x0 (default) keeps DDIM's final x0 in [-1, 1]", function()
    local full = schedule.linear {} -- T = 1000: x_T is pure noise (ab_T = 4e-5; T = 100 leaves 0.36)
    local far = gaussian_model(full, nil, 3, 0.01)
    local x = sample.ddim(far, full, { n = 16, shape = SHAPE, steps = 20, seed = 10 })
    assert.is_true(x:max():item() <= 1 and x:min():item() >= -1)
    assert.is_true(x:min():item() > 0.9) -- all pulled to the upper bound
    local free = sample.ddim(far, full, { n = 16, shape = SHAPE, steps = 20, seed = 10, clip_x0 = false })
    assert.is_true(math.abs(free:mean():item() - 3) < 0.1)
  end)

  it("callback once per step, trajectory snapshots, progress updates", function()
    local steps_seen, last = {}, nil
    local x, traj = sample.ddpm(model, sched, {
      n = 2, shape = SHAPE, steps = 10, seed = 1, trajectory = true, trajectory_every = 3,
      callback = function(i, xi, x0, t)
        steps_seen[#steps_seen + 1] = i
        assert.are.same({ 2, 1, 2, 2 }, xi:shape())
        assert.are.same({ 2, 1, 2, 2 }, x0:shape())
        assert.are.equal(sample.timesteps(100, 10)[i], t)
        last = xi
      end,
    })
    assert.are.same({ 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 }, steps_seen)
    assert.are.equal(last, x)
    assert.are.equal(5, #traj) -- x_T, after steps 3, 6, 9 and the last
    assert.are.equal(x, traj[5])
    local _, every = sample.ddim(model, sched, { n = 2, shape = SHAPE, steps = 7, trajectory = true })
    assert.are.equal(8, #every)
    assert.is_nil(select(2, sample.ddim(model, sched, { n = 2, shape = SHAPE, steps = 7 })))
    local updates, finished = {}, 0
    local bar = { update = function(_, i) updates[#updates + 1] = i end, finish = function() finished = finished + 1 end }
    sample.ddim(model, sched, { n = 2, shape = SHAPE, steps = 5, progress = bar })
    assert.are.same({ 1, 2, 3, 4, 5 }, updates)
    assert.are.equal(1, finished)
  end)

  it("rejects bad options and bad model outputs with messages", function()
    local ok_opts = { n = 2, shape = SHAPE }
    H.expect_error(function() sample.ddim(model, sched, { n = 2, shape = SHAPE, steps = 101 }) end,
      "sample.ddim: steps must be an integer in [1, 100], got 101")
    H.expect_error(function() sample.ddim(model, sched, { n = 2, shape = SHAPE, eta = 2 }) end,
      "sample.ddim: eta must be a number in [0, 1], got 2")
    H.expect_error(function() sample.ddpm(model, sched, { n = 2, shape = SHAPE, variance = "large" }) end,
      'sample.ddpm: variance must be "beta" or "beta_tilde", got large')
    H.expect_error(function() sample.ddpm(model, sched, { n = 2, shape = SHAPE, prediction = "eps" }) end,
      'sample.ddpm: prediction must be "epsilon", "x0" or "v", got eps')
    H.expect_error(function() sample.ddim(model, sched, { n = 2, shape = SHAPE, stepz = 3 }) end,
      "sample.ddim: unknown option 'stepz'")
    H.expect_error(function() sample.ddim(model, sched, { shape = SHAPE }) end, "sample.ddim: n must be an integer >= 1, got nil")
    H.expect_error(function() sample.ddim(model, sched, { n = 2 }) end, "sample.ddim: shape must be a list like {C, H, W}")
    H.expect_error(function() sample.ddim(model, sched, { n = 2, shape = { 1, 0 } }) end,
      "sample.ddim: shape[2] must be an integer >= 1, got 0")
    H.expect_error(function() sample.ddim(model, sched, { n = 2, shape = SHAPE, y = D.tensor { 1, 2, 3 } }) end,
      "sample.ddim: 3 labels for n = 2 samples")
    H.expect_error(function() sample.ddim(model, sched, { n = 2, shape = SHAPE, y = D.tensor { 1, 2 }, guidance = 2 }) end,
      "sample.ddim: guidance needs null_class (the label of the unconditional pass), got nil")
    H.expect_error(function() sample.ddim(model, sched, { n = 2, shape = SHAPE, guidance = 2, null_class = 0 }) end,
      "sample.ddim: guidance needs labels y")
    H.expect_error(function() sample.ddim(model, sched, { n = 2, shape = SHAPE, seed = 1, generator = D.Generator(1) }) end,
      "sample.ddim: give seed or generator, not both")
    H.expect_error(function() sample.ddim(42, sched, ok_opts) end, "sample.ddim: model must be callable as model(x, t, y), got number")
    H.expect_error(function() sample.ddim(model, {}, ok_opts) end, "sample.ddim: expected a schedule (D.schedule.*), got table")
    H.expect_error(function() sample.ddim(function() return 1 end, sched, ok_opts) end,
      "sample.ddim: the model returned number, expected a tensor")
    H.expect_error(function() sample.ddpm(function(x) return x[1] end, sched, ok_opts) end,
      "sample.ddpm: the model returned shape {1,2,2} for x of shape {2,1,2,2}")
  end)
end)
