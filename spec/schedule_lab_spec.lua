-- The schedule lab (lua/diffusion/schedule.lua): transforms (zero terminal
-- SNR, log-SNR shift, truncation) against their formulas, what alpha_bar_T = 0
-- does downstream, the conversions between t, u, alpha_bar, log-SNR and sigma,
-- timestep and sigma spacings against hand-computed lists, loss weightings
-- against hand values, and the errors of each.
local D = require "diffusion"
local core = require "diffusion.core"
local schedule = require "diffusion.schedule"
local H = require "helpers"

local INF = math.huge

local function assert_rel(actual, expected, rtol, what)
  assert.is_true(math.abs(actual - expected) <= rtol * math.abs(expected),
    string.format("%s: expected %.15g, got %.15g", what or "value", expected, actual))
end

-- no NaN in any table of the schedule, doubles or tensors
local function assert_no_nan(s)
  for name, list in pairs(s._values) do
    for t, v in ipairs(list) do assert.is_true(v == v, string.format("%s[%d] is NaN", name, t)) end
    for t, v in ipairs(s[name]:totable()) do assert.is_true(v == v, string.format("%s tensor [%d] is NaN", name, t)) end
  end
end

describe("rescale_zero_terminal_snr", function()
  local cosine, linear = schedule.cosine {}, schedule.linear {}

  it("maps sqrt(alpha_bar) linearly: alpha_bar_T = 0 exactly, alpha_bar_1 unchanged", function()
    for _, s in ipairs { cosine, linear, schedule.scaled_linear {}, schedule.sigmoid { T = 50 } } do
      local z = s:rescale_zero_terminal_snr()
      local T, ab, zab = s.T, s._values.alpha_bar, z._values.alpha_bar
      assert.are.equal(0, zab[T])
      assert.are.equal(ab[1], zab[1]) -- bit for bit
      local first, last = math.sqrt(ab[1]), math.sqrt(ab[T])
      for _, t in ipairs { 2, T // 2, T - 1 } do
        local want = ((math.sqrt(ab[t]) - last) * first / (first - last)) ^ 2
        assert_rel(zab[t], want, 1e-12, s.kind .. " alpha_bar " .. t)
      end
      -- the tables downstream: beta_T = 1, snr 0, log-SNR -inf, sigma inf, no NaN anywhere
      assert.are.equal(1, z._values.betas[T])
      assert.are.equal(0, z._values.snr[T])
      assert.are.equal(-INF, z._values.log_snr[T])
      assert.are.equal(INF, z._values.sigma[T])
      assert.are.equal(0, z.alpha_bar[T])
      assert.are.equal(-INF, z.log_snr[T])
      assert.are.equal(INF, z.sigma[T])
      assert.are.equal(INF, z.sigma_max)
      assert.are.equal(z._values.sigma[1], z.sigma_min)
      assert_no_nan(z)
      assert.are.equal(s.kind .. "+rescale_zero_terminal_snr", z.kind)
      assert.are.same({ "rescale_zero_terminal_snr" }, z.transforms)
      assert.are.equal(s.kind, z.base_kind)
    end
  end)

  it("is idempotent, and from_alpha_bar / from_betas may reach 0 at the last timestep", function()
    local z = cosine:rescale_zero_terminal_snr()
    local zz = z:rescale_zero_terminal_snr()
    for _, t in ipairs { 1, 2, 500, 999, 1000 } do assert_rel(zz._values.alpha_bar[t] + 1e-300, z._values.alpha_bar[t] + 1e-300, 1e-14) end
    local f = schedule.from_alpha_bar(function(u) return 1 - u end, 4)
    H.assert_close(f.alpha_bar, { 0.75, 0.5, 0.25, 0 }, 1e-7)
    assert.are.equal(1, f._values.betas[4])
    local b = schedule.from_betas { 0.1, 1 }
    assert.are.equal(0, b._values.alpha_bar[2])
    assert.are.equal(INF, b.sigma_max)
  end)

  it("keeps the posterior, add_noise and the v / x0 predictions defined at t = T", function()
    local z = schedule.from_betas { 0.1, 0.2, 1 } -- ab = 0.9, 0.72, 0
    local x0, noise = D.tensor { { 1, -2 } }, D.tensor { { 0.5, 0.25 } }
    H.assert_close(z:add_noise(x0, noise, 3), { { 0.5, 0.25 } }, 1e-7) -- pure noise
    -- posterior at T: coef1 = beta sqrt(ab_prev) / 1, coef2 = (1 - ab_prev) sqrt(alpha = 0) = 0, var = 1 - ab_prev
    local xt = D.tensor { { 3, 4 } }
    local mean, var = z:posterior(x0, xt, 3)
    H.assert_close(mean, { { math.sqrt(0.72), -2 * math.sqrt(0.72) } }, 1e-6)
    H.assert_close(var, { { 0.28 } }, 1e-6)
    -- v = sqrt(ab) eps - sqrt(1 - ab) x0 = -x0 at T; back: x0 = -v, eps = x_t
    H.assert_close(z:target(x0, noise, 3, "v"), { { -1, 2 } }, 1e-7)
    for _, p in ipairs { "v", "x0" } do
      local x0p, epsp = z:predict_x0_eps(z:target(x0, noise, 3, p), noise, 3, p)
      H.assert_close(x0p, x0, 1e-6, p .. " x0")
      H.assert_close(epsp, noise, 1e-6, p .. " eps")
      H.assert_close(z:predict_x0(z:target(x0, noise, 3, p), noise, 3, p), x0, 1e-6)
    end
    -- epsilon says nothing about x0 where alpha_bar = 0
    H.expect_error(function() z:predict_x0_eps(noise, noise, 3, "epsilon") end,
      "predict_x0_eps: an epsilon prediction cannot give x0 at t = 3, where alpha_bar = 0 (zero terminal SNR)")
    H.expect_error(function() z:predict_x0(D.zeros(2, 2), D.zeros(2, 2), D.tensor { 1, 3 }) end,
      "predict_x0: an epsilon prediction cannot give x0 at t = 3")
    local x0p = z:predict_x0(noise, xt, 2, "epsilon") -- elsewhere it works
    H.assert_close(x0p, { { (3 - math.sqrt(0.28) * 0.5) / math.sqrt(0.72), (4 - math.sqrt(0.28) * 0.25) / math.sqrt(0.72) } }, 1e-6)
  end)

  it("lets the DDPM and DDIM steps start at alpha_bar_t = 0", function()
    local xt, x0, z = D.tensor { { 1, -1 } }, D.tensor { { 0.2, 0.4 } }, D.tensor { { 0.5, 2 } }
    local abp = 0.3
    -- DDPM: alpha = 0, beta = 1: x = sqrt(abp) x0 + sqrt(1 - abp) z (beta_tilde = 1 - abp)
    H.assert_close(core._ddpm_step(xt, x0, z, 0, abp, true),
      { { math.sqrt(abp) * 0.2 + math.sqrt(1 - abp) * 0.5, math.sqrt(abp) * 0.4 + math.sqrt(1 - abp) * 2 } }, 1e-6)
    -- DDIM, eta = 0: eps = x_t, x = sqrt(abp) x0 + sqrt(1 - abp) x_t
    H.assert_close(core._ddim_step(xt, x0, nil, 0, abp, 0),
      { { math.sqrt(abp) * 0.2 + math.sqrt(1 - abp), math.sqrt(abp) * 0.4 - math.sqrt(1 - abp) } }, 1e-6)
  end)

  it("needs T >= 2", function()
    H.expect_error(function() schedule.linear { T = 1 }:rescale_zero_terminal_snr() end,
      "rescale_zero_terminal_snr: needs T >= 2")
    H.expect_error(function() schedule.Schedule.rescale_zero_terminal_snr({}) end,
      "rescale_zero_terminal_snr: expected a schedule (call it as sched:rescale_zero_terminal_snr(...)), got table")
  end)
end)

describe("shift", function()
  local cosine = schedule.cosine {}

  it("moves log-SNR by exactly -2 log(s) and scales sigma by s", function()
    for _, s in ipairs { 2, 0.5, 3 } do
      local sh = cosine:shift(s)
      for _, t in ipairs { 1, 2, 100, 500, 900, 999, 1000 } do
        local d = sh._values.log_snr[t] - cosine._values.log_snr[t]
        assert.is_true(math.abs(d + 2 * math.log(s)) < 1e-9, string.format("s = %g, t = %d: shifted by %.12g", s, t, d))
        assert_rel(sh._values.sigma[t], s * cosine._values.sigma[t], 1e-9, "sigma")
        local ab = cosine._values.alpha_bar[t]
        assert_rel(sh._values.alpha_bar[t], ab / (ab + s * s * (1 - ab)), 1e-14, "alpha_bar")
      end
      assert.are.equal(string.format("cosine+shift(%g)", s), sh.kind)
    end
    -- s > 1 is more noise: alpha_bar lower everywhere
    local more = cosine:shift(2)
    for t = 1, 1000, 37 do assert.is_true(more._values.alpha_bar[t] < cosine._values.alpha_bar[t]) end
    -- s = 1 changes nothing
    local same = cosine:shift(1)
    for t = 1, 1000, 111 do assert_rel(same._values.alpha_bar[t], cosine._values.alpha_bar[t], 1e-15) end
    -- zero terminal SNR stays zero, the shift holds elsewhere
    local zs = cosine:rescale_zero_terminal_snr():shift(2)
    assert.are.equal(0, zs._values.alpha_bar[1000])
    assert.are.equal("cosine+rescale_zero_terminal_snr+shift(2)", zs.kind)
    assert.is_true(math.abs(zs._values.log_snr[10] - cosine:rescale_zero_terminal_snr()._values.log_snr[10] + 2 * math.log(2)) < 1e-9)
  end)

  it("rejects s that is not a finite number > 0", function()
    for _, bad in ipairs { 0, -1, INF } do
      H.expect_error(function() cosine:shift(bad) end, "shift: s must be a finite number > 0, got " .. tostring(bad))
    end
    H.expect_error(function() cosine:shift(0 / 0) end, "shift: s is NaN")
    H.expect_error(function() cosine:shift("2") end, "shift: s must be a number, got string")
    H.expect_error(function() cosine:shift() end, "shift: s must be a number, got nil")
  end)
end)

describe("truncate", function()
  local s = schedule.linear { T = 100 }

  it("keeps timesteps t_min..t_max, renumbered from 1", function()
    local tr = s:truncate(1, 80)
    assert.are.equal(80, tr.T)
    for t = 1, 80 do assert.are.equal(s._values.alpha_bar[t], tr._values.alpha_bar[t]) end
    assert.are.equal("linear+truncate(1,80)", tr.kind)
    local mid = s:truncate(11, 60)
    assert.are.equal(50, mid.T)
    for k = 1, 50 do assert.are.equal(s._values.alpha_bar[10 + k], mid._values.alpha_bar[k]) end
    -- the first step jumps from clean data to the old alpha_bar_11
    assert_rel(mid._values.betas[1], 1 - s._values.alpha_bar[11], 1e-12)
    assert_rel(mid._values.betas[2], s._values.betas[12], 1e-9)
    assert.are.equal(60, s:truncate(41).T) -- t_max defaults to T
  end)

  it("rejects bad bounds", function()
    H.expect_error(function() s:truncate(0, 10) end, "truncate: expected 1 <= t_min <= t_max <= 100, got t_min = 0 and t_max = 10")
    H.expect_error(function() s:truncate(5, 101) end, "truncate: expected 1 <= t_min <= t_max <= 100, got t_min = 5 and t_max = 101")
    H.expect_error(function() s:truncate(50, 40) end, "truncate: expected 1 <= t_min <= t_max <= 100")
    H.expect_error(function() s:truncate(1.5, 40) end, "truncate: t_min must be an integer timestep, got 1.5")
    H.expect_error(function() s:truncate(nil, 40) end, "truncate: t_min must be an integer timestep, got nil")
  end)
end)

describe("schedule.named", function()
  it("rebuilds a schedule from its kind string", function()
    local s = schedule.cosine { T = 200 }:rescale_zero_terminal_snr():shift(2):truncate(1, 150)
    local r = schedule.named(s.kind, 200)
    assert.are.equal(s.kind, r.kind)
    assert.are.equal(150, r.T)
    for t = 1, 150 do assert.are.equal(s._values.alpha_bar[t], r._values.alpha_bar[t]) end
    assert.are.equal(1000, schedule.named("linear").T)
  end)

  it("names what it cannot parse", function()
    H.expect_error(function() schedule.named("cosin") end, 'schedule.named: unknown schedule "cosin"')
    H.expect_error(function() schedule.named("cosine+shift") end, 'schedule.named: unknown transform "shift" in "cosine+shift"')
    H.expect_error(function() schedule.named("cosine+blur(2)") end, 'schedule.named: unknown transform "blur(2)"')
    H.expect_error(function() schedule.named("cosine+shift(-1)") end, "schedule.named: shift: s must be a finite number > 0, got -1")
    H.expect_error(function() schedule.named("cosine", 0) end, "schedule.named: T must be an integer >= 1, got 0")
    H.expect_error(function() schedule.named(3) end, "schedule.named: kind must be a string, got number")
  end)
end)

describe("conversions between t, u, alpha_bar, log-SNR and sigma", function()
  local cosine, linear = schedule.cosine {}, schedule.linear {}
  local zero = cosine:rescale_zero_terminal_snr()

  it("are the table values at integer timesteps, and clean data at t = 0", function()
    for _, s in ipairs { cosine, zero } do
      for _, t in ipairs { 1, 2, 500, 999, 1000 } do
        assert.are.equal(s._values.sigma[t], s:sigma_at(t))
        assert.are.equal(s._values.alpha_bar[t], s:alpha_bar_at(t))
        assert.are.equal(s._values.log_snr[t], s:log_snr_at(t))
      end
      assert.are.equal(0, s:sigma_at(0))
      assert.are.equal(1, s:alpha_bar_at(0))
      assert.are.equal(INF, s:log_snr_at(0))
      assert.are.equal(0, s:t_from_sigma(0))
    end
  end)

  it("interpolate log sigma between timesteps, alpha_bar where an end is infinite", function()
    local ls = function(t) return math.log(cosine._values.sigma[t]) end
    assert_rel(cosine:sigma_at(10.25), math.exp(ls(10) + 0.25 * (ls(11) - ls(10))), 1e-13)
    assert_rel(cosine:log_snr_at(500.5), (cosine._values.log_snr[500] + cosine._values.log_snr[501]) / 2, 1e-12)
    -- (0, 1): alpha_bar from 1 to alpha_bar_1
    assert_rel(cosine:alpha_bar_at(0.5), 1 - 0.5 * (1 - cosine._values.alpha_bar[1]), 1e-14)
    -- (T - 1, T) into zero SNR: alpha_bar from alpha_bar_{T-1} to 0
    assert_rel(zero:alpha_bar_at(999.25), 0.75 * zero._values.alpha_bar[999], 1e-12)
    -- alpha_bar_999 / 1000 at t = 999.999: sigma grows by about sqrt(1000)
    assert_rel(zero:sigma_at(999.999), math.sqrt((1 - zero._values.alpha_bar[999] * 0.001) / (zero._values.alpha_bar[999] * 0.001)), 1e-9)
  end)

  it("round-trip t -> sigma -> t and t -> alpha_bar / log-SNR -> t", function()
    for _, s in ipairs { cosine, linear, zero, schedule.sigmoid { T = 30 }, schedule.linear { T = 1 } } do
      local ts = { 0, 1e-6, 0.3, 1, 1.5, s.T / 3, s.T / 2 + 0.123, s.T - 0.5, s.T }
      for _, t in ipairs(ts) do
        if t <= s.T then
          H.assert_close(s:t_from_sigma(s:sigma_at(t)), t, 1e-9, s.kind .. " sigma t = " .. t)
          H.assert_close(s:t_from_log_snr(s:log_snr_at(t)), t, 1e-9, s.kind .. " log_snr t = " .. t)
          if t > 0.1 then -- alpha_bar near 1 holds few digits of 1 - alpha_bar
            H.assert_close(s:t_from_alpha_bar(s:alpha_bar_at(t)), t, 1e-7, s.kind .. " alpha_bar t = " .. t)
          end
        end
      end
    end
  end)

  it("t_from_sigma increases with sigma (monotone inverse)", function()
    for _, s in ipairs { cosine, zero } do
      local prev = -1
      for k = -60, 60 do
        local sigma = 10 ^ (k / 10)
        if sigma <= s.sigma_max then
          local t = s:t_from_sigma(sigma)
          assert.is_true(t > prev, string.format("%s: t(%g) = %g after %g", s.kind, sigma, t, prev))
          assert.is_true(t >= 0 and t <= s.T)
          prev = t
        end
      end
    end
    assert.are.equal(1000, zero:t_from_sigma(INF))
  end)

  it("map tensors element by element, keeping the shape", function()
    local t = D.tensor { { 1, 2.5 }, { 0, 1000 } }
    local sig = cosine:sigma_at(t)
    assert.are.same({ 2, 2 }, sig:shape())
    H.assert_close(sig, { { cosine:sigma_at(1), cosine:sigma_at(2.5) }, { 0, cosine:sigma_at(1000) } }, 1e-6)
    local back = cosine:t_from_sigma(sig)
    H.assert_close(back, { { 1, 2.5 }, { 0, 1000 } }, 1e-4) -- float32 sigmas
    local zero_d = cosine:alpha_bar_at(D.tensor(7)) -- a 0-d tensor stays 0-d
    assert.are.same({}, zero_d:shape())
    H.assert_close(zero_d:item(), cosine:alpha_bar_at(7), 1e-7)
  end)

  it("convert between any two views", function()
    local s = cosine
    assert_rel(s:convert(0.5, "u", "sigma"), s:sigma_at(500), 1e-15)
    assert.are.equal(500, s:convert(0.5, "u", "t"))
    assert_rel(s:convert(s:sigma_at(321.5), "sigma", "u"), 0.3215, 1e-12)
    local sigma = 2.5
    assert_rel(s:convert(sigma, "sigma", "alpha_bar"), 1 / (1 + sigma * sigma), 1e-12)
    assert_rel(s:convert(sigma, "sigma", "log_snr"), -2 * math.log(sigma), 1e-12)
    assert_rel(s:convert(0.3, "alpha_bar", "sigma"), math.sqrt(0.7 / 0.3), 1e-12)
    assert.are.equal(0.25, s:u_from_t(250))
    assert.are.equal(250, s:t_from_u(0.25))
    H.assert_close(s:convert(D.tensor { 0, 0.5, 1 }, "u", "t"), { 0, 500, 1000 }, 1e-6)
  end)

  it("reject values outside each view with messages", function()
    H.expect_error(function() cosine:sigma_at(-1) end, "sigma_at: t = -1 is outside [0, 1000]")
    H.expect_error(function() cosine:sigma_at(1000.5) end, "sigma_at: t = 1000.5 is outside [0, 1000]")
    H.expect_error(function() cosine:alpha_bar_at(0 / 0) end, "alpha_bar_at: t = ")
    H.expect_error(function() cosine:sigma_at(D.tensor { 1, 2000 }) end, "sigma_at: t = 2000 is outside [0, 1000]")
    H.expect_error(function() cosine:sigma_at("1") end, "sigma_at: expected a number or a tensor, got string")
    H.expect_error(function() cosine:t_from_sigma(-0.5) end, "t_from_sigma: sigma = -0.5 must be >= 0")
    H.expect_error(function() cosine:t_from_sigma(0 / 0) end, "t_from_sigma: sigma = ")
    H.expect_error(function() linear:t_from_sigma(1000) end,
      "t_from_sigma: sigma = 1000 is above this schedule's sigma_max = 157.4")
    H.expect_error(function() cosine:t_from_alpha_bar(1.5) end, "t_from_alpha_bar: alpha_bar = 1.5 is outside [0, 1]")
    H.expect_error(function() cosine:t_from_log_snr(0 / 0) end, "t_from_log_snr: log_snr is NaN")
    H.expect_error(function() cosine:t_from_u(1.5) end, "t_from_u: u = 1.5 is outside [0, 1]")
    H.expect_error(function() cosine:convert(1, "time", "sigma") end,
      'convert: from must be "t", "u", "alpha_bar", "log_snr" or "sigma", got time')
    H.expect_error(function() cosine:convert(1, "t", "snr") end, 'convert: to must be "t", "u"')
    H.expect_error(function() schedule.Schedule.sigma_at(5, 1) end, "sigma_at: expected a schedule")
  end)
end)

describe("timestep spacings", function()
  it("T = 1000, 10 steps: leading, trailing, linspace by hand", function()
    assert.are.same({ 901, 801, 701, 601, 501, 401, 301, 201, 101, 1 }, schedule.timesteps(1000, 10, "leading"))
    assert.are.same({ 901, 801, 701, 601, 501, 401, 301, 201, 101, 1 }, schedule.timesteps(1000, 10)) -- the default
    assert.are.same({ 1000, 900, 800, 700, 600, 500, 400, 300, 200, 100 }, schedule.timesteps(1000, 10, "trailing"))
    -- 1000 - i 999 / 9 = 1000 - 111 i
    assert.are.same({ 1000, 889, 778, 667, 556, 445, 334, 223, 112, 1 }, schedule.timesteps(1000, 10, "linspace"))
  end)

  it("uneven cases: T = 10, 3 and 4 steps; one step; every step", function()
    assert.are.same({ 7, 4, 1 }, schedule.timesteps(10, 3, "leading"))       -- 10 // 3 = 3
    assert.are.same({ 10, 7, 3 }, schedule.timesteps(10, 3, "trailing"))     -- 10, 6.67, 3.33
    assert.are.same({ 10, 8, 5, 3 }, schedule.timesteps(10, 4, "trailing"))  -- 10, 7.5, 5, 2.5 (half up)
    assert.are.same({ 10, 7, 4, 1 }, schedule.timesteps(10, 4, "linspace"))  -- 10 - 3 i
    assert.are.same({ 10, 6, 1 }, schedule.timesteps(10, 3, "linspace"))     -- 10, 5.5, 1
    assert.are.same({ 1 }, schedule.timesteps(10, 1, "leading"))
    assert.are.same({ 10 }, schedule.timesteps(10, 1, "trailing"))
    assert.are.same({ 10 }, schedule.timesteps(10, 1, "linspace"))
    for _, sp in ipairs { "leading", "trailing", "linspace" } do
      assert.are.same({ 6, 5, 4, 3, 2, 1 }, schedule.timesteps(6, 6, sp))
    end
    local s = schedule.cosine { T = 50 }
    assert.are.same(schedule.timesteps(50, 7, "trailing"), s:timesteps(7, "trailing"))
  end)

  it("an explicit list is checked and copied", function()
    local list = { 999, 500, 20, 1 }
    local ts = schedule.timesteps(1000, nil, list)
    assert.are.same(list, ts)
    assert.are_not.equal(list, ts)
    assert.are.same(list, schedule.cosine {}:timesteps(list))
    assert.are.same(list, schedule.timesteps(1000, 4, list))
  end)

  it("rejects bad spacings, counts and lists", function()
    H.expect_error(function() schedule.timesteps(1000, 10, "karras") end,
      'timesteps: spacing must be "leading", "trailing" or "linspace", got karras (or a list of timesteps)')
    H.expect_error(function() schedule.timesteps(1000, 0) end, "timesteps: steps must be an integer in [1, 1000], got 0")
    H.expect_error(function() schedule.timesteps(1000, 1001) end, "timesteps: steps must be an integer in [1, 1000], got 1001")
    H.expect_error(function() schedule.timesteps(1000, 2.5) end, "timesteps: steps must be an integer in [1, 1000], got 2.5")
    H.expect_error(function() schedule.timesteps(0, 1) end, "timesteps: T must be an integer >= 1, got 0")
    H.expect_error(function() schedule.timesteps(1000, nil, { 5, 7 }) end,
      "timesteps: the timesteps must be strictly descending, got 7 after 5 at position 2")
    H.expect_error(function() schedule.timesteps(1000, nil, { 1001 }) end,
      "timesteps: timestep 1001 at position 1 is not an integer in [1, 1000]")
    H.expect_error(function() schedule.timesteps(1000, nil, { 10.5 }) end, "timestep 10.5 at position 1 is not an integer")
    H.expect_error(function() schedule.timesteps(1000, nil, {}) end, "timesteps: the list of timesteps is empty")
    H.expect_error(function() schedule.timesteps(1000, 3, { 9, 5 }) end, "timesteps: n = 3 but the list holds 2 timesteps")
    H.expect_error(function() schedule.cosine {}:timesteps(0, "trailing") end, "timesteps: steps must be an integer in [1, 1000]")
  end)
end)

describe("sigma spacings", function()
  it("karras: the ends exactly, the rho formula inside, then a 0", function()
    local smin, smax, rho = 0.1, 10, 7
    local s = schedule.karras_sigmas(5, smin, smax)
    assert.are.equal(6, #s)
    assert.are.equal(smax, s[1])
    assert.are.equal(smin, s[5])
    assert.are.equal(0, s[6])
    -- i = 3 of 5 (ramp 1/2): (10^(1/7) + (0.1^(1/7) - 10^(1/7)) / 2)^7
    local a, b = 10 ^ (1 / 7), 0.1 ^ (1 / 7)
    assert_rel(s[3], ((a + b) / 2) ^ 7, 1e-13)
    assert_rel(s[3], 1.4507321135662, 1e-12) -- the same, as a number
    assert_rel(s[2], (a + 0.25 * (b - a)) ^ 7, 1e-13)
    for i = 1, 5 do assert.is_true(s[i] > s[i + 1]) end
    -- rho = 1 is linear spacing
    local lin = schedule.karras_sigmas(5, 1, 5, 1)
    H.assert_close(lin, { 5, 4, 3, 2, 1, 0 }, 1e-12)
    assert.are.same({ 3, 0 }, schedule.karras_sigmas(1, 0.5, 3))
  end)

  it("exponential: geometric from sigma_max to sigma_min, then a 0", function()
    local s = schedule.exponential_sigmas(6, 0.01, 100)
    assert.are.equal(7, #s)
    assert.are.equal(100, s[1])
    assert.are.equal(0.01, s[6])
    assert.are.equal(0, s[7])
    local ratio = (0.01 / 100) ^ (1 / 5)
    for i = 1, 5 do assert_rel(s[i + 1] / s[i], ratio, 1e-12, "ratio " .. i) end
    H.assert_close(s, { 100, 100 * ratio, 100 * ratio ^ 2, 100 * ratio ^ 3, 100 * ratio ^ 4, 0.01, 0 }, 1e-12)
  end)

  it("sched:sigmas: karras / exponential over the schedule's range, or the sigmas of timesteps", function()
    local c = schedule.cosine {}
    assert.are.same(schedule.karras_sigmas(10, c.sigma_min, c.sigma_max), c:sigmas(10))
    assert.are.same(schedule.karras_sigmas(10, c.sigma_min, c.sigma_max, 3), c:sigmas(10, "karras", { rho = 3 }))
    assert.are.same(schedule.exponential_sigmas(8, 0.1, 80), c:sigmas(8, "exponential", { sigma_min = 0.1, sigma_max = 80 }))
    local ts = c:timesteps(10, "trailing")
    local sig = c:sigmas(10, "trailing")
    assert.are.equal(11, #sig)
    for i, t in ipairs(ts) do assert.are.equal(c._values.sigma[t], sig[i]) end
    assert.are.equal(0, sig[11])
    -- an explicit list: checked, 0 appended
    assert.are.same({ 50, 5, 0.5, 0 }, c:sigmas { 50, 5, 0.5 })
    assert.are.same({ 50, 5, 0 }, c:sigmas { 50, 5, 0 })
    -- zero terminal SNR: trailing starts at inf; karras needs a finite sigma_max
    local z = c:rescale_zero_terminal_snr()
    assert.are.equal(INF, z:sigmas(4, "trailing")[1])
    H.expect_error(function() z:sigmas(4, "karras") end,
      "sigmas: sigma_max is inf (zero terminal SNR): karras spacing needs a finite opts.sigma_max")
    assert.are.equal(4096, z:sigmas(4, "karras", { sigma_max = 4096 })[1])
  end)

  it("rejects bad ranges, counts and names", function()
    H.expect_error(function() schedule.karras_sigmas(5, 10, 0.1) end, "karras_sigmas: sigma_min = 10 must be below sigma_max = 0.1")
    H.expect_error(function() schedule.karras_sigmas(5, 1, 1) end, "karras_sigmas: sigma_min = 1 must be below sigma_max = 1")
    H.expect_error(function() schedule.exponential_sigmas(5, 0, 1) end,
      "exponential_sigmas: expected 0 < sigma_min < sigma_max < inf, got sigma_min = 0")
    H.expect_error(function() schedule.exponential_sigmas(5, 0.1, INF) end, "exponential_sigmas: expected 0 < sigma_min < sigma_max < inf")
    H.expect_error(function() schedule.karras_sigmas(0, 0.1, 1) end, "karras_sigmas: n must be an integer >= 1, got 0")
    H.expect_error(function() schedule.karras_sigmas(2.5, 0.1, 1) end, "karras_sigmas: n must be an integer >= 1, got 2.5")
    H.expect_error(function() schedule.karras_sigmas(5, 0 / 0, 1) end, "karras_sigmas: sigma_min is NaN")
    H.expect_error(function() schedule.karras_sigmas(5, 0.1, 1, 0) end, "karras_sigmas: rho must be a finite number > 0, got 0")
    H.expect_error(function() schedule.karras_sigmas(5, 0.1, "1") end, "karras_sigmas: sigma_max must be a number, got string")
    local c = schedule.cosine {}
    H.expect_error(function() c:sigmas(5, "karas") end,
      'sigmas: spacing must be "karras", "exponential", "leading", "trailing", "linspace" or a list of sigmas, got karas')
    H.assert_error_matching(":%d+: sigmas: n must be an integer >= 1, got 0$", function() c:sigmas(0, "karras") end)
    H.expect_error(function() c:sigmas(0, "leading") end, "sigmas: steps must be an integer in [1, 1000], got 0")
    H.expect_error(function() c:sigmas(5, "karras", { sigma_max = 1e9 }) end, "sigmas: sigma_max = 1e+09 is above this schedule's sigma_max")
    H.expect_error(function() c:sigmas(5, "karras", { sigma_mx = 1 }) end, "sigmas: unknown option 'sigma_mx'")
    H.expect_error(function() c:sigmas(5, "exponential", { rho = 3 }) end, "sigmas: rho is an option of karras spacing only")
    H.expect_error(function() c:sigmas { 5, 50 } end, "sigmas: the sigmas must be strictly descending, got 50 after 5 at position 2")
    H.expect_error(function() c:sigmas { 1e9 } end, "sigmas: sigma 1e+09 at position 1 is above this schedule's sigma_max")
    H.expect_error(function() c:sigmas { 0 / 0 } end, "sigmas: sigma nan at position 1 is not a number >= 0")
  end)
end)

describe("loss weights", function()
  -- from_betas {0.1, 0.2}: snr_1 = 0.9 / 0.1 = 9, snr_2 = 0.72 / 0.28 = 18 / 7
  local s = schedule.from_betas { 0.1, 0.2 }
  local snr2 = 18 / 7
  local t = D.tensor { 1, 2, 1 }

  it("uniform: ones", function()
    H.assert_close(s:loss_weight(t, "uniform"), { 1, 1, 1 }, 0)
    assert.are.same({ 3 }, s:loss_weight(t, "uniform", { prediction = "v" }):shape())
  end)

  it("min_snr: min(snr, gamma) on the x0 error, in each prediction's form", function()
    H.assert_close(s:loss_weight(t, "min_snr"), { 5 / 9, 1, 5 / 9 }, 1e-6) -- epsilon: min(snr, 5) / snr
    H.assert_close(s:loss_weight(t, "min_snr", { prediction = "v" }), { 5 / 10, snr2 / (snr2 + 1), 0.5 }, 1e-6)
    H.assert_close(s:loss_weight(t, "min_snr", { prediction = "x0" }), { 5, snr2, 5 }, 1e-6)
    H.assert_close(s:loss_weight(t, "min_snr", { gamma = 1 }), { 1 / 9, 1 / snr2, 1 / 9 }, 1e-6)
    assert_rel(s:loss_weight(2, "min_snr", { gamma = 2, prediction = "v" }), 2 / (snr2 + 1), 1e-12) -- a number for a number
  end)

  it("snr_plus_one: snr + 1 on the x0 error (the v loss itself)", function()
    H.assert_close(s:loss_weight(t, "snr_plus_one"), { 10 / 9, (snr2 + 1) / snr2, 10 / 9 }, 1e-6)
    H.assert_close(s:loss_weight(t, "snr_plus_one", { prediction = "v" }), { 1, 1, 1 }, 1e-7)
    H.assert_close(s:loss_weight(t, "snr_plus_one", { prediction = "x0" }), { 10, snr2 + 1, 10 }, 1e-6)
  end)

  it("at zero terminal SNR: the limits where defined, an error where infinite", function()
    local z = schedule.from_betas { 0.1, 1 }
    H.assert_close(z:loss_weight(D.tensor { 1, 2 }, "min_snr"), { 5 / 9, 1 }, 1e-6)
    H.assert_close(z:loss_weight(D.tensor { 1, 2 }, "min_snr", { prediction = "v" }), { 0.5, 0 }, 1e-6)
    H.assert_close(z:loss_weight(D.tensor { 2 }, "snr_plus_one", { prediction = "v" }), { 1 }, 0)
    H.expect_error(function() z:loss_weight(D.tensor { 1, 2 }, "snr_plus_one") end,
      "loss_weight: snr_plus_one for epsilon prediction is (snr + 1) / snr, infinite at t = 2 where snr = 0")
  end)

  it("rejects bad kinds, options and timesteps", function()
    H.expect_error(function() s:loss_weight(t, "min-snr") end,
      'loss_weight: kind must be "uniform", "min_snr" or "snr_plus_one", got min-snr')
    H.expect_error(function() s:loss_weight(t, "min_snr", { prediction = "eps" }) end,
      'loss_weight: prediction must be "epsilon", "x0" or "v", got eps')
    H.expect_error(function() s:loss_weight(t, "min_snr", { gamma = 0 }) end, "loss_weight: gamma must be a number > 0, got 0")
    H.expect_error(function() s:loss_weight(t, "uniform", { gamma = 2 }) end, "loss_weight: gamma is an option of min_snr only")
    H.expect_error(function() s:loss_weight(t, "min_snr", { gama = 2 }) end, "loss_weight: unknown option 'gama'")
    H.expect_error(function() s:loss_weight(D.tensor { 1, 3 }, "min_snr") end, "loss_weight: timestep 3 is outside [1, 2]")
    H.expect_error(function() s:loss_weight(0, "uniform") end, "loss_weight: timestep 0 is outside [1, 2]")
    H.expect_error(function() s:loss_weight("1", "uniform") end, "loss_weight: expected a number or a tensor, got string")
  end)
end)

describe("printing", function()
  it("shows the transforms, a zero terminal SNR and its -inf end", function()
    local z = schedule.cosine { T = 64 }:rescale_zero_terminal_snr()
    local s = tostring(z)
    local prefix = "Schedule(cosine+rescale_zero_terminal_snr, T = 64, terminal SNR 0) log-SNR "
    assert.are.equal(prefix, s:sub(1, #prefix))
    assert.are.equal("  -inf", s:sub(-6)) -- the last column is blank (-inf), then the last value
    local spark = z:sparkline(32)
    assert.are.equal(32 * 3 - 2, #spark) -- 31 three-byte blocks and one blank
    assert.are.equal("█", spark:sub(1, 3)) -- the highest log-SNR first
    -- a schedule shorter than the width: one column per timestep; a flat one in the middle row
    assert.are.equal("█▁", schedule.from_betas { 0.1, 0.2 }:sparkline())
    assert.are.equal("▄", schedule.from_betas { 0.5 }:sparkline())
    H.expect_error(function() z:sparkline(0) end, "sparkline: width must be an integer >= 1, got 0")
  end)
end)
