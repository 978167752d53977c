-- Every sampler of lua/diffusion/sample.lua on a case with a closed form:
-- data x0 ~ N(mu, s^2) per pixel. In the sigma view x = x0 + sigma eps,
--   E[x0 | x] = mu + s^2 / (s^2 + sigma^2) (x - mu),  eps = (x - E[x0 | x]) / sigma,
-- the exact denoiser, written below as a model of each prediction type
-- (epsilon, x0, v) that reads its noise level from the (fractional)
-- timestep it is given. Its probability-flow ODE has the solution
--   x(sigma) = mu + (x(sigma_0) - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_0^2),
-- so a deterministic sampler that starts at sigma_0, ends its ODE at sigma_min
-- and jumps to E[x0 | x] (all of them do) must approach, sample by sample,
--   mu + (x(sigma_0) - mu) sqrt(s^2 + sigma_min^2) / sqrt(s^2 + sigma_0^2) s^2 / (s^2 + sigma_min^2)
-- with the error falling at the method's order. The stochastic samplers are
-- checked on moments: the error of the variance shrinks from 5 steps to many
-- and ends within the discretisation bias measured at that step count plus
-- 4 standard errors of n = 4000 x 4 iid pixels (SE(var) = 1.1 %).
local D = require "diffusion"
local schedule = require "diffusion.schedule"
local sample = require "diffusion.sample"
local H = require "helpers"

local MU, S2 = 0.2, 0.09
local N, SHAPE = 4000, { 1, 2, 2 }
local sched = schedule.linear {} -- T = 1000, sigma from 0.01 to 158

-- The exact model for N(mu, s2) data predicting `prediction`; mu may be a number
-- or an (N, 1, 1, 1) tensor.
local function gaussian_model(prediction, mu, s2, on)
  mu, s2, on = mu or MU, s2 or S2, on or sched
  return function(x, t)
    local sigma = on:sigma_at(t[1])
    if sigma == math.huge then -- pure noise (zero terminal SNR): E[x0 | x] = mu, eps = x_t
      local x0 = x * 0 + mu
      return prediction == "epsilon" and x or prediction == "x0" and x0 or -x0
    end
    local a = 1 / math.sqrt(1 + sigma * sigma) -- sqrt(alpha_bar)
    local xs = x / a
    local x0 = (xs - mu) * (s2 / (s2 + sigma * sigma)) + mu
    local eps = (xs - mu) * (sigma / (s2 + sigma * sigma))
    if prediction == "epsilon" then return eps end
    if prediction == "x0" then return x0 end
    return eps * a - x0 * (sigma * a) -- v
  end
end

local function copy(t, extra)
  local o = {}
  for k, v in pairs(t) do o[k] = v end
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

local function moments_error(x)
  return math.abs(x:mean():item() - MU), math.abs(x:var():item() / S2 - 1)
end

