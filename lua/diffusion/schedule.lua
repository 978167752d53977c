--- diffusion.schedule: noise schedules for DDPM-style diffusion models.
--
--   local sched = D.schedule.cosine{T = 1000}
--   local t = sched:sample_t(x0:size(1))           -- (N) timesteps in 1..T
--   local noise = D.randn_like(x0)
--   local xt = sched:add_noise(x0, noise, t)       -- sqrt(ab_t) x0 + sqrt(1 - ab_t) noise
--   local loss = D.mse_loss(net(xt, t), sched:target(x0, noise, t, "epsilon"))
--
-- Timesteps are integers t = 1..T, 1 the least noisy and T the most; every
-- table is a (T) tensor indexed by t, and alpha_bar_0 = 1 (clean data) is
-- what the posterior uses at t = 1. The C core computes the tables in double
-- from the betas (or alpha_bar) and validates them; each is also kept as a
-- list of Lua numbers in sched._values, which the samplers use for their
-- per-step coefficients.
--
-- Fields: T, kind, betas, alphas, alpha_bar, alpha_bar_prev, sqrt_alpha_bar,
-- sqrt_one_minus_alpha_bar, snr (ab / (1 - ab)), log_snr, sigma
-- (sqrt((1 - ab) / ab)), posterior_variance, posterior_mean_coef1/2.
--
-- Methods take t as a (N) tensor of timesteps (one per sample of a batch
-- x (N, ...)) or as one integer for the whole batch. add_noise, target and
-- predict_x0_eps record autograd through their tensor arguments (the
-- coefficients are constants); sample_t draws from a generator.
local core = require "diffusion.core"

local schedule = {}

local Schedule = {}
Schedule.__index = Schedule
Schedule.__name = "Schedule"
schedule.Schedule = Schedule

local PREDICTIONS = { epsilon = true, x0 = true, v = true }

--- construction -------------------------------------------------------------

-- level: where the error points (the user's call)
local function check_T(op, T, level)
  local i = math.tointeger(T)
  if not i or i < 1 then
    error(string.format("%s: T must be an integer >= 1, got %s", op, tostring(T)), level + 1)
  end
  return i
end

-- opts with the defaults filled in; unknown keys are errors (a typo would
-- otherwise silently give the default schedule).
local function options(op, opts, defaults)
  if opts ~= nil and type(opts) ~= "table" then
    error(string.format("%s: expected a table of options, got %s", op, type(opts)), 3)
  end
  local o = {}
  for k, v in pairs(opts or {}) do
    if defaults[k] == nil then error(string.format("%s: unknown option '%s'", op, tostring(k)), 3) end
    if type(v) ~= "number" then
      error(string.format("%s: option '%s' must be a number, got %s", op, k, type(v)), 3)
    end
    o[k] = v
  end
  for k, v in pairs(defaults) do if o[k] == nil then o[k] = v end end
  o.T = check_T(op, o.T, 3)
  return o
end

local function build(kind, op, T, params)
  local ok, fields = pcall(core._schedule, kind, T, params, op)
  if not ok then error(fields, 3) end
  fields.T, fields.kind = T, kind
  return setmetatable(fields, Schedule)
end

--- schedule.linear{T = 1000, beta_start = 1e-4, beta_end = 0.02} (Ho et al. 2020)
function schedule.linear(opts)
  local o = options("schedule.linear", opts, { T = 1000, beta_start = 1e-4, beta_end = 0.02 })
  local s = build("linear", "schedule.linear", o.T, { o.beta_start, o.beta_end })
  return s -- not a tail call: errors point at the caller
end

--- schedule.scaled_linear{T = 1000, beta_start = 0.00085, beta_end = 0.012}:
-- betas = linspace(sqrt(beta_start), sqrt(beta_end), T)^2 (Stable Diffusion)
function schedule.scaled_linear(opts)
  local o = options("schedule.scaled_linear", opts, { T = 1000, beta_start = 0.00085, beta_end = 0.012 })
  local s = build("scaled_linear", "schedule.scaled_linear", o.T, { o.beta_start, o.beta_end })
  return s -- not a tail call: errors point at the caller
end

--- schedule.cosine{T = 1000, s = 0.008, max_beta = 0.999} (Nichol & Dhariwal 2021):
-- alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t / T + s) / (1 + s) pi / 2), turned into
-- betas clipped to max_beta, and alpha_bar recomputed from the clipped betas
function schedule.cosine(opts)
  local o = options("schedule.cosine", opts, { T = 1000, s = 0.008, max_beta = 0.999 })
  local s = build("cosine", "schedule.cosine", o.T, { o.s, o.max_beta })
  return s -- not a tail call: errors point at the caller
