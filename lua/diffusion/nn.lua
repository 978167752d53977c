--- diffusion.nn: modules — objects holding parameters, called like functions.
--
--   local net = nn.Sequential(nn.Conv2d(1, 16, 3, {padding = 1}), nn.SiLU(),
--                             nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16 * 14 * 14, 10))
--   local logits = net(x)                 -- x (N, 1, 28, 28)
--   for _, p in ipairs(net:parameters()) do ... end
--
-- A module keeps its parameters and its child modules in registration
-- order, so named_parameters() gives stable dotted names ("3.weight",
-- "block.conv1.bias") for state_dict() and checkpoints.
local core = require "diffusion.core"
local util = require "diffusion.util"

local nn = {}

local no_grad, shape_string = util.no_grad, util.shape_string

--- Module ------------------------------------------------------------------

local Module = {}
Module.__index = Module
Module.__name = "Module"
nn.Module = Module

-- Instances look methods up in their class; calling an instance runs forward.
local function instance_mt(class)
  return class
end

--- nn.Module:extend(name): a new module class, called as Class(...) to build one.
function Module:extend(name)
  local class = setmetatable({}, { __index = self, __call = function(c, ...) return c.new(...) end })
  class.__index = class
  class.__name = name
  class.__call = function(m, ...) return m:forward(...) end
  class.__tostring = Module.__tostring
  class.new = function(...)
    local m = setmetatable({ _param_names = {}, _params = {}, _child_names = {}, _children = {}, training = true },
                           instance_mt(class))
    m:init(...)
    return m
  end
  return class
end

function Module:init() end

function Module:forward()
  error(self.__name .. ": forward is not defined", 2)
end

