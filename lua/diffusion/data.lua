--- diffusion.data: datasets and shuffled batches.
--
--   local train = D.data.fashion_mnist{split = "train"}
--   for step, x, y in train:batches(128, {seed = 1}) do ... end
--
-- Images are (N, 1, H, W) tensors scaled to [-1, 1] (or [0, 1]); labels are
-- 1-based class numbers (Lua's convention), with names in ds.classes.
local core = require "diffusion.core"

local data = {}

data.FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
data.FASHION_MNIST_CLASSES = {
  "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
}

local Dataset = {}
Dataset.__index = Dataset

--- data.Dataset{images = x, labels = y (or nil), classes = names (or nil)}
function data.Dataset(fields)
  assert(type(fields) == "table" and fields.images, "Dataset: expected {images = tensor, labels = tensor}")
  local n = fields.images:size(1)
  if fields.labels and fields.labels:size(1) ~= n then
    error(string.format("Dataset: %d images but %d labels", n, fields.labels:size(1)), 2)
  end
  return setmetatable({ images = fields.images, labels = fields.labels, classes = fields.classes, paths = fields.paths },
                      Dataset)
end

function Dataset:__len() return self.images:size(1) end
function Dataset:size() return self.images:size(1) end

function Dataset:__tostring()
  return string.format("Dataset(%d images of %s%s)", #self, tostring(self.images[1]:shape()),
    self.classes and string.format(", %d classes", #self.classes) or "")
end

--- ds:get(i) -> image (a view), label (a number or nil)
function Dataset:get(i)
  return self.images[i], self.labels and self.labels[i] or nil
end

-- A permutation of 1..n from the generator (Fisher-Yates).
local function permutation(n, generator)
  local u = core.rand({ n }, generator)
  local p = {}
  for i = 1, n do p[i] = i end
  for i = n, 2, -1 do
    local j = math.floor(u[i] * i) + 1
    p[i], p[j] = p[j], p[i]
  end
  return p
end

--- ds:batches(size [, opts]) -> iterator of (batch_number, x, y)
-- opts: shuffle (true), seed or generator (the order; default: the default
-- generator), drop_last (false), skip (batches to pass over without
-- building them, to resume inside an epoch; 0), flip (mirror each image
-- left-right with probability 1/2, drawn from the same generator; false).
function Dataset:batches(size, opts)
  opts = opts or {}
  if type(size) ~= "number" or size < 1 or size ~= math.floor(size) then
    error("batches: the batch size must be a positive integer, got " .. tostring(size), 2)
  end
  local n = #self
  local order
  local generator = opts.generator or (opts.seed and core.Generator(opts.seed)) or nil
  if opts.shuffle == false then
    order = {}
    for i = 1, n do order[i] = i end
  else
    order = permutation(n, generator)
  end
  local mirror
  if opts.flip then
    local w = self.images:size(self.images:dim())
    local reversed = {}
    for i = 1, w do reversed[i] = w + 1 - i end
    mirror = core.tensor(reversed)
  end
  local count = opts.drop_last and n // size or (n + size - 1) // size
  local b = opts.skip or 0
  return function()
    b = b + 1
    if b > count then return nil end
    local first, last = (b - 1) * size + 1, math.min(b * size, n)
    local idx = {}
    for i = first, last do idx[#idx + 1] = order[i] end
    local index = core.tensor(idx)
    local x = self.images:index_select(1, index)
    local y = self.labels and self.labels:index_select(1, index) or nil
    if mirror then -- a coin per image: (N, 1, ..., 1) broadcast over the image
      local shape = { x:size(1) }
      for d = 2, x:dim() do shape[d] = 1 end
      local coin = core.rand(shape, generator):lt(0.5)
      x = core.where(coin, x:index_select(x:dim(), mirror), x)
    end
    return b, x, y
  end
end

local IMAGE_EXTENSIONS = { png = true, jpg = true, jpeg = true, bmp = true }

local function image_files(dir)
  local names, err = core.list_dir(dir)
  if not names then return nil, err end
  local files, subdirs = {}, {}
  for _, name in ipairs(names) do
    local ext = name:match("%.([%w]+)$")
    if ext and IMAGE_EXTENSIONS[ext:lower()] then
      files[#files + 1] = dir .. "/" .. name
    elseif name:sub(1, 1) ~= "." and core.list_dir(dir .. "/" .. name) then
      subdirs[#subdirs + 1] = name
    end
  end
  return files, subdirs
end

--- data.image_folder{dir, size = 32, channels = 3, range = "[-1,1]"}
-- Every PNG, JPEG and BMP in dir, resized (shorter side to size) and
-- center-cropped to size x size. When dir holds one folder per class
-- (dir/cat/*.png, dir/dog/*.png), the folder names (sorted) are the classes
-- and labels are 1-based; images directly in dir then are an error.
-- Random left-right flips are a batch option: ds:batches(n, {flip = true}).
function data.image_folder(opts)
  opts = opts or {}
  local dir = opts.dir
  if type(dir) ~= "string" then error("image_folder: dir must be a path, got " .. type(dir), 2) end
  local image = require "diffusion.image"
  local size, channels = opts.size or 32, opts.channels or 3
  local files, subdirs = image_files(dir)
  if not files then error("image_folder: " .. subdirs, 2) end
  local paths, labels, classes = {}, nil, nil
  if #subdirs > 0 then
    if #files > 0 then
      error(string.format("image_folder: %s holds both images and class folders (%s, ...)", dir, files[1]), 2)
    end
    classes, labels = {}, {}
    for c, name in ipairs(subdirs) do
      classes[c] = name
      for _, f in ipairs((image_files(dir .. "/" .. name))) do
        paths[#paths + 1] = f
        labels[#labels + 1] = c
      end
    end
  else
    paths = files
  end
  if #paths == 0 then error("image_folder: no PNG, JPEG or BMP images in " .. dir, 2) end
  local x = core.zeros(#paths, channels, size, size)
  for i, path in ipairs(paths) do
    local ok, img = pcall(image.load, path, { channels = channels, size = size, range = opts.range })
    if not ok then error("image_folder: " .. tostring(img), 2) end
    if not img then error("image_folder: cannot read " .. path, 2) end
    x[i] = img
  end
  return data.Dataset{ images = x, labels = labels and core.tensor(labels), classes = classes, paths = paths }
end

--- data.fashion_mnist{split = "train" | "test", dir, range = "[-1,1]" | "[0,1]", pad_to, limit}
-- Reads Debian's dataset-fashion-mnist (or `dir`): 60 000 training or
-- 10 000 test images of 28 x 28, padded with the background colour to
-- pad_to x pad_to when given.
function data.fashion_mnist(opts)
  opts = opts or {}
  local split = opts.split or "train"
  if split ~= "train" and split ~= "test" then
    error('fashion_mnist: split must be "train" or "test", got ' .. tostring(split), 2)
  end
  local dir = opts.dir or os.getenv("FASHION_MNIST_DIR") or data.FASHION_MNIST_DIR
  local prefix = dir .. "/" .. (split == "train" and "train" or "t10k")
  local images, err = core.load_idx(prefix .. "-images-idx3-ubyte.gz")
  if not images then
    error(err .. " (install Debian's dataset-fashion-mnist, or pass dir = ...)", 2)
  end
  local labels, err2 = core.load_idx(prefix .. "-labels-idx1-ubyte.gz")
  if not labels then error(err2, 2) end
  if images:dim() ~= 3 or labels:dim() ~= 1 or images:size(1) ~= labels:size(1) then
    error(string.format("fashion_mnist: images %s and labels %s don't match",
      tostring(images:shape()), tostring(labels:shape())), 2)
  end
  if opts.limit then
    images, labels = images:narrow(1, 1, math.min(opts.limit, images:size(1))),
                     labels:narrow(1, 1, math.min(opts.limit, labels:size(1)))
  end
  local n, h, w = images:size(1), images:size(2), images:size(3)
  local range = opts.range or "[-1,1]"
  local x
  if range == "[-1,1]" then
    x = images / 127.5 - 1
  elseif range == "[0,1]" then
    x = images / 255
  else
    error('fashion_mnist: range must be "[-1,1]" or "[0,1]", got ' .. tostring(range), 2)
  end
  x = x:view(n, 1, h, w)
  local pad = opts.pad_to
  if pad and pad ~= h then
    if pad < h or (pad - h) % 2 ~= 0 then
      error(string.format("fashion_mnist: pad_to must be %d + an even number, got %s", h, tostring(pad)), 2)
    end
    local m = (pad - h) // 2
    local padded = core.full({ n, 1, pad, pad }, range == "[-1,1]" and -1 or 0)
    padded:narrow(3, m + 1, h):narrow(4, m + 1, w):copy_(x)
    x = padded
  end
  return data.Dataset{ images = x, labels = labels + 1, classes = data.FASHION_MNIST_CLASSES }
end

return data
