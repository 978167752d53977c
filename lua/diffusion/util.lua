--- diffusion.util: small helpers shared by the Lua modules of diffusion
-- (init, nn, optim, gradcheck, sample). Not part of the public API, except
-- no_grad, which init.lua exports as D.no_grad.
local core = require "diffusion.core"

local util = {}

local Tensor_mt = core._Tensor_mt

--- util.is_tensor(v) -> whether v is a diffusion tensor.
function util.is_tensor(v)
  return type(v) == "userdata" and getmetatable(v) == Tensor_mt
end

--- util.shape_string(shape) -> "{2,3}" for the shape {2, 3}; a tensor may be
-- given for its shape. The empty shape of a 0-d tensor is "{}".
function util.shape_string(shape)
  if util.is_tensor(shape) then shape = shape:shape() end
  return "{" .. table.concat(shape, ",") .. "}"
end

--- util.no_grad(fn, ...): runs fn(...) without recording the autograd graph
-- (no activations are kept for a backward), and returns what fn returns.
-- The previous mode is restored even when fn raises; the error is passed on
-- unchanged.
function util.no_grad(fn, ...)
  local previous = core.set_grad_enabled(false)
  local result = table.pack(pcall(fn, ...))
  core.set_grad_enabled(previous)
  if not result[1] then error(result[2], 0) end
  return table.unpack(result, 2, result.n)
end

return util
