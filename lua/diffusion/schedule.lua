--- diffusion.schedule: noise schedules for DDPM-style diffusion models, their
-- transforms, the conversions between their views, σ and timestep spacings
-- for samplers, and loss weightings.
--
--   local sched = D.schedule.cosine{T = 1000}
--   local t = sched:sample_t(x0:size(1))           -- (N) timesteps in 1..T
--   local noise = D.randn_like(x0)
--   local xt = sched:add_noise(x0, noise, t)       -- sqrt(ab_t) x0 + sqrt(1 - ab_t) noise
--   local loss = D.mse_loss(net(xt, t), sched:target(x0, noise, t, "epsilon"))
--   print(sched)                                   -- a summary with a log-SNR sparkline
--   sched:plot("schedules.png", D.schedule.linear{})
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
-- (sqrt((1 - ab) / ab)), posterior_variance, posterior_mean_coef1/2 (tensors);
-- sigma_min = sigma_1 and sigma_max = sigma_T (numbers; sigma_max is inf for
-- a zero terminal SNR schedule); base_kind and transforms (the list of
-- transforms applied, e.g. {"shift(2)"}; kind is then "cosine+shift(2)").
--
-- Only alpha_bar_T may be 0 (zero terminal SNR): there beta_T = 1, snr = 0,
-- log_snr = -inf, sigma = inf, and x_T is pure noise.
--
-- Views. A schedule is one curve seen five ways, and any point on it can be
-- named in any of them:
--   t          the timestep, fractional in [0, T] (0: clean data)
--   u          t / T in [0, 1], the continuous time
--   alpha_bar  in [0, 1] (1 at t = 0)
--   log_snr    log(ab / (1 - ab)) (+inf at t = 0)
--   sigma      sqrt((1 - ab) / ab) = exp(-log_snr / 2), in [0, inf] (0 at t = 0)
-- Between two timesteps log sigma (equivalently log-SNR) is linear in t; on
-- the segments that touch an end where it is infinite, t in (0, 1) and, for
-- zero terminal SNR, t in (T - 1, T), alpha_bar is linear in t instead. Each
-- map is monotone and continuous, so every conversion is exact at the integer
-- timesteps (the table values) and round-trips. The conversions take a number
-- or a tensor (of any shape, mapped element by element) and give the same:
--   sched:sigma_at(t), sched:alpha_bar_at(t), sched:log_snr_at(t)
--   sched:t_from_sigma(sigma), sched:t_from_alpha_bar(ab), sched:t_from_log_snr(l)
--   sched:u_from_t(t), sched:t_from_u(u)
--   sched:convert(x, from, to)      -- any two of the view names above
-- σ-space samplers (Euler, Heun, DPM++) run on a list of σs and call the
-- model at sched:t_from_sigma(sigma); sched:sigma_at(t) goes the other way.
--
-- Spacings for few-step sampling:
--   schedule.timesteps(T, n, spacing) / sched:timesteps(n, spacing): n timesteps,
--     descending, "leading", "trailing", "linspace", or an explicit list
--   schedule.karras_sigmas(n, sigma_min, sigma_max [, rho = 7]),
--   schedule.exponential_sigmas(n, sigma_min, sigma_max): n σs, descending, then a 0
--   sched:sigmas(n, spacing [, opts]): the σ list for "karras", "exponential" or a
--     timestep spacing (the σs at those timesteps), then a 0
--
-- Methods take t as a (N) tensor of timesteps (one per sample of a batch
-- x (N, ...)) or as one integer for the whole batch. add_noise, target and
-- predict_x0_eps record autograd through their tensor arguments (the
-- coefficients are constants); sample_t draws from a generator.
local core = require "diffusion.core"
local util = require "diffusion.util"

local schedule = {}

local Schedule = {}
Schedule.__index = Schedule
Schedule.__name = "Schedule"
schedule.Schedule = Schedule

local PREDICTIONS = { epsilon = true, x0 = true, v = true }
local INF = math.huge
local is_tensor = util.is_tensor

-- a value for an error message: numbers as %.6g (2000.0 -> 2000), NaN as nan
local function show(v)
  if type(v) ~= "number" then return tostring(v) end
  if v ~= v then return "nan" end
  if v == INF or v == -INF then return v > 0 and "inf" or "-inf" end
  return string.format("%.6g", v)
end

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

-- The schedule object from the C tables; base_kind and transforms describe
-- where it came from (kind = base_kind, then "+transform" for each).
local function make(fields, T, base_kind, transforms)
  fields.T, fields.base_kind, fields.transforms = T, base_kind, transforms
  fields.kind = table.concat({ base_kind, table.unpack(transforms) }, "+")
  fields.sigma_min, fields.sigma_max = fields._values.sigma[1], fields._values.sigma[T]
  return setmetatable(fields, Schedule)
end

local function build(kind, op, T, params)
  local ok, fields = pcall(core._schedule, kind, T, params, op)
  if not ok then error(fields, 3) end
  return make(fields, T, kind, {})
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
-- decrease (strictly) and stay in (0, 1], except fn(1) = 0 (zero terminal
-- SNR); fn(0) is never called
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
-- (a last beta of 1 gives zero terminal SNR)
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

local function is_schedule(v) return getmetatable(v) == Schedule end
schedule.is_schedule = is_schedule

