--- diffusion.models: model definitions that scripts share.
local nn = require "diffusion.nn"

local models = {}

--- The Fashion-MNIST classifier of examples/classify_fashion.lua: 28x28 ->
-- 14x14 -> 7x7 by conv + GroupNorm + SiLU + average pooling, then a linear
-- layer to 10 classes (87 434 parameters).
function models.fashion_classifier()
  return nn.Sequential(
    nn.Conv2d(1, 32, 3, { padding = 1 }), nn.GroupNorm(8, 32), nn.SiLU(), nn.AvgPool2d(2),
    nn.Conv2d(32, 64, 3, { padding = 1 }), nn.GroupNorm(8, 64), nn.SiLU(), nn.AvgPool2d(2),
    nn.Conv2d(64, 64, 3, { padding = 1 }), nn.GroupNorm(8, 64), nn.SiLU(),
    nn.Flatten(), nn.Linear(64 * 7 * 7, 10))
end

return models