--- m:param(name, tensor): registers a parameter (made a leaf that requires grad)
function Module:param(name, t)
  if self._params[name] == nil then self._param_names[#self._param_names + 1] = name end
  t:requires_grad_(true)
  self._params[name] = t
  self[name] = t
  return t
end

--- m:add(name, child): registers a child module
function Module:add(name, child)
  name = tostring(name)
  if self._children[name] == nil then self._child_names[#self._child_names + 1] = name end
  self._children[name] = child
  self[name] = child
  return child
end

local function walk(m, prefix, out)
  for _, name in ipairs(m._param_names) do out[#out + 1] = { prefix .. name, m._params[name] } end
  for _, name in ipairs(m._child_names) do walk(m._children[name], prefix .. name .. ".", out) end
  return out
end

--- m:named_parameters() -> { {"conv1.weight", tensor}, ... } in a stable order
function Module:named_parameters() return walk(self, "", {}) end

--- m:parameters() -> { tensor, ... } in the same order
function Module:parameters()
  local out = {}
  for i, entry in ipairs(self:named_parameters()) do out[i] = entry[2] end
  return out
end

--- m:children() -> { {name, module}, ... }
function Module:children()
  local out = {}
  for i, name in ipairs(self._child_names) do out[i] = { name, self._children[name] } end
  return out
end

function Module:zero_grad()
  for _, p in ipairs(self:parameters()) do p.grad = nil end
end

--- m:train([on]) / m:eval(): sets training mode here and in every child
function Module:train(on)
  if on == nil then on = true end
  self.training = on
  for _, name in ipairs(self._child_names) do self._children[name]:train(on) end
  return self
end

function Module:eval() return self:train(false) end

--- m:state_dict() -> { [name] = tensor } (detached views of the parameters)
function Module:state_dict()
  local sd = {}
  for _, entry in ipairs(self:named_parameters()) do sd[entry[1]] = entry[2]:detach() end
  return sd
end

--- m:load_state_dict(sd [, strict = true]): copies the values in. Missing or
-- unexpected names (when strict) and shape mismatches (always) are one error
-- that lists them all; nothing is copied unless everything fits.
function Module:load_state_dict(sd, strict)
  if strict == nil then strict = true end
  if type(sd) ~= "table" then error("load_state_dict: expected a table of tensors, got " .. type(sd), 2) end
  local problems, known = {}, {}
  for _, entry in ipairs(self:named_parameters()) do
    local name, p = entry[1], entry[2]
    known[name] = true
    local v = sd[name]
    if v == nil then
      if strict then problems[#problems + 1] = "missing " .. name end
    elseif getmetatable(v) ~= getmetatable(p) then
      problems[#problems + 1] = string.format("%s is a %s, not a tensor", name, type(v))
    elseif v:shape() ~= p:shape() then
      problems[#problems + 1] = string.format("%s has shape %s, the model expects %s", name, tostring(v:shape()),
                                              tostring(p:shape()))
    end
  end
  if strict then
    local extra = {}
    for name in pairs(sd) do
      if not known[name] then extra[#extra + 1] = "unexpected " .. tostring(name) end
    end
    table.sort(extra)
    for _, e in ipairs(extra) do problems[#problems + 1] = e end
  end
  if #problems > 10 then -- the first ten say enough; a wrong file would list hundreds
    local more = #problems - 10
    for i = #problems, 11, -1 do problems[i] = nil end
    problems[#problems + 1] = string.format("and %d more", more)
  end
  if #problems > 0 then error("load_state_dict: " .. table.concat(problems, "; "), 2) end
  no_grad(function()
    for _, entry in ipairs(self:named_parameters()) do
      local v = sd[entry[1]]
      if v ~= nil then entry[2]:copy_(v) end
    end
  end)
  return self
end

--- m:num_parameters() -> the number of scalars in all parameters
function Module:num_parameters()
  local n = 0
  for _, p in ipairs(self:parameters()) do n = n + p:numel() end
  return n
end

function Module:extra_repr() return "" end

local function describe(m, indent, name)
  local head = (name and (name .. ": ") or "") .. m.__name
  local extra = m:extra_repr()
  if extra ~= "" then head = head .. "(" .. extra .. ")" end
  local lines = { indent .. head }
  for _, child in ipairs(m:children()) do
    lines[#lines + 1] = describe(child[2], indent .. "  ", child[1])
  end
  return table.concat(lines, "\n")
end

function Module:__tostring()
  return describe(self, "") .. string.format("\n%d parameters", self:num_parameters())
end

--- Initialisation (as PyTorch's defaults) ------------------------------------

-- U(-bound, bound)
local function uniform(shape, bound)
  return core.rand(shape) * (2 * bound) - bound
end

local function size_option(v, name)
  if type(v) == "number" then return { v, v } end
  if type(v) == "table" and #v == 2 then return v end
  error(string.format("%s must be a number or {h, w}, got %s", name, tostring(v)), 3)
end

--- Layers ------------------------------------------------------------------

--- nn.Linear(in, out [, {bias = true, zero_init = false}])
-- Weights U(±1/sqrt(in)) (Kaiming-uniform with a = sqrt 5), bias the same;
-- zero_init starts both at zero (for residual branches and output layers).
local Linear = Module:extend("Linear")
nn.Linear = Linear
function Linear:init(fan_in, fan_out, opts)
  opts = opts or {}
  assert(math.type(fan_in) == "integer" and fan_in > 0, "Linear: in_features must be a positive integer")
  assert(math.type(fan_out) == "integer" and fan_out > 0, "Linear: out_features must be a positive integer")
  self.in_features, self.out_features = fan_in, fan_out
  local bound = 1 / math.sqrt(fan_in)
  self:param("weight", opts.zero_init and core.zeros(fan_out, fan_in) or uniform({ fan_out, fan_in }, bound))
  if opts.bias ~= false then
    self:param("bias", opts.zero_init and core.zeros(fan_out) or uniform({ fan_out }, bound))
  end
end
function Linear:forward(x) return core.linear(x, self.weight, self.bias) end
function Linear:extra_repr()
  return string.format("%d -> %d%s", self.in_features, self.out_features, self.bias and "" or ", no bias")
end

--- nn.Conv2d(in, out, kernel [, {stride, padding, dilation, groups, bias = true, zero_init}])
local Conv2d = Module:extend("Conv2d")
nn.Conv2d = Conv2d
function Conv2d:init(cin, cout, kernel, opts)
  opts = opts or {}
  local k = size_option(kernel, "Conv2d kernel")
  local groups = opts.groups or 1
  if cin % groups ~= 0 or cout % groups ~= 0 then
    error(string.format("Conv2d: channels %d -> %d are not divisible by groups %d", cin, cout, groups), 3)
  end
  self.in_channels, self.out_channels, self.kernel = cin, cout, k
  self.opts = { stride = opts.stride or 1, padding = opts.padding or 0, dilation = opts.dilation or 1, groups = groups }
  local fan_in = cin // groups * k[1] * k[2]
  local bound = 1 / math.sqrt(fan_in)
  local shape = { cout, cin // groups, k[1], k[2] }
  self:param("weight", opts.zero_init and core.zeros(shape) or uniform(shape, bound))
  if opts.bias ~= false then
    self:param("bias", opts.zero_init and core.zeros(cout) or uniform({ cout }, bound))
  end
end
function Conv2d:forward(x) return core.conv2d(x, self.weight, self.bias, self.opts) end
function Conv2d:extra_repr()
  local o = self.opts
  return string.format("%d -> %d, %dx%d, stride %s, padding %s%s", self.in_channels, self.out_channels,
    self.kernel[1], self.kernel[2], tostring(type(o.stride) == "table" and table.concat(o.stride, "x") or o.stride),
    tostring(type(o.padding) == "table" and table.concat(o.padding, "x") or o.padding),
    o.groups > 1 and (", groups " .. o.groups) or "")
end

--- nn.GroupNorm(groups, channels [, {eps = 1e-5, affine = true}])
local GroupNorm = Module:extend("GroupNorm")
nn.GroupNorm = GroupNorm
function GroupNorm:init(groups, channels, opts)
  opts = opts or {}
  if channels % groups ~= 0 then
    error(string.format("GroupNorm: %d channels are not divisible by %d groups", channels, groups), 3)
  end
  self.groups, self.channels, self.eps = groups, channels, opts.eps or 1e-5
  if opts.affine ~= false then
    self:param("weight", core.ones(channels))
    self:param("bias", core.zeros(channels))
  end
end
function GroupNorm:forward(x) return core.group_norm(x, self.groups, self.weight, self.bias, self.eps) end
function GroupNorm:extra_repr() return string.format("%d groups, %d channels", self.groups, self.channels) end

--- nn.LayerNorm(shape [, {eps = 1e-5, affine = true}]): shape a number or a table of trailing dims
local LayerNorm = Module:extend("LayerNorm")
nn.LayerNorm = LayerNorm
function LayerNorm:init(shape, opts)
  opts = opts or {}
  self.shape = type(shape) == "number" and { shape } or shape
  self.eps = opts.eps or 1e-5
  if opts.affine ~= false then
    self:param("weight", core.ones(self.shape))
    self:param("bias", core.zeros(self.shape))
  end
end
function LayerNorm:forward(x) return core.layer_norm(x, self.shape, self.weight, self.bias, self.eps) end
function LayerNorm:extra_repr() return shape_string(self.shape) end

--- Activations, shape changes, pooling (no parameters)
local function simple(name, fn)
  local class = Module:extend(name)
  class.forward = function(_, x) return fn(x) end
  nn[name] = class
  return class
end
simple("SiLU", core.silu)
simple("ReLU", core.relu)
simple("GELU", core.gelu)
simple("Tanh", core.tanh)
simple("Sigmoid", core.sigmoid)
simple("Identity", function(x) return x end)

--- nn.Flatten(): (N, ...) -> (N, prod(...))
local Flatten = Module:extend("Flatten")
nn.Flatten = Flatten
function Flatten:forward(x) return x:reshape(x:size(1), -1) end

--- nn.Dropout(p): active in training mode only
local Dropout = Module:extend("Dropout")
nn.Dropout = Dropout
function Dropout:init(p)
  p = p or 0.5
  if type(p) ~= "number" or p < 0 or p >= 1 then error("Dropout: p must be in [0, 1), got " .. tostring(p), 3) end
  self.p = p
end
function Dropout:forward(x) return core.dropout(x, self.p, self.training) end
function Dropout:extra_repr() return string.format("p = %g", self.p) end

--- nn.Upsample(scale): nearest-neighbour
local Upsample = Module:extend("Upsample")
nn.Upsample = Upsample
function Upsample:init(scale) self.scale = scale or 2 end
function Upsample:forward(x) return core.upsample_nearest2d(x, self.scale) end
function Upsample:extra_repr() return "scale " .. tostring(self.scale) end

--- nn.AvgPool2d(kernel [, stride [, padding]])
local AvgPool2d = Module:extend("AvgPool2d")
nn.AvgPool2d = AvgPool2d
function AvgPool2d:init(kernel, stride, padding)
  self.kernel, self.stride, self.padding = kernel, stride or kernel, padding or 0
end
function AvgPool2d:forward(x) return core.avg_pool2d(x, self.kernel, self.stride, self.padding) end
function AvgPool2d:extra_repr() return "kernel " .. tostring(self.kernel) end

--- nn.Embedding(num, dim): rows of a (num, dim) table, by 1-based index; weights N(0, 1)
local Embedding = Module:extend("Embedding")
nn.Embedding = Embedding
function Embedding:init(num, dim, opts)
  opts = opts or {}
  self.num, self.dim = num, dim
  self:param("weight", opts.zero_init and core.zeros(num, dim) or core.randn(num, dim))
end
function Embedding:forward(idx) return core.embedding(idx, self.weight) end
function Embedding:extra_repr() return string.format("%d x %d", self.num, self.dim) end

--- nn.Sequential(m1, m2, ...): children named "1", "2", ...
local Sequential = Module:extend("Sequential")
nn.Sequential = Sequential
function Sequential:init(...)
  for i, m in ipairs({ ... }) do self:add(tostring(i), m) end
end
function Sequential:forward(x)
  for _, name in ipairs(self._child_names) do x = self._children[name](x) end
  return x
end
function Sequential:__len() return #self._child_names end

--- nn.MultiheadAttention(dim, heads [, {context_dim = dim, bias = true}])
-- m(x [, context [, mask]]): x (B, N, dim); context (B, M, context_dim) for
-- cross-attention (default x itself); mask broadcastable to (B, heads, N, M),
-- nonzero = may attend. Returns (B, N, dim).
local MultiheadAttention = Module:extend("MultiheadAttention")
nn.MultiheadAttention = MultiheadAttention
function MultiheadAttention:init(dim, heads, opts)
  opts = opts or {}
  heads = heads or 1
  if dim % heads ~= 0 then error(string.format("MultiheadAttention: dim %d is not divisible by %d heads", dim, heads), 3) end
  self.dim, self.heads = dim, heads
  local cdim = opts.context_dim or dim
  self:add("q", Linear(dim, dim, { bias = opts.bias }))
  self:add("k", Linear(cdim, dim, { bias = opts.bias }))
  self:add("v", Linear(cdim, dim, { bias = opts.bias }))
  self:add("out", Linear(dim, dim, { bias = opts.bias }))
end
function MultiheadAttention:forward(x, context, mask)
  context = context or x
  local b, n, m, h = x:size(1), x:size(2), context:size(2), self.heads
  local d = self.dim // h
  local function heads(t, len) return t:view(b, len, h, d):permute(1, 3, 2, 4) end -- (B, H, len, d)
  local q, k, v = heads(self.q(x), n), heads(self.k(context), m), heads(self.v(context), m)
  local y = core.scaled_dot_product_attention(q, k, v, mask)
  return self.out(y:permute(1, 3, 2, 4):reshape(b, n, self.dim))
end
function MultiheadAttention:extra_repr() return string.format("dim %d, %d heads", self.dim, self.heads) end

--- Losses, under the names the training loops use
nn.mse = function(...) return core.mse_loss(...) end
nn.l1 = function(...) return core.l1_loss(...) end
nn.bce_with_logits = function(...) return core.bce_with_logits(...) end
nn.cross_entropy = function(...) return core.cross_entropy(...) end

return nn
