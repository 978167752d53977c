--- diffusion.train: the denoiser's training loop.
--
--   local model = D.UNet{channels = 32, groups = 8, num_classes = 10}
--   local data  = D.data.fashion_mnist{split = "train", pad_to = 32}
--   D.train{model = model, schedule = D.schedule.cosine{T = 1000}, data = data,
--           steps = 4000, batch = 128, checkpoint = "fashion.ckpt.safetensors"}
--
-- Each step: a batch x0 (and its labels), timesteps t and noise from the
-- run's own generator, x_t = add_noise(x0, noise, t), the model's prediction
-- of the target (epsilon, x0 or v) under MSE (each sample weighted by
-- sched:loss_weight with loss_weight = "min_snr" (gamma min_snr_gamma) or
-- "snr_plus_one"; "uniform" by default), AdamW with warm-up, gradient
-- clipping, an EMA of the weights. With num_classes, a label is replaced by
-- the null class (num_classes + 1) with probability cfg_dropout, which is
-- what classifier-free guidance needs. A checkpoint (model, EMA, optimizer,
-- step, generator state) is written atomically every checkpoint_every steps
-- and at the end; with resume (the default) a run that finds its checkpoint
-- continues from it, and continues exactly: N steps, a stop, a resume and N
-- more give the same weights as 2N steps in one go (same seed and threads).
-- A loss or gradient that becomes NaN or Inf stops the run with an error
-- naming the step and the first tensor where it appeared (the loss, or the
-- first parameter in model order), before the optimizer step; a parameter
-- that becomes NaN or Inf is caught before it is saved. Nothing is written
-- after that, so the last good checkpoint stays on disk.
local core = require "diffusion.core"
local optim = require "diffusion.optim"
local checkpoint = require "diffusion.checkpoint"
local new_progress = require "diffusion.progress"
local util = require "diffusion.util"

local DEFAULTS = {
  steps = 1000, batch = 128, lr = 2e-4, warmup = 500, weight_decay = 0, clip = 1.0, ema = 0.9995,
  prediction = "epsilon", loss_weight = "uniform", min_snr_gamma = 5, cfg_dropout = 0.1, seed = 0,
  checkpoint_every = 500, resume = true,
  progress = true, sample_every = 0, sample_n = 0,
}
local KNOWN = {
  model = true, schedule = true, data = true, checkpoint = true, log = true, sample_path = true, on_step = true,
}
for k in pairs(DEFAULTS) do KNOWN[k] = true end

local function fail(fmt, ...) error("train: " .. string.format(fmt, ...), 3) end

local function check(opts)
  if type(opts) ~= "table" then fail("expected a table of options, got %s", type(opts)) end
  for k in pairs(opts) do
    if not KNOWN[k] then fail("unknown option '%s'", tostring(k)) end
  end
  local o = {}
  for k, v in pairs(DEFAULTS) do o[k] = v end
  for k, v in pairs(opts) do o[k] = v end
  if type(o.model) ~= "table" or not o.model.named_parameters or not o.model.config then
    fail("model must be a D.UNet")
  end
  if type(o.schedule) ~= "table" or not o.schedule.add_noise then fail("schedule must be a D.schedule") end
  if type(o.data) ~= "table" or not o.data.batches then fail("data must be a D.data dataset") end
  for _, key in ipairs({ "steps", "batch", "checkpoint_every", "warmup", "seed", "sample_every", "sample_n" }) do
    if math.type(o[key]) ~= "integer" or o[key] < 0 then fail("%s must be a non-negative integer, got %s", key, tostring(o[key])) end
  end
  if o.batch < 1 then fail("batch must be at least 1") end
  if not (type(o.cfg_dropout) == "number" and o.cfg_dropout >= 0 and o.cfg_dropout < 1) then
    fail("cfg_dropout must be in [0, 1), got %s", tostring(o.cfg_dropout))
  end
  if o.prediction ~= "epsilon" and o.prediction ~= "x0" and o.prediction ~= "v" then
    fail('prediction must be "epsilon", "x0" or "v", got %s', tostring(o.prediction))
  end
  if o.loss_weight ~= "uniform" and o.loss_weight ~= "min_snr" and o.loss_weight ~= "snr_plus_one" then
    fail('loss_weight must be "uniform", "min_snr" or "snr_plus_one", got %s', tostring(o.loss_weight))
  end
  if not (type(o.min_snr_gamma) == "number" and o.min_snr_gamma > 0) then
    fail("min_snr_gamma must be a number > 0, got %s", tostring(o.min_snr_gamma))
  end
  local classes = o.model.config.num_classes
  if classes > 0 and not o.data.labels then fail("a class-conditional model needs a dataset with labels") end
  if o.sample_every > 0 and not o.sample_path then fail("sample_every needs sample_path") end
  o.batch_cache = {}
  return o
