--- diffusion.optim: optimizers, gradient clipping, learning-rate schedules and
-- an exponential moving average of model weights.
--
--   local opt = optim.AdamW(params, {lr = 1e-4})
--   for step = 1, n do
--     opt.lr = schedule(step)
--     opt:zero_grad()
--     loss_fn():backward()
--     optim.clip_grad_norm(params, 1.0)
--     opt:step()
--     ema:update()
--   end
--
-- Optimizers follow torch.optim's update rules, so a run can be compared
-- with PyTorch step by step. The arithmetic is done by the C kernels
-- (core._sgd_step, core._adam_step, core.lerp_); every parameter update runs
-- with grad mode off (restored even when a step raises), so an update is
-- never recorded in the autograd graph.
local core = require "diffusion.core"
local util = require "diffusion.util"

local optim = {}

-- shape_string takes the tensors themselves here; no_grad restores the mode whatever happens
local is_tensor, shape_string, no_grad = util.is_tensor, util.shape_string, util.no_grad

local function clone(t) return no_grad(function() return t:detach():clone() end) end

local function same_shape(a, b)
  local sa, sb = a:shape(), b:shape()
  if #sa ~= #sb then return false end
  for i = 1, #sa do if sa[i] ~= sb[i] then return false end end
  return true
end

-- Checks opts field `key` is a number >= lo (and < hi when given); returns it or the default.
local function number_opt(who, opts, key, default, lo, hi)
  local v = opts[key]
  if v == nil then v = default end
  if v == nil then error(string.format("%s: %s is required", who, key), 3) end
  if type(v) ~= "number" or v ~= v then
    error(string.format("%s: %s must be a number, got %s", who, key, tostring(v)), 3)
  end
  if v < lo or (hi and v >= hi) then
    local range = hi and string.format("in [%g, %g)", lo, hi) or string.format(">= %g", lo)
    error(string.format("%s: %s must be %s, got %g", who, key, range, v), 3)
  end
  return v
end

-- The parameter list: tensors that are leaves requiring grad.
local function check_params(who, params)
  if type(params) ~= "table" then
    error(string.format("%s: params must be an array of tensors, got %s", who, type(params)), 3)
  end
  local list = {}
  for i = 1, #params do
    local p = params[i]
    if not is_tensor(p) then
      error(string.format("%s: params[%d] is a %s, not a tensor", who, i, type(p)), 3)
    end
    if not p.is_leaf then
      error(string.format("%s: params[%d] is computed by '%s', not a leaf (optimize the tensor it was made from)",
        who, i, p.grad_fn), 3)
    end
    if not p.requires_grad then
      error(string.format("%s: params[%d] does not require grad (call requires_grad_() on it)", who, i), 3)
    end
    list[i] = p
  end
  if #list == 0 then error(who .. ": params is empty", 3) end
  return list
end

--- Optimizer: what SGD and Adam share ---------------------------------------

local Optimizer = {}
Optimizer.__index = Optimizer

--- opt:zero_grad(): drops every parameter's gradient (p.grad = nil).
function Optimizer:zero_grad()
  for _, p in ipairs(self.params) do p.grad = nil end
end

--- opt:step(): one update of every parameter that has a gradient.
function Optimizer:step()
  no_grad(function()
    for i, p in ipairs(self.params) do
      local g = p.grad
      if g then self:_update(i, p, g) end
    end
  end)
  self.step_count = self.step_count + 1
end

--- opt:state_dict(): a plain table of the hyperparameters, the step count
-- and each parameter's state (tensors cloned; {} for a parameter never updated).
function Optimizer:state_dict()
  local hyper = {}
  for _, key in ipairs(self._hyper_keys) do
    local v = self[key]
    hyper[key] = type(v) == "table" and { table.unpack(v) } or v
  end
  local state = {}
  for i = 1, #self.params do
    local s = {}
    for k, v in pairs(self.state[i]) do s[k] = is_tensor(v) and clone(v) or v end
    state[i] = s
  end
  return { kind = self.kind, hyper = hyper, step = self.step_count, state = state }
