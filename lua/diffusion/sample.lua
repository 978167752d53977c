--- diffusion.sample: the DDPM and DDIM samplers, as short Lua loops over the C
-- step kernels (csrc/diffusion/schedule.c).
--
--   local x = D.sample.ddim(net, sched, {n = 16, shape = {1, 28, 28}, steps = 50, seed = 1})
--   local x, frames = D.sample.ddpm(net, sched, {n = 8, shape = {1, 28, 28}, y = labels,
--                                               guidance = 3, null_class = 11, trajectory = true})
--
-- `model` is any callable model(x, t, y) -> prediction, for x (N, C, H, W), t a
-- (N) tensor of timesteps (1..T, all equal within a step) and y the labels or
-- nil. Each step: predict, turn the prediction into x0 (clamped to [-1, 1]
-- unless clip_x0 = false), then step from t to the previous visited timestep
-- (alpha_bar_0 = 1 after the last one). The loop runs without recording
-- autograd. Options:
--   n, shape          the batch: x is (n, shape...); n defaults to the number of labels
--   steps             visited timesteps (DDIM: 50, DDPM: T), from sample.timesteps
--   spacing           "leading" (diffusers' default: 1, 1 + T // S, ...) or "trailing"
--   eta               DDIM's noise scale (0: deterministic, 1: DDPM-like), default 0
--   variance          DDPM's sigma^2: "beta_tilde" (the posterior's, default) or "beta"
--   seed, generator   where x_T and the step noise come from (default generator otherwise)
--   prediction        what the model predicts: "epsilon" (default), "x0" or "v"
--   y                 labels (a (n) tensor or a list), passed to the model
--   guidance, null_class  classifier-free guidance: out = uncond + w (cond - uncond),
--                     the unconditional pass using label null_class, both passes
--                     batched into one model call of 2n
--   clip_x0           clamp the predicted x0 to [-1, 1] (default true)
--   progress          true (a D.progress line) or an object with update(step) [and finish()]
--   callback          callback(step, x, x0_pred, t) after each step (x: the new sample)
--   trajectory        true: also return the list {x_T, ..., x} of snapshots taken
--                     every `trajectory_every` steps (default 1) and after the last
local core = require "diffusion.core"
local new_progress = require "diffusion.progress"
local util = require "diffusion.util"

local sample = {}

