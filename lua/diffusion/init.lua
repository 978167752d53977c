--- diffusion: tensors, and (in later modules) the pieces of a diffusion model.
-- The C core (`diffusion.core`) does the work; this file adds what is easier
-- to say in Lua: printing tensors and the module table users require.
local core = require "diffusion.core"
local util = require "diffusion.util"

local D = {}
for name, value in pairs(core) do
  if name:sub(1, 1) ~= "_" then D[name] = value end
end

local Tensor = core.Tensor -- the methods table shared by all tensors
local mt = core._Tensor_mt

--- Formatting -------------------------------------------------------------

local EDGE = 3         -- items shown at each end of an abbreviated dim
local SUMMARIZE = 1000 -- tensors with more elements are abbreviated

local shape_string = util.shape_string

-- Picks one number format for all shown values, as PyTorch does.
local function number_format(values)
  local all_int, max_abs, min_abs = true, 0, math.huge
  for _, v in ipairs(values) do
    if v ~= v or v == math.huge or v == -math.huge then
      -- not finite: formatted by name
    else
      if v ~= math.floor(v) then all_int = false end
      local a = math.abs(v)
      if a > max_abs then max_abs = a end
      if a > 0 and a < min_abs then min_abs = a end
    end
  end
  if all_int and max_abs < 1e8 then return "%.0f" end
  if max_abs >= 1e5 or (min_abs < 1e-4 and min_abs ~= math.huge) then return "%.4e" end
  return "%.4f"
end

local function format_value(fmt, v)
  if v ~= v then return "nan" end
  if v == math.huge then return "inf" end
  if v == -math.huge then return "-inf" end
  local s = string.format(fmt, v)
  if s == "-0" then s = "0" end
  return s
end

-- Positions shown along a dim of size n: all, or the first and last EDGE.
local function shown(n, abbreviate)
  local idx = {}
  if abbreviate and n > 2 * EDGE then
    for i = 1, EDGE do idx[#idx + 1] = i end
    idx[#idx + 1] = false -- the "..." marker
    for i = n - EDGE + 1, n do idx[#idx + 1] = i end
  else
    for i = 1, n do idx[#idx + 1] = i end
  end
  return idx
end

-- Collects the numbers that will be printed (to choose a format and width).
local function collect(x, abbreviate, out)
  if x:dim() == 0 then out[#out + 1] = x:item(); return out end
  if x:dim() == 1 then
    for _, i in ipairs(shown(x:size(1), abbreviate)) do
      if i then out[#out + 1] = x[i] end
    end
    return out
  end
  for _, i in ipairs(shown(x:size(1), abbreviate)) do
    if i then collect(x[i], abbreviate, out) end
  end
  return out
end

local function render(x, abbreviate, fmt, width, indent)
  if x:dim() == 1 then
    local parts = {}
    for _, i in ipairs(shown(x:size(1), abbreviate)) do
      parts[#parts + 1] = i and string.format("%" .. width .. "s", format_value(fmt, x[i])) or "..."
    end
    return "[" .. table.concat(parts, ", ") .. "]"
  end
  local rows = {}
  for _, i in ipairs(shown(x:size(1), abbreviate)) do
    rows[#rows + 1] = i and render(x[i], abbreviate, fmt, width, indent .. " ") or "..."
  end
  local sep = "," .. string.rep("\n", x:dim() - 1) .. indent .. " "
  return "[" .. table.concat(rows, sep) .. "]"
end

--- tostring(x): the values (abbreviated beyond 1000 elements) and the shape.
function mt.__tostring(x)
  local shape = x:shape()
  if x:numel() == 0 then return "tensor([], shape=" .. shape_string(shape) .. ")" end
  local abbreviate = x:numel() > SUMMARIZE
  local values = collect(x, abbreviate, {})
  local fmt, width = number_format(values), 0
  for _, v in ipairs(values) do width = math.max(width, #format_value(fmt, v)) end
  local body = x:dim() == 0 and format_value(fmt, x:item()) or render(x, abbreviate, fmt, width, "       ")
  return "tensor(" .. body .. ", shape=" .. shape_string(shape) .. ")"
end

Tensor.tostring = mt.__tostring
D.tostring = mt.__tostring

--- Autograd ---------------------------------------------------------------

--- D.no_grad(fn, ...): runs fn(...) without recording the autograd graph
-- (no activations are kept for a backward), and returns what fn returns.
-- The previous mode is restored even when fn raises.
D.no_grad = util.no_grad

D.gradcheck = require "diffusion.gradcheck"
D.nn = require "diffusion.nn"
D.data = require "diffusion.data"
D.progress = require "diffusion.progress"
D.optim = require "diffusion.optim"
D.EMA = D.optim.EMA
D.image = require "diffusion.image"
D.UNet = require "diffusion.unet"
D.schedule = require "diffusion.schedule"
D.plot = require "diffusion.plot"
D.sample = require "diffusion.sample"
D.checkpoint = require "diffusion.checkpoint"
D.train = require "diffusion.train"
D.models = require "diffusion.models"
D._debug_corrupt_backward = core._debug_corrupt_backward -- test hook for the checker itself
D._debug = core._debug -- test hooks: allocation failures (csrc/binding/lua_debug.c)

D.version = "scm"

return D
