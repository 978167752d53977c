--- diffusion.sample: the samplers, each a short Lua loop over tensor ops and
-- the C step kernels, all on one denoiser wrapper.
--
--   local x = D.sample.run("dpmpp_2m", net, sched, {n = 16, shape = {1, 28, 28}, steps = 20, seed = 1})
--   local x = D.sample.ddim(net, sched, {n = 16, shape = {1, 28, 28}, steps = 50, seed = 1})
--   local x, frames = D.sample.heun(net, sched, {shape = {1, 28, 28}, y = labels, guidance = 3,
--                                                null_class = 11, s_churn = 10, trajectory = true})
--
-- Two views of one noisy sample (alpha_bar_t from the schedule, and
-- sigma_t = sqrt((1 - ab_t) / ab_t)):
--   x_t     = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps   what the model sees; DDPM and DDIM step here
--   x_sigma = x0 + sigma eps = x_t / sqrt(ab_t)    where the k-diffusion samplers step (Euler,
--                                                   Heun, DPM-Solver++: x moves with sigma alone)
-- The denoiser (sample.denoiser) serves both: it calls the model on x_t at
-- the (real-valued) timestep sched:t_from_sigma(sigma), applies classifier-free
-- guidance, and turns the output (epsilon, x0 or v) into the predicted x0 and
-- eps. So a model trained to predict any of the three samples with every
-- sampler, and a user's sampler is a loop over den(x, sigma) (examples/my_sampler.lua).
--
-- `model` is any callable model(x, t, y) -> prediction, for x (N, C, H, W), t
-- an (N) tensor of timesteps (all equal; fractional for the sigma samplers)
-- and y the labels or nil. Sampling runs without recording autograd.
--
-- Samplers (sample.names; sample.run(name, model, sched, opts) picks one):
--   ddpm             ancestral sampling (Ho et al. 2020)                     on timesteps
--   ddim             Song et al. 2020, eta: 0 deterministic .. 1 DDPM-like   on timesteps
--   euler            Euler steps of the probability-flow ODE                 on sigmas
--   euler_ancestral  Euler down to sigma_down, fresh noise up to sigma_next  on sigmas
--   heun             Karras et al. 2022 Alg. 2 (2nd order, optional churn)   on sigmas
--   dpmpp_2m         DPM-Solver++(2M) (Lu et al. 2022), multistep ODE        on sigmas
--   dpmpp_2m_sde     its SDE variant (midpoint), eta scales the noise        on sigmas
--   dpmpp_3m_sde     DPM-Solver++(3M) SDE; eta = 0 makes it the 3M ODE       on sigmas
--
-- Options, for all:
--   n, shape          the batch: x is (n, shape...); n defaults to the number of labels
--   steps             how many steps (ddpm: T, others: 50, at most T on a timestep spacing)
--   spacing           which noise levels: "leading" (the default of ddpm/ddim), "trailing",
--                     "linspace" (timesteps: schedule.timesteps), and for the sigma samplers
--                     also "karras" (their default) or "exponential" (sched:sigmas)
--   timesteps         (ddpm, ddim) an explicit descending list of timesteps instead
--   sigmas            (sigma samplers) an explicit descending list of sigmas instead (a
--                     list or a 1-d tensor; a final 0 is appended when missing)
--   rho               (sigma samplers) Karras' rho [7]
--   seed, generator   where the starting noise and the step noise come from
--   prediction        what the model predicts: "epsilon" (default), "x0" or "v"
--   y                 labels (an (n) tensor or a list), passed to the model
--   guidance, null_class  classifier-free guidance: out = uncond + w (cond - uncond), the
--                     unconditional pass using label null_class; both passes in one call of 2n
--   guidance_rescale  phi in [0, 1] (Lin et al. 2023): the guided x0 rescaled to the
--                     conditional x0's standard deviation (per sample), mixed in by phi
--   clip_x0           clamp the predicted x0 to [-1, 1] (default true)
--   progress          true (a D.progress line) or an object with update(step) [and finish()]
--   callback          callback(step, x, x0_pred, t, sigma) after each step: x the new
--                     sample as the sampler holds it (x_t, or x_sigma for sigma samplers),
--                     x0_pred the step's prediction, made at timestep t (noise level sigma)
--   trajectory        true: also return {x_start, ..., x}, snapshots every
--                     `trajectory_every` steps (default 1) and after the last, all in the
--                     model's scale x_t (x_sigma / sqrt(1 + sigma^2))
-- and per sampler (defaults in brackets):
--   ddpm             variance: "beta_tilde" (the posterior's) or "beta"
--   ddim             eta [0], in [0, 1]
--   euler, heun      s_churn [0], s_tmin [0], s_tmax [inf], s_noise [1]: Karras' churn
--   euler_ancestral  eta [1], s_noise [1]
--   dpmpp_2m_sde, dpmpp_3m_sde   eta [1], s_noise [1]
--
-- The sigma samplers start from x_sigma = sqrt(1 + sigma_max^2) z, which is
-- x_T = z in the model's scale, as for DDPM and DDIM: the same seed gives
-- every sampler the same starting noise. On a zero terminal SNR schedule
-- (sigma_T = inf) they start at alpha_bar = 2^-24 (sigma ~ 4096) instead.
local core = require "diffusion.core"
local new_progress = require "diffusion.progress"
local schedule = require "diffusion.schedule"
local util = require "diffusion.util"

local sample = {}

local is_tensor = util.is_tensor
local shape_string = util.shape_string

local function is_callable(f)
  if type(f) == "function" then return true end
  local mt = getmetatable(f)
  return type(mt) == "table" and mt.__call ~= nil
end

local function is_finite(v) return type(v) == "number" and v == v and v > -math.huge and v < math.huge end

-- exp(x) - 1 without the cancellation at small x (Lua's math has no expm1)
local function expm1(x)
  if math.abs(x) < 1e-5 then return x + x * x / 2 + x * x * x / 6 end
  return math.exp(x) - 1
end

--- noise levels -------------------------------------------------------------------
-- The schedule converts (sched:sigma_at(t), sched:t_from_sigma(sigma): log sigma
-- linear between the integer timesteps) and spaces (schedule.timesteps,
-- sched:sigmas); the samplers only add two things below.

local TIMESTEP_SPACINGS = { leading = true, trailing = true, linspace = true }
local SIGMA_SPACINGS = { karras = true, exponential = true, leading = true, trailing = true, linspace = true }

--- sample.timesteps(T, steps [, spacing]): schedule.timesteps under its older name
sample.timesteps = schedule.timesteps

-- A zero terminal SNR schedule (alpha_bar_T = 0) has sigma_T = inf, where no
-- sigma sampler can start: they start at alpha_bar = 2^-24 instead (sigma ~ 4096,
-- as diffusers does), where the model is told t ~ T.
local ZERO_SNR_SIGMA = math.sqrt((1 - 2 ^ -24) / 2 ^ -24)

-- The sigmas of steps + spacing (both checked), descending, then 0.
local function sigmas_for(sched, steps, spacing, rho)
  if TIMESTEP_SPACINGS[spacing] then
    local sigmas = sched:sigmas(steps, spacing)
    if sigmas[1] == math.huge then sigmas[1] = ZERO_SNR_SIGMA end
    return sigmas
  end
  local opts = { rho = spacing == "karras" and rho or nil }
  if sched.sigma_max == math.huge then opts.sigma_max = ZERO_SNR_SIGMA end
  return sched:sigmas(steps, spacing, opts)
end

-- The model's timestep at noise level sigma (churn may go beyond sigma_max: t = T there).
local function t_of(sched, sigma)
  return sched:t_from_sigma(math.min(sigma, sched.sigma_max))
end

--- the denoiser ------------------------------------------------------------------

local PREDICTIONS = { epsilon = true, x0 = true, v = true }

-- x0 and eps from the model output `out` at x_t = a x0 + s eps (a^2 + s^2 = 1)
local function to_x0_eps(prediction, out, x_t, a, s)
  local combine = core._schedule_combine
  if prediction == "epsilon" then return combine(1 / a, x_t, -s / a, out, "sample"), out end
  if prediction == "x0" then return out, combine(1 / s, x_t, -a / s, out, "sample") end
  -- v = a eps - s x0, so x0 = a x_t - s v and eps = s x_t + a v
  return combine(a, x_t, -s, out, "sample"), combine(s, x_t, a, out, "sample")
end

-- The denoiser options checked into o (labels to a tensor, the 2n labels of guidance).
local function check_denoiser_options(fail, o)
  o.prediction = o.prediction or "epsilon"
  if not PREDICTIONS[o.prediction] then
    fail('prediction must be "epsilon", "x0" or "v", got %s', tostring(o.prediction))
  end
  if o.y ~= nil then
    if type(o.y) == "table" then o.y = core.tensor(o.y) end
    if not is_tensor(o.y) or o.y:dim() ~= 1 then fail("y must be a (n) tensor or a list of labels") end
  end
  if o.guidance ~= nil then
    if not is_finite(o.guidance) then fail("guidance must be a number, got %s", tostring(o.guidance)) end
    if o.y == nil then fail("guidance needs labels y (the conditional pass)") end
    if type(o.null_class) ~= "number" then
      fail("guidance needs null_class (the label of the unconditional pass), got %s", tostring(o.null_class))
    end
    o.y2 = core.cat({ o.y, core.full({ o.y:size(1) }, o.null_class) }, 1)
  end
  if o.guidance_rescale ~= nil then
    local phi = o.guidance_rescale
    if type(phi) ~= "number" or not (phi >= 0 and phi <= 1) then
      fail("guidance_rescale must be a number in [0, 1], got %s", tostring(phi))
    end
    if o.guidance == nil then fail("guidance_rescale needs guidance") end
  end
  if o.clip_x0 == nil then o.clip_x0 = true end
end

local Denoiser = {}
Denoiser.__index = Denoiser

local DENOISER_OPTIONS = { prediction = true, y = true, guidance = true, null_class = true, guidance_rescale = true,
  clip_x0 = true }

-- A denoiser from checked options; label prefixes its errors.
local function new_denoiser(label, model, sched, o)
  local den = { model = model, sched = sched, name = label, calls = 0, y2 = o.y2 }
  for k in pairs(DENOISER_OPTIONS) do den[k] = o[k] end
  return setmetatable(den, Denoiser)
end

--- sample.denoiser(model, sched [, opts]) -> den, the wrapper every sampler uses:
--   den(x, sigma) -> x0, eps    for x = x0 + sigma eps (the sigma view)
--   den:at_t(x_t, t) -> x0, eps for x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps, t in [1, T]
-- opts: prediction, y, guidance, null_class, guidance_rescale, clip_x0 (as for
-- the samplers). eps is the one that goes with the returned x0 (after
-- guidance, rescaling and clipping). den.calls counts the model calls.
function sample.denoiser(model, sched, opts)
  local function fail(fmt, ...) error(string.format("sample.denoiser: " .. fmt, ...), 3) end
  if not is_callable(model) then fail("model must be callable as model(x, t, y), got %s", type(model)) end
  if type(sched) ~= "table" or not sched._values then fail("expected a schedule (D.schedule.*), got %s", type(sched)) end
  if opts ~= nil and type(opts) ~= "table" then fail("expected a table of options, got %s", type(opts)) end
  local o = {}
  for k, v in pairs(opts or {}) do
    if not DENOISER_OPTIONS[k] then fail("unknown option '%s'", tostring(k)) end
    o[k] = v
  end
  check_denoiser_options(fail, o)
  return new_denoiser("sample.denoiser", model, sched, o)
end

-- The denoised x0 and eps for x_t = a x0 + s eps, the model told timestep t.
function Denoiser:predict(x_t, t, a, s)
  local n = x_t:size(1)
  if self.y and self.y:size(1) ~= n then
    error(string.format("%s: %d labels for a batch of %d", self.name, self.y:size(1), n), 0)
  end
  if a == 0 and self.prediction == "epsilon" then
    error(string.format("%s: an epsilon model gives no x0 at alpha_bar = 0 (zero terminal SNR): use a v or x0 model, "
      .. "or a spacing that leaves out t = T", self.name), 0)
  end
  local x_in, y = x_t, self.y
  if self.guidance then x_in, y = core.cat({ x_t, x_t }, 1), self.y2 end
  local out = util.no_grad(self.model, x_in, core.full({ x_in:size(1) }, t), y)
  self.calls = self.calls + 1
  if not is_tensor(out) then
    error(string.format("%s: the model returned %s, expected a tensor", self.name, type(out)), 0)
  end
  if out:shape() ~= x_in:shape() then
    error(string.format("%s: the model returned shape %s for x of shape %s", self.name, shape_string(out:shape()),
      shape_string(x_in:shape())), 0)
  end
  return util.no_grad(function()
    local cond, guided = out, out
    if self.guidance then
      local uncond
      cond, uncond = out:narrow(1, 1, n), out:narrow(1, n + 1, n)
      guided = uncond + (cond - uncond) * self.guidance
    end
    local x0, eps = to_x0_eps(self.prediction, guided, x_t, a, s)
    local changed = false
    if self.guidance_rescale then -- Lin et al. 2023, on x0 (so the same for every prediction type)
      local dims = {}
      for d = 2, x0:dim() do dims[#dims + 1] = d end
      local x0_cond = to_x0_eps(self.prediction, cond, x_t, a, s)
      local ratio = x0_cond:std(dims, true) / x0:std(dims, true):clamp(1e-12, math.huge)
      x0 = x0 * (ratio * self.guidance_rescale + (1 - self.guidance_rescale))
      changed = true
    end
    if self.clip_x0 then x0, changed = x0:clamp(-1, 1), true end
    if changed then eps = core._schedule_combine(1 / s, x_t, -a / s, x0, "sample") end
    return x0, eps
  end)
end

-- sqrt(alpha_bar) and sqrt(1 - alpha_bar) at noise level sigma
local function scales(sigma)
  if sigma == math.huge then return 0, 1 end
  local a = 1 / math.sqrt(1 + sigma * sigma)
  return a, sigma * a
end

--- den(x, sigma) -> x0, eps for x = x0 + sigma eps: the model sees
-- x_t = x / sqrt(1 + sigma^2) at timestep sched:t_from_sigma(sigma)
function Denoiser:__call(x, sigma)
  local a, s = scales(sigma)
  return self:predict(x * a, t_of(self.sched, sigma), a, s)
end

--- den:at_t(x_t, t) -> x0, eps at a timestep t in [1, T] (integer or not)
function Denoiser:at_t(x_t, t)
  local v = self.sched._values
  if math.type(t) == "integer" then return self:predict(x_t, t, v.sqrt_alpha_bar[t], v.sqrt_one_minus_alpha_bar[t]) end
  local a, s = scales(self.sched:sigma_at(t))
  return self:predict(x_t, t, a, s)
end

--- den:alpha_bar(t) -> alpha_bar at an integer timestep, 1 at t = 0 (clean data)
function Denoiser:alpha_bar(t)
  return t == 0 and 1.0 or self.sched._values.alpha_bar[t]
end

--- the samplers ----------------------------------------------------------------------
-- Each is sampler(den, x, levels, o, step) -> x: levels are the timesteps
-- (ddpm, ddim) or the sigmas ending in 0; o.noise() draws fresh noise of x's
-- shape; step(i, x, x0, level) reports step i (callback, trajectory, progress).

local S = {}

--- DDPM: x_prev drawn from the posterior q(x_prev | x_t, x0_pred); with steps < T, on
-- the respaced schedule beta = 1 - ab_t / ab_prev (Nichol & Dhariwal 2021)
function S.ddpm(den, x, ts, o, step)
  for i, t in ipairs(ts) do
    local t_prev = ts[i + 1] or 0
    local x0 = den:at_t(x, t)
    local noise = t_prev > 0 and o.noise() or nil -- none into x_0
    x = core._ddpm_step(x, x0, noise, den:alpha_bar(t), den:alpha_bar(t_prev), o.variance == "beta_tilde")
    step(i, x, x0, t)
  end
  return x
end

--- DDIM: x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - s^2) eps + s z, s^2 scaled by eta^2
function S.ddim(den, x, ts, o, step)
  for i, t in ipairs(ts) do
    local t_prev = ts[i + 1] or 0
    local x0 = den:at_t(x, t)
    local noise = (o.eta > 0 and t_prev > 0) and o.noise() or nil
    x = core._ddim_step(x, x0, noise, den:alpha_bar(t), den:alpha_bar(t_prev), o.eta)
    step(i, x, x0, t)
  end
  return x
end

-- Karras et al.'s churn: raise sigma to sigma (1 + gamma) with fresh noise (gamma = 0: unchanged)
local function churn(x, sigma, o, steps)
  if o.s_churn == 0 or sigma < o.s_tmin or sigma > o.s_tmax then return x, sigma end
  local sigma_hat = sigma * (1 + math.min(o.s_churn / steps, math.sqrt(2) - 1))
  return x + o.noise() * (o.s_noise * math.sqrt(sigma_hat ^ 2 - sigma ^ 2)), sigma_hat
end

--- Euler: the probability-flow ODE dx/dsigma = eps, one step per sigma
function S.euler(den, x, sigmas, o, step)
  for i = 1, #sigmas - 1 do
    local x_hat, sigma = churn(x, sigmas[i], o, #sigmas - 1)
    local x0, eps = den(x_hat, sigma)
    x = x_hat + eps * (sigmas[i + 1] - sigma)
    step(i, x, x0, sigma)
  end
  return x
end

--- Euler ancestral: an Euler step down to sigma_down, then fresh noise up to sigma_next
function S.euler_ancestral(den, x, sigmas, o, step)
  for i = 1, #sigmas - 1 do
    local sigma, sigma_next = sigmas[i], sigmas[i + 1]
    local up = math.min(sigma_next, o.eta * sigma_next * math.sqrt(1 - (sigma_next / sigma) ^ 2))
    local down = math.sqrt(sigma_next ^ 2 - up ^ 2)
    local x0, eps = den(x, sigma)
    x = x + eps * (down - sigma)
    if up > 0 then x = x + o.noise() * (up * o.s_noise) end
    step(i, x, x0, sigma)
  end
  return x
end

--- Heun (Karras et al. 2022, Alg. 2): Euler, then the average of the slopes at both ends
-- (an Euler step into sigma = 0)
function S.heun(den, x, sigmas, o, step)
  for i = 1, #sigmas - 1 do
    local sigma_next = sigmas[i + 1]
    local x_hat, sigma = churn(x, sigmas[i], o, #sigmas - 1)
    local x0, eps = den(x_hat, sigma)
    local dt = sigma_next - sigma
    x = x_hat + eps * dt
    if sigma_next > 0 then
      local _, eps_next = den(x, sigma_next)
      x = x_hat + (eps + eps_next) * (dt / 2)
    end
    step(i, x, x0, sigma)
  end
  return x
end

--- DPM-Solver++(2M) (Lu et al. 2022): exact in lambda = -log sigma for the linear part,
-- x0 extrapolated linearly (in lambda) from this prediction and the last
function S.dpmpp_2m(den, x, sigmas, o, step)
  local x0_last
  for i = 1, #sigmas - 1 do
    local sigma, sigma_next = sigmas[i], sigmas[i + 1]
    local x0 = den(x, sigma)
    local d = x0
    if x0_last and sigma_next > 0 then
      local r = math.log(sigmas[i - 1] / sigma) / math.log(sigma / sigma_next) -- h_last / h
      d = x0 * (1 + 1 / (2 * r)) - x0_last * (1 / (2 * r))
    end
    x = x * (sigma_next / sigma) + d * (1 - sigma_next / sigma) -- at sigma_next = 0: x = x0
    x0_last = x0
    step(i, x, x0, sigma)
  end
  return x
end

--- DPM-Solver++(2M) SDE (midpoint form): the linear part decays by exp(-(1 + eta) h)
-- and fresh noise of variance sigma_next^2 (1 - exp(-2 eta h)) comes in
function S.dpmpp_2m_sde(den, x, sigmas, o, step)
  local x0_last, h_last
  for i = 1, #sigmas - 1 do
    local sigma, sigma_next = sigmas[i], sigmas[i + 1]
    local x0 = den(x, sigma)
    if sigma_next == 0 then
      x = x0
    else
      local h = math.log(sigma / sigma_next)
      local keep = -expm1(-(1 + o.eta) * h) -- the share of x0 in the new x
      x = x * (1 - keep) + x0 * keep
      if x0_last then x = x + (x0 - x0_last) * (keep * h / (2 * h_last)) end
      if o.eta > 0 then x = x + o.noise() * (sigma_next * math.sqrt(-expm1(-2 * o.eta * h)) * o.s_noise) end
      h_last = h
    end
    x0_last = x0
    step(i, x, x0, sigma)
  end
  return x
end

--- DPM-Solver++(3M) SDE: as 2M SDE with a second-order extrapolation of x0 from the
-- last three predictions (eta = 0: the deterministic 3M solver)
function S.dpmpp_3m_sde(den, x, sigmas, o, step)
  local x0_1, x0_2, h_1, h_2 -- the last two predictions and step sizes
  for i = 1, #sigmas - 1 do
    local sigma, sigma_next = sigmas[i], sigmas[i + 1]
    local x0 = den(x, sigma)
    if sigma_next == 0 then
      x = x0
    else
      local h = math.log(sigma / sigma_next)
      local h_eta = (1 + o.eta) * h
      local keep = -expm1(-h_eta)
      x = x * (1 - keep) + x0 * keep
      local phi_2 = 1 - keep / h_eta
      if h_2 then
        local r0, r1 = h_1 / h, h_2 / h
        local d1_0, d1_1 = (x0 - x0_1) / r0, (x0_1 - x0_2) / r1
        local d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
        local d2 = (d1_0 - d1_1) / (r0 + r1)
        x = x + d1 * phi_2 - d2 * (phi_2 / h_eta - 0.5)
      elseif h_1 then
        x = x + (x0 - x0_1) * (phi_2 * h / h_1)
      end
      if o.eta > 0 then x = x + o.noise() * (sigma_next * math.sqrt(-expm1(-2 * o.eta * h)) * o.s_noise) end
      x0_1, x0_2, h_1, h_2 = x0, x0_1, h, h_1
    end
    step(i, x, x0, sigma)
  end
  return x
end

--- options and the common loop -----------------------------------------------------

local CHURN = { s_churn = 0, s_tmin = 0, s_tmax = math.huge, s_noise = 1 }
local NOISY = { eta = 1, s_noise = 1 }

-- levels: "timesteps" or "sigmas"; extra: the sampler's own options and their defaults
local SAMPLERS = {
  ddpm = { levels = "timesteps", extra = { variance = "beta_tilde" } },
  ddim = { levels = "timesteps", extra = { eta = 0 } },
  euler = { levels = "sigmas", extra = CHURN },
  euler_ancestral = { levels = "sigmas", extra = NOISY },
  heun = { levels = "sigmas", extra = CHURN },
  dpmpp_2m = { levels = "sigmas", extra = {} },
  dpmpp_2m_sde = { levels = "sigmas", extra = NOISY },
  dpmpp_3m_sde = { levels = "sigmas", extra = NOISY },
}

--- sample.names: the samplers sample.run knows, in the order of the docs
sample.names = { "ddpm", "ddim", "euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde" }

local COMMON = {
  n = true, shape = true, steps = true, spacing = true, seed = true, generator = true, progress = true,
  callback = true, trajectory = true, trajectory_every = true,
}
for k in pairs(DENOISER_OPTIONS) do COMMON[k] = true end

local function check_options(name, model, sched, opts)
  local label, spec = "sample." .. name, SAMPLERS[name]
  local function fail(fmt, ...) error(string.format("%s: " .. fmt, label, ...), 4) end
  if not is_callable(model) then fail("model must be callable as model(x, t, y), got %s", type(model)) end
  if type(sched) ~= "table" or not sched._values then fail("expected a schedule (D.schedule.*), got %s", type(sched)) end
  if type(opts) ~= "table" then fail("expected a table of options, got %s", type(opts)) end
  local explicit = spec.levels == "timesteps" and "timesteps" or "sigmas"
  local o = {}
  for k, v in pairs(opts) do
    if not (COMMON[k] or spec.extra[k] ~= nil or k == explicit or (k == "rho" and explicit == "sigmas")) then
      fail("unknown option '%s'", tostring(k))
    end
    o[k] = v
  end
  for k, v in pairs(spec.extra) do
    if o[k] == nil then o[k] = v end
    if k == "variance" then
      if o[k] ~= "beta" and o[k] ~= "beta_tilde" then fail('variance must be "beta" or "beta_tilde", got %s', tostring(o[k])) end
    elseif type(o[k]) ~= "number" or not (o[k] >= 0) then
      fail("%s must be a number >= 0, got %s", k, tostring(o[k]))
    end
  end
  if name == "ddim" and o.eta > 1 then fail("eta must be a number in [0, 1], got %s", tostring(o.eta)) end

  check_denoiser_options(fail, o)
  if o.y ~= nil then
    o.n = o.n or o.y:size(1)
    if o.y:size(1) ~= o.n then fail("%d labels for n = %d samples", o.y:size(1), o.n) end
  end
  if math.type(o.n) ~= "integer" or o.n < 1 then fail("n must be an integer >= 1, got %s", tostring(o.n)) end
  if type(o.shape) ~= "table" then fail("shape must be a list like {C, H, W}, got %s", type(o.shape)) end
  o.xshape = { o.n }
  for i, d in ipairs(o.shape) do
    if math.type(d) ~= "integer" or d < 1 then fail("shape[%d] must be an integer >= 1, got %s", i, tostring(d)) end
    o.xshape[#o.xshape + 1] = d
  end

  -- the noise levels: explicit, or steps + spacing
  local T = sched.T
  if o[explicit] ~= nil then
    if o.steps ~= nil or o.spacing ~= nil then fail("give %s or steps/spacing, not both", explicit) end
    local list = o[explicit]
    if is_tensor(list) and list:dim() == 1 then list = list:totable() end
    if type(list) ~= "table" then fail("%s must be a list of numbers, got %s", explicit, type(list)) end
    local ok, levels = pcall(explicit == "timesteps" and sched.timesteps or sched.sigmas, sched, list)
    if not ok then fail("%s", tostring(levels)) end
    if #levels < 2 and explicit == "sigmas" then fail("sigmas must hold at least one sigma > 0") end
    o.levels = levels
  else
    o.spacing = o.spacing or (spec.levels == "sigmas" and "karras" or "leading")
    local on_timesteps = TIMESTEP_SPACINGS[o.spacing]
    if spec.levels == "timesteps" and not on_timesteps then
      fail('spacing must be "leading", "trailing" or "linspace", got %s', tostring(o.spacing))
    elseif not SIGMA_SPACINGS[o.spacing] then
      fail('spacing must be "karras", "exponential", "leading", "trailing" or "linspace", got %s', tostring(o.spacing))
    end
    o.steps = o.steps or (name == "ddpm" and T or (on_timesteps and math.min(50, T) or 50))
    if on_timesteps and (math.type(o.steps) ~= "integer" or o.steps < 1 or o.steps > T) then
      fail("steps must be an integer in [1, %d], got %s", T, tostring(o.steps))
    elseif math.type(o.steps) ~= "integer" or o.steps < 1 then
      fail("steps must be an integer >= 1, got %s", tostring(o.steps))
    end
    o.rho = o.rho or 7
    if not is_finite(o.rho) or o.rho <= 0 then fail("rho must be a number > 0, got %s", tostring(o.rho)) end
    local ok, levels
    if spec.levels == "timesteps" then
      ok, levels = pcall(schedule.timesteps, T, o.steps, o.spacing)
    else
      ok, levels = pcall(sigmas_for, sched, o.steps, o.spacing, o.rho)
    end
    if not ok then fail("%s", tostring(levels)) end
    o.levels = levels
  end

  if o.seed ~= nil and o.generator ~= nil then fail("give seed or generator, not both") end
  if o.seed ~= nil then
    if math.type(o.seed) ~= "integer" then fail("seed must be an integer, got %s", tostring(o.seed)) end
    o.generator = core.Generator(o.seed)
  end
  if o.callback ~= nil and not is_callable(o.callback) then fail("callback must be a function") end
  o.trajectory_every = o.trajectory_every or 1
  if math.type(o.trajectory_every) ~= "integer" or o.trajectory_every < 1 then
    fail("trajectory_every must be an integer >= 1, got %s", tostring(o.trajectory_every))
  end
  local steps = spec.levels == "sigmas" and #o.levels - 1 or #o.levels
  if o.progress == true then
    o.progress = new_progress { total = steps, label = label }
  elseif o.progress ~= nil and o.progress ~= false and not (type(o.progress) == "table" and o.progress.update) then
    fail("progress must be true or an object with update(step), got %s", type(o.progress))
  end
  return o, steps
end

local function loop(name, model, sched, o, steps)
  local on_sigmas = SAMPLERS[name].levels == "sigmas"
  local levels = o.levels
  local den = new_denoiser("sample." .. name, model, sched, o)
  o.noise = function() return core.randn(o.xshape, o.generator) end

  local z = o.noise() -- x_T in the model's scale
  local x = on_sigmas and z * math.sqrt(1 + levels[1] ^ 2) or z
  local trajectory = o.trajectory and { z } or nil
  local function step(i, xi, x0, level)
    if o.callback then
      if on_sigmas then
        o.callback(i, xi, x0, t_of(sched, level), level)
      else
        o.callback(i, xi, x0, level, sched._values.sigma[level])
      end
    end
    if trajectory and (i % o.trajectory_every == 0 or i == steps) then
      local sigma_next = on_sigmas and levels[i + 1] or 0
      trajectory[#trajectory + 1] = sigma_next > 0 and xi / math.sqrt(1 + sigma_next ^ 2) or xi
    end
    if o.progress then o.progress:update(i) end
  end
  x = S[name](den, x, levels, o, step)
  if o.progress and o.progress.finish then o.progress:finish() end
  return x, trajectory
end

local function run(name, model, sched, opts)
  local o, steps = check_options(name, model, sched, opts)
  local previous = core.set_grad_enabled(false)
  local ok, x, trajectory = pcall(loop, name, model, sched, o, steps)
  core.set_grad_enabled(previous)
  if not ok then error(x, 0) end
  if o.trajectory then return x, trajectory end
  return x
end

--- sample.run(name, model, sched, opts) -> x (n, ...) [, trajectory]: the sampler of
-- that name (one of sample.names)
function sample.run(name, model, sched, opts)
  if SAMPLERS[name] == nil then
    error(string.format("sample.run: unknown sampler '%s' (one of %s)", tostring(name), table.concat(sample.names, ", ")), 2)
  end
  return run(name, model, sched, opts)
end

--- sample.ddpm(model, sched, opts), sample.ddim(...), sample.euler(...), ...: the same by name
for name in pairs(SAMPLERS) do
  sample[name] = function(model, sched, opts) return run(name, model, sched, opts) end
end

return sample
