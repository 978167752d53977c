-- misuse_driver.lua — calls random public API functions with random
-- arguments, for spec/api_misuse_spec.lua, which runs it in a child process
-- whose working directory is a scratch directory (so a random string taken
-- as a path can only write there) and checks how the process ended.
--   lua5.4 misuse_driver.lua SEED CALLS TRACE_FILE SUMMARY_FILE
-- Each call runs under pcall: it may succeed or raise a Lua error, nothing
-- else. Before each call its description goes to TRACE_FILE (flushed), so a
-- crash names the call that caused it; at the end SUMMARY_FILE gets
-- "calls ok errors" and the process checks it is still healthy.
local D = require "diffusion"

local seed, ncalls, trace_path, summary_path = tonumber(arg[1]), tonumber(arg[2]), arg[3], arg[4]
assert(seed and ncalls and trace_path and summary_path, "usage: misuse_driver.lua SEED CALLS TRACE SUMMARY")
math.randomseed(seed)
D.manual_seed(seed)
local trace = assert(io.open(trace_path, "w"))

local function pick(list) return list[math.random(#list)] end

--- the API surface: every function reachable from D, and the methods of live objects -----------------

-- Functions that are slow by design or would make the run depend on the
-- machine, never misuse-relevant: a benchmark, the real dataset loader (60000
-- images), the progress bar (prints).
local SKIP = {
  ["D.raw_sgemm_gflops"] = true, ["D.data.fashion_mnist"] = true, ["D.progress"] = true,
  ["D.cli"] = true,
}

local function callable(v)
  if type(v) == "function" then return true end
  local mt = getmetatable(v)
  return type(mt) == "table" and mt.__call ~= nil
end

local functions = {} -- { name, fn }
local function collect(prefix, t, depth, seen)
  if seen[t] or depth > 3 then return end
  seen[t] = true
  local keys = {}
  for k in pairs(t) do if type(k) == "string" then keys[#keys + 1] = k end end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local v, name = t[k], prefix .. "." .. k
    if k:sub(1, 1) ~= "_" and not SKIP[name] then
      if callable(v) then functions[#functions + 1] = { name, v } end
      if type(v) == "table" and k ~= "Tensor" then collect(name, v, depth + 1, seen) end
    end
  end
end
collect("D", D, 0, {})

-- Method names of an object, following __index tables up the class chain.
local function methods_of(obj)
  local names, seen, t = {}, {}, getmetatable(obj)
  for _ = 1, 6 do
    if type(t) ~= "table" then break end
    local index = rawget(t, "__index")
    if type(index) ~= "table" or seen[index] then break end
    seen[index] = true
    for k, v in pairs(index) do
      if type(k) == "string" and type(v) == "function" and k:sub(1, 1) ~= "_" then names[#names + 1] = k end
    end
    t = getmetatable(index)
  end
  table.sort(names)
  return names
end

local tensor_methods = {}
for k, v in pairs(D.Tensor) do
  if type(v) == "function" and k:sub(1, 1) ~= "_" then tensor_methods[#tensor_methods + 1] = k end
end
table.sort(tensor_methods)

--- random values ----------------------------------------------------------------------------------------

-- Small sizes, and extremes that must be refused. No mid-sized ones: four of
-- them in a shape would make a legitimate tensor of many gigabytes.
local NUMBERS = {
  0, 1, 2, 3, 4, -1, -2, 0.5, -0.5, 1e-300, 0 / 0, math.huge, -math.huge, math.maxinteger, math.mininteger,
  2.0 ^ 53, 2.0 ^ 62, 1e300, -1e300, -0.0, 7, 1e-8, 2.5,
}
local STRINGS = {
  "", "a", "mean", "sum", "none", "cosine", "linear", "sigmoid", "epsilon", "v", "x0", "[-1,1]", "[0,255]",
  "\0", "a\0b", string.rep("x", 300), "ddim", "nan", "1", "-1", "/nonexistent/dir/file", ".", "..", "junk.bin",
  "out.png", "ck.safetensors", "\255\254", "model/conv.weight", "#3", "train",
}
local function small_int() return math.random(0, 4) end

local function random_shape()
  local shape = {}
  for i = 1, math.random(0, 4) do shape[i] = math.random(0, 4) end
  return shape
end

local function random_tensor()
  local shape = random_shape()
  local ok, t = pcall(D.randn, shape)
  if not ok then return D.zeros(1) end
  local r = math.random()
  local ok2, changed = pcall(function()
    if r < 0.1 then return t:fill_(pick(NUMBERS)) end
    if r < 0.2 then return t:transpose(1, 2) end -- not contiguous
    if r < 0.25 then return t:narrow(t:dim(), 1, 1):expand(shape) end -- expanded: elements shared
    return t
  end)
  if ok2 then t = changed end
  if math.random() < 0.2 then t = t:clone():requires_grad_() end
  return t
end

-- Live objects of each kind, made once (fresh tensors are made per call).
local objects = {}
local function try(fn) local ok, v = pcall(fn); if ok then return v end end
objects.unet = try(function()
  return D.UNet{ channels = 8, groups = 4, mult = { 1, 2 }, res_blocks = 1, attention = { 4 }, image_size = 8,
                 num_classes = 3 }
end)
objects.linear = try(function() return D.nn.Linear(3, 4) end)
objects.conv = try(function() return D.nn.Conv2d(2, 4, 3, { padding = 1 }) end)
objects.norm = try(function() return D.nn.GroupNorm(2, 4) end)
objects.seq = try(function() return D.nn.Sequential(D.nn.Linear(3, 3), D.nn.SiLU(), D.nn.Linear(3, 2)) end)
objects.attn = try(function() return D.nn.MultiheadAttention(4, 2) end)
objects.embed = try(function() return D.nn.Embedding(5, 3) end)
objects.sched = try(function() return D.schedule.cosine{ T = 20 } end)
objects.gen = D.Generator(3)
objects.adamw = objects.linear and try(function() return D.optim.AdamW(objects.linear:parameters()) end)
objects.sgd = objects.linear and try(function() return D.optim.SGD(objects.linear:parameters(), { lr = 0.1 }) end)
objects.ema = objects.linear and try(function() return D.EMA(objects.linear, 0.9) end)
objects.dataset = try(function() return D.data.Dataset{ images = D.rand(6, 1, 8, 8), labels = D.tensor{ 1, 2, 3, 1, 2, 3 } } end)
local object_names = {}
for k in pairs(objects) do object_names[#object_names + 1] = k end
table.sort(object_names)

local OPTION_KEYS = {
  "n", "steps", "shape", "seed", "eta", "guidance", "size", "channels", "range", "T", "lr", "batch", "dim", "padding",
  "stride", "groups", "y", "null_class", "prediction", "nrow", "pad", "max_pixels", "beta_start", "beta_end", "s",
  "weight_decay", "momentum", "eps", "keepdim", "generator", "dropout", "clip", "model", "schedule", "data",
}

local random_value

local function random_table(depth)
  local r = math.random(8)
  if r == 1 then return {} end
  if r == 2 then return random_shape() end
  if r == 3 then return { { 1, 2 }, { 3 } } end -- ragged
  if r == 4 then
    local t = {}
    t.self = t
    return t
  end
  if r == 5 then
    local t = {}
    for i = 1, math.random(1, 3) do t[i] = random_tensor() end
    return t
  end
  local t = {}
  for _ = 1, math.random(0, 3) do t[pick(OPTION_KEYS)] = random_value(depth + 1) end
  if r == 6 then t.n, t.steps, t.shape = 1, 2, { 1, 8, 8 } end
  return t
end

function random_value(depth)
  depth = depth or 0
  local r = math.random(100)
  if r <= 8 then return nil end
  if r <= 12 then return math.random() < 0.5 end
  if r <= 35 then return math.random() < 0.5 and small_int() or pick(NUMBERS) end
  if r <= 47 then return pick(STRINGS) end
  if r <= 57 then return depth < 2 and random_table(depth) or {} end
  if r <= 85 then return random_tensor() end
  if r <= 88 then return pick{ function() return 1 end, function() error("boom") end, function(...) return ... end } end
  if r <= 89 then return coroutine.create(function() end) end
  return objects[pick(object_names)]
end

local function describe_value(v)
  if type(v) == "userdata" and getmetatable(v) == getmetatable(D.zeros(1)) then
    return "tensor{" .. table.concat(v:shape(), ",") .. "}"
  end
  if type(v) == "string" then return string.format("%q", #v > 20 and v:sub(1, 20) .. "..." or v) end
  if type(v) == "number" then return string.format("%.17g", v) end
  return type(v)
end

--- the calls -----------------------------------------------------------------------------------------------

local ok_count, err_count = 0, 0

local function run(i, label, fn, args)
  local shown = {}
  for k = 1, args.n do shown[k] = describe_value(args[k]) end
  trace:write(string.format("%d %s(%s)\n", i, label, table.concat(shown, ", ")))
  trace:flush()
  local ok, err = pcall(fn, table.unpack(args, 1, args.n))
  if ok then ok_count = ok_count + 1 else err_count = err_count + 1 end
  if not ok and err == nil then error(label .. " raised nil") end
end

for i = 1, ncalls do
  local args = { n = math.random(0, 4) }
  for k = 1, args.n do args[k] = random_value() end
  local r = math.random(10)
  if r <= 4 then -- a module-level function
    local entry = pick(functions)
    run(i, entry[1], entry[2], args)
  elseif r <= 8 then -- a tensor method on a tensor
    local name = pick(tensor_methods)
    local self = random_tensor()
    table.insert(args, 1, self)
    args.n = args.n + 1
    run(i, "x:" .. name, D.Tensor[name], args)
  else -- a method of a live object (or calling the object itself)
    local oname = pick(object_names)
    local obj = objects[oname]
    local names = methods_of(obj)
    if #names == 0 or math.random(4) == 1 then
      if callable(obj) then run(i, oname .. "()", obj, args) end
    else
      local name = pick(names)
      table.insert(args, 1, obj)
      args.n = args.n + 1
      run(i, oname .. ":" .. name, function(...) return obj[name](...) end, args)
    end
  end
  if i % 200 == 0 then collectgarbage() end
end

-- still healthy: ordinary work gives the right answers
D.set_grad_enabled(true)
assert(D.ones(2, 3):sum():item() == 6)
local x = D.tensor{ 1, 2, 3 }:requires_grad_()
local y = (x * x):sum()
y:backward()
assert(x.grad[3] == 6)
local fresh = D.UNet{ channels = 8, groups = 4, mult = { 1 }, res_blocks = 1, attention = {}, image_size = 8 }
assert(fresh(D.randn(1, 1, 8, 8), 3):size(4) == 8)
trace:close()
local s = assert(io.open(summary_path, "w"))
s:write(string.format("%d %d %d %d\n", ncalls, ok_count, err_count, #functions))
s:close()