end

--- schedule.sigmoid{T = 1000, start = -3, stop = 3, tau = 1} (Jabri et al. 2022, Chen 2023):
-- alpha_bar(t) = (v(1) - v(t / T)) / (v(1) - v(0)) clipped into [1e-9, 1],
-- v(u) = sigmoid((u (stop - start) + start) / tau)
function schedule.sigmoid(opts)
  local o = options("schedule.sigmoid", opts, { T = 1000, start = -3, stop = 3, tau = 1 })
  local s = build("sigmoid", "schedule.sigmoid", o.T, { o.start, o.stop, o.tau })
  return s -- not a tail call: errors point at the caller
end

--- schedule.from_alpha_bar(fn, T): alpha_bar_t = fn(t / T) for t = 1..T; fn must
-- decrease (strictly) and stay in (0, 1]; fn(0) is never called
function schedule.from_alpha_bar(fn, T)
  local op = "schedule.from_alpha_bar"
  if type(fn) ~= "function" and not (getmetatable(fn) or {}).__call then
    error(op .. ": expected a function of u in [0, 1], got " .. type(fn), 2)
  end
  T = check_T(op, T, 2)
  local values = {}
  for t = 1, T do
    local v = fn(t / T)
    if type(v) ~= "number" then
      error(string.format("%s: fn(%g) returned %s, expected a number", op, t / T, type(v)), 2)
    end
    values[t] = v
  end
  local s = build("alpha_bar", op, T, values)
  return s -- not a tail call: errors point at the caller
end

--- schedule.from_betas(list_or_tensor): the betas themselves, each in (0, 1]
function schedule.from_betas(betas)
  local op = "schedule.from_betas"
  local T
  if type(betas) == "table" then
    T = #betas
  elseif type(betas) == "userdata" and betas.dim then
    if betas:dim() ~= 1 then error(op .. ": expected a 1-d tensor of betas, got shape " .. tostring(betas:shape()), 2) end
    T = betas:size(1)
  else
    error(op .. ": expected a list or a 1-d tensor of betas, got " .. type(betas), 2)
  end
  if T < 1 then error(op .. ": T must be an integer >= 1, got 0 (no betas)", 2) end
  local s = build("betas", op, T, betas)
  return s -- not a tail call: errors point at the caller
end

function Schedule:__tostring()
  return string.format("Schedule(%s, T = %d, terminal SNR %.2g)", self.kind, self.T, self._values.snr[self.T])
end

--- per-sample coefficients ------------------------------------------------

-- t checked: an integer in 1..T, or a (N) tensor for the batch x (its values
-- are checked by the C gather).
local function check_t(self, op, t, x)
  if type(x) ~= "userdata" then
    error(string.format("%s: expected a batch tensor (N, ...), got %s", op, type(x)), 3)
  end
  if type(t) == "number" then
    local i = math.tointeger(t)
    if not i or i < 1 or i > self.T then
      error(string.format("%s: timestep %s is not an integer in [1, %d]", op, tostring(t), self.T), 3)
    end
    return i
  end
  if type(t) ~= "userdata" then
    error(string.format("%s: t must be a (N) tensor of timesteps or an integer, got %s", op, type(t)), 3)
  end
  if t:dim() ~= 1 or x:dim() < 1 or t:size(1) ~= x:size(1) then
    error(string.format("%s: timesteps of shape %s for a batch of shape %s (expected one timestep per sample)", op,
      tostring(t:shape()), tostring(x:shape())), 3)
  end
  return t
end

-- The named table at t: a number (t a number) or a (N) tensor.
local function coef(self, name, t, op)
  if type(t) == "number" then return self._values[name][t] end
  local ok, r = pcall(core._schedule_gather, self[name], t, op)
  if not ok then error(r, 3) end
  return r
end

-- b must have a's shape; the names are the user's argument names.
local function check_same(op, a, aname, b, bname)
  if type(b) ~= "userdata" then error(string.format("%s: %s must be a tensor, got %s", op, bname, type(b)), 3) end
  if a:shape() ~= b:shape() then
    error(string.format("%s: %s has shape %s but %s has shape %s", op, bname, tostring(b:shape()), aname,
      tostring(a:shape())), 3)
  end
end

-- (Callers return (combine(...)) in parentheses: not a tail call, so level 3 is theirs.)
local function combine(op, a, x, b, y)
  local ok, r = pcall(core._schedule_combine, a, x, b, y, op)
  if not ok then error(r, 3) end
  return r
end

