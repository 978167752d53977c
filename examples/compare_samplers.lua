-- compare_samplers.lua: every sampler on the shipped model, side by side.
--
--   lua5.4 examples/compare_samplers.lua                  # the picture docs/samplers.png
--   lua5.4 examples/compare_samplers.lua --accuracy       # the quality table (markdown)
--
-- The picture has one row per sampler and, left to right, 5, 10, 20 and 50
-- steps (--steps), each a few images of the classes --class (one per image),
-- all from the same seed: every sampler starts from the same noise.
--
-- --accuracy samples --per-class images of each class with every sampler at
-- 10, 20 and 50 steps (--accuracy-steps) and prints, as a markdown table, the
-- share the Fashion-MNIST classifier puts in the class asked for (as
-- `diffusion evaluate` does), the model calls and the seconds it took.
--
-- Options: --ckpt (examples/models/fashion-unet.safetensors), --out, --class
-- (classes, numbers or names, comma-separated: "1,2,8,9"), --samplers (all),
-- --guidance (3), --seed (1), --per-class (100), --classifier, --threads.
local D = require "diffusion"
local cli = require "diffusion.cli"
local argparse = require "argparse"
local core = require "diffusion.core"

local p = argparse("compare_samplers.lua", "Every sampler on the shipped model: a picture, or a quality table.")
p:option("--ckpt", "The model file.", "examples/models/fashion-unet.safetensors")
p:option("--out", "The picture (PNG).", "docs/samplers.png")
p:option("--class", "The classes of the images in each cell (numbers or names, comma-separated).", "1,2,8,9")
p:option("--samplers", "Comma-separated samplers.", table.concat(D.sample.names, ","))
p:option("--steps", "Step counts of the picture's columns.", "5,10,20,50")
p:option("--guidance", "Classifier-free guidance scale.", "3"):convert(tonumber)
p:option("--seed", "Seed of the noise.", "1"):convert(math.tointeger)
p:flag("--accuracy", "Print the quality table instead of drawing the picture.")
p:option("--accuracy-steps", "Step counts of the table.", "10,20,50")
p:option("--per-class", "Images per class for --accuracy.", "100"):convert(math.tointeger)
p:option("--classifier", "The classifier's weights.", "examples/models/fashion-classifier.safetensors")
p:option("--threads", "Threads (default: all cores)."):convert(math.tointeger)
local args = p:parse()

local function fail(fmt, ...)
  io.stderr:write("compare_samplers.lua: ", string.format(fmt, ...), "\n")
  os.exit(1)
end

