-- Noise schedules (lua/diffusion/schedule.lua over csrc/diffusion/schedule.c):
-- the four named kinds against their formulas evaluated here in double, the
-- derived tables, add_noise / posterior / targets / predictions, sample_t,
-- the sampler step kernels with hand-computed coefficients, and every
-- rejected schedule with its message.
local D = require "diffusion"
local core = require "diffusion.core"
local schedule = require "diffusion.schedule"
local H = require "helpers"

-- relative comparison, for values far below 1
local function assert_rel(actual, expected, rtol, what)
  assert.is_true(math.abs(actual - expected) <= rtol * math.abs(expected),
    string.format("%s: expected %.9g, got %.9g", what or "value", expected, actual))
end

local function item(t, i) return t[i] end

describe("named schedules", function()
  it("linear: betas = linspace(1e-4, 0.02, T), alpha_bar = cumprod(1 - betas)", function()
    local s = schedule.linear { T = 1000 }
    assert.are.equal(1000, s.T)
    assert.are.equal("linear", s.kind)
    local ab = 1
    for t = 1, 1000 do
      local beta = 1e-4 + (0.02 - 1e-4) * (t - 1) / 999
      ab = ab * (1 - beta)
      if t == 1 or t == 2 or t == 500 or t == 1000 then
        assert_rel(s._values.betas[t], beta, 1e-12, "beta " .. t)
        assert_rel(s._values.alpha_bar[t], ab, 1e-12, "alpha_bar " .. t)
        assert_rel(item(s.betas, t), beta, 1e-6, "betas tensor " .. t)
        assert_rel(item(s.alpha_bar, t), ab, 1e-6, "alpha_bar tensor " .. t)
      end
    end
    -- independently known figures: ab_1 = 0.9999, ab_1000 = 4.036e-5 (DDPM's linear schedule)
    assert_rel(s._values.alpha_bar[1], 0.9999, 1e-12)
    assert_rel(s._values.alpha_bar[1000], 4.0358e-5, 1e-3)
  end)

  it("linear with other ends and a tiny T", function()
    local s = schedule.linear { T = 3, beta_start = 0.1, beta_end = 0.3 }
    H.assert_close(s.betas, { 0.1, 0.2, 0.3 }, 1e-7)
    H.assert_close(s.alpha_bar, { 0.9, 0.72, 0.504 }, 1e-7)
    local one = schedule.linear { T = 1, beta_start = 0.25, beta_end = 0.5 }
    H.assert_close(one.betas, { 0.25 }, 1e-7) -- numpy's linspace(a, b, 1) = {a}
  end)

  it("scaled_linear: betas = linspace(sqrt(0.00085), sqrt(0.012), T)^2", function()
    local s = schedule.scaled_linear {}
    assert.are.equal(1000, s.T)
    local a, b = math.sqrt(0.00085), math.sqrt(0.012)
    local ab = 1
    for t = 1, 1000 do
      local beta = (a + (b - a) * (t - 1) / 999) ^ 2
      ab = ab * (1 - beta)
      if t == 1 or t == 250 or t == 999 or t == 1000 then
        assert_rel(s._values.betas[t], beta, 1e-12, "beta " .. t)
        assert_rel(s._values.alpha_bar[t], ab, 1e-12, "alpha_bar " .. t)
      end
    end
    assert_rel(s._values.betas[1], 0.00085, 1e-12)
    assert_rel(s._values.betas[1000], 0.012, 1e-12)
  end)

  it("cosine: alpha_bar = f(t)/f(0) where no beta is clipped, the last beta clipped to 0.999", function()
    local T, sv = 1000, 0.008
    local s = schedule.cosine { T = T, s = sv }
    local function f(u) return math.cos((u + sv) / (1 + sv) * math.pi / 2) ^ 2 end
    for _, t in ipairs { 1, 2, 100, 500, 900, 990 } do
      assert_rel(s._values.alpha_bar[t], f(t / T) / f(0), 1e-10, "alpha_bar " .. t)
      assert_rel(s._values.betas[t], 1 - f(t / T) / f((t - 1) / T), 1e-9, "beta " .. t)
      assert_rel(item(s.alpha_bar, t), f(t / T) / f(0), 1e-6, "alpha_bar tensor " .. t)
    end
    -- f(1) = 0 would give beta_T = 1: clipped, and alpha_bar recomputed from the clipped beta
    assert.are.equal(0.999, s._values.betas[T])
    assert_rel(s._values.alpha_bar[T], s._values.alpha_bar[T - 1] * 0.001, 1e-12)
    assert_rel(s._values.alpha_bar[T - 1], f((T - 1) / T) / f(0), 1e-9)
    -- a lower max_beta clips more steps
    local c = schedule.cosine { T = 10, max_beta = 0.5 }
    local clipped = 0
    for t = 1, 10 do
      assert.is_true(c._values.betas[t] <= 0.5)
      if c._values.betas[t] == 0.5 then clipped = clipped + 1 end
    end
    assert.is_true(clipped >= 2)
  end)

  it("sigmoid: alpha_bar = (v(1) - v(t/T)) / (v(1) - v(0)), clipped at 1e-9", function()
    local T, start, stop, tau = 1000, -3, 3, 1
    local s = schedule.sigmoid {}
    local function v(u) return 1 / (1 + math.exp(-((u * (stop - start) + start) / tau))) end
    for _, t in ipairs { 1, 10, 500, 999 } do
      local want = (v(1) - v(t / T)) / (v(1) - v(0))
      assert_rel(s._values.alpha_bar[t], want, 1e-10, "alpha_bar " .. t)
      assert_rel(item(s.alpha_bar, t), want, 1e-6, "alpha_bar tensor " .. t)
    end
    assert_rel(s._values.alpha_bar[T], 1e-9, 1e-12) -- v(1) - v(1) = 0, clipped
    assert_rel(s._values.alpha_bar[500], 0.5, 1e-12) -- the symmetric midpoint
    local sharp = schedule.sigmoid { T = 100, start = -1, stop = 3, tau = 0.7 }
    local function v2(u) return 1 / (1 + math.exp(-((u * 4 - 1) / 0.7))) end
    assert_rel(sharp._values.alpha_bar[37], (v2(1) - v2(0.37)) / (v2(1) - v2(0)), 1e-10)
  end)

  it("every named kind has alpha_bar strictly decreasing in (0, 1)", function()
    for _, s in ipairs { schedule.linear {}, schedule.cosine {}, schedule.scaled_linear {}, schedule.sigmoid {} } do
      local prev = 1
      for t = 1, s.T do
        local a = s._values.alpha_bar[t]
        assert.is_true(a > 0 and a < prev, s.kind .. " at t = " .. t)
        prev = a
      end
      -- the float tables too (adjacent values can round to one float only where they differ by < 1 ulp)
      local ab = s.alpha_bar:totable()
      for t = 2, s.T do assert.is_true(ab[t] <= ab[t - 1], s.kind .. " tensor at t = " .. t) end
    end
  end)

  it("prints the kind, T, the terminal SNR and a log-SNR sparkline between its ends", function()
    local function starts(prefix, s) assert.are.equal(prefix, s:sub(1, #prefix)) end
    starts("Schedule(linear, T = 1000, terminal SNR 4e-05) log-SNR 9.21 █", tostring(schedule.linear {}))
    starts("Schedule(cosine, T = 1000, terminal SNR 2.4e-09) log-SNR 10.1 █", tostring(schedule.cosine {}))
    -- T = 2: two columns, the highest and the lowest level; log-SNR 2.2 and 0.944
    assert.are.equal("Schedule(betas, T = 2, terminal SNR 2.6) log-SNR 2.2 █▁ 0.944", tostring(schedule.from_betas { 0.1, 0.2 }))
  end)
end)

describe("derived tables", function()
  it("from_betas {0.1, 0.2}: every table by hand", function()
    local s = schedule.from_betas { 0.1, 0.2 }
    assert.are.equal("betas", s.kind)
    assert.are.equal(2, s.T)
    local tol = 1e-6
    H.assert_close(s.betas, { 0.1, 0.2 }, tol)
    H.assert_close(s.alphas, { 0.9, 0.8 }, tol)
    H.assert_close(s.alpha_bar, { 0.9, 0.72 }, tol)
    H.assert_close(s.alpha_bar_prev, { 1, 0.9 }, tol)
    H.assert_close(s.sqrt_alpha_bar, { math.sqrt(0.9), math.sqrt(0.72) }, tol)
    H.assert_close(s.sqrt_one_minus_alpha_bar, { math.sqrt(0.1), math.sqrt(0.28) }, tol)
    H.assert_close(s.snr, { 9, 0.72 / 0.28 }, tol)
    H.assert_close(s.log_snr, { math.log(9), math.log(0.72 / 0.28) }, tol)
    H.assert_close(s.sigma, { 1 / 3, math.sqrt(0.28 / 0.72) }, tol)
    H.assert_close(s.posterior_variance, { 0, 0.1 / 0.28 * 0.2 }, tol)
    H.assert_close(s.posterior_mean_coef1, { 1, 0.2 * math.sqrt(0.9) / 0.28 }, tol)
    H.assert_close(s.posterior_mean_coef2, { 0, 0.1 * math.sqrt(0.8) / 0.28 }, tol)
  end)

  it("from a tensor of betas, and from_alpha_bar giving the same schedule", function()
    local a = schedule.from_betas(D.tensor { 0.5, 0.5 })
    H.assert_close(a.alpha_bar, { 0.5, 0.25 }, 1e-7)
    local b = schedule.from_alpha_bar(function(u) return 0.25 ^ u end, 2)
    assert.are.equal("alpha_bar", b.kind)
    H.assert_close(b.betas, { 0.5, 0.5 }, 1e-7)
    H.assert_close(b.alpha_bar, { 0.5, 0.25 }, 1e-7)
    -- fn(0) need not be 1: alpha_bar_0 = 1 is implied, and beta_1 = 1 - fn(1/T)
    local c = schedule.from_alpha_bar(function(u) return 0.8 - 0.5 * u end, 4)
    H.assert_close(c.alpha_bar, { 0.675, 0.55, 0.425, 0.3 }, 1e-7)
    H.assert_close(c.betas, { 0.325, 1 - 0.55 / 0.675, 1 - 0.425 / 0.55, 1 - 0.3 / 0.425 }, 1e-6)
  end)

  it("the tables agree with each other and with their double lists, for every kind", function()
    for _, s in ipairs { schedule.linear {}, schedule.cosine {}, schedule.scaled_linear {}, schedule.sigmoid {},
      schedule.from_alpha_bar(function(u) return math.exp(-5 * u) end, 50) } do
      local v = s._values
      local prod = 1
      for t = 1, s.T do
        local ab = v.alpha_bar[t]
        prod = prod * v.alphas[t]
        local what = s.kind .. " t = " .. t
        assert_rel(v.alphas[t], 1 - v.betas[t], 1e-12, what)
        assert_rel(prod, ab, 1e-9, what .. " cumprod")
        assert.are.equal(t > 1 and v.alpha_bar[t - 1] or 1, v.alpha_bar_prev[t])
        assert_rel(v.sqrt_alpha_bar[t] ^ 2, ab, 1e-12, what)
        assert_rel(v.sqrt_one_minus_alpha_bar[t] ^ 2, 1 - ab, 1e-12, what)
        assert_rel(v.snr[t], ab / (1 - ab), 1e-12, what)
        assert_rel(v.log_snr[t], math.log(v.snr[t]), 1e-9, what)
        assert_rel(v.sigma[t] ^ 2, 1 / v.snr[t], 1e-12, what)
        if t > 1 then
          assert_rel(v.posterior_variance[t], (1 - v.alpha_bar_prev[t]) / (1 - ab) * v.betas[t], 1e-12, what)
        end
      end
      for _, name in ipairs { "betas", "alpha_bar", "snr", "sigma", "posterior_mean_coef1" } do
        local tab = s[name]:totable()
        for _, t in ipairs { 1, s.T // 2, s.T } do
          assert_rel(tab[t], v[name][t], 1e-6, s.kind .. " " .. name .. " tensor at " .. t)
        end
      end
    end
  end)
end)

describe("add_noise", function()
  local s = schedule.from_betas { 0.1, 0.2 }

  it("mixes per sample: sqrt(ab_t) x0 + sqrt(1 - ab_t) noise", function()
    local x0 = D.tensor { { 1, 2 }, { 3, 4 } }
    local noise = D.tensor { { 0.5, -1 }, { 2, 0 } }
    local xt = s:add_noise(x0, noise, D.tensor { 2, 1 })
    local a2, b2, a1, b1 = math.sqrt(0.72), math.sqrt(0.28), math.sqrt(0.9), math.sqrt(0.1)
    H.assert_close(xt, { { a2 + 0.5 * b2, 2 * a2 - b2 }, { 3 * a1 + 2 * b1, 4 * a1 } }, 1e-6)
    -- a number t is the same timestep for all
    local same = s:add_noise(x0, noise, 2)
    H.assert_close(same, { { a2 + 0.5 * b2, 2 * a2 - b2 }, { 3 * a2 + 2 * b2, 4 * a2 } }, 1e-6)
    assert.are.same({ 2, 2 }, same:shape())
  end)

  it("works on (N, C, H, W) batches and non-contiguous inputs", function()
    local x0 = D.randn(3, 2, 4, 5):transpose(3, 4) -- (3, 2, 5, 4), not contiguous
    local noise = D.randn(3, 2, 5, 4)
    local t = D.tensor { 1, 2, 1 }
    local xt = s:add_noise(x0, noise, t)
    local ab = { 0.9, 0.72, 0.9 }
    for n = 1, 3 do
      local want = x0[n] * math.sqrt(ab[n]) + noise[n] * math.sqrt(1 - ab[n])
      assert.is_true(((xt[n] - want):abs():max():item()) < 1e-6)
    end
  end)

  it("has the moments of q(x_t | x0): mean sqrt(ab) x0, variance 1 - ab (1e5 samples)", function()
    local sched = schedule.linear {}
    local n = 100000
    local x0 = D.full({ n, 1 }, 0.7)
    local noise = D.randn({ n, 1 }, D.Generator(7))
    local t = D.cat({ D.full({ n // 2 }, 100), D.full({ n // 2 }, 900) })
    local xt = sched:add_noise(x0, noise, t)
    for k, tv in ipairs { 100, 900 } do
      local group = xt:narrow(1, (k - 1) * n // 2 + 1, n // 2)
      local ab = sched._values.alpha_bar[tv]
      -- 4.5 standard errors: sd / sqrt(m) for the mean, var sqrt(2 / m) for the variance
      local m = n // 2
      assert.is_true(math.abs(group:mean():item() - math.sqrt(ab) * 0.7) < 4.5 * math.sqrt((1 - ab) / m))
      assert.is_true(math.abs(group:var():item() - (1 - ab)) < 4.5 * (1 - ab) * math.sqrt(2 / m))
    end
  end)

  it("records gradients for x0 and noise (not for the coefficients)", function()
    local sched = schedule.cosine { T = 20 }
    for _, shape in ipairs { { 3 }, { 2, 3 }, { 2, 2, 3, 3 } } do
      local x0 = D.randn(shape):requires_grad_()
      local noise = D.randn(shape):requires_grad_()
      local t = sched:sample_t(shape[1], D.Generator(3))
      local ok, report = D.gradcheck(function(a, b) return sched:add_noise(a, b, t) end, { x0, noise },
        { eps = 1e-3, atol = 1e-3, rtol = 1e-2 })
      assert.is_true(ok, report)
    end
    local x0 = D.randn(4, 2):requires_grad_()
    local y = s:add_noise(x0, D.zeros(4, 2), D.tensor { 1, 2, 2, 1 })
    y:sum():backward()
    local g = x0.grad:totable()
    H.assert_close(g, { { math.sqrt(0.9), math.sqrt(0.9) }, { math.sqrt(0.72), math.sqrt(0.72) },
      { math.sqrt(0.72), math.sqrt(0.72) }, { math.sqrt(0.9), math.sqrt(0.9) } }, 1e-6)
  end)

  it("rejects bad timesteps and shapes with messages", function()
    local x = D.zeros(2, 3)
    H.expect_error(function() s:add_noise(x, x, 0) end, "add_noise: timestep 0 is not an integer in [1, 2]")
    H.expect_error(function() s:add_noise(x, x, 1.5) end, "add_noise: timestep 1.5 is not an integer in [1, 2]")
    H.expect_error(function() s:add_noise(x, x, D.tensor { 1, 3 }) end,
      "add_noise: timestep 3 at position 2 is not an integer in [1, 2]")
    H.expect_error(function() s:add_noise(x, x, D.tensor { 1, 0.5 }) end,
      "add_noise: timestep 0.5 at position 2 is not an integer in [1, 2]")
    H.expect_error(function() s:add_noise(x, x, D.tensor { 1, 2, 1 }) end,
      "add_noise: timesteps of shape {3} for a batch of shape {2,3} (expected one timestep per sample)")
    H.expect_error(function() s:add_noise(x, D.zeros(2, 4), 1) end, "add_noise: noise has shape {2,4} but x0 has shape {2,3}")
    H.expect_error(function() s:add_noise(x, nil, 1) end, "add_noise: noise must be a tensor, got nil")
    H.expect_error(function() s:posterior(D.zeros(2, 2), x, 1) end, "posterior: x0 has shape {2,2} but xt has shape {2,3}")
    H.expect_error(function() s:target(x, D.zeros(2), 1, "v") end, "target: noise has shape {2} but x0 has shape {2,3}")
    H.expect_error(function() s:predict_x0_eps(D.zeros(3, 3), x, 1) end,
      "predict_x0_eps: the model output has shape {3,3} but xt has shape {2,3}")
    H.expect_error(function() s:add_noise(x, x, "1") end, "add_noise: t must be a (N) tensor of timesteps or an integer")
    H.expect_error(function() s:add_noise(D.tensor(1), D.tensor(1), 1) end, "add_noise: expected a batch (N, ...), got shape {}")
  end)
end)

describe("posterior", function()
  it("q(x_{t-1} | x_t, x0) from the formulas, per sample; x0 itself at t = 1", function()
    local s = schedule.from_betas { 0.1, 0.2, 0.3 }
    local x0 = D.tensor { { 1, -1 }, { 0.5, 2 }, { 3, 0 } }
    local xt = D.tensor { { 0.2, 0.4 }, { -1, 1 }, { 1, 1 } }
    local mean, var = s:posterior(x0, xt, D.tensor { 1, 2, 3 })
    assert.are.same({ 3, 1 }, var:shape())
    local ab = { 0.9, 0.72, 0.504 }
    local want_mean, want_var = {}, {}
    for n, t in ipairs { 1, 2, 3 } do
      local beta, abp = ({ 0.1, 0.2, 0.3 })[t], t > 1 and ab[t - 1] or 1
      local c1 = beta * math.sqrt(abp) / (1 - ab[t])
      local c2 = (1 - abp) * math.sqrt(1 - beta) / (1 - ab[t])
      want_mean[n] = { c1 * x0[n][1] + c2 * xt[n][1], c1 * x0[n][2] + c2 * xt[n][2] }
      want_var[n] = { (1 - abp) / (1 - ab[t]) * beta }
    end
    H.assert_close(mean, want_mean, 1e-6)
    H.assert_close(var, want_var, 1e-6)
    H.assert_close(mean[1], x0[1], 1e-6) -- t = 1: the clean data, variance 0
    assert.are.equal(0, var[1][1])
    -- the posterior mean is the Gaussian conditional: it agrees with Bayes' rule
    -- for x_{t-1} ~ N(sqrt(ab_{t-1}) x0, 1 - ab_{t-1}), x_t | x_{t-1} ~ N(sqrt(alpha) x_{t-1}, beta)
    local prior_m, prior_v = math.sqrt(0.72) * 3, 1 - 0.72
    local alpha, beta = 0.7, 0.3
    local post_v = 1 / (1 / prior_v + alpha / beta)
    local post_m = post_v * (prior_m / prior_v + math.sqrt(alpha) * 1 / beta)
    H.assert_close(mean[3][1], post_m, 1e-6)
    H.assert_close(var[3][1], post_v, 1e-6)
  end)

  it("a number t, and (N, C, H, W) batches give (N, 1, 1, 1) variances", function()
    local s = schedule.linear { T = 10 }
    local x0, xt = D.randn(2, 3, 4, 4), D.randn(2, 3, 4, 4)
    local m1, v1 = s:posterior(x0, xt, 5)
    local m2, v2 = s:posterior(x0, xt, D.tensor { 5, 5 })
    assert.are.same({ 2, 1, 1, 1 }, v1:shape())
    assert.are.same({ 2, 1, 1, 1 }, v2:shape())
    assert.is_true((m1 - m2):abs():max():item() < 1e-6)
    H.assert_close(v1:reshape(2), v2:reshape(2), 1e-6)
  end)
end)

describe("sample_t", function()
  it("draws integers in [1, T], about uniformly, reproducibly from a generator", function()
    local s = schedule.linear { T = 10 }
    local n = 100000
    local t = s:sample_t(n, D.Generator(5))
    assert.are.same({ n }, t:shape())
    local counts = {}
    for _, v in ipairs(t:totable()) do
      assert.is_true(v >= 1 and v <= 10 and v == math.floor(v))
      counts[v] = (counts[v] or 0) + 1
    end
    -- chi-square with 9 degrees of freedom: 27.9 is its 0.999 quantile
    local chi2 = 0
    for v = 1, 10 do chi2 = chi2 + ((counts[v] or 0) - n / 10) ^ 2 / (n / 10) end
    assert.is_true(chi2 < 27.9, "chi2 = " .. chi2)
    assert.are.same(t:totable(), s:sample_t(n, D.Generator(5)):totable())
    assert.are.same({ 0 }, s:sample_t(0):shape())
    H.expect_error(function() s:sample_t(-1) end, "sample_t: n must be an integer >= 0, got -1")
  end)
end)

describe("targets and predictions", function()
  local s = schedule.linear {}

  it("target: epsilon is the noise, x0 the data, v = sqrt(ab) eps - sqrt(1 - ab) x0", function()
    local x0, eps = D.tensor { { 1, 2 }, { -1, 0.5 } }, D.tensor { { 0.3, -0.2 }, { 1, 1 } }
    local t = D.tensor { 10, 700 }
    assert.are.equal(eps, s:target(x0, eps, t, "epsilon"))
    assert.are.equal(eps, s:target(x0, eps, t)) -- the default
    assert.are.equal(x0, s:target(x0, eps, t, "x0"))
    local v = s:target(x0, eps, t, "v")
    local want = {}
    for n, tv in ipairs { 10, 700 } do
      local a = s._values.alpha_bar[tv]
      want[n] = {}
      for j = 1, 2 do want[n][j] = math.sqrt(a) * eps[n][j] - math.sqrt(1 - a) * x0[n][j] end
    end
    H.assert_close(v, want, 1e-6)
  end)

  it("predict_x0_eps inverts each target within float error, at every noise level", function()
    local g = D.Generator(11)
    local x0, eps = D.rand({ 6, 2, 3, 3 }, g) * 2 - 1, D.randn({ 6, 2, 3, 3 }, g)
    for _, t in ipairs { D.tensor { 1, 2, 10, 500, 999, 1000 }, 1, 1000 } do
      local xt = s:add_noise(x0, eps, t)
      for _, p in ipairs { "epsilon", "x0", "v" } do
        local x0p, epsp = s:predict_x0_eps(s:target(x0, eps, t, p), xt, t, p)
        -- x0 from eps divides by sqrt(ab_T) = 0.0064: float error of x_t (~1e-7) grows to ~2e-5
        assert.is_true((x0p - x0):abs():max():item() < 1e-4, p .. " x0")
        -- eps from x0 divides by sqrt(1 - ab_1) = 0.01
        assert.is_true((epsp - eps):abs():max():item() < 1e-4, p .. " eps")
        assert.is_true((s:predict_x0(s:target(x0, eps, t, p), xt, t, p) - x0p):abs():max():item() < 1e-6)
      end
    end
  end)

  it("records gradients through the model output", function()
    local sched = schedule.cosine { T = 10 }
    local xt, t = D.randn(3, 4), D.tensor { 1, 5, 10 }
    for _, p in ipairs { "epsilon", "x0", "v" } do
      local out = D.randn(3, 4):requires_grad_()
      local ok, report = D.gradcheck(function(o)
        local a, b = sched:predict_x0_eps(o, xt, t, p)
        return a + b * 0.5
      end, { out }, { eps = 1e-3, atol = 2e-3, rtol = 1e-2 })
      assert.is_true(ok, p .. ": " .. tostring(report))
    end
  end)

  it("rejects an unknown prediction type", function()
    local x = D.zeros(1, 2)
    H.expect_error(function() s:target(x, x, 1, "eps") end, 'target: prediction must be "epsilon", "x0" or "v", got "eps"')
    H.expect_error(function() s:predict_x0_eps(x, x, 1, 3) end, 'predict_x0_eps: prediction must be "epsilon", "x0" or "v", got 3')
  end)
end)

describe("sampler step kernels", function()
  local xt = D.tensor { { 0.5, -1 }, { 2, 0.25 } }
  local x0 = D.tensor { { 0.1, 0.2 }, { -0.3, 0.9 } }
  local z = D.tensor { { 1, -2 }, { 0.5, 0 } }

  it("ddpm_step: the posterior mean plus sigma z, sigma^2 = beta_tilde or beta", function()
    local ab, abp = 0.5, 0.8
    local beta, alpha = 1 - ab / abp, ab / abp
    local c1, c2 = beta * math.sqrt(abp) / (1 - ab), (1 - abp) * math.sqrt(alpha) / (1 - ab)
    for _, tilde in ipairs { true, false } do
      local sigma = math.sqrt(tilde and (1 - abp) / (1 - ab) * beta or beta)
      local out = core._ddpm_step(xt, x0, z, ab, abp, tilde)
      local want = {}
      for i = 1, 2 do
        want[i] = {}
        for j = 1, 2 do want[i][j] = c1 * x0[i][j] + c2 * xt[i][j] + sigma * z[i][j] end
      end
      H.assert_close(out, want, 1e-6)
    end
    -- into x_0 (alpha_bar_prev = 1): the predicted x0 itself
    H.assert_close(core._ddpm_step(xt, x0, nil, 0.9, 1, true), x0:totable(), 1e-6)
  end)

  it("ddim_step: sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z", function()
    local ab, abp = 0.3, 0.6
    for _, eta in ipairs { 0, 0.5, 1 } do
      local sigma = eta * math.sqrt((1 - abp) / (1 - ab)) * math.sqrt(1 - ab / abp)
      local out = core._ddim_step(xt, x0, eta > 0 and z or nil, ab, abp, eta)
      local want = {}
      for i = 1, 2 do
        want[i] = {}
        for j = 1, 2 do
          local eps = (xt[i][j] - math.sqrt(ab) * x0[i][j]) / math.sqrt(1 - ab)
          want[i][j] = math.sqrt(abp) * x0[i][j] + math.sqrt(1 - abp - sigma ^ 2) * eps + sigma * z[i][j]
        end
      end
      H.assert_close(out, want, 1e-6)
    end
    H.assert_close(core._ddim_step(xt, x0, z, 0.3, 1, 1), x0:totable(), 1e-6) -- sigma is 0 into x_0
  end)

  it("ddim with eta = 1 is the ddpm step with beta_tilde", function()
    local a = core._ddim_step(xt, x0, z, 0.41, 0.77, 1)
    local b = core._ddpm_step(xt, x0, z, 0.41, 0.77, true)
    assert.is_true((a - b):abs():max():item() < 1e-6)
  end)

  it("rejects inconsistent arguments", function()
    H.expect_error(function() core._ddpm_step(xt, x0, nil, 0.8, 0.5, true) end,
      "ddpm_step: expected 0 <= alpha_bar_t < alpha_bar_prev <= 1, got alpha_bar_t = 0.8 and alpha_bar_prev = 0.5")
    H.expect_error(function() core._ddim_step(xt, x0, nil, 0.5, 1.5, 0) end,
      "ddim_step: expected 0 <= alpha_bar_t < alpha_bar_prev <= 1")
    H.expect_error(function() core._ddim_step(xt, x0, nil, -0.1, 0.5, 0) end,
      "ddim_step: expected 0 <= alpha_bar_t < alpha_bar_prev <= 1, got alpha_bar_t = -0.1")
    H.expect_error(function() core._ddim_step(xt, D.zeros(2, 3), nil, 0.5, 0.6, 0) end,
      "ddim_step: x0 has shape {2,3} but x_t has shape {2,2}")
    H.expect_error(function() core._ddpm_step(xt, x0, D.zeros(4), 0.5, 0.6, false) end,
      "ddpm_step: the noise has shape {4} but x_t has shape {2,2}")
    H.expect_error(function() core._ddim_step(xt, x0, nil, 0.5, 0.6, -1) end, "ddim_step: eta must be a finite number >= 0, got -1")
    H.expect_error(function() core._ddim_step(xt, x0, z, 0.1, 0.5, 3) end, "ddim_step: eta = 3 makes sigma^2 =")
  end)
end)

describe("invalid schedules", function()
  it("from_alpha_bar: not decreasing, NaN, outside (0, 1], not a number", function()
    H.expect_error(function() schedule.from_alpha_bar(function() return 0.5 end, 3) end,
      "schedule.from_alpha_bar: alpha_bar[2] = 0.5 is not below alpha_bar[1] = 0.5 (alpha_bar must be strictly decreasing")
    H.expect_error(function() schedule.from_alpha_bar(function(u) return 0.1 + 0.5 * u end, 4) end,
      "schedule.from_alpha_bar: alpha_bar[2] = 0.35 is not below alpha_bar[1] = 0.225")
    H.expect_error(function() schedule.from_alpha_bar(function(u) return u > 0.5 and 0 / 0 or 1 - u end, 4) end,
      "schedule.from_alpha_bar: alpha_bar[3] is NaN")
    H.expect_error(function() schedule.from_alpha_bar(function(u) return 2 - u end, 4) end,
      "schedule.from_alpha_bar: alpha_bar[1] = 1.75 is not in (0, 1]")
    -- 0 only at the last timestep (zero terminal SNR, spec/schedule_lab_spec.lua)
    H.expect_error(function() schedule.from_alpha_bar(function(u) return u >= 0.5 and 0 or 1 - u end, 4) end,
      "schedule.from_alpha_bar: alpha_bar[2] = 0 is not in (0, 1] (only the last, alpha_bar[4], may be 0)")
    H.expect_error(function() schedule.from_alpha_bar(function(u) return 0.6 - u end, 4) end,
      "schedule.from_alpha_bar: alpha_bar[3] = -0.15 is not in (0, 1]")
    H.expect_error(function() schedule.from_alpha_bar(function() return 1 end, 4) end,
      "schedule.from_alpha_bar: alpha_bar[1] = 1 is not below alpha_bar[0] = 1 (alpha_bar must be strictly decreasing from alpha_bar_0 = 1)")
    H.expect_error(function() schedule.from_alpha_bar(function() return "x" end, 4) end,
      "schedule.from_alpha_bar: fn(0.25) returned string, expected a number")
    H.expect_error(function() schedule.from_alpha_bar(42, 4) end, "schedule.from_alpha_bar: expected a function")
    H.expect_error(function() schedule.from_alpha_bar(function(u) return 1 - u / 2 end, 0) end,
      "schedule.from_alpha_bar: T must be an integer >= 1, got 0")
  end)

  it("from_betas: outside (0, 1], NaN, a beta of 1, empty, not 1-d", function()
    H.expect_error(function() schedule.from_betas { 0.1, 1.5 } end, "schedule.from_betas: beta[2] = 1.5 is not in (0, 1]")
    H.expect_error(function() schedule.from_betas { 0.1, 0 } end, "schedule.from_betas: beta[2] = 0 is not in (0, 1]")
    H.expect_error(function() schedule.from_betas { -0.1 } end, "schedule.from_betas: beta[1] = -0.1 is not in (0, 1]")
    H.expect_error(function() schedule.from_betas { 0.1, 0 / 0 } end, "schedule.from_betas: beta[2] is NaN")
    H.expect_error(function() schedule.from_betas { 0.1, 1, 0.2 } end,
      "schedule.from_betas: alpha_bar[2] = 0 is not in (0, 1] (beta[2] = 1 leaves no signal before the last timestep)")
    H.expect_error(function() schedule.from_betas { 0.1, 1e-17 } end, "schedule.from_betas: alpha_bar[2] = ")
    H.expect_error(function() schedule.from_betas {} end, "schedule.from_betas: T must be an integer >= 1, got 0")
    H.expect_error(function() schedule.from_betas(D.zeros(2, 2)) end, "schedule.from_betas: expected a 1-d tensor of betas")
    H.expect_error(function() schedule.from_betas { 0.1, "a" } end, "value 2 must be a number, got string")
    H.expect_error(function() schedule.from_betas(0.1) end, "schedule.from_betas: expected a list or a 1-d tensor of betas")
  end)

  it("named kinds: T < 1, out-of-range parameters, unknown options", function()
    H.expect_error(function() schedule.linear { T = 0 } end, "schedule.linear: T must be an integer >= 1, got 0")
    H.expect_error(function() schedule.cosine { T = 10.5 } end, "schedule.cosine: T must be an integer >= 1, got 10.5")
    H.expect_error(function() schedule.linear { beta_end = 2 } end, "schedule.linear: beta_end must be in (0, 1], got 2")
    H.expect_error(function() schedule.scaled_linear { beta_start = 0 } end,
      "schedule.scaled_linear: beta_start must be in (0, 1], got 0")
    H.expect_error(function() schedule.linear { beta_start = 0 / 0 } end, "schedule.linear: beta_start must be in (0, 1], got")
    H.expect_error(function() schedule.cosine { s = -0.1 } end, "schedule.cosine: s must be in [0, 1], got -0.1")
    H.expect_error(function() schedule.cosine { max_beta = 1.5 } end, "schedule.cosine: max_beta must be in (0, 1], got 1.5")
    H.expect_error(function() schedule.sigmoid { start = 3, stop = -3 } end,
      "schedule.sigmoid: expected finite start < stop, got 3 and -3")
    H.expect_error(function() schedule.sigmoid { tau = 0 } end, "schedule.sigmoid: tau must be a finite number > 0, got 0")
    H.expect_error(function() schedule.linear { beta_star = 0.1 } end, "schedule.linear: unknown option 'beta_star'")
    H.expect_error(function() schedule.linear { T = "10" } end, "schedule.linear: option 'T' must be a number, got string")
    H.expect_error(function() schedule.linear(5) end, "schedule.linear: expected a table of options, got number")
  end)
end)