local function check_self(op, self)
  if not is_schedule(self) then
    error(string.format("%s: expected a schedule (call it as sched:%s(...)), got %s", op, op, type(self)), 3)
  end
end

-- A finite number, or an error naming op and what.
local function check_number(op, what, v, level)
  if type(v) ~= "number" then
    error(string.format("%s: %s must be a number, got %s", op, what, type(v)), level + 1)
  end
  if v ~= v then error(string.format("%s: %s is NaN", op, what), level + 1) end
end

local function check_count(op, n, level)
  if math.type(n) ~= "integer" or n < 1 then
    error(string.format("%s: n must be an integer >= 1, got %s", op, tostring(n)), level + 1)
  end
end

--- transforms: each returns a new Schedule ---------------------------------------

-- A schedule from this one's base and transforms plus `what`, on new alpha_bar values.
local function derived(self, op, what, alpha_bar)
  local ok, fields = pcall(core._schedule, "alpha_bar", #alpha_bar, alpha_bar, op)
  if not ok then error(fields, 3) end
  local transforms = { table.unpack(self.transforms) }
  transforms[#transforms + 1] = what
  return make(fields, #alpha_bar, self.base_kind, transforms)
end

--- sched:rescale_zero_terminal_snr() -> a schedule with alpha_bar_T = 0 exactly
-- (Lin et al. 2023, "Common diffusion noise schedules and sample steps are
-- flawed"): sqrt(alpha_bar) is mapped linearly so that its last value becomes
-- 0 and its first stays as it was,
--   sqrt(ab'_t) = (sqrt(ab_t) - sqrt(ab_T)) sqrt(ab_1) / (sqrt(ab_1) - sqrt(ab_T)),
-- so beta_T = 1 and x_T is pure noise, as at sampling time. alpha_bar_1 is kept
-- bit for bit. Train such a schedule with v (or x0) prediction: an epsilon
-- prediction says nothing about x0 at t = T. Needs T >= 2.
function Schedule:rescale_zero_terminal_snr()
  local op = "rescale_zero_terminal_snr"
  check_self(op, self)
  local T, ab = self.T, self._values.alpha_bar
  if T < 2 then error(op .. ": needs T >= 2 (the first timestep keeps its alpha_bar, the last gets 0), got T = 1", 2) end
  local first, last = math.sqrt(ab[1]), math.sqrt(ab[T])
  local out = { ab[1] }
  for t = 2, T - 1 do
    local r = (math.sqrt(ab[t]) - last) * first / (first - last)
    out[t] = r * r
  end
  out[T] = 0
  local s = derived(self, op, "rescale_zero_terminal_snr", out)
  return s -- not a tail call: errors point at the caller
end

--- sched:shift(s) -> the schedule with its log-SNR shifted by -2 log(s):
--   log_snr'(t) = log_snr(t) - 2 log(s), i.e. snr' = snr / s^2, sigma' = s sigma,
--   alpha_bar' = ab / (ab + s^2 (1 - ab)).
-- s > 1 adds noise at every timestep, s < 1 removes it, s = 1 changes nothing.
-- This is the convention of simple diffusion (Hoogeboom et al. 2023: shift by
-- 2 log(64 / d) for a d-pixel image, i.e. s = d / 64) and of Stable Diffusion
-- 3's timestep shift (Esser et al. 2024: t' = s t / (1 + (s - 1) t) for
-- rectified flow, which is this same snr / s^2; SD3 uses s = 3). s must be a
-- finite number > 0. Zero terminal SNR stays zero.
function Schedule:shift(s)
  local op = "shift"
  check_self(op, self)
  check_number(op, "s", s, 2)
  if not (s > 0 and s < INF) then error(string.format("%s: s must be a finite number > 0, got %s", op, tostring(s)), 2) end
  local s2, ab, out = s * s, self._values.alpha_bar, {}
  for t = 1, self.T do
    local a = ab[t]
    out[t] = a / (a + s2 * (1 - a))
  end
  local r = derived(self, op, string.format("shift(%.6g)", s), out)
  return r -- not a tail call: errors point at the caller
end

--- sched:truncate(t_min [, t_max = T]) -> the schedule of timesteps t_min..t_max
-- only, renumbered 1..(t_max - t_min + 1): alpha_bar'_k = alpha_bar_{t_min - 1 + k}.
-- t_max < T drops the noisiest steps (truncated diffusion, Zheng et al. 2023:
-- sampling then starts from the old alpha_bar_{t_max}); t_min > 1 drops the
-- least noisy ones, and the new first step jumps from clean data
-- (alpha_bar_0 = 1) to the old alpha_bar_{t_min}. Integers with
-- 1 <= t_min <= t_max <= T.
function Schedule:truncate(t_min, t_max)
  local op = "truncate"
  check_self(op, self)
  t_max = t_max == nil and self.T or t_max
  for _, v in ipairs { { "t_min", t_min }, { "t_max", t_max } } do
    if math.type(v[2]) ~= "integer" and not (type(v[2]) == "number" and math.tointeger(v[2])) then
      error(string.format("%s: %s must be an integer timestep, got %s", op, v[1], tostring(v[2])), 2)
    end
  end
  t_min, t_max = math.tointeger(t_min), math.tointeger(t_max)
  if not (1 <= t_min and t_min <= t_max and t_max <= self.T) then
    error(string.format("%s: expected 1 <= t_min <= t_max <= %d, got t_min = %d and t_max = %d", op, self.T, t_min, t_max), 2)
  end
  local ab, out = self._values.alpha_bar, {}
  for t = t_min, t_max do out[#out + 1] = ab[t] end
  local s = derived(self, op, string.format("truncate(%d,%d)", t_min, t_max), out)
  return s -- not a tail call: errors point at the caller
end

--- schedule.named(kind [, T = 1000]) -> the schedule a `kind` string names: a
-- named kind with its default options, then transforms, e.g.
-- "cosine+rescale_zero_terminal_snr+shift(2)+truncate(1,800)" (what
-- sched.kind holds, so a kind saved with a model rebuilds its schedule).
function schedule.named(kind, T)
  local op = "schedule.named"
  if type(kind) ~= "string" then error(op .. ": kind must be a string, got " .. type(kind), 2) end
  local parts = {}
  for part in (kind .. "+"):gmatch("([^+]*)%+") do parts[#parts + 1] = part end
  local base = parts[1]
  if not ({ linear = true, scaled_linear = true, cosine = true, sigmoid = true })[base] then
    error(string.format('%s: unknown schedule "%s" (expected linear, scaled_linear, cosine or sigmoid, then +transforms)', op,
      base), 2)
  end
  local ok, s = pcall(schedule[base], { T = T or 1000 })
  if not ok then error(op .. ": " .. tostring(s):gsub("^schedule%.[%w_]+: ", ""), 2) end
  for i = 2, #parts do
    local name, args = parts[i]:match("^([%w_]+)(.*)$")
    local nums = {}
    if args and args ~= "" then
      local inner = args:match("^%((.*)%)$")
      for a in (inner or "?"):gmatch("[^,]+") do nums[#nums + 1] = tonumber(a) or 0 / 0 end
      if not inner then nums = { 0 / 0 } end
    end
    local ok2, r
    if name == "rescale_zero_terminal_snr" and #nums == 0 then
      ok2, r = pcall(s.rescale_zero_terminal_snr, s)
    elseif name == "shift" and #nums == 1 and nums[1] == nums[1] then
      ok2, r = pcall(s.shift, s, nums[1])
    elseif name == "truncate" and (#nums == 1 or #nums == 2) and nums[1] == nums[1] and (nums[2] or 0) == (nums[2] or 0) then
      ok2, r = pcall(s.truncate, s, nums[1], nums[2])
    else
      error(string.format('%s: unknown transform "%s" in "%s" (expected rescale_zero_terminal_snr, shift(s) or ' ..
        'truncate(t_min,t_max))', op, parts[i], kind), 2)
    end
    if not ok2 then error(op .. ": " .. tostring(r), 2) end
    s = r
  end
  return s
end

--- views and conversions ----------------------------------------------------------

-- log sigma at each timestep (the quantity interpolated), computed once
local function log_sigmas(self)
  local ls = rawget(self, "_log_sigma")
  if not ls then
    ls = {}
    for t, v in ipairs(self._values.sigma) do ls[t] = math.log(v) end
    rawset(self, "_log_sigma", ls)
  end
  return ls
end

local function check_t_value(self, op, t)
  if type(t) ~= "number" then error(string.format("%s: t must be a number or a tensor, got %s", op, type(t)), 0) end
  if not (t >= 0 and t <= self.T) then
    error(string.format("%s: t = %s is outside [0, %d]", op, show(t), self.T), 0)
  end
end

-- log sigma at a fractional timestep t in [0, T]
local function t_to_ls(self, t)
  local ab = self._values.alpha_bar
  if t == 0 then return -INF end
  if t < 1 then -- between clean data (ab = 1) and t = 1: alpha_bar linear
    local one_minus = t * (1 - ab[1])
    return 0.5 * (math.log(one_minus) - math.log(1 - one_minus))
  end
  local ls = log_sigmas(self)
  local k = math.floor(t)
  local f = t - k
  if f == 0 then return ls[k] end
  if ab[k + 1] == 0 then -- into zero terminal SNR: alpha_bar linear
    local a = ab[k] * (1 - f)
    return 0.5 * (math.log(1 - a) - math.log(a))
  end
  return ls[k] + f * (ls[k + 1] - ls[k])
end

-- the fractional timestep of a log sigma (the inverse of t_to_ls)
local function ls_to_t(self, op, x, shown)
  local ab, T = self._values.alpha_bar, self.T
  local ls = log_sigmas(self)
  if x == -INF then return 0 end
  if x < ls[1] then
    local s2 = math.exp(2 * x)
    return (s2 / (1 + s2)) / (1 - ab[1])
  end
  local zero_terminal = ab[T] == 0
  local last = zero_terminal and T - 1 or T
  if x > ls[last] then
    if zero_terminal then
      if x == INF then return T end
      return (T - 1) + (1 - 1 / (1 + math.exp(2 * x)) / ab[T - 1])
    end
    -- float32 sigmas (tensors) may round above sigma_max
    if x <= ls[T] + 1e-6 then return T end
    error(string.format("%s: %s is above this schedule's sigma_max = %.6g", op, shown(), self.sigma_max), 0)
  end
  local lo, hi = 1, last
  while hi - lo > 1 do
    local mid = (lo + hi) // 2
    if ls[mid] <= x then lo = mid else hi = mid end
  end
  if x == ls[lo] or hi == lo then return lo end
  if x == ls[hi] then return hi end
  local d = ls[hi] - ls[lo]
  return lo + (d > 0 and (x - ls[lo]) / d or 0)
end

-- Each view: from_ls (log sigma -> the view's value), to_ls (value -> log
-- sigma, after a range check), at (the exact table value at integer t, or nil).
local VIEWS = {
  sigma = {
    from_ls = function(x) return math.exp(x) end,
    to_ls = function(_, op, v)
      if v ~= v or v < 0 then error(string.format("%s: sigma = %s must be >= 0", op, show(v)), 0) end
      return math.log(v)
    end,
    table = "sigma",
    at0 = 0,
  },
  log_snr = {
    from_ls = function(x) return -2 * x end,
    to_ls = function(_, op, v)
      if v ~= v then error(op .. ": log_snr is NaN", 0) end
      return -v / 2
    end,
    table = "log_snr",
    at0 = INF,
  },
  alpha_bar = {
    from_ls = function(x) return 1 / (1 + math.exp(2 * x)) end,
    to_ls = function(_, op, v)
      if not (v >= 0 and v <= 1) then error(string.format("%s: alpha_bar = %s is outside [0, 1]", op, show(v)), 0) end
      return 0.5 * (math.log(1 - v) - math.log(v))
    end,
    table = "alpha_bar",
    at0 = 1,
  },
}

-- value of `view` at timestep t (exact at integer t)
local function view_at(self, view, t)
  local V = VIEWS[view]
  if t == 0 then return V.at0 end
  local k = math.tointeger(t)
  if k then return self._values[V.table][k] end
  return V.from_ls(t_to_ls(self, t))
end

local function t_from_view(self, op, view, v)
  local V = VIEWS[view]
  local shown = function() return string.format("%s = %.6g", view, v) end
  return ls_to_t(self, op, V.to_ls(self, op, v), shown)
end

-- fn over a number, or over each element of a tensor (a new float tensor of
-- its shape); errors are raised at level, the caller of the public method
local function map(op, x, fn, level)
  local ok, r
  if type(x) == "number" then
    ok, r = pcall(fn, x)
  elseif is_tensor(x) then
    ok, r = pcall(function()
      if x:dim() == 0 then return core.tensor(fn(x:item())) end
      local values = x:reshape(x:numel()):totable()
      for i = 1, #values do values[i] = fn(values[i]) end
      return core.tensor(values):reshape(x:shape())
    end)
  else
    error(string.format("%s: expected a number or a tensor, got %s", op, type(x)), level + 1)
  end
  if not ok then error(r, level + 1) end
  return r
end

local function at_method(op, view)
  return function(self, t)
    check_self(op, self)
    local r = map(op, t, function(v) check_t_value(self, op, v); return view_at(self, view, v) end, 2)
    return r -- not a tail call: errors point at the caller
  end
end

local function from_method(op, view)
  return function(self, v)
    check_self(op, self)
    local r = map(op, v, function(x) return t_from_view(self, op, view, x) end, 2)
    return r -- not a tail call: errors point at the caller
  end
end

--- sched:sigma_at(t) -> sigma at the fractional timestep t in [0, T]
Schedule.sigma_at = at_method("sigma_at", "sigma")
--- sched:alpha_bar_at(t) -> alpha_bar at t in [0, T] (use t_from_u for u in [0, 1])
Schedule.alpha_bar_at = at_method("alpha_bar_at", "alpha_bar")
--- sched:log_snr_at(t) -> log-SNR at t in [0, T]
Schedule.log_snr_at = at_method("log_snr_at", "log_snr")
--- sched:t_from_sigma(sigma) -> the fractional timestep in [0, T] where the
-- schedule has this sigma (>= 0, at most sigma_max); 0 for sigma = 0
Schedule.t_from_sigma = from_method("t_from_sigma", "sigma")
--- sched:t_from_alpha_bar(ab) -> the fractional timestep of ab in [alpha_bar_T, 1]
Schedule.t_from_alpha_bar = from_method("t_from_alpha_bar", "alpha_bar")
--- sched:t_from_log_snr(l) -> the fractional timestep of log-SNR l
Schedule.t_from_log_snr = from_method("t_from_log_snr", "log_snr")

--- sched:u_from_t(t) -> t / T;  sched:t_from_u(u) -> u T (u in [0, 1])
function Schedule:u_from_t(t)
  check_self("u_from_t", self)
  local r = map("u_from_t", t, function(v) check_t_value(self, "u_from_t", v); return v / self.T end, 2)
  return r
end

function Schedule:t_from_u(u)
  check_self("t_from_u", self)
  local r = map("t_from_u", u, function(v)
    if type(v) ~= "number" or not (v >= 0 and v <= 1) then
      error(string.format("t_from_u: u = %s is outside [0, 1]", show(v)), 0)
    end
    return v * self.T
  end, 2)
  return r
end

local VIEW_NAMES = '"t", "u", "alpha_bar", "log_snr" or "sigma"'

--- sched:convert(x, from, to) -> x (a number or tensor) in view `from` seen in
-- view `to`; views: "t", "u", "alpha_bar", "log_snr", "sigma"
function Schedule:convert(x, from, to)
  local op = "convert"
  check_self(op, self)
  for _, v in ipairs { { "from", from }, { "to", to } } do
    if not (VIEWS[v[2]] or v[2] == "t" or v[2] == "u") then
      error(string.format("%s: %s must be %s, got %s", op, v[1], VIEW_NAMES, tostring(v[2])), 2)
    end
  end
  local r = map(op, x, function(v)
    local t
    if from == "t" then check_t_value(self, op, v); t = v
    elseif from == "u" then
      if not (v >= 0 and v <= 1) then error(string.format("%s: u = %s is outside [0, 1]", op, show(v)), 0) end
      t = v * self.T
    else t = t_from_view(self, op, from, v) end
    if to == "t" then return t end
    if to == "u" then return t / self.T end
    return view_at(self, to, t)
  end, 2)
  return r
end

--- spacings -------------------------------------------------------------------

local function round_half_up(x) return math.floor(x + 0.5) end

--- schedule.timesteps(T, steps, spacing = "leading") -> the `steps` timesteps
-- (integers in 1..T, strictly descending) a sampler visits: diffusers'
-- spacings made 1-based (rounding half up where diffusers' np.round goes half
-- to even, so a tie may differ by one), for i = 0..steps-1:
--   "leading"   (steps - 1 - i) (T // steps) + 1: 1000, 10 -> 901, 801, ..., 101, 1
--   "trailing"  round(T - i T / steps): 1000, 10 -> 1000, 900, ..., 100 (starts at T:
--               Lin et al.'s fix, needed with zero terminal SNR)
--   "linspace"  round(T - i (T - 1) / (steps - 1)): 1000, 10 -> 1000, 889, 778, ..., 112, 1
--               (from T to 1; one step: {T})
--   a list      checked (integers in 1..T, strictly descending) and copied; steps
--               may be nil or #list, and schedule.timesteps(T, list) works too
-- steps is an integer in [1, T]; sched:timesteps(steps, spacing) passes its own T.
function schedule.timesteps(T, n, spacing)
  local op = "timesteps"
  if math.type(T) ~= "integer" or T < 1 then error(op .. ": T must be an integer >= 1, got " .. tostring(T), 2) end
  if type(n) == "table" and spacing == nil then n, spacing = nil, n end
  if type(spacing) == "table" then
    if n ~= nil and n ~= #spacing then
      error(string.format("%s: n = %s but the list holds %d timesteps", op, tostring(n), #spacing), 2)
    end
    if #spacing < 1 then error(op .. ": the list of timesteps is empty", 2) end
    local out = {}
    for i, t in ipairs(spacing) do
      local k = math.tointeger(t)
      if not k or k < 1 or k > T then
        error(string.format("%s: timestep %s at position %d is not an integer in [1, %d]", op, tostring(t), i, T), 2)
      end
      if i > 1 and k >= out[i - 1] then
        error(string.format("%s: the timesteps must be strictly descending, got %d after %d at position %d", op, k,
          out[i - 1], i), 2)
      end
      out[i] = k
    end
    if #out ~= #spacing then error(op .. ": the list of timesteps has holes (nil)", 2) end
    return out
  end
  if math.type(n) ~= "integer" or n < 1 or n > T then
    error(string.format("%s: steps must be an integer in [1, %d], got %s", op, T, tostring(n)), 2)
  end
  spacing = spacing or "leading"
  local ts = {}
  if spacing == "leading" then
    local ratio = T // n
    for i = n - 1, 0, -1 do ts[#ts + 1] = i * ratio + 1 end
  elseif spacing == "trailing" then
    for i = 0, n - 1 do ts[#ts + 1] = round_half_up(T - i * T / n) end
  elseif spacing == "linspace" then
    for i = 0, n - 1 do ts[#ts + 1] = n == 1 and T or round_half_up(T - i * (T - 1) / (n - 1)) end
  else
    error(string.format('%s: spacing must be "leading", "trailing" or "linspace", got %s (or a list of timesteps)', op,
      tostring(spacing)), 2)
  end
  return ts
end

--- sched:timesteps(n, spacing = "leading") -> schedule.timesteps(sched.T, n, spacing)
function Schedule:timesteps(n, spacing)
  check_self("timesteps", self)
  local ok, r = pcall(schedule.timesteps, self.T, n, spacing)
  if not ok then error(r, 2) end
  return r
end

-- checks n and 0 < sigma_min < sigma_max < inf
local function check_sigma_range(op, n, sigma_min, sigma_max)
  check_count(op, n, 3)
  check_number(op, "sigma_min", sigma_min, 3)
  check_number(op, "sigma_max", sigma_max, 3)
  if not (sigma_min > 0 and sigma_max < INF) then
    error(string.format("%s: expected 0 < sigma_min < sigma_max < inf, got sigma_min = %s and sigma_max = %s", op,
      tostring(sigma_min), tostring(sigma_max)), 3)
  end
  if not (sigma_min < sigma_max) then
    error(string.format("%s: sigma_min = %.6g must be below sigma_max = %.6g", op, sigma_min, sigma_max), 3)
  end
end

--- schedule.karras_sigmas(n, sigma_min, sigma_max [, rho = 7]) -> {sigma_1, ..., sigma_n, 0}:
-- the n noise levels of Karras et al. 2022 (EDM, eq. 5), descending,
--   sigma_i = (sigma_max^(1/rho) + (i - 1) / (n - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
-- with the ends exactly sigma_max and sigma_min (n = 1: just sigma_max), and a
-- final 0 appended (the clean data the last step lands on): n + 1 numbers.
function schedule.karras_sigmas(n, sigma_min, sigma_max, rho)
  local op = "karras_sigmas"
  check_sigma_range(op, n, sigma_min, sigma_max)
  rho = rho == nil and 7 or rho
  check_number(op, "rho", rho, 2)
  if not (rho > 0 and rho < INF) then error(string.format("%s: rho must be a finite number > 0, got %s", op, tostring(rho)), 2) end
  local a, b = sigma_max ^ (1 / rho), sigma_min ^ (1 / rho)
  local out = {}
  for i = 1, n do out[i] = (a + (i - 1) / math.max(n - 1, 1) * (b - a)) ^ rho end
  out[1] = sigma_max
  if n > 1 then out[n] = sigma_min end
  out[n + 1] = 0
  return out
end

--- schedule.exponential_sigmas(n, sigma_min, sigma_max) -> {sigma_1, ..., sigma_n, 0}:
-- n noise levels evenly spaced in log sigma (a geometric sequence), descending
-- from exactly sigma_max to exactly sigma_min, and a final 0: n + 1 numbers.
function schedule.exponential_sigmas(n, sigma_min, sigma_max)
  local op = "exponential_sigmas"
  check_sigma_range(op, n, sigma_min, sigma_max)
  local a, b = math.log(sigma_max), math.log(sigma_min)
  local out = {}
  for i = 1, n do out[i] = math.exp(a + (i - 1) / math.max(n - 1, 1) * (b - a)) end
  out[1] = sigma_max
  if n > 1 then out[n] = sigma_min end
  out[n + 1] = 0
  return out
end

--- sched:sigmas(n, spacing = "karras" [, opts]) -> {sigma_1, ..., sigma_n, 0}, descending:
--   "karras", "exponential"  between sched.sigma_min and sched.sigma_max (or
--                            opts.sigma_min / opts.sigma_max; opts.rho for karras)
--   "leading", "trailing", "linspace"  the sigmas at sched:timesteps(n, spacing)
--                            (for zero terminal SNR, "trailing" starts at inf)
--   a list of sigmas         checked (descending, >= 0, at most sigma_max) and
--                            returned with a 0 appended unless it ends in 0
function Schedule:sigmas(n, spacing, opts)
  local op = "sigmas"
  check_self(op, self)
  if type(n) == "table" and spacing == nil then n, spacing = nil, n end
  if type(spacing) == "table" then
    local list = spacing
    if n ~= nil and n ~= #list then error(string.format("%s: n = %s but the list holds %d sigmas", op, tostring(n), #list), 2) end
    if #list < 1 then error(op .. ": the list of sigmas is empty", 2) end
    local out = {}
    for i, s in ipairs(list) do
      if type(s) ~= "number" or s ~= s or s < 0 then
        error(string.format("%s: sigma %s at position %d is not a number >= 0", op, show(s), i), 2)
      end
      if s > self.sigma_max then
        error(string.format("%s: sigma %.6g at position %d is above this schedule's sigma_max = %.6g", op, s, i, self.sigma_max), 2)
      end
      if i > 1 and not (s < out[i - 1]) then
        error(string.format("%s: the sigmas must be strictly descending, got %.6g after %.6g at position %d", op, s, out[i - 1], i), 2)
      end
      out[i] = s
    end
    if #out ~= #list then error(op .. ": the list of sigmas has holes (nil)", 2) end
    if out[#out] ~= 0 then out[#out + 1] = 0 end
    return out
  end
  spacing = spacing or "karras"
  if opts ~= nil and type(opts) ~= "table" then error(op .. ": opts must be a table, got " .. type(opts), 2) end
  opts = opts or {}
  for k in pairs(opts) do
    if k ~= "sigma_min" and k ~= "sigma_max" and k ~= "rho" then
      error(string.format("%s: unknown option '%s' (expected sigma_min, sigma_max, rho)", op, tostring(k)), 2)
    end
  end
  if spacing == "karras" or spacing == "exponential" then
    local smin, smax = opts.sigma_min or self.sigma_min, opts.sigma_max or self.sigma_max
    if smax == INF then
      error(op .. ": sigma_max is inf (zero terminal SNR): " .. spacing .. " spacing needs a finite opts.sigma_max", 2)
    end
    if type(smax) == "number" and smax > self.sigma_max then
      error(string.format("%s: sigma_max = %.6g is above this schedule's sigma_max = %.6g", op, smax, self.sigma_max), 2)
    end
    local ok, r
    if spacing == "karras" then
      ok, r = pcall(schedule.karras_sigmas, n, smin, smax, opts.rho)
    else
      if opts.rho ~= nil then error(op .. ": rho is an option of karras spacing only", 2) end
      ok, r = pcall(schedule.exponential_sigmas, n, smin, smax)
    end
    if not ok then error(op .. ": " .. tostring(r):gsub("^[%w_]+: ", ""), 2) end
    return r
  end
  if spacing ~= "leading" and spacing ~= "trailing" and spacing ~= "linspace" then
    error(string.format('%s: spacing must be "karras", "exponential", "leading", "trailing", "linspace" or a list of sigmas, ' ..
      "got %s", op, tostring(spacing)), 2)
  end
  if next(opts) then error(op .. ": sigma_min, sigma_max and rho are options of karras / exponential spacing only", 2) end
  local ok, ts = pcall(schedule.timesteps, self.T, n, spacing)
  if not ok then error(op .. ": " .. tostring(ts):gsub("^timesteps: ", ""), 2) end -- e.g. "steps must be ..."
  local out = {}
  for i, t in ipairs(ts) do out[i] = self._values.sigma[t] end
  out[#out + 1] = 0
  return out
end

--- loss weighting -----------------------------------------------------------------

-- Each weighting is a weight w(snr) on the x0-space error |x0 - x0_pred|^2;
-- the loss of a prediction type relates to it by (for one x_t)
--   |eps - eps_pred|^2 = snr |x0 - x0_pred|^2,  |v - v_pred|^2 = (snr + 1) |x0 - x0_pred|^2,
-- so the weight on that prediction's MSE is w(snr) / snr (epsilon), w(snr) / (snr + 1) (v)
-- or w(snr) (x0).
local WEIGHTINGS = {
  uniform = true,
  min_snr = function(snr, gamma, prediction)
    if prediction == "epsilon" then return math.min(1, gamma / snr) end -- min(snr, gamma) / snr, 1 at snr = 0
    if prediction == "v" then return math.min(snr, gamma) / (snr + 1) end
    return math.min(snr, gamma)
  end,
  snr_plus_one = function(snr, _, prediction)
    if prediction == "epsilon" then return (snr + 1) / snr end
    if prediction == "v" then return 1 end
    return snr + 1
  end,
}

--- sched:loss_weight(t, kind [, opts]) -> the per-sample weight of the MSE of a
-- network trained on sched:target(x0, noise, t, opts.prediction), as a (N)
-- tensor for a (N) tensor t (a number for a number t; t in [1, T], fractional
-- allowed). opts: prediction ("epsilon", "x0" or "v"; default "epsilon"),
-- gamma (min_snr's, default 5). Kinds, each a weight w on the x0-space error
-- converted to the prediction's own loss:
--   "uniform"       1 for every prediction (the plain MSE of whatever is predicted)
--   "min_snr"       Min-SNR-gamma (Hang et al. 2023), w = min(snr, gamma):
--                   epsilon: min(snr, gamma) / snr; v: min(snr, gamma) / (snr + 1);
--                   x0: min(snr, gamma). Defined for every prediction and every
--                   snr (epsilon at snr = 0 gives its limit, 1).
--   "snr_plus_one"  w = snr + 1 (Salimans & Ho 2022): v: 1 (the v loss is this
--                   weighting); x0: snr + 1; epsilon: (snr + 1) / snr, which is
--                   infinite where snr = 0 (zero terminal SNR): an error there.
function Schedule:loss_weight(t, kind, opts)
  local op = "loss_weight"
  check_self(op, self)
  local weight = WEIGHTINGS[kind]
  if not weight then
    error(string.format('%s: kind must be "uniform", "min_snr" or "snr_plus_one", got %s', op, tostring(kind)), 2)
  end
  if opts ~= nil and type(opts) ~= "table" then error(op .. ": opts must be a table, got " .. type(opts), 2) end
  opts = opts or {}
  for k in pairs(opts) do
    if k ~= "prediction" and k ~= "gamma" then
      error(string.format("%s: unknown option '%s' (expected prediction, gamma)", op, tostring(k)), 2)
    end
  end
  local prediction = opts.prediction or "epsilon"
  if not PREDICTIONS[prediction] then
    error(string.format('%s: prediction must be "epsilon", "x0" or "v", got %s', op, tostring(prediction)), 2)
  end
  local gamma = opts.gamma
  if gamma ~= nil and kind ~= "min_snr" then error(op .. ": gamma is an option of min_snr only", 2) end
  gamma = gamma or 5
  if type(gamma) ~= "number" or not (gamma > 0) then
    error(string.format("%s: gamma must be a number > 0, got %s", op, tostring(gamma)), 2)
  end
  local snr_table = self._values.snr
  local r = map(op, t, function(v)
    if type(v) ~= "number" or not (v >= 1 and v <= self.T) then
      error(string.format("%s: timestep %s is outside [1, %d]", op, show(v), self.T), 0)
    end
    if weight == true then return 1 end
    local k = math.tointeger(v)
    local snr = k and snr_table[k] or math.exp(t_to_ls(self, v) * -2)
    if snr == 0 and kind == "snr_plus_one" and prediction == "epsilon" then
      error(string.format("%s: snr_plus_one for epsilon prediction is (snr + 1) / snr, infinite at t = %s where snr = 0 " ..
        "(zero terminal SNR): use v prediction", op, show(v)), 0)
    end
    return weight(snr, gamma, prediction)
  end, 2)
  return r
end

--- printing and plotting ------------------------------------------------------------

local SPARK = { "▁", "▂", "▃", "▄", "▅", "▆", "▇", "█" }

local function short(v)
  if v == INF then return "inf" end
  if v == -INF then return "-inf" end
  return string.format("%.3g", v)
end

--- sched:sparkline([width = 32]) -> log-SNR over t = 1..T as a row of block
-- characters (▁ lowest, █ highest of the finite values; a blank where it is -inf)
function Schedule:sparkline(width)
  width = width or 32
  if math.type(width) ~= "integer" or width < 1 then
    error("sparkline: width must be an integer >= 1, got " .. tostring(width), 2)
  end
  local ls, T = self._values.log_snr, self.T
  width = math.min(width, T)
  local lo, hi = INF, -INF
  for t = 1, T do
    local v = ls[t]
    if v > -INF and v < INF then lo, hi = math.min(lo, v), math.max(hi, v) end
  end
  local out = {}
  for c = 1, width do
    local t = width == 1 and 1 or math.floor(1 + (c - 1) * (T - 1) / (width - 1) + 0.5)
    local v = ls[t]
    if not (v > -INF and v < INF) then
      out[c] = " "
    elseif hi == lo then
      out[c] = SPARK[4]
    else
      out[c] = SPARK[math.min(8, math.floor((v - lo) / (hi - lo) * 8) + 1)]
    end
  end
  return table.concat(out)
end

--- tostring(sched): "Schedule(kind, T = ..., terminal SNR ...) log-SNR first ▇▆...▁ last"
function Schedule:__tostring()
  local ls = self._values.log_snr
  return string.format("Schedule(%s, T = %d, terminal SNR %.2g) log-SNR %s %s %s", self.kind, self.T,
    self._values.snr[self.T], short(ls[1]), self:sparkline(32), short(ls[self.T]))
end

--- sched:plot(path [, other schedules...] [, opts]) -> true, or nil, message:
-- one PNG with three panels side by side: alpha_bar(t), log-SNR(t) and sigma(t)
-- (log scale) of this schedule and the others, one colour each, named by
-- their kind (or opts.names). The x axis is t, or u = t / T when the Ts differ.
-- opts: names (a list), title, width / height (of each panel: 560 x 420).
function Schedule:plot(path, ...)
  local op = "plot"
  check_self(op, self)
  local scheds, opts = { self }, {}
  local args = table.pack(...)
  for i = 1, args.n do
    local a = args[i]
    if is_schedule(a) then
      scheds[#scheds + 1] = a
    elseif i == args.n and type(a) == "table" then
      opts = a
    else
      error(string.format("%s: argument %d must be a schedule (or a last table of options), got %s", op, i + 1, type(a)), 2)
    end
  end
  local ok, r, msg = pcall(require("diffusion.plot").schedules, path, scheds, opts)
  if not ok then error(r, 2) end
  return r, msg
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

-- An epsilon prediction gives x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab): nothing
-- where ab = 0 (zero terminal SNR's t = T), where x_t is pure noise.
local function check_eps_defined(self, op, t, prediction)
  if prediction ~= "epsilon" or self._values.alpha_bar[self.T] ~= 0 then return end
  local at_T = t == self.T or (type(t) ~= "number" and t:numel() > 0 and t:max():item() >= self.T)
  if at_T then
    error(string.format("%s: an epsilon prediction cannot give x0 at t = %d, where alpha_bar = 0 (zero terminal SNR): " ..
      "train with v or x0 prediction", op, self.T), 3)
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

-- x0 (and eps when want_eps) from the model output at x_t = sqrt(ab) x0 + sqrt(1 - ab) eps;
-- op names the public method in errors
local function x0_and_eps(self, op, out, xt, t, prediction, want_eps)
  prediction = prediction or "epsilon"
  check_prediction(op, prediction)
  t = check_t(self, op, t, xt)
  check_same(op, xt, "xt", out, "the model output")
  check_eps_defined(self, op, t, prediction)
  local sa, s1 = coef(self, "sqrt_alpha_bar", t, op), coef(self, "sqrt_one_minus_alpha_bar", t, op)
  if prediction == "epsilon" then -- x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab)
    return combine(op, 1 / sa, xt, -(coef(self, "sigma", t, op)), out), out
  elseif prediction == "x0" then -- eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)
    return out, want_eps and combine(op, 1 / s1, xt, -(sa / s1), out) or nil
  end
  -- v: x0 = sqrt(ab) x_t - sqrt(1 - ab) v, eps = sqrt(1 - ab) x_t + sqrt(ab) v
  return combine(op, sa, xt, -s1, out), want_eps and combine(op, s1, xt, sa, out) or nil
end

--- sched:predict_x0_eps(model_output, xt, t, prediction) -> x0_pred, eps_pred:
-- the inverse of target given x_t = sqrt(ab) x0 + sqrt(1 - ab) eps
function Schedule:predict_x0_eps(out, xt, t, prediction)
  return x0_and_eps(self, "predict_x0_eps", out, xt, t, prediction, true)
end

--- sched:predict_x0(model_output, xt, t, prediction) -> x0_pred only
function Schedule:predict_x0(out, xt, t, prediction)
  return (x0_and_eps(self, "predict_x0", out, xt, t, prediction, false))
end

return schedule