local function list(s, convert, what)
  local out = {}
  for item in s:gmatch("[^,]+") do
    local v = convert(item)
    if v == nil then fail("%s: bad entry '%s' in '%s'", what, item, s) end
    out[#out + 1] = v
  end
  if #out == 0 then fail("%s is empty", what) end
  return out
end

local KNOWN = {}
for _, name in ipairs(D.sample.names) do KNOWN[name] = name end
local samplers = list(args.samplers, function(s) return KNOWN[s] end, "--samplers")
local function count(s) local v = math.tointeger(tonumber(s)); return v and v >= 1 and v or nil end
local function class_of(s)
  local c = math.tointeger(tonumber(s))
  if c then return c >= 1 and c <= 10 and c or nil end
  for i, name in ipairs(D.data.FASHION_MNIST_CLASSES) do
    if name:lower() == s:lower() then return i end
  end
end

local f = io.open(args.ckpt, "rb")
if not f then
  fail("no model at %s. The shipped model comes with the repository once it is trained (README: `diffusion train ... "
    .. "--export %s`); or give --ckpt a model of your own.", args.ckpt, args.ckpt)
end
f:close()
if args.threads then D.set_num_threads(args.threads) end
local model, sched, prediction = cli.load_model(args.ckpt)
local cfg = model.config
local shape = { cfg.in_channels, cfg.image_size, cfg.image_size }

-- model calls are counted by wrapping the model
local calls = 0
local function counted(x, t, y) calls = calls + 1; return model(x, t, y) end

-- n samples of the labels y (a list, or nil for an unconditional model) -> x, seconds, model calls
local function generate(name, steps, y, n, seed)
  local opts = { n = n, shape = shape, steps = steps, seed = seed, prediction = prediction }
  if cfg.num_classes > 0 then
    opts.y, opts.guidance, opts.null_class = y, args.guidance, cfg.num_classes + 1
  end
  calls = 0
  local t0 = D.clock()
  local ok, x = pcall(D.sample.run, name, counted, sched, opts)
  if not ok then fail("%s", x) end
  return x, D.clock() - t0, calls
end

if args.accuracy then
  if cfg.num_classes == 0 then fail("--accuracy needs a class-conditional model") end
  local classify = cli.load_classifier(args.classifier)
  local steps_list = list(args.accuracy_steps, count, "--accuracy-steps")
  local head, rule = { "| sampler |" }, { "|---|" }
  for _, steps in ipairs(steps_list) do
    head[#head + 1] = string.format(" %d steps |", steps)
    rule[#rule + 1] = "---|"
  end
  local rows = {}
  for _, name in ipairs(samplers) do
    local cells = { string.format("| %s |", name) }
    for _, steps in ipairs(steps_list) do
      local correct, seconds, nfe = 0, 0, 0
      for c = 1, cfg.num_classes do -- one batch per class, seeds as `diffusion evaluate`'s
        local y = {}
        for i = 1, args.per_class do y[i] = c end
        local x, s, k = generate(name, steps, y, args.per_class, args.seed + c)
        correct, seconds, nfe = correct + classify(x):eq(c):sum():item(), seconds + s, k
      end
      local acc = 100 * correct / (args.per_class * cfg.num_classes)
      cells[#cells + 1] = string.format(" %.1f %% (%d calls, %.0f s) |", acc, nfe, seconds)
      io.stderr:write(string.format("%s, %d steps: %.1f %%, %.1f s\n", name, steps, acc, seconds))
    end
    rows[#rows + 1] = table.concat(cells)
  end
  print(string.format("Class-conditional accuracy (the classifier agrees with the class asked for) of %d samples "
    .. "per sampler and step count, guidance %g; model calls per sample batch and seconds for all of them.\n",
    args.per_class * cfg.num_classes, args.guidance))
  print(table.concat(head))
  print(table.concat(rule))
  print(table.concat(rows, "\n"))
  os.exit(0)
end

--- the picture ------------------------------------------------------------------------
local classes = list(args.class, class_of, "--class")
local steps_list = list(args.steps, count, "--steps")
local k = #classes
local ZOOM, PAD, GAP = 2, 2, 12 -- tiles drawn 2x, 2 px apart, 12 px between cells
local tile = cfg.image_size * ZOOM
local TOP, LEFT = 30, 12 -- room for the step counts and (below) the names
for _, name in ipairs(samplers) do
  if core._plot_text_size then LEFT = math.max(LEFT, core._plot_text_size(name, 2) + 16) end
end
local cell_w = k * (tile + PAD)
local width = LEFT + #steps_list * (cell_w + GAP)
local height = TOP + #samplers * (tile + PAD + 6) + 4
local canvas = core.full({ 3, height, width }, 255) -- RGB, 0..255
local BLACK = { 0, 0, 0 }
local function text(s, x, y) -- the font's capitals are 7 units high; scale 2
  if core._plot_text then core._plot_text(canvas, s, x, y - 7, 2, false, BLACK) end
end

for j, steps in ipairs(steps_list) do
  text(string.format("%d steps", steps), LEFT + (j - 1) * (cell_w + GAP), TOP / 2)
end
for i, name in ipairs(samplers) do
  local top = TOP + (i - 1) * (tile + PAD + 6)
  text(name, 6, top + tile / 2)
  for j, steps in ipairs(steps_list) do
    local x = generate(name, steps, cfg.num_classes > 0 and classes or nil, k, args.seed)
    x = D.upsample_nearest2d(x:clamp(-1, 1), ZOOM)
    for m = 1, k do
      local img = ((x[m] + 1) * 127.5):expand(3, tile, tile) -- grey to RGB, 0..255
      local left = LEFT + (j - 1) * (cell_w + GAP) + (m - 1) * (tile + PAD)
      canvas:narrow(2, top + 1, tile):narrow(3, left + 1, tile):copy_(img)
    end
    io.stderr:write(string.format("\r%s, %d steps   ", name, steps))
  end
end
io.stderr:write("\n")
local ok, err = D.image.save(canvas, args.out, { range = "[0,255]" })
if not ok then fail("%s", err) end
print(string.format("wrote %s: %d samplers x %d step counts, classes %s, seed %d", args.out, #samplers, #steps_list,
  args.class, args.seed))
