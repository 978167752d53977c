--- diffusion.cli: the `diffusion` command — train, sample, evaluate, info.
--
--   diffusion train --steps 4000 --checkpoint fashion.ckpt.safetensors --export fashion-unet.safetensors
--   diffusion sample --ckpt fashion-unet.safetensors --class all --out samples.png
--   diffusion evaluate --ckpt fashion-unet.safetensors
--   diffusion info fashion-unet.safetensors
--
-- A training checkpoint holds the model, EMA weights, optimizer and
-- generator state (to resume); an exported model holds the EMA weights, the
-- config, the schedule and the prediction type only (to ship and sample).
local argparse = require "argparse"
local D = require "diffusion"

local cli = {}

cli.MODELS = {
  -- the shipped model: 28 x 28 as the data comes, one ResBlock per level down (two up), attention at 7 x 7
  fashion = { channels = 32, groups = 8, mult = { 1, 2, 2 }, res_blocks = 1, attention = { 7 }, dropout = 0,
              image_size = 28 },
  -- the two benchmark U-Nets of ../shared/bench/torch_unet.py (on 32 x 32: the images padded by 2)
  tiny = { channels = 32, groups = 8, mult = { 1, 2, 2 }, res_blocks = 2, attention = { 8 }, dropout = 0.1 },
  small = { channels = 64, groups = 32, mult = { 1, 2, 2 }, res_blocks = 2, attention = { 8 }, dropout = 0.1 },
}

local CLASSIFIER = "examples/models/fashion-classifier.safetensors"
local SHIPPED = "examples/models/fashion-unet.safetensors" -- relative: run from the repository's root

local function die(fmt, ...)
  io.stderr:write("diffusion: ", string.format(fmt, ...), "\n")
  os.exit(1)
end

local function integer(name, lo)
  return function(s)
    local v = math.tointeger(tonumber(s))
    if not v or v < (lo or 0) then return nil, string.format("%s must be an integer >= %d, got '%s'", name, lo or 0, s) end
    return v
  end
end

local function number(name)
  return function(s)
    local v = tonumber(s)
    if not v or v ~= v then return nil, string.format("%s must be a number, got '%s'", name, s) end
    return v
  end
end

-- kind: a schedule name with its transforms, as Schedule.kind spells it ("cosine+shift(2)")
local function make_schedule(kind, T)
  local ok, sched = pcall(D.schedule.named, kind, T)
  if not ok then die("schedule '%s': %s", tostring(kind), sched) end
  return sched
end

-- A model file or a training checkpoint -> model (EMA weights), schedule, prediction, info
local function load_model(path)
  local ok, ck = pcall(D.checkpoint.load, path)
  if not ok then die("%s", ck) end
  if not ck then
    die("cannot open %s%s", path, path == SHIPPED and " (the shipped model: run from the repository's root, or give --ckpt)" or "")
  end
  local weights, train
  if ck.kind == "diffusion-model" then
    weights, train = ck.model, ck.train
  elseif ck.kind == "diffusion-training" then
    weights, train = ck.ema and ck.ema.shadow, ck.train -- the EMA weights are the ones to sample from
  else
    die("%s is neither a model nor a training checkpoint", path)
  end
  if type(ck.config) ~= "table" or type(weights) ~= "table" or type(train) ~= "table" then
    die("%s lacks its config, weights or training settings", path)
  end
  local okm, model = pcall(D.UNet, ck.config)
  if not okm then die("%s: its config doesn't make a model: %s", path, model) end
  local okl, err = pcall(model.load_state_dict, model, weights)
  if not okl then die("%s: %s", path, err) end
  model:eval()
  return model, make_schedule(train.schedule, train.T), train.prediction or "epsilon", ck
end