end

--- opt:load_state_dict(sd): restores what state_dict saved; the parameter
-- count and every state tensor's shape must match (all mismatches are listed).
function Optimizer:load_state_dict(sd)
  local who = self.kind .. ":load_state_dict"
  if type(sd) ~= "table" or type(sd.state) ~= "table" or type(sd.hyper) ~= "table" then
    error(who .. ": expected a table made by state_dict (with hyper, step and state)", 2)
  end
  if sd.kind ~= self.kind then
    error(string.format("%s: the state is for %s, not %s", who, tostring(sd.kind), self.kind), 2)
  end
  if #sd.state ~= #self.params then
    error(string.format("%s: the state has %d parameters, the optimizer has %d", who, #sd.state, #self.params), 2)
  end
  local problems = {}
  for i, s in ipairs(sd.state) do
    local keys = {}
    for k in pairs(s) do keys[#keys + 1] = tostring(k) end
    table.sort(keys) -- a stable message
    for _, k in ipairs(keys) do
      local v = s[k]
      if is_tensor(v) and not same_shape(v, self.params[i]) then
        problems[#problems + 1] = string.format("parameter %d: %s has shape %s, the parameter %s", i, k,
          shape_string(v), shape_string(self.params[i]))
      end
    end
  end
  if #problems > 0 then error(who .. ": " .. table.concat(problems, "; "), 2) end
  for _, key in ipairs(self._hyper_keys) do
    local v = sd.hyper[key]
    if v ~= nil then self[key] = type(v) == "table" and { table.unpack(v) } or v end
  end
  self.step_count = sd.step or 0
  for i, s in ipairs(sd.state) do
    local own = {}
    for k, v in pairs(s) do own[k] = is_tensor(v) and clone(v) or v end
    self.state[i] = own
  end
end

local function new_optimizer(kind, params, hyper_keys)
  local self = setmetatable({ kind = kind, params = params, state = {}, step_count = 0, _hyper_keys = hyper_keys },
    Optimizer)
  for i = 1, #params do self.state[i] = {} end
  return self
end

--- SGD ------------------------------------------------------------------------

local SGD = setmetatable({}, { __index = Optimizer })
SGD.__index = SGD

--- optim.SGD(params, {lr, momentum = 0, dampening = 0, weight_decay = 0, nesterov = false})
-- d = g + wd p; with momentum: buf = d on the first step, else
-- momentum buf + (1 - dampening) d; d = nesterov and d + momentum buf or buf;
-- p = p - lr d.
function optim.SGD(params, opts)
  opts = opts or {}
  params = check_params("SGD", params)
  local self = new_optimizer("SGD", params, { "lr", "momentum", "dampening", "weight_decay", "nesterov" })
  self.lr = number_opt("SGD", opts, "lr", nil, 0)
  self.momentum = number_opt("SGD", opts, "momentum", 0, 0)
  self.dampening = number_opt("SGD", opts, "dampening", 0, 0)
  self.weight_decay = number_opt("SGD", opts, "weight_decay", 0, 0)
  self.nesterov = opts.nesterov and true or false
  if self.nesterov and (self.momentum <= 0 or self.dampening ~= 0) then
    error("SGD: nesterov needs momentum > 0 and dampening = 0", 2)
  end
  return setmetatable(self, SGD)
end

function SGD:_update(i, p, g)
  local state, buf, first = self.state[i], nil, false
  if self.momentum ~= 0 then
    buf = state.momentum_buffer
    if not buf then
      buf = core.zeros_like(p)
      state.momentum_buffer = buf
      first = true
    end
  end
  core._sgd_step(p, g, buf, self.lr, self.momentum, self.dampening, self.weight_decay, self.nesterov, first)
end

--- Adam, AdamW ----------------------------------------------------------------

local Adam = setmetatable({}, { __index = Optimizer })
Adam.__index = Adam

local function new_adam(kind, params, opts, default_wd, decoupled)
  opts = opts or {}
  params = check_params(kind, params)
  local self = new_optimizer(kind, params, { "lr", "betas", "eps", "weight_decay" })
  self.lr = number_opt(kind, opts, "lr", 1e-3, 0)
  local betas = opts.betas or { 0.9, 0.999 }
  if type(betas) ~= "table" then error(kind .. ": betas must be a table {beta1, beta2}", 3) end
  self.betas = {
    number_opt(kind, { beta1 = betas[1] }, "beta1", nil, 0, 1),
    number_opt(kind, { beta2 = betas[2] }, "beta2", nil, 0, 1),
  }
  self.eps = number_opt(kind, opts, "eps", 1e-8, 0)
  self.weight_decay = number_opt(kind, opts, "weight_decay", default_wd, 0)
  self.decoupled = decoupled
  return setmetatable(self, Adam)
end

--- optim.Adam(params, {lr = 1e-3, betas = {0.9, 0.999}, eps = 1e-8, weight_decay = 0})
-- weight decay as L2 (g = g + wd p), with bias correction.
function optim.Adam(params, opts) return new_adam("Adam", params, opts, 0, false) end

--- optim.AdamW(params, {lr = 1e-3, betas = {0.9, 0.999}, eps = 1e-8, weight_decay = 1e-2})
-- decoupled weight decay: p = p (1 - lr wd) before the Adam update.
function optim.AdamW(params, opts) return new_adam("AdamW", params, opts, 1e-2, true) end

function Adam:_update(i, p, g)
  local state = self.state[i]
  if not state.exp_avg then
    state.exp_avg, state.exp_avg_sq, state.step = core.zeros_like(p), core.zeros_like(p), 0
  end
  state.step = state.step + 1
  core._adam_step(p, g, state.exp_avg, state.exp_avg_sq, state.step, self.lr, self.betas[1], self.betas[2],
    self.eps, self.weight_decay, self.decoupled)
end

--- Gradient clipping ------------------------------------------------------------

--- optim.clip_grad_norm(params, max_norm) -> the total L2 norm of all the
-- gradients before clipping. When it exceeds max_norm every gradient is
-- scaled in place by max_norm / (norm + 1e-6). A gradient holding NaN or Inf
-- is an error naming the parameter, since clipping can't repair it.
function optim.clip_grad_norm(params, max_norm)
  if type(params) ~= "table" then error("clip_grad_norm: params must be an array of tensors", 2) end
  if type(max_norm) ~= "number" or not (max_norm > 0) then
    error("clip_grad_norm: max_norm must be a positive number, got " .. tostring(max_norm), 2)
  end
  return no_grad(function()
    local grads, sum = {}, 0.0
    for i = 1, #params do
      if not is_tensor(params[i]) then
        error(string.format("clip_grad_norm: params[%d] is a %s, not a tensor", i, type(params[i])), 0)
      end
      local g = params[i].grad
      if g and g:numel() > 0 then
        local amax = g:abs():max():item()
        if amax ~= amax or amax == math.huge then
          error(string.format("clip_grad_norm: the gradient of parameter %d contains NaN or Inf", i), 0)
        end
        local sq = (g * g):sum():item()
        if sq == math.huge then -- finite values whose squares overflow float: scale first
          local s = g / amax
          sq = (s * s):sum():item() * amax * amax
        end
        sum = sum + sq
        grads[#grads + 1] = g
      end
    end
    local total = math.sqrt(sum)
    if total > max_norm then
      local coef = max_norm / (total + 1e-6)
      for _, g in ipairs(grads) do g:mul_(coef) end
    end
    return total
  end)
end

--- Learning-rate schedules: functions step -> lr (steps count from 1) ------

optim.schedule = {}

local function check_number(who, name, v, lo)
  if type(v) ~= "number" or v ~= v or v < lo then
    error(string.format("%s: %s must be a number >= %g, got %s", who, name, lo, tostring(v)), 3)
  end
  return v
end

--- schedule.constant(lr)
function optim.schedule.constant(lr)
  check_number("schedule.constant", "lr", lr, 0)
  return function() return lr end
end

--- schedule.warmup(lr, warmup_steps): lr * step / warmup_steps up to step
-- warmup_steps (lr / warmup_steps at step 1), then lr.
function optim.schedule.warmup(lr, warmup_steps)
  check_number("schedule.warmup", "lr", lr, 0)
  check_number("schedule.warmup", "warmup_steps", warmup_steps, 1)
  return function(step)
    if step >= warmup_steps then return lr end
    return lr * math.max(step, 1) / warmup_steps
  end
end

--- schedule.cosine{lr, total, warmup = 0, min_lr = 0}: the linear warm-up
-- above for `warmup` steps, then min_lr + (lr - min_lr) (1 + cos(pi q)) / 2
-- with q going from 0 after the warm-up to 1 at step `total`; min_lr after it.
function optim.schedule.cosine(opts)
  local who = "schedule.cosine"
  if type(opts) ~= "table" then error(who .. ": expected a table {lr, total, warmup = 0, min_lr = 0}", 2) end
  local lr = check_number(who, "lr", opts.lr or opts[1], 0)
  local total = check_number(who, "total", opts.total or opts[2], 1)
  local warmup = check_number(who, "warmup", opts.warmup or 0, 0)
  local min_lr = check_number(who, "min_lr", opts.min_lr or 0, 0)
  if warmup >= total then
    error(string.format("%s: warmup (%g) must be less than total (%g)", who, warmup, total), 2)
  end
  if min_lr > lr then error(string.format("%s: min_lr (%g) is above lr (%g)", who, min_lr, lr), 2) end
  return function(step)
    if step < warmup then return lr * math.max(step, 1) / warmup end
    local q = math.min(math.max((step - warmup) / (total - warmup), 0), 1)
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * q))
  end
end

--- EMA of model weights -----------------------------------------------------

local EMA = {}
EMA.__index = EMA

-- The model's named parameters as parallel arrays of names and tensors.
local function named_parameters(who, model)
  if type(model) ~= "table" and type(model) ~= "userdata" or not model.named_parameters then
    error(who .. ": the model must have a named_parameters() method", 3)
  end
  local names, tensors = {}, {}
  for i, pair in ipairs(model:named_parameters()) do
    local name, t = pair[1], pair[2]
    if type(name) ~= "string" or not is_tensor(t) then
      error(string.format("%s: named_parameters()[%d] must be a pair {name, tensor}", who, i), 3)
    end
    names[i], tensors[i] = name, t
  end
  return names, tensors
end

--- optim.EMA(model, decay [, {warmup = true}]): shadow copies of the model's
-- parameters. ema:update() moves each shadow toward its parameter:
-- shadow = shadow + (1 - d) (param - shadow), with d = min(decay, (1 + t) / (10 + t))
-- after t updates when warmup is on, else d = decay.
function optim.EMA(model, decay, opts)
  opts = opts or {}
  if type(decay) ~= "number" or not (decay >= 0 and decay <= 1) then
    error("EMA: decay must be a number in [0, 1], got " .. tostring(decay), 2)
  end
  local names, tensors = named_parameters("EMA", model)
  local self = setmetatable({ model = model, decay = decay, num_updates = 0, names = names, shadow = {} }, EMA)
  if opts.warmup == nil then self.warmup = true else self.warmup = opts.warmup and true or false end
  for i, t in ipairs(tensors) do self.shadow[i] = clone(t) end
  return self
end

-- The model's parameters, checked against the shadow's names and shapes.
function EMA:_params(who, model)
  local names, tensors = named_parameters(who, model or self.model)
  if #names ~= #self.names then
    error(string.format("%s: the model has %d parameters, the EMA %d", who, #names, #self.names), 3)
  end
  for i, name in ipairs(names) do
    if name ~= self.names[i] then
      error(string.format("%s: parameter %d is '%s' in the model, '%s' in the EMA", who, i, name, self.names[i]), 3)
    end
    if not same_shape(tensors[i], self.shadow[i]) then
      error(string.format("%s: '%s' has shape %s in the model, %s in the EMA", who, name, shape_string(tensors[i]),
        shape_string(self.shadow[i])), 3)
    end
  end
  return tensors
end

--- ema:current_decay(): the d the next update will use.
function EMA:current_decay()
  if not self.warmup then return self.decay end
  local t = self.num_updates
  return math.min(self.decay, (1 + t) / (10 + t))
end

--- ema:update([model]): one EMA step from the model's current parameters.
function EMA:update(model)
  local tensors = self:_params("EMA:update", model)
  local w = 1 - self:current_decay()
  no_grad(function()
    for i, p in ipairs(tensors) do self.shadow[i]:lerp_(p, w) end
  end)
  self.num_updates = self.num_updates + 1
end

--- ema:copy_to([model]): writes the shadow values into the model's parameters.
function EMA:copy_to(model)
  local tensors = self:_params("EMA:copy_to", model)
  no_grad(function()
    for i, p in ipairs(tensors) do p:copy_(self.shadow[i]) end
  end)
end

--- ema:swap([model]): exchanges model and shadow values in place (to
-- evaluate with the EMA weights; a second swap restores both).
function EMA:swap(model)
  local tensors = self:_params("EMA:swap", model)
  no_grad(function()
    for i, p in ipairs(tensors) do
      local saved = p:clone()
      p:copy_(self.shadow[i])
      self.shadow[i]:copy_(saved)
    end
  end)
end

--- ema:state_dict(): {decay, warmup, num_updates, names, shadow = {[name] = tensor}} (cloned)
function EMA:state_dict()
  local shadow = {}
  for i, name in ipairs(self.names) do shadow[name] = clone(self.shadow[i]) end
  return { decay = self.decay, warmup = self.warmup, num_updates = self.num_updates,
    names = { table.unpack(self.names) }, shadow = shadow }
end

--- ema:load_state_dict(sd): every EMA name must be present with its shape,
-- and no other (all mismatches are listed).
function EMA:load_state_dict(sd)
  local who = "EMA:load_state_dict"
  if type(sd) ~= "table" or type(sd.shadow) ~= "table" then
    error(who .. ": expected a table made by state_dict (with shadow)", 2)
  end
  local problems, known = {}, {}
  for i, name in ipairs(self.names) do
    known[name] = true
    local t = sd.shadow[name]
    if t == nil then
      problems[#problems + 1] = "missing '" .. name .. "'"
    elseif not is_tensor(t) then
      problems[#problems + 1] = string.format("'%s' is a %s, not a tensor", name, type(t))
    elseif not same_shape(t, self.shadow[i]) then
      problems[#problems + 1] = string.format("'%s' has shape %s, expected %s", name, shape_string(t),
        shape_string(self.shadow[i]))
    end
  end
  local extra = {}
  for name in pairs(sd.shadow) do
    if not known[name] then extra[#extra + 1] = "unexpected '" .. tostring(name) .. "'" end
  end
  table.sort(extra)
  for _, e in ipairs(extra) do problems[#problems + 1] = e end
  if #problems > 0 then error(who .. ": " .. table.concat(problems, "; "), 2) end
  if sd.decay ~= nil then self.decay = sd.decay end
  if sd.warmup ~= nil then self.warmup = sd.warmup end
  self.num_updates = sd.num_updates or 0
  for i, name in ipairs(self.names) do self.shadow[i] = clone(sd.shadow[name]) end
end

return optim