describe("noise levels", function()
  -- the conversions and spacings are the schedule's (spec/schedule_spec.lua); here, what the samplers rely on
  it("timesteps in the U-Net's units: integers at the table's sigmas, fractional between", function()
    local sigma = sched._values.sigma
    for _, t in ipairs { 1, 37, 500, 1000 } do
      assert.are.equal(sigma[t], sched:sigma_at(t))
      assert.is_true(math.abs(sched:t_from_sigma(sigma[t]) - t) < 1e-9)
    end
    local s = sched:sigma_at(37.5)
    assert.is_true(s > sigma[37] and s < sigma[38])
    assert.is_true(math.abs(sched:t_from_sigma(s) - 37.5) < 1e-6)
    assert.are.equal(sample.timesteps, schedule.timesteps)
  end)

  it("the sigma samplers visit sched:sigmas(steps, spacing), karras by default, and end at 0", function()
    for _, case in ipairs { { 5 }, { 4, "exponential" }, { 6, "trailing" }, { 3, "karras", 3 } } do
      local visited = {}
      local function spy(x, t) visited[#visited + 1] = sched:sigma_at(t[1]); return x * 0 end
      sample.euler(spy, sched, { n = 1, shape = { 1 }, steps = case[1], spacing = case[2], rho = case[3] })
      local want = sched:sigmas(case[1], case[2] or "karras", case[3] and { rho = case[3] } or nil)
      assert.are.equal(#want - 1, #visited)
      assert.are.equal(0, want[#want])
      for i, v in ipairs(visited) do assert.is_true(math.abs(v / want[i] - 1) < 1e-5, i) end
    end
  end)
end)

describe("every sampler on Gaussian data", function()
  local eps_model = gaussian_model("epsilon")

  it("deterministic samplers follow the exact ODE flow, the error falling at their order", function()
    -- order: 1 halves the error when the steps double, 2 quarters it
    local cases = { { "ddim", 1, { spacing = "trailing" } }, { "euler", 1 }, { "heun", 2 }, { "dpmpp_2m", 2 },
      { "dpmpp_3m_sde", 2, { eta = 0 } } }
    local z = D.randn({ 64, 1, 1, 1 }, D.Generator(5)) -- the starting noise of seed 5
    local smin = sched._values.sigma[1]
    local final = {}
    for _, case in ipairs(cases) do
      local name, order = case[1], case[2]
      local errors = {}
      for _, steps in ipairs { 10, 20, 40, 80 } do
        local opts = copy({ n = 64, shape = { 1, 1, 1 }, steps = steps, seed = 5, clip_x0 = false, spacing = "exponential" },
          case[3])
        local s0 = sched:sigmas(steps, opts.spacing)[1]
        local start = z * math.sqrt(1 + s0 * s0)
        local exact = (start - MU) * (math.sqrt((S2 + smin ^ 2) / (S2 + s0 ^ 2)) * S2 / (S2 + smin ^ 2)) + MU
        errors[#errors + 1] = H.max_diff(sample.run(name, eps_model, sched, opts), exact)
      end
      local label = name .. " errors " .. table.concat(errors, ", ")
      for i = 2, #errors do assert.is_true(errors[i] < errors[i - 1], label) end
      assert.is_true(errors[3] / errors[4] > (order == 1 and 1.8 or 3.5), label)
      assert.is_true(errors[4] < (order == 1 and 0.06 or 0.002), label)
      final[name] = errors[4]
    end
    -- 3M's extra term (third order after its start-up) leaves about a third of 2M's error
    assert.is_true(final.dpmpp_3m_sde < 0.5 * final.dpmpp_2m, final.dpmpp_3m_sde .. " vs " .. final.dpmpp_2m)
  end)

  it("deterministic samplers with many steps give N(mu, s^2)", function()
    for _, case in ipairs { { "ddim", 1000, { spacing = "trailing" } }, { "euler", 1000 }, { "heun", 100 },
      { "dpmpp_2m", 100 }, { "dpmpp_3m_sde", 100, { eta = 0 } } } do
      local x = sample.run(case[1], eps_model, sched, copy({ n = N, shape = SHAPE, steps = case[2], seed = 6, clip_x0 = false },
        case[3]))
      local dm, dv = moments_error(x)
      assert.is_true(dm < 4 * math.sqrt(S2 / x:numel()) and dv < 0.015 + 4 * math.sqrt(2 / x:numel()),
        string.format("%s: mean off by %.4f, variance by %.2f%%", case[1], dm, 100 * dv))
    end
  end)

  it("stochastic samplers: the variance error shrinks from 5 steps to many and ends small", function()
    -- {name, many steps, the bias bound at that count (measured on 160 000 pixels: 0.030, 0.030, 0.015, 0.026,
    -- 0.002, 0.003, 0.001), options}
    local cases = {
      { "ddpm", 1000, 0.035 }, { "ddim", 1000, 0.035, { eta = 1, spacing = "trailing" } },
      { "euler_ancestral", 1000, 0.02 }, { "euler", 1000, 0.03, { s_churn = 40 } },
      { "dpmpp_2m_sde", 300, 0.01 }, { "dpmpp_3m_sde", 300, 0.01 }, { "heun", 300, 0.01, { s_churn = 40 } },
    }
    for _, case in ipairs(cases) do
      local name, many, bias = case[1], case[2], case[3]
      local errs = {}
      for _, steps in ipairs { 5, 30, many } do
        local x = sample.run(name, eps_model, sched, copy({ n = N, shape = SHAPE, steps = steps, seed = 7, clip_x0 = false },
          case[4]))
        local dm, dv = moments_error(x)
        errs[#errs + 1] = dv
        assert.is_true(dm < 4 * math.sqrt(S2 / x:numel()) + 0.002, string.format("%s %d: mean off by %.4f", name, steps, dm))
      end
      local label = string.format("%s: variance off by %.3f, %.3f, %.3f", name, errs[1], errs[2], errs[3])
      assert.is_true(errs[1] > errs[2] and errs[2] > errs[3], label)
      assert.is_true(errs[3] < bias + 4 * math.sqrt(2 / (N * 4)), label)
    end
  end)

  it("an epsilon, an x0 and a v model give the same samples with every sampler", function()
    for _, name in ipairs(sample.names) do
      for _, steps in ipairs { 7, 30 } do
        local opts = { n = 64, shape = SHAPE, steps = steps, seed = 8, clip_x0 = false }
        local base = sample.run(name, eps_model, sched, opts)
        for _, p in ipairs { "x0", "v" } do
          local x = sample.run(name, gaussian_model(p), sched, copy(opts, { prediction = p }))
          assert.is_true(H.max_diff(x, base) < 2e-5, string.format("%s %d %s: %g", name, steps, p, H.max_diff(x, base)))
        end
      end
    end
  end)

  it("the same seed gives the same samples bit for bit, another seed others, for every sampler", function()
    for _, name in ipairs(sample.names) do
      local opts = { n = 6, shape = SHAPE, steps = 6, seed = 42 }
      local a, b = sample.run(name, eps_model, sched, opts), sample.run(name, eps_model, sched, opts)
      assert.are.same(a:totable(), b:totable())
      local c = sample.run(name, eps_model, sched, copy(opts, { seed = 43 }))
      assert.is_true(H.max_diff(a, c) > 0.01, name)
      local d = sample.run(name, eps_model, sched, { n = 6, shape = SHAPE, steps = 6, generator = D.Generator(42) })
      assert.are.same(a:totable(), d:totable())
      assert.are.same(a:totable(), sample[name](eps_model, sched, opts):totable()) -- by name or by function
    end
  end)

  it("every sampler starts from the same noise for a seed, x_T = z in the model's scale", function()
    local z = D.randn({ 2, 1, 2, 2 }, D.Generator(9))
    for _, name in ipairs(sample.names) do
      local _, traj = sample.run(name, eps_model, sched, { n = 2, shape = SHAPE, steps = 3, seed = 9, trajectory = true })
      assert.is_true(H.max_diff(traj[1], z) < 1e-6, name)
    end
  end)
end)

describe("guidance", function()
  -- classes of different means and spreads (so that guidance changes the spread); class 3 is the null class
  local means, variances = { 0.5, -0.5, 0 }, { 0.09, 0.04, 0.25 }
  local calls, batch = 0, nil
  local function conditional(x, t, y)
    calls, batch = calls + 1, x:size(1)
    local mu, s2 = D.zeros(x:size(1), 1, 1, 1), D.zeros(x:size(1), 1, 1, 1)
    for i = 1, x:size(1) do
      mu:set(means[y[i]], i, 1, 1, 1)
      s2:set(variances[y[i]], i, 1, 1, 1)
    end
    local sigma = sched:sigma_at(t[1])
    local xs = x * math.sqrt(1 + sigma * sigma)
    return (xs - mu) * (s2 + sigma * sigma):pow(-1) * sigma -- the exact eps
  end
  local y = D.tensor { 1, 2, 1, 2 }

  it("w = 1 is the conditional model, one call of 2n a model evaluation, in every sampler", function()
    for _, name in ipairs(sample.names) do
      local opts = { n = 4, shape = SHAPE, steps = 6, seed = 10, y = y, null_class = 3 }
      calls = 0
      local plain = sample.run(name, conditional, sched, opts)
      local evaluations = calls
      calls = 0
      local w1 = sample.run(name, conditional, sched, copy(opts, { guidance = 1 }))
      assert.are.equal(evaluations, calls, name)
      assert.are.equal(8, batch)
      assert.is_true(H.max_diff(w1, plain) < 1e-5, name .. ": " .. H.max_diff(w1, plain))
    end
  end)

  it("guidance rescale: phi = 0 is plain guidance; phi = 1 gives x0 the conditional std; phi mixes linearly", function()
    for _, name in ipairs { "ddim", "euler", "dpmpp_2m_sde" } do
      local opts = { n = 4, shape = SHAPE, steps = 6, seed = 11, y = y, null_class = 3, guidance = 3, clip_x0 = false }
      local cfg = sample.run(name, conditional, sched, opts)
      local phi0 = sample.run(name, conditional, sched, copy(opts, { guidance_rescale = 0 }))
      assert.is_true(H.max_diff(cfg, phi0) < 1e-6, name)
      local phi1 = sample.run(name, conditional, sched, copy(opts, { guidance_rescale = 1 }))
      assert.is_true(H.max_diff(cfg, phi1) > 1e-3, name)
    end
    -- on one denoiser call
    local x = D.randn({ 4, 1, 4, 4 }, D.Generator(12)) * 2
    local function x0_of(phi, guidance)
      local den = sample.denoiser(conditional, sched, { y = y, null_class = 3, guidance = guidance, guidance_rescale = phi,
        clip_x0 = false })
      return den(x, 1.5)
    end
    local cond, guided, half, full = x0_of(nil, 1), x0_of(nil, 4), x0_of(0.5, 4), x0_of(1, 4)
    local dims = { 2, 3, 4 }
    assert.is_true(H.max_diff(full:std(dims, true), cond:std(dims, true)) < 1e-5)
    assert.is_true(H.max_diff(guided:std(dims, true), cond:std(dims, true)) > 0.1) -- w = 4 did change it
    assert.is_true(H.max_diff(half, (guided + full) * 0.5) < 1e-5)
  end)
end)

describe("the denoiser", function()
  it("calls the model on x_t = x / sqrt(1 + sigma^2) at t(sigma), returns x0 and the matching eps", function()
    local seen = {}
    local x0_model = gaussian_model("x0")
    local function spy(xt, t, y)
      seen.xt, seen.t, seen.y = xt, t, y
      return x0_model(xt, t)
    end
    local den = sample.denoiser(spy, sched, { prediction = "x0", clip_x0 = false, y = { 2, 5 } })
    local x = D.randn({ 2, 1, 3, 3 }, D.Generator(13)) * 3
    local sigma = 2.5
    local x0, eps = den(x, sigma)
    assert.is_true(H.max_diff(seen.xt, x / math.sqrt(1 + sigma ^ 2)) < 1e-6)
    assert.are.same({ 2 }, seen.t:shape())
    local t = sched:t_from_sigma(sigma)
    assert.is_true(t ~= math.floor(t) and math.abs(seen.t[1] - t) < 1e-3) -- fractional
    assert.are.same({ 2, 5 }, seen.y:totable())
    assert.is_true(H.max_diff(x0, x0_model(seen.xt, seen.t)) == 0) -- an x0 model's output as it is
    assert.is_true(H.max_diff(x0 + eps * sigma, x) < 1e-5)       -- x = x0 + sigma eps
    assert.are.equal(1, den.calls)
    -- at_t: an integer timestep, x_t as the model sees it
    local xt = D.randn({ 2, 1, 3, 3 }, D.Generator(14))
    local x0b, epsb = den:at_t(xt, 300)
    assert.are.equal(300, seen.t[1])
    local ab = sched._values.alpha_bar[300]
    assert.is_true(H.max_diff(x0b * math.sqrt(ab) + epsb * math.sqrt(1 - ab), xt) < 1e-5)
    -- clip_x0 (the default) clamps x0, and eps follows it
    local clipped = sample.denoiser(gaussian_model("epsilon", 3, 0.01), sched)
    local cx0, ceps = clipped(x, 0.5)
    assert.is_true(cx0:max():item() <= 1 and cx0:min():item() >= -1)
    assert.is_true(H.max_diff(cx0 + ceps * 0.5, x) < 1e-5)
  end)

  it("a tiny U-Net samples with every sampler at fractional timesteps, with guidance and rescale", function()
    D.manual_seed(0)
    local net = D.UNet { channels = 8, groups = 4, mult = { 1, 2 }, res_blocks = 1, attention = {}, num_classes = 10,
      image_size = 28 }
    net:eval()
    local x = D.randn { 2, 1, 28, 28 }
    local between = net(x, D.full({ 2 }, 37.5), D.tensor { 1, 2 })
    assert.is_true(H.max_diff(between, net(x, D.full({ 2 }, 37), D.tensor { 1, 2 })) > 1e-4) -- t is not rounded
    for _, name in ipairs(sample.names) do
      local out = sample.run(name, net, schedule.cosine {}, { y = { 3, 4 }, guidance = 2, null_class = 11, steps = 2,
        seed = 1, shape = { 1, 28, 28 }, guidance_rescale = 0.7 })
      assert.are.same({ 2, 1, 28, 28 }, out:shape())
      assert.is_true(out:abs():max():item() < 1.01, name)
    end
  end)
end)

describe("sampler options", function()
  local model = gaussian_model("epsilon")

  it("callback (step, x, x0, t, sigma), trajectory in the model's scale, progress, for sigma samplers", function()
    local sigmas = sched:sigmas(5)
    local seen = {}
    local x, traj = sample.heun(model, sched, { n = 2, shape = SHAPE, steps = 5, seed = 1, trajectory = true,
      trajectory_every = 2, callback = function(i, xi, x0, t, sigma)
        seen[#seen + 1] = i
        assert.are.same({ 2, 1, 2, 2 }, xi:shape())
        assert.are.same({ 2, 1, 2, 2 }, x0:shape())
        assert.are.equal(sigmas[i], sigma)
        assert.are.equal(sched:t_from_sigma(sigma), t)
      end })
    assert.are.same({ 1, 2, 3, 4, 5 }, seen)
    assert.are.equal(4, #traj) -- the start, after steps 2 and 4, and the last
    assert.are.equal(x, traj[4])
    -- an x_sigma snapshot is divided by sqrt(1 + sigma^2): after step 2 the samples have about unit scale, not sigma's
    assert.is_true(traj[2]:abs():max():item() < 5)
    local updates, finished = {}, 0
    local bar = { update = function(_, i) updates[#updates + 1] = i end, finish = function() finished = finished + 1 end }
    sample.dpmpp_2m(model, sched, { n = 2, shape = SHAPE, sigmas = { 10, 1, 0.1 }, progress = bar })
    assert.are.same({ 1, 2, 3 }, updates) -- 10 -> 1 -> 0.1 -> 0
    assert.are.equal(1, finished)
  end)

  it("explicit sigmas and timesteps; the model sees descending noise levels", function()
    local ts = {}
    local function spy(x, t) ts[#ts + 1] = t[1]; return model(x, t) end
    local a = sample.euler(spy, sched, { n = 2, shape = SHAPE, sigmas = { 80, 5, 0.5, 0 }, seed = 2 })
    assert.are.equal(3, #ts)
    assert.is_true(ts[1] > ts[2] and ts[2] > ts[3])
    local b = sample.euler(model, sched, { n = 2, shape = SHAPE, sigmas = D.tensor { 80, 5, 0.5 }, seed = 2 })
    assert.are.same(a:totable(), b:totable()) -- a final 0 is added; a tensor works too
    local c = sample.ddim(model, sched, { n = 2, shape = SHAPE, timesteps = { 1000, 750, 500, 250 }, seed = 2 })
    local d = sample.ddim(model, sched, { n = 2, shape = SHAPE, steps = 4, spacing = "trailing", seed = 2 })
    assert.are.same(c:totable(), d:totable())
  end)

  it("zero terminal SNR: sigma samplers start at alpha_bar = 2^-24 (t = T); epsilon models can't give x0 at t = T", function()
    local zsnr = schedule.from_betas { 0.1, 0.2, 0.3, 1 } -- alpha_bar_4 = 0, sigma_4 = inf
    assert.are.equal(0, zsnr._values.alpha_bar[4])
    -- a v model follows the exact flow from sigma_0 ~ 4096 (as in the first test of the Gaussian ones)
    local z = D.randn({ 16, 1, 2, 2 }, D.Generator(1))
    local v_model = gaussian_model("v", nil, nil, zsnr)
    for _, case in ipairs { { "euler", 0.05 }, { "heun", 0.03 }, { "dpmpp_2m", 0.02 }, { "dpmpp_2m", 0.05, "trailing" } } do
      local first
      local function spy(x, t) first = first or t[1]; return v_model(x, t) end
      local steps = case[3] and 4 or 40 -- trailing: at most T
      local x = sample.run(case[1], spy, zsnr, { n = 16, shape = SHAPE, steps = steps, seed = 1, prediction = "v",
        clip_x0 = false, spacing = case[3] })
      local s0, smin = 4096, zsnr._values.sigma[1]
      local exact = (z * math.sqrt(1 + s0 * s0) - MU) * (math.sqrt((S2 + smin ^ 2) / (S2 + s0 ^ 2)) * S2 / (S2 + smin ^ 2)) + MU
      assert.is_true(math.abs(first - 4) < 1e-4, first) -- sigma ~ 4096: the model told t ~ T
      assert.is_true(H.max_diff(x, exact) < case[2], case[1] .. ": " .. H.max_diff(x, exact))
    end
    H.expect_error(function()
      sample.ddim(gaussian_model("epsilon", nil, nil, zsnr), zsnr, { n = 2, shape = SHAPE, steps = 2, spacing = "trailing" })
    end, "sample.ddim: an epsilon model gives no x0 at alpha_bar = 0 (zero terminal SNR)")
  end)

  it("DDIM with eta = 0 is Euler on the same sigmas", function()
    local sigmas = sched:sigmas(8, "linspace")
    local ddim = sample.ddim(model, sched, { n = 8, shape = SHAPE, steps = 8, spacing = "linspace", seed = 3, clip_x0 = false })
    local euler = sample.euler(model, sched, { n = 8, shape = SHAPE, sigmas = sigmas, seed = 3, clip_x0 = false })
    assert.is_true(H.max_diff(ddim, euler) < 1e-4, H.max_diff(ddim, euler))
  end)

  it("rejects bad input with messages", function()
    local ok = { n = 2, shape = SHAPE }
    local function with(extra) return copy(ok, extra) end
    H.expect_error(function() sample.run("plms", model, sched, ok) end,
      "sample.run: unknown sampler 'plms' (one of ddpm, ddim, euler, euler_ancestral, heun, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m_sde)")
    H.expect_error(function() sample.run("euler", model, sched, with { steps = 0 }) end,
      "sample.euler: steps must be an integer >= 1, got 0")
    H.expect_error(function() sample.run("euler", model, sched, with { steps = 2.5 }) end,
      "sample.euler: steps must be an integer >= 1, got 2.5")
    H.expect_error(function() sample.run("heun", model, sched, with { steps = 1001, spacing = "trailing" }) end,
      "sample.heun: steps must be an integer in [1, 1000], got 1001")
    H.expect_error(function() sample.run("dpmpp_2m", model, sched, with { spacing = "cosine" }) end,
      'sample.dpmpp_2m: spacing must be "karras", "exponential", "leading", "trailing" or "linspace", got cosine')
    H.expect_error(function() sample.run("ddim", model, sched, with { spacing = "karras" }) end,
      'sample.ddim: spacing must be "leading", "trailing" or "linspace", got karras')
    -- lists are checked by the schedule (sched:sigmas, schedule.timesteps), the message prefixed
    H.assert_error_with({ "sample.euler: ", "strictly descending" },
      function() sample.run("euler", model, sched, with { sigmas = { 1, 2, 0 } }) end)
    H.assert_error_with({ "sample.euler: ", "-1" }, function() sample.run("euler", model, sched, with { sigmas = { 3, -1 } }) end)
    H.assert_error_with({ "sample.euler: ", "empty" }, function() sample.run("euler", model, sched, with { sigmas = {} }) end)
    H.expect_error(function() sample.run("euler", model, sched, with { sigmas = { 0 } }) end,
      "sample.euler: sigmas must hold at least one sigma > 0")
    H.expect_error(function() sample.run("euler", model, sched, with { sigmas = "karras" }) end,
      "sample.euler: sigmas must be a list of numbers, got string")
    H.expect_error(function() sample.run("euler", model, sched, with { sigmas = { 3, 1 }, steps = 2 }) end,
      "sample.euler: give sigmas or steps/spacing, not both")
    H.assert_error_with({ "sample.ddpm: ", "strictly descending" },
      function() sample.run("ddpm", model, sched, with { timesteps = { 5, 9 } }) end)
    H.assert_error_with({ "sample.ddpm: ", "1001" }, function() sample.run("ddpm", model, sched, with { timesteps = { 1001 } }) end)
    H.expect_error(function() sample.run("ddim", model, sched, with { sigmas = { 1 } }) end,
      "sample.ddim: unknown option 'sigmas'")
    H.expect_error(function() sample.run("heun", model, sched, with { eta = 1 }) end, "sample.heun: unknown option 'eta'")
    H.expect_error(function() sample.run("heun", model, sched, with { s_churn = -1 }) end,
      "sample.heun: s_churn must be a number >= 0, got -1")
    H.expect_error(function() sample.run("euler_ancestral", model, sched, with { eta = "1" }) end,
      "sample.euler_ancestral: eta must be a number >= 0, got 1")
    H.expect_error(function() sample.run("ddim", model, sched, with { eta = 1.5 }) end,
      "sample.ddim: eta must be a number in [0, 1], got 1.5")
    H.expect_error(function() sample.run("euler", model, sched, with { rho = 0 }) end,
      "sample.euler: rho must be a number > 0, got 0")
    H.expect_error(function() sample.run("euler", model, sched, with { y = { 1, 2 }, null_class = 3, guidance = 2,
      guidance_rescale = 2 }) end, "sample.euler: guidance_rescale must be a number in [0, 1], got 2")
    H.expect_error(function() sample.run("euler", model, sched, with { guidance_rescale = 0.5 }) end,
      "sample.euler: guidance_rescale needs guidance")
    H.expect_error(function() sample.run("euler", model, sched, with { prediction = "score" }) end,
      'sample.euler: prediction must be "epsilon", "x0" or "v", got score')
    H.expect_error(function() sample.run("euler", function() return 1 end, sched, ok) end,
      "sample.euler: the model returned number, expected a tensor")
    H.expect_error(function() sample.run("heun", function(x) return x[1] end, sched, ok) end,
      "sample.heun: the model returned shape {1,2,2} for x of shape {2,1,2,2}")
    -- the denoiser on its own
    H.expect_error(function() sample.denoiser(model, sched, { guidance = 2 }) end,
      "sample.denoiser: guidance needs labels y")
    H.expect_error(function() sample.denoiser(model, sched, { steps = 2 }) end, "sample.denoiser: unknown option 'steps'")
    H.expect_error(function() sample.denoiser(42, sched) end, "sample.denoiser: model must be callable")
    local den = sample.denoiser(model, sched, { y = { 1, 2, 3 } })
    H.expect_error(function() den(D.zeros(2, 1, 2, 2), 1) end, "sample.denoiser: 3 labels for a batch of 2")
    assert.is_true(D.is_grad_enabled())
  end)
end)

describe("the sampler examples and the command's sampler options", function()
  -- runs a command; returns its exit status and everything it printed
  local function run(cmd)
    local p = io.popen(cmd .. " 2>&1; echo \"exit=$?\"")
    local out = p:read("a")
    p:close()
    return tonumber(out:match("exit=(%d+)%s*$")), out
  end
  local base = os.tmpname()
  local model_path, png = base .. ".safetensors", base .. ".png"
  teardown(function()
    for _, f in ipairs { base, model_path, png } do os.remove(f) end
  end)

  it("my_sampler.lua and compare_samplers.lua run on a tiny model in the exported format", function()
    D.manual_seed(0) -- random weights, saved as `diffusion train --export` does
    local net = D.UNet { channels = 8, groups = 4, mult = { 1, 2 }, res_blocks = 1, attention = {}, num_classes = 10,
      image_size = 28 }
    D.checkpoint.save(model_path, { kind = "diffusion-model", config = net.config, model = net:state_dict(),
      train = { schedule = "cosine", T = 1000, prediction = "v" } })

    local status, out = run(string.format("lua5.4 examples/my_sampler.lua --ckpt %s --out %s --steps 3", model_path, png))
    assert.are.equal(0, status, out)
    assert.is_truthy(out:find("largest difference to D.sample.euler: 0\n", 1, true), out)
    assert.are.same({ 1, 10 * 30 + 2, 4 * 30 + 2 }, D.image.load(png):shape()) -- a row per class, 28 x 28 tiles

    status, out = run(string.format("lua5.4 examples/compare_samplers.lua --ckpt %s --out %s --steps 2,3 "
      .. "--samplers euler,dpmpp_2m,ddpm --class 1,Sneaker", model_path, png))
    assert.are.equal(0, status, out)
    local picture = D.image.load(png)
    assert.are.equal(3, picture:size(1))
    assert.are.equal(30 + 3 * (56 + 2 + 6) + 4, picture:size(2)) -- a row per sampler, tiles drawn 2x

    status, out = run(string.format("lua5.4 examples/compare_samplers.lua --ckpt %s --accuracy --per-class 1 "
      .. "--accuracy-steps 2,3 --samplers ddim,heun", model_path))
    assert.are.equal(0, status, out)
    assert.is_truthy(out:find("| sampler | 2 steps | 3 steps |", 1, true), out)
    assert.is_truthy(out:find("\n| ddim | [%d.]+ %% %(2 calls, %d+ s%) | [%d.]+ %% %(3 calls"), out)
    assert.is_truthy(out:find("\n| heun | [%d.]+ %% %(3 calls, %d+ s%) | [%d.]+ %% %(5 calls"), out) -- 2 steps - 1 calls

    for _, script in ipairs { "my_sampler", "compare_samplers" } do
      status, out = run(string.format("lua5.4 examples/%s.lua --ckpt %s.missing", script, base))
      assert.are.equal(1, status, out)
      assert.is_truthy(out:find("no model at " .. base .. ".missing", 1, true), out)
    end
    status, out = run(string.format("lua5.4 examples/compare_samplers.lua --ckpt %s --samplers euler,plms", model_path))
    assert.are.equal(1, status, out)
    assert.is_truthy(out:find("--samplers: bad entry 'plms'", 1, true), out)
  end)

  it("diffusion sample / evaluate: --sampler, --spacing, --schedule, --eta, --guidance-rescale", function()
    local cmd = "lua5.4 lua/bin/diffusion "
    local status, out = run(cmd .. string.format("sample --ckpt %s --n 10 --steps 3 --sampler dpmpp_2m_sde --eta 0.5 "
      .. "--spacing exponential --schedule cosine+rescale_zero_terminal_snr --guidance-rescale 0.7 --out %s --quiet",
      model_path, png))
    assert.are.equal(0, status, out)
    assert.is_truthy(out:find("10 samples, dpmpp_2m_sde 3 steps, guidance 3", 1, true), out)
    assert.are.same({ 1, 10 * 30 + 2, 30 + 2 }, D.image.load(png):shape())
    status, out = run(cmd .. string.format("evaluate --ckpt %s --per-class 1 --steps 2 --sampler heun --quiet", model_path))
    assert.are.equal(0, status, out)
    assert.is_truthy(out:find("(1 per class, heun 2 steps, guidance 3)", 1, true), out)
    for _, case in ipairs {
      { "--sampler heun --eta 1", "sample.heun: unknown option 'eta'" },
      { "--sampler ddim --spacing karras", 'sample.ddim: spacing must be "leading", "trailing" or "linspace", got karras' },
      { "--sampler plms", "must be one of 'ddpm', 'ddim', 'euler'" },
      { "--schedule bogus", "--schedule: schedule.named: unknown schedule" },
      { "--guidance-rescale 2", "sample.ddim: guidance_rescale must be a number in [0, 1], got 2" },
    } do
      status, out = run(cmd .. string.format("sample --ckpt %s --n 2 --steps 2 --out %s --quiet %s", model_path, png, case[1]))
      assert.are.equal(1, status, case[1] .. ": " .. out)
      assert.is_truthy(out:find(case[2], 1, true), case[1] .. ": " .. out)
    end
  end)
end)