-- "all" -> one row per class; a number or a class name -> that class; "none" -> unconditional
local function labels_for(spec, model, n)
  local classes = model.config.num_classes
  if spec == "none" or classes == 0 then
    if spec ~= "none" and spec ~= nil and classes == 0 then die("the model is unconditional; --class needs a conditional one") end
    return nil, 8
  end
  if spec == "all" then
    local per = math.max(1, n // classes)
    local y = {}
    for c = 1, classes do for _ = 1, per do y[#y + 1] = c end end
    return D.tensor(y), per
  end
  local c = math.tointeger(tonumber(spec))
  if not c then
    for i, name in ipairs(D.data.FASHION_MNIST_CLASSES) do
      if name:lower() == tostring(spec):lower() then c = i end
    end
  end
  if not c or c < 1 or c > classes then
    die("--class must be 1..%d, a class name, 'all' or 'none', got '%s'", classes, tostring(spec))
  end
  return D.full({ n }, c), 8
end

-- --schedule: sample on another schedule than the model's (a schedule.named kind, over the model's T)
local function sampling_schedule(a, sched)
  if not a.schedule then return sched end
  local ok, s = pcall(D.schedule.named, a.schedule, sched.T)
  if not ok then die("--schedule: %s", s) end
  return s
end

-- Samples with the options of `sample` / `evaluate` (--sampler, --steps, --spacing, --eta,
-- --guidance, --guidance-rescale); a sampler that takes no eta says so.
local function sample_with(model, sched, prediction, a, y, n, seed)
  local cfg = model.config
  local opts = {
    n = y and y:size(1) or n, shape = { cfg.in_channels, cfg.image_size, cfg.image_size }, steps = a.steps,
    spacing = a.spacing, eta = a.eta, seed = seed, y = y, prediction = prediction, progress = not a.quiet,
  }
  if y and a.guidance ~= 1 then
    opts.guidance, opts.null_class = a.guidance, cfg.num_classes + 1
    if a.guidance_rescale > 0 then opts.guidance_rescale = a.guidance_rescale end
  end
  if a.trajectory then opts.trajectory, opts.trajectory_every = true, math.max(1, a.steps // 10) end
  local ok, x, trajectory = pcall(D.sample.run, a.sampler, model, sampling_schedule(a, sched), opts)
  if not ok then die("%s", x) end -- e.g. "sample.heun: unknown option 'eta'"
  return x, trajectory
end

local function cmd_train(a)
  if a.threads then D.set_num_threads(a.threads) end
  local config = {}
  for k, v in pairs(cli.MODELS[a.model]) do config[k] = v end
  config.num_classes = a.unconditional and 0 or 10
  config.channels = a.channels or config.channels
  config.groups = a.groups or config.groups
  D.manual_seed(a.seed)
  local model = D.UNet(config)
  local size = config.image_size or 32
  local data = D.data.fashion_mnist{ split = "train", pad_to = size ~= 28 and size or nil, limit = a.limit }
  print(model)
  print(string.format("training on %d images, %d steps of %d, %d threads", #data, a.steps, a.batch, D.get_num_threads()))
  local t0 = D.clock()
  local _, ema, info = D.train{
    model = model, schedule = make_schedule(a.schedule, a.T), data = data, steps = a.steps, batch = a.batch,
    lr = a.lr, warmup = a.warmup, ema = a.ema, clip = a.clip, prediction = a.prediction, cfg_dropout = a.cfg_dropout,
    loss_weight = a.loss_weight, min_snr_gamma = a.min_snr_gamma,
    seed = a.seed, checkpoint = a.checkpoint, checkpoint_every = a.checkpoint_every, resume = not a.no_resume,
    log = a.log, sample_every = a.sample_every, sample_path = a.samples,
  }
  print(string.format("done: step %d, %.0f s", info.step, D.clock() - t0))
  if a.log and a.loss_plot then
    local okp, ok, err = pcall(D.plot.loss_curve, a.log, a.loss_plot)
    if not okp then ok, err = nil, ok end -- a log without a loss line: the training itself went well
    if ok then print("wrote the loss curve to " .. a.loss_plot) else print("no loss curve: " .. tostring(err)) end
  end
  if a.export then
    ema:copy_to(model)
    D.checkpoint.save(a.export, {
      kind = "diffusion-model", config = model.config, model = model:state_dict(),
      train = { schedule = a.schedule, T = a.T, prediction = a.prediction, steps = info.step, batch = a.batch,
                images_seen = info.step * a.batch },
    })
    print("exported the EMA weights to " .. a.export)
  end
end

local function cmd_sample(a)
  if a.threads then D.set_num_threads(a.threads) end
  local model, sched, prediction = load_model(a.ckpt)
  local y, per_row = labels_for(a.class, model, a.n)
  local t0 = D.clock()
  local x, trajectory = sample_with(model, sched, prediction, a, y, a.n, a.seed)
  D.image.save_grid(x, a.out, { nrow = per_row })
  print(string.format("wrote %s: %d samples, %s %d steps%s, %.1f s", a.out, x:size(1), a.sampler, a.steps,
    y and string.format(", guidance %g", a.guidance) or "", D.clock() - t0))
  if a.trajectory and trajectory then
    -- one row per sample (at most 10), noise on the left, the image on the right
    local rows = math.min(10, x:size(1))
    local frames = {}
    for i, xt in ipairs(trajectory) do frames[i] = xt:narrow(1, 1, rows) end
    frames[#frames + 1] = x:narrow(1, 1, rows)
    local grid = D.stack(frames, 2):reshape(rows * #frames, x:size(2), x:size(3), x:size(4))
    D.image.save_grid(grid, a.trajectory, { nrow = #frames })
    print("wrote " .. a.trajectory)
  end
end

-- The Fashion-MNIST classifier at path -> classify(x) -> (N) predicted classes 1..10
local function load_classifier(path)
  local weights = D.load_safetensors(path) -- a plain state_dict, as classify_fashion.lua --save writes
  if not weights then die("cannot open the classifier %s (train it with examples/classify_fashion.lua --save)", path) end
  local classifier = require("diffusion.models").fashion_classifier()
  classifier:load_state_dict(weights)
  classifier:eval()
  return function(x)
    -- samples of a model trained on padded images: the classifier sees the 28 x 28 centre
    local border = (x:size(3) - 28) // 2
    local crop = border > 0 and x:narrow(3, border + 1, 28):narrow(4, border + 1, 28) or x
    return D.no_grad(function() return classifier(crop):argmax(2) end)
  end
end

-- for scripts (examples/compare_samplers.lua): both die with a message on a bad file
cli.load_model, cli.load_classifier = load_model, load_classifier

local function cmd_evaluate(a)
  if a.threads then D.set_num_threads(a.threads) end
  local model, sched, prediction = load_model(a.ckpt)
  local classify = load_classifier(a.classifier)
  local classes = model.config.num_classes
  local t0 = D.clock()
  if classes > 0 then
    local correct, total = 0, 0
    for c = 1, classes do
      local y = D.full({ a.per_class }, c)
      local x = sample_with(model, sched, prediction, a, y, a.per_class, a.seed + c)
      correct = correct + classify(x):eq(c):sum():item()
      total = total + a.per_class
      if not a.quiet then io.stderr:write(string.format("\rclass %d/%d: %.1f%% so far", c, classes, 100 * correct / total)) end
    end
    if not a.quiet then io.stderr:write("\n") end
    print(string.format("class-conditional: %.1f%% of %d samples (%d per class, %s %d steps, guidance %g) "
      .. "classified as their class, %.0f s", 100 * correct / total, total, a.per_class, a.sampler, a.steps,
      a.guidance, D.clock() - t0))
  end
  local n = a.per_class * 10
  -- the null label alone: guidance would only mix the null pass with itself (twice the work, the same images)
  local unguided = setmetatable({ guidance = 1 }, { __index = a })
  local x = sample_with(model, sched, prediction, unguided, classes > 0 and D.full({ n }, classes + 1) or nil, n, a.seed)
  local counts = {}
  local pred = classify(x)
  for i = 1, n do counts[pred[i]] = (counts[pred[i]] or 0) + 1 end
  local parts = {}
  for c = 1, 10 do parts[c] = string.format("%s %.1f%%", D.data.FASHION_MNIST_CLASSES[c], 100 * (counts[c] or 0) / n) end
  print(string.format("unconditional: %d samples spread as %s", n, table.concat(parts, ", ")))
end

local function cmd_info(a)
  local ok, ck = pcall(D.checkpoint.load, a.ckpt)
  if not ok then die("%s", ck) end
  if not ck then die("cannot open %s", a.ckpt) end
  print(a.ckpt .. ": " .. tostring(ck.kind))
  local model, sched, prediction = load_model(a.ckpt)
  print(model)
  print(string.format("schedule %s, prediction %s", tostring(sched), prediction))
  if ck.step then print(string.format("step %d", ck.step)) end
  if ck.train and ck.train.steps then
    print(string.format("trained %d steps of %d (%d images seen)", ck.train.steps, ck.train.batch or 0,
      ck.train.images_seen or 0))
  end
end

-- the sampler options of `sample` and `evaluate`
local function sampler_options(cmd)
  cmd:option("--sampler", "Sampler: " .. table.concat(D.sample.names, ", ") .. ".", "ddim"):choices(D.sample.names)
  cmd:option("--steps", "Sampler steps.", "50"):convert(integer("--steps", 1))
  cmd:option("--spacing", "Noise levels: leading, trailing or linspace timesteps; for the sigma samplers (euler, heun, "
    .. "dpmpp_*) also karras (their default) or exponential. Default: the sampler's."):choices({ "leading", "trailing",
    "linspace", "karras", "exponential" })
  cmd:option("--schedule", "Sample on another schedule than the model's, over its T (e.g. cosine, or "
    .. "cosine+rescale_zero_terminal_snr).")
  cmd:option("--eta", "Noise scale of ddim (default 0), euler_ancestral and the *_sde samplers (default 1)."):convert(
    number("--eta"))
  cmd:option("--guidance", "Classifier-free guidance scale (1: none; 3 suits the shipped model).", "3"):convert(
    number("--guidance"))
  cmd:option("--guidance-rescale", "Guidance rescale phi in [0, 1] (Lin et al. 2023; 0: none).", "0"):convert(
    number("--guidance-rescale"))
end

local function parser()
  local p = argparse("diffusion", "Train, sample and evaluate denoising diffusion models (Fashion-MNIST).")
  p:command_target("command")
  local train = p:command("train", "Train a denoising U-Net on Fashion-MNIST (resumes from its checkpoint).")
  train:option("--model", "Model: fashion (the shipped one: C = 32, 28 x 28), or the benchmark's tiny (C = 32) "
    .. "or small (C = 64) on 32 x 32.", "fashion"):choices({ "fashion", "tiny", "small" })
  train:flag("--unconditional", "No class labels (no guidance).")
  train:option("--channels", "Override the model's width C."):convert(integer("--channels", 2))
  train:option("--groups", "Override the model's GroupNorm groups."):convert(integer("--groups", 1))
  train:option("--limit", "Train on the first N images only."):convert(integer("--limit", 1))
  train:option("--steps", "Training steps.", "4000"):convert(integer("--steps", 1))
  train:option("--batch", "Images per step.", "128"):convert(integer("--batch", 1))
  train:option("--lr", "Peak learning rate (AdamW).", "2e-4"):convert(number("--lr"))
  train:option("--warmup", "Linear warm-up steps.", "500"):convert(integer("--warmup", 0))
  train:option("--ema", "EMA decay.", "0.9995"):convert(number("--ema"))
  train:option("--clip", "Gradient-norm clipping (0: none).", "1"):convert(number("--clip"))
  train:option("--schedule", "Noise schedule.", "cosine"):choices({ "linear", "cosine", "scaled_linear", "sigmoid" })
  train:option("--T", "Diffusion steps.", "1000"):convert(integer("--T", 1))
  train:option("--prediction", "What the model predicts.", "epsilon"):choices({ "epsilon", "x0", "v" })
  train:option("--loss-weight", "Per-sample loss weight: uniform, min_snr (min(SNR, gamma), in the prediction's "
    .. "form) or snr_plus_one.", "uniform"):choices({ "uniform", "min_snr", "snr_plus_one" })
  train:option("--min-snr-gamma", "gamma of --loss-weight min_snr.", "5"):convert(number("--min-snr-gamma"))
  train:option("--cfg-dropout", "How often a label is dropped to the null class.", "0.1"):convert(number("--cfg-dropout"))
  train:option("--seed", "Seed of the run.", "0"):convert(integer("--seed", 0))
  train:option("--threads", "Threads (default: all cores)."):convert(integer("--threads", 1))
  train:option("--checkpoint", "Training checkpoint (written atomically; resumed from).", "fashion.ckpt.safetensors")
  train:option("--checkpoint-every", "Steps between checkpoints.", "250"):convert(integer("--checkpoint-every", 1))
  train:flag("--no-resume", "Start afresh even when the checkpoint exists.")
  train:option("--log", "Loss per step, as CSV.", "loss.csv")
  train:option("--loss-plot", "The loss curve (PNG) of the whole log, written at the end.", "loss.png")
  train:option("--samples", "Sample grids (%d = step).", "samples-%d.png")
  train:option("--sample-every", "Steps between sample grids (0: none).", "0"):convert(integer("--sample-every", 0))
  train:option("--export", "At the end, write the EMA weights and config here (the file to ship).")

  local sample = p:command("sample", "Generate images with a trained model.")
  sample:option("--ckpt", "A model file or a training checkpoint.", SHIPPED)
  sample:option("--n", "How many images (per class with --class all: n / classes).", "80"):convert(integer("--n", 1))
  sampler_options(sample)
  sample:option("--class", "1..10, a class name, 'all' (a row per class) or 'none'.", "all")
  sample:option("--seed", "Seed of the noise.", "1"):convert(integer("--seed", 0))
  sample:option("--out", "The grid (PNG).", "samples.png")
  sample:option("--trajectory", "Also write a noise-to-image picture here.")
  sample:option("--threads", "Threads (default: all cores)."):convert(integer("--threads", 1))
  sample:flag("--quiet", "No progress line.")

  local evaluate = p:command("evaluate", "Classify generated images with the Fashion-MNIST classifier.")
  evaluate:option("--ckpt", "A model file or a training checkpoint.", SHIPPED)
  evaluate:option("--classifier", "The classifier's weights.", CLASSIFIER)
  evaluate:option("--per-class", "Samples per class.", "100"):convert(integer("--per-class", 1))
  sampler_options(evaluate)
  evaluate:option("--seed", "Seed.", "1"):convert(integer("--seed", 0))
  evaluate:option("--threads", "Threads."):convert(integer("--threads", 1))
  evaluate:flag("--quiet", "No progress lines.")

  local info = p:command("info", "Describe a model file or a training checkpoint.")
  info:argument("ckpt", "The file.")
  return p
end

function cli.main(argv)
  local args = parser():parse(argv)
  local commands = { train = cmd_train, sample = cmd_sample, evaluate = cmd_evaluate, info = cmd_info }
  local ok, err = pcall(commands[args.command], args)
  if not ok then die("%s", tostring(err)) end
  return 0
end

return cli