end

-- The batch for `step` (1-based): epochs are shuffled with their own seed, so
-- any step's batch can be found again without replaying the run. Steps in a
-- row reuse the epoch's iterator (one shuffle per epoch).
local function batch_at(o, step)
  local per_epoch = (#o.data) // o.batch
  if per_epoch < 1 then fail("the dataset has %d images, fewer than one batch of %d", #o.data, o.batch) end
  local epoch, index = (step - 1) // per_epoch, (step - 1) % per_epoch
  local cache = o.batch_cache
  if cache.epoch ~= epoch or cache.next ~= index then
    cache.iter = o.data:batches(o.batch, { seed = o.seed * 1000003 + epoch, drop_last = true, skip = index })
    cache.epoch = epoch
  end
  cache.next = index + 1
  local _, x, y = cache.iter()
  return x, y
end

-- True when x holds a NaN or an infinity. The sum (accumulated in double)
-- catches both in one pass; a finite tensor whose float sum overflows is
-- told apart by its largest magnitude.
local function nonfinite(x)
  local s = x:sum():item()
  if s == s and s > -math.huge and s < math.huge then return false end
  local m = x:abs():max():item()
  return not (m == m and m < math.huge)
end

-- The name of the first parameter (in model order) whose gradient, or
-- (with which = "value") whose value holds NaN or Inf; nil when none does.
local function first_nonfinite(model, which)
  return util.no_grad(function()
    for _, entry in ipairs(model:named_parameters()) do
      local t = which == "value" and entry[2] or entry[2].grad
      if t and nonfinite(t) then return entry[1] end
    end
  end)
end

local function state_of(o, model, ema, opt, gen, step)
  return {
    kind = "diffusion-training", step = step, config = model.config, model = model:state_dict(),
    ema = ema:state_dict(), optim = opt:state_dict(), generator = gen:get_state(),
    train = { seed = o.seed, batch = o.batch, prediction = o.prediction, cfg_dropout = o.cfg_dropout,
              schedule = o.schedule.kind, T = o.schedule.T },
  }
end

-- Writes a grid of samples from the EMA weights (one row per class when conditional).
local function sample_grid(o, model, ema, step)
  local D_sample, image = require "diffusion.sample", require "diffusion.image"
  local classes = model.config.num_classes
  local n = o.sample_n > 0 and o.sample_n or (classes > 0 and classes * 8 or 64)
  local y
  if classes > 0 then
    local labels = {}
    for i = 1, n do labels[i] = (i - 1) // math.max(1, n // classes) % classes + 1 end
    y = core.tensor(labels)
  end
  ema:swap(model)
  model:eval()
  local ok, x = pcall(D_sample.ddim, model, o.schedule, {
    n = n, shape = { model.config.in_channels, o.data.images:size(3), o.data.images:size(4) }, steps = 50,
    seed = 1, y = y, guidance = y and 2 or nil, null_class = y and classes + 1 or nil, prediction = o.prediction })
  model:train()
  ema:swap(model)
  if not ok then error(x, 0) end
  local path = o.sample_path:gsub("%%d", string.format("%06d", step))
  image.save_grid(x, path, { nrow = classes > 0 and math.max(1, n // classes) or 8 })
end

--- train(opts) -> model, ema, {step = ..., losses = {...}}
return function(opts)
  local o = check(opts)
  local model, sched = o.model, o.schedule
  local classes = model.config.num_classes
  local gen = core.Generator(o.seed)
  local opt = optim.AdamW(model:parameters(), { lr = o.lr, weight_decay = o.weight_decay })
  local ema = optim.EMA(model, o.ema)
  local lr_at = optim.schedule.warmup(o.lr, math.max(1, o.warmup))
  local start = 0
  if o.checkpoint and o.resume then
    local ck = checkpoint.load(o.checkpoint)
    if ck then
      if ck.kind ~= "diffusion-training" then fail("%s is not a training checkpoint", o.checkpoint) end
      for key, value in pairs(model.config) do
        local saved = ck.config and ck.config[key]
        local same = type(value) == "table" and table.concat(value, ",") == table.concat(saved or {}, ",") or value == saved
        if not same then
          fail("%s was written for a model with %s = %s, this model has %s", o.checkpoint, key,
            tostring(type(saved) == "table" and table.concat(saved, ",") or saved),
            tostring(type(value) == "table" and table.concat(value, ",") or value))
        end
      end
      model:load_state_dict(ck.model)
      ema:load_state_dict(ck.ema)
      opt:load_state_dict(ck.optim)
      gen:set_state(ck.generator)
      start = ck.step
    end
  end
  model.generator = gen
  model:train()
  local log = o.log and assert(io.open(o.log, start > 0 and "a" or "w"))
  local bar = o.progress and new_progress{ total = o.steps, label = "train" }
  local losses = {}
  local saved_step = start > 0 and start or nil -- the last checkpoint on disk
  -- Stops the run: nothing is saved from here, so the last good checkpoint stays.
  local function stop(step, what)
    if log then log:close() end
    local kept = not o.checkpoint and "no checkpoint was configured"
      or saved_step and string.format("the last good checkpoint (step %d) is kept in %s", saved_step, o.checkpoint)
      or "no checkpoint had been written yet"
    error(string.format("train: step %d: %s; stopped without saving (%s)", step, what, kept), 0)
  end
  for step = start + 1, o.steps do
    local x0, y = batch_at(o, step)
    local n = x0:size(1)
    local t = sched:sample_t(n, gen)
    local noise = core.randn_like(x0, gen)
    if classes > 0 then -- drop labels to the null class for classifier-free guidance
      y = core.where(core.rand({ n }, gen):lt(o.cfg_dropout), classes + 1, y)
    else
      y = nil
    end
    local xt = sched:add_noise(x0, noise, t)
    local target = sched:target(x0, noise, t, o.prediction)
    local loss
    if o.loss_weight == "uniform" then
      loss = core.mse_loss(model(xt, t, y), target)
    else -- each sample's squared error weighted by its timestep's weight (Hang et al. 2023 for min-SNR)
      local weight = sched:loss_weight(t, o.loss_weight, {
        prediction = o.prediction, gamma = o.loss_weight == "min_snr" and o.min_snr_gamma or nil })
      local dims = {}
      for d = 2, x0:dim() do dims[#dims + 1] = d end
      local err = model(xt, t, y) - target
      loss = ((err * err):mean(dims) * weight):mean()
    end
    local value = loss:item()
    if value ~= value or value == math.huge or value == -math.huge then
      stop(step, string.format("the loss is %s (the first non-finite value: the batch, the model's output or the weights)", value))
    end
    opt:zero_grad()
    loss:backward()
    local bad = first_nonfinite(model)
    if bad then stop(step, "the gradient of " .. bad .. " holds NaN or Inf (the first parameter where it appears)") end
    if o.clip and o.clip > 0 then optim.clip_grad_norm(model:parameters(), o.clip) end
    opt.lr = lr_at(step)
    opt:step()
    ema:update()
    losses[#losses + 1] = value
    if log then log:write(string.format("%d,%.6g\n", step, value)) end
    if bar then bar:update(step, { loss = value }, n) end
    if o.on_step then o.on_step(step, value) end
    if o.checkpoint and (step % math.max(1, o.checkpoint_every) == 0 or step == o.steps) then
      if log then log:flush() end
      local broken = first_nonfinite(model, "value")
      if broken then stop(step, "parameter " .. broken .. " became NaN or Inf in the optimizer step (is lr too large?)") end
      checkpoint.save(o.checkpoint, state_of(o, model, ema, opt, gen, step))
      saved_step = step
    end
    if o.sample_every > 0 and step % o.sample_every == 0 then sample_grid(o, model, ema, step) end
  end
  if bar then bar:finish() end
  if log then log:close() end
  model.generator = nil
  return model, ema, { step = math.max(start, o.steps), losses = losses }
end