local function check_prediction(op, prediction)
  if not PREDICTIONS[prediction] then
    error(string.format('%s: prediction must be "epsilon", "x0" or "v", got %s', op,
      type(prediction) == "string" and '"' .. prediction .. '"' or tostring(prediction)), 3)
  end
end

--- methods --------------------------------------------------------------------

--- sched:add_noise(x0, noise, t) -> x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise, per sample
function Schedule:add_noise(x0, noise, t)
  local op = "add_noise"
  t = check_t(self, op, t, x0)
  check_same(op, x0, "x0", noise, "noise")
  return (combine(op, coef(self, "sqrt_alpha_bar", t, op), x0, coef(self, "sqrt_one_minus_alpha_bar", t, op), noise))
end

--- sched:posterior(x0, xt, t) -> mean, variance of q(x_{t-1} | x_t, x0):
-- mean = coef1 x0 + coef2 x_t; variance (N, 1, ..., 1) = (1 - ab_{t-1}) / (1 - ab_t) beta_t
function Schedule:posterior(x0, xt, t)
  local op = "posterior"
  t = check_t(self, op, t, xt)
  check_same(op, xt, "xt", x0, "x0")
  local mean = combine(op, coef(self, "posterior_mean_coef1", t, op), x0, coef(self, "posterior_mean_coef2", t, op), xt)
  local shape = { xt:size(1) }
  for _ = 2, xt:dim() do shape[#shape + 1] = 1 end
  local var = coef(self, "posterior_variance", t, op)
  if type(var) == "number" then var = core.full(shape, var) else var = var:reshape(shape) end
  return mean, var
end

--- sched:sample_t(n [, generator]) -> (n) tensor of timesteps drawn uniformly from 1..T
function Schedule:sample_t(n, generator)
  if math.type(n) ~= "integer" or n < 0 then
    error("sample_t: n must be an integer >= 0, got " .. tostring(n), 2)
  end
  return core.randint(1, self.T + 1, { n }, generator)
end

--- sched:target(x0, noise, t, prediction) -> what a network predicting
-- "epsilon" (noise), "x0" (x0) or "v" (sqrt(ab) noise - sqrt(1 - ab) x0) is trained on
function Schedule:target(x0, noise, t, prediction)
  local op = "target"
  prediction = prediction or "epsilon"
  check_prediction(op, prediction)
  t = check_t(self, op, t, x0)
  check_same(op, x0, "x0", noise, "noise")
  if prediction == "epsilon" then return noise end
  if prediction == "x0" then return x0 end
  return (combine(op, coef(self, "sqrt_alpha_bar", t, op), noise, -(coef(self, "sqrt_one_minus_alpha_bar", t, op)), x0))
end

--- sched:predict_x0_eps(model_output, xt, t, prediction) -> x0_pred, eps_pred:
-- the inverse of target given x_t = sqrt(ab) x0 + sqrt(1 - ab) eps
function Schedule:predict_x0_eps(out, xt, t, prediction)
  local op = "predict_x0_eps"
  prediction = prediction or "epsilon"
  check_prediction(op, prediction)
  t = check_t(self, op, t, xt)
  check_same(op, xt, "xt", out, "the model output")
  local sa, s1 = coef(self, "sqrt_alpha_bar", t, op), coef(self, "sqrt_one_minus_alpha_bar", t, op)
  if prediction == "epsilon" then -- x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab)
    return combine(op, 1 / sa, xt, -(coef(self, "sigma", t, op)), out), out
  elseif prediction == "x0" then -- eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)
    return out, combine(op, 1 / s1, xt, -(sa / s1), out)
  end
  -- v: x0 = sqrt(ab) x_t - sqrt(1 - ab) v, eps = sqrt(1 - ab) x_t + sqrt(ab) v
  return combine(op, sa, xt, -s1, out), combine(op, s1, xt, sa, out)
end

--- sched:predict_x0(model_output, xt, t, prediction) -> x0_pred only (the samplers' need)
function Schedule:predict_x0(out, xt, t, prediction)
  local op = "predict_x0"
  prediction = prediction or "epsilon"
  check_prediction(op, prediction)
  t = check_t(self, op, t, xt)
  check_same(op, xt, "xt", out, "the model output")
  if prediction == "x0" then return out end
  if prediction == "epsilon" then
    return (combine(op, 1 / (coef(self, "sqrt_alpha_bar", t, op)), xt, -(coef(self, "sigma", t, op)), out))
  end
  return (combine(op, coef(self, "sqrt_alpha_bar", t, op), xt, -(coef(self, "sqrt_one_minus_alpha_bar", t, op)), out))
end

return schedule
