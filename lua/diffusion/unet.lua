--- diffusion.unet: the denoising U-Net (built and run in C) as an nn.Module.
--
--   local model = D.UNet{in_channels = 1, channels = 32, mult = {1, 2, 2}, res_blocks = 2,
--                        attention = {8}, groups = 8, dropout = 0.1, num_classes = 10}
--   local eps = model(x_t, t, y)       -- x_t (N, 1, 32, 32), t (N) timesteps, y (N) labels 1..10 or nil
--
-- With num_classes = K, label K + 1 is the "null" class used for
-- classifier-free guidance. Parameter names follow the reference PyTorch
-- model's state_dict ("down.0.0.conv1.weight").
local core = require "diffusion.core"
local nn = require "diffusion.nn"

local UNet = nn.Module:extend("UNet")

local DEFAULTS = {
  in_channels = 1, channels = 64, mult = { 1, 2, 2 }, res_blocks = 2, attention = { 8 },
  heads = 1, groups = 32, dropout = 0.1, num_classes = 0, image_size = 32,
}

function UNet:init(config, generator)
  config = config or {}
  if type(config) ~= "table" then error("UNet: expected a config table, got " .. type(config), 3) end
  for key in pairs(config) do
    if DEFAULTS[key] == nil and key ~= "out_channels" then error("UNet: unknown config field '" .. tostring(key) .. "'", 3) end
  end
  self._net = core.unet_new(config, generator)
  self.config = core.unet_config(self._net)
  for _, entry in ipairs(core.unet_params(self._net)) do self:param(entry[1], entry[2]) end
end

--- model(x, t [, y]): t a number or an (N) tensor of timesteps; y an (N)
-- tensor or a number of 1-based class labels (num_classes + 1 = null).
function UNet:forward(x, t, y)
  local n = x:size(1)
  if type(t) == "number" then t = core.full({ n }, t) end
  if type(y) == "number" then y = core.full({ n }, y) end
  if y and self.config.num_classes == 0 then error("UNet: class labels given to an unconditional model", 2) end
  if y then
    local lo, hi = y:min():item(), y:max():item()
    if lo < 1 or hi > self.config.num_classes + 1 then
      error(string.format("UNet: class labels must be in 1..%d (%d = null), got %g..%g",
        self.config.num_classes + 1, self.config.num_classes + 1, lo, hi), 2)
    end
  end
  -- dropout draws from model.generator when set (the trainer's, so a resumed run repeats it)
  return core.unet_forward(self._net, x, t, y, self.training, self.generator)
end

function UNet:extra_repr()
  local c = self.config
  return string.format("in %d, C %d, mult {%s}, %d res blocks, attention at {%s}, %d groups, %d heads, dropout %g%s",
    c.in_channels, c.channels, table.concat(c.mult, ","), c.res_blocks, table.concat(c.attention, ","), c.groups,
    c.heads, c.dropout, c.num_classes > 0 and (", " .. c.num_classes .. " classes") or "")
end

return UNet
