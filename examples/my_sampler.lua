-- my_sampler.lua: write your own sampler in ten lines, on the library's denoiser.
--
--   lua5.4 examples/my_sampler.lua [--ckpt examples/models/fashion-unet.safetensors]
--                                  [--out my_sampler.png] [--steps 20] [--guidance 3] [--seed 1]
--
-- D.sample.denoiser wraps the model whatever it was trained to predict
-- (epsilon, x0 or v), with classifier-free guidance, into
--   den(x, sigma) -> x0, eps      for a noisy x = x0 + sigma eps
-- (the model sees x / sqrt(1 + sigma^2) at the timestep of that sigma). A
-- sampler is then a loop over descending noise levels that ends at sigma = 0.
-- Trains nothing: it loads the shipped model and writes a grid, one row per class.
local D = require "diffusion"
local cli = require "diffusion.cli"
local argparse = require "argparse"

local p = argparse("my_sampler.lua", "A plain Euler sampler, written here, on the shipped model.")
p:option("--ckpt", "The model file.", "examples/models/fashion-unet.safetensors")
p:option("--out", "The grid (PNG).", "my_sampler.png")
p:option("--steps", "Steps.", "20"):convert(math.tointeger)
p:option("--guidance", "Classifier-free guidance scale.", "3"):convert(tonumber)
p:option("--seed", "Seed of the noise.", "1"):convert(math.tointeger)
local args = p:parse()

local f = io.open(args.ckpt, "rb")
if not f then
  io.stderr:write(string.format("my_sampler.lua: no model at %s. The shipped model comes with the repository once it is "
    .. "trained (README: `diffusion train ... --export %s`); or give --ckpt a model of your own.\n", args.ckpt, args.ckpt))
  os.exit(1)
end
f:close()

-- The sampler: Euler steps of the probability-flow ODE dx/dsigma = eps.
local function my_euler(den, x, sigmas)
  for i = 1, #sigmas - 1 do
    local _, eps = den(x, sigmas[i])
    x = x + eps * (sigmas[i + 1] - sigmas[i])
  end
  return x
end

local model, sched, prediction = cli.load_model(args.ckpt)
local c = model.config
local labels = {} -- 4 of each class, a row each
for class = 1, c.num_classes do for _ = 1, 4 do labels[#labels + 1] = class end end
local n = math.max(#labels, 4)
local den = D.sample.denoiser(model, sched, { prediction = prediction, y = c.num_classes > 0 and labels or nil,
  guidance = c.num_classes > 0 and args.guidance or nil, null_class = c.num_classes + 1 })

local sigmas = sched:sigmas(args.steps, "karras") -- steps sigmas from sigma_max down, then 0
local x = D.randn({ n, c.in_channels, c.image_size, c.image_size }, D.Generator(args.seed)) * math.sqrt(1 + sigmas[1] ^ 2)
local t0 = D.clock()
x = my_euler(den, x, sigmas)
D.image.save_grid(x, args.out, { nrow = 4 })
print(string.format("wrote %s: %d samples, %d steps, %d model calls, %.1f s", args.out, n, args.steps, den.calls,
  D.clock() - t0))

-- the same as the library's Euler, from the same seed
local theirs = D.sample.euler(model, sched, { n = n, shape = { c.in_channels, c.image_size, c.image_size }, steps = args.steps,
  seed = args.seed, prediction = prediction, y = den.y, guidance = den.guidance, null_class = den.null_class,
  clip_x0 = true })
print(string.format("largest difference to D.sample.euler: %g", (x - theirs):abs():max():item()))
