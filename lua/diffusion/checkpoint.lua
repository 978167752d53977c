--- diffusion.checkpoint: a nested Lua table of tensors, numbers, strings and
-- booleans as one safetensors file, and back.
--
--   D.checkpoint.save("run.safetensors", {config = model.config, model = model:state_dict(),
--                                          optim = opt:state_dict(), step = 1200})
--   local ck = D.checkpoint.load("run.safetensors")   -- the same nesting
--
-- Tensors become safetensors entries named by their path, "/" between levels
-- ("model/conv_in.weight", "optim/state/#3/m"; "#" marks integer keys); everything else goes into the header's metadata as
-- typed strings ("n:0.0002", "s:cosine", "b:true"), so PyTorch or NumPy can
-- open the file and read the weights, and numbers round-trip exactly. The
-- write is atomic: a failed save leaves the previous file as it was.
local core = require "diffusion.core"
local util = require "diffusion.util"

local checkpoint = {}

local FORMAT = "diffusion-checkpoint-1"

local is_tensor = util.is_tensor

-- Non-finite numbers by name: "%.17g" would write "inf", which tonumber can't read back.
local NONFINITE = { [math.huge] = "inf", [-math.huge] = "-inf" }
local FROM_NAME = { inf = math.huge, ["-inf"] = -math.huge, nan = 0 / 0 }

local function key_string(k, path)
  if math.type(k) == "integer" then return "#" .. k end
  if type(k) ~= "string" or k == "" or k:sub(1, 1) == "#" or k:find("/", 1, true) then
    error(string.format("checkpoint.save: key %s at %s can't be stored (use integers, or non-empty strings without '/' that don't start with '#')",
      tostring(k), path ~= "" and path or "the top"), 4)
  end
  return k
end

local function flatten(value, path, tensors, meta, seen)
  if is_tensor(value) then
    tensors[path] = value
  elseif type(value) == "number" then
    meta[path] = "n:" .. (math.type(value) == "integer" and tostring(value) or NONFINITE[value] or value ~= value and "nan"
      or string.format("%.17g", value))
  elseif type(value) == "string" then
    meta[path] = "s:" .. value
  elseif type(value) == "boolean" then
    meta[path] = "b:" .. tostring(value)
  elseif type(value) == "table" then
    if seen[value] then error("checkpoint.save: the table at " .. path .. " contains itself", 3) end
    seen[value] = true
    local empty = true
    for k, v in pairs(value) do
      empty = false
      local key = key_string(k, path)
      flatten(v, path == "" and key or (path .. "/" .. key), tensors, meta, seen)
    end
    if empty and path ~= "" then meta[path] = "t:" end
    seen[value] = nil
  else
    error(string.format("checkpoint.save: %s at %s can't be stored", type(value), path), 3)
  end
end

--- checkpoint.save(path, tbl): tbl nests tables of tensors, numbers, strings, booleans
function checkpoint.save(path, tbl)
  if type(path) ~= "string" then error("checkpoint.save: expected a path, got " .. type(path), 2) end
  if type(tbl) ~= "table" then error("checkpoint.save: expected a table, got " .. type(tbl), 2) end
  local tensors, meta = {}, {}
  flatten(tbl, "", tensors, meta, {})
  for name in pairs(meta) do
    if tensors[name] then error("checkpoint.save: " .. name .. " is both a tensor and a value", 2) end
  end
  meta.__format = FORMAT
  core.save_safetensors(path, tensors, meta)
  return true
end

local function decode(text, name, path)
  local kind, body = text:match("^(%a):(.*)$")
  if kind == "n" and FROM_NAME[body] then
    return FROM_NAME[body]
  elseif kind == "n" and tonumber(body) then
    return math.tointeger(tonumber(body)) or tonumber(body)
  elseif kind == "s" then
    return body
  elseif kind == "b" and (body == "true" or body == "false") then
    return body == "true"
  elseif kind == "t" and body == "" then
    return {}
  end
  error(string.format("checkpoint.load: %s: metadata %s holds an invalid value %q", path, name, text), 3)
end

-- Puts value at the "/"-separated name inside root.
local function insert(root, name, value, path)
  local node, parts = root, {}
  for part in (name .. "/"):gmatch("([^/]*)/") do parts[#parts + 1] = part end
  for i, part in ipairs(parts) do
    local key = part:match("^#(%-?%d+)$")
    key = key and math.tointeger(tonumber(key)) or part
    if key == "" then error(string.format("checkpoint.load: %s: bad entry name %q", path, name), 3) end
    if i == #parts then
      if node[key] ~= nil then error(string.format("checkpoint.load: %s: entry %q given twice", path, name), 3) end
      node[key] = value
    else
      if node[key] == nil then node[key] = {} end
      if type(node[key]) ~= "table" or is_tensor(node[key]) then
        error(string.format("checkpoint.load: %s: entry %q is inside a value", path, name), 3)
      end
      node = node[key]
    end
  end
end

--- checkpoint.load(path) -> tbl, or nil and a message when the file can't be opened
function checkpoint.load(path)
  local tensors, meta = core.load_safetensors(path)
  if not tensors then return nil, meta end
  if meta.__format ~= FORMAT then
    error(string.format("checkpoint.load: %s is not a diffusion checkpoint (format %s); "
      .. "D.load_safetensors reads any safetensors file", path, tostring(meta.__format)), 2)
  end
  -- entries in name order, so a malformed file always gets the same error
  local names = {}
  for name in pairs(tensors) do names[#names + 1] = name end
  for name in pairs(meta) do
    if name ~= "__format" then names[#names + 1] = name end
  end
  table.sort(names)
  local root = {}
  for _, name in ipairs(names) do
    local t = tensors[name]
    insert(root, name, t ~= nil and t or decode(meta[name], name, path), path)
  end
  return root
end

return checkpoint