--- sample.timesteps(T, steps [, spacing]) -> the list of visited timesteps, descending
function sample.timesteps(T, steps, spacing)
  spacing = spacing or "leading"
  if math.type(T) ~= "integer" or T < 1 then error("timesteps: T must be an integer >= 1, got " .. tostring(T), 2) end
  if math.type(steps) ~= "integer" or steps < 1 or steps > T then
    error(string.format("timesteps: steps must be an integer in [1, %d], got %s", T, tostring(steps)), 2)
  end
  local ts = {}
  if spacing == "leading" then -- diffusers: arange(0, S) * (T // S) + 1, reversed
    local ratio = T // steps
    for i = steps - 1, 0, -1 do ts[#ts + 1] = i * ratio + 1 end
  elseif spacing == "trailing" then -- diffusers: round(arange(T, 0, -T / S)), here 1-based
    for i = 0, steps - 1 do ts[#ts + 1] = math.floor(T - i * T / steps + 0.5) end
  else
    error('timesteps: spacing must be "leading" or "trailing", got ' .. tostring(spacing), 2)
  end
  return ts
end

--- options ----------------------------------------------------------------------

local KNOWN = {
  n = true, shape = true, steps = true, spacing = true, eta = true, variance = true, seed = true,
  generator = true, prediction = true, y = true, guidance = true, null_class = true, clip_x0 = true,
  progress = true, callback = true, trajectory = true, trajectory_every = true,
}

local is_tensor = util.is_tensor

local function is_callable(f)
  if type(f) == "function" then return true end
  local mt = getmetatable(f)
  return type(mt) == "table" and mt.__call ~= nil
end

local function check_options(name, model, sched, opts)
  local function fail(fmt, ...) error(string.format("%s: " .. fmt, name, ...), 4) end
  if not is_callable(model) then fail("model must be callable as model(x, t, y), got %s", type(model)) end
  if type(sched) ~= "table" or not sched._values then fail("expected a schedule (D.schedule.*), got %s", type(sched)) end
  if type(opts) ~= "table" then fail("expected a table of options, got %s", type(opts)) end
  for k in pairs(opts) do
    if not KNOWN[k] then fail("unknown option '%s'", tostring(k)) end
  end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end

  if o.y ~= nil then
    if type(o.y) == "table" then o.y = core.tensor(o.y) end
    if not is_tensor(o.y) or o.y:dim() ~= 1 then fail("y must be a (n) tensor or a list of labels") end
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

  local T = sched.T
  o.steps = o.steps or (name == "sample.ddim" and math.min(50, T) or T)
  if math.type(o.steps) ~= "integer" or o.steps < 1 or o.steps > T then
    fail("steps must be an integer in [1, %d], got %s", T, tostring(o.steps))
  end
  o.spacing = o.spacing or "leading"
  if o.spacing ~= "leading" and o.spacing ~= "trailing" then
    fail('spacing must be "leading" or "trailing", got %s', tostring(o.spacing))
  end
  o.eta = o.eta or 0
  if type(o.eta) ~= "number" or not (o.eta >= 0 and o.eta <= 1) then
    fail("eta must be a number in [0, 1], got %s", tostring(o.eta))
  end
  o.variance = o.variance or "beta_tilde"
  if o.variance ~= "beta" and o.variance ~= "beta_tilde" then
    fail('variance must be "beta" or "beta_tilde", got %s', tostring(o.variance))
  end
  o.prediction = o.prediction or "epsilon"
  if o.prediction ~= "epsilon" and o.prediction ~= "x0" and o.prediction ~= "v" then
    fail('prediction must be "epsilon", "x0" or "v", got %s', tostring(o.prediction))
  end
  if o.seed ~= nil and o.generator ~= nil then fail("give seed or generator, not both") end
  if o.seed ~= nil then
    if math.type(o.seed) ~= "integer" then fail("seed must be an integer, got %s", tostring(o.seed)) end
    o.generator = core.Generator(o.seed)
  end
  if o.guidance ~= nil then
    if type(o.guidance) ~= "number" then fail("guidance must be a number, got %s", type(o.guidance)) end
    if o.y == nil then fail("guidance needs labels y (the conditional pass)") end
    if type(o.null_class) ~= "number" then
      fail("guidance needs null_class (the label of the unconditional pass), got %s", tostring(o.null_class))
    end
    o.y2 = core.cat({ o.y, core.full({ o.n }, o.null_class) }, 1)
  end
  if o.clip_x0 == nil then o.clip_x0 = true end
  if o.callback ~= nil and not is_callable(o.callback) then fail("callback must be a function") end
  o.trajectory_every = o.trajectory_every or 1
  if math.type(o.trajectory_every) ~= "integer" or o.trajectory_every < 1 then
    fail("trajectory_every must be an integer >= 1, got %s", tostring(o.trajectory_every))
  end
  if o.progress == true then
    o.progress = new_progress { total = o.steps, label = name }
  elseif o.progress ~= nil and o.progress ~= false and not (type(o.progress) == "table" and o.progress.update) then
    fail("progress must be true or an object with update(step), got %s", type(o.progress))
  end
  return o
end

--- the loop -----------------------------------------------------------------------

local shape_string = util.shape_string

-- The model's prediction for x at timestep t (with guidance: one call on 2n).
local function predict(name, model, x, t, o)
  local xin, y = x, o.y
  if o.guidance then xin, y = core.cat({ x, x }, 1), o.y2 end
  local out = model(xin, core.full({ xin:size(1) }, t), y)
  if not is_tensor(out) then
    error(string.format("%s: the model returned %s, expected a tensor", name, type(out)), 0)
  end
  if out:shape() ~= xin:shape() then
    error(string.format("%s: the model returned shape %s for x of shape %s", name, shape_string(out:shape()),
      shape_string(xin:shape())), 0)
  end
  if not o.guidance then return out end
  local cond, uncond = out:narrow(1, 1, o.n), out:narrow(1, o.n + 1, o.n)
  return uncond + (cond - uncond) * o.guidance
end

local function loop(name, model, sched, o)
  local ab = sched._values.alpha_bar
  local ts = sample.timesteps(sched.T, o.steps, o.spacing)
  local x = core.randn(o.xshape, o.generator)
  local trajectory = o.trajectory and { x } or nil
  for i, t in ipairs(ts) do
    local t_prev = ts[i + 1] or 0
    local ab_t, ab_prev = ab[t], t_prev > 0 and ab[t_prev] or 1.0
    local x0 = sched:predict_x0(predict(name, model, x, t, o), x, t, o.prediction)
    if o.clip_x0 then x0 = x0:clamp(-1, 1) end
    if name == "sample.ddpm" then
      local noise = t_prev > 0 and core.randn(o.xshape, o.generator) or nil -- none into x_0
      x = core._ddpm_step(x, x0, noise, ab_t, ab_prev, o.variance == "beta_tilde")
    else
      local noise = (o.eta > 0 and t_prev > 0) and core.randn(o.xshape, o.generator) or nil
      x = core._ddim_step(x, x0, noise, ab_t, ab_prev, o.eta)
    end
    if o.callback then o.callback(i, x, x0, t) end
    if trajectory and (i % o.trajectory_every == 0 or i == #ts) then trajectory[#trajectory + 1] = x end
    if o.progress then o.progress:update(i) end
  end
  if o.progress and o.progress.finish then o.progress:finish() end
  return x, trajectory
end

local function run(name, model, sched, opts)
  local o = check_options(name, model, sched, opts)
  local previous = core.set_grad_enabled(false)
  local ok, x, trajectory = pcall(loop, name, model, sched, o)
  core.set_grad_enabled(previous)
  if not ok then error(x, 0) end
  if o.trajectory then return x, trajectory end
  return x
end

--- sample.ddpm(model, sched, opts) -> x (n, C, H, W) [, trajectory]: ancestral
-- sampling (Ho et al. 2020); with steps < T, on the respaced schedule
-- beta = 1 - ab_t / ab_prev (Nichol & Dhariwal 2021)
function sample.ddpm(model, sched, opts) return run("sample.ddpm", model, sched, opts) end

--- sample.ddim(model, sched, opts) -> x (n, C, H, W) [, trajectory]: Song et al.
-- 2020, with eta scaling the noise (0: the deterministic sampler)
function sample.ddim(model, sched, opts) return run("sample.ddim", model, sched, opts) end

return sample
