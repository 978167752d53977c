--- diffusion.image: image files as (C, H, W) tensors, and sample grids.
--
--   local x = D.image.load("cat.jpg", {size = 64})      -- (3, 64, 64) in [-1, 1]
--   D.image.save(x, "out.png")
--   D.image.save_grid(samples, "grid.png", {nrow = 8})  -- samples (N, C, H, W)
--
-- Decoding is stb_image (PNG, JPEG, BMP, GIF, PNM); saving
-- writes 8-bit PNGs with stb_image_write, atomically (a temporary file next
-- to the target, fsynced, renamed over it). Values map linearly between
-- bytes 0..255 and a range: "[-1,1]" (the default, a model's space),
-- "[0,1]" or "[0,255]". Saving rounds half up and clamps (NaN -> 0).
--
-- Errors: a file that can't be opened (load) or written (save) gives
-- nil, message; a malformed file or a bad argument raises.
local core = require "diffusion.core"

local image = {}

--- The default cap on width * height * channels of a decoded image (checked
-- from the file's header before decoding); set it to change the default.
image.MAX_VALUES = 64 << 20

local RANGES = {
  ["[-1,1]"] = { -1, 1 },
  ["[0,1]"] = { 0, 1 },
  ["[0,255]"] = { 0, 255 },
}

-- Raises at the caller of the public function (level 3 from a helper).
local function fail(fname, fmt, ...)
  error(fname .. ": " .. string.format(fmt, ...), 3)
end

-- Checks the option table: a table or nil, with only the known keys.
local function check_opts(fname, opts, allowed)
  if opts == nil then return {} end
  if type(opts) ~= "table" then fail(fname, "options must be a table, got %s", type(opts)) end
  for k in pairs(opts) do
    if not allowed[k] then fail(fname, "unknown option %s", tostring(k)) end
  end
  return opts
end

local function range_of(fname, opts)
  local r = opts.range or "[-1,1]"
  local lohi = RANGES[r]
  if not lohi then
    fail(fname, 'range must be "[-1,1]", "[0,1]" or "[0,255]", got %s', tostring(r))
  end
  return lohi[1], lohi[2]
end

local function positive_int(fname, name, v, allow_zero)
  if math.type(v) ~= "integer" or v < (allow_zero and 0 or 1) then
    fail(fname, "%s must be a %s integer, got %s", name, allow_zero and "non-negative" or "positive", tostring(v))
  end
  return v
end

local function check_tensor(fname, x)
  if getmetatable(x) ~= core._Tensor_mt then
    fail(fname, "expected a tensor, got %s", type(x))
  end
end

--- image.resize(x, h, w) -> (..., h, w)
-- Area averaging along an axis that shrinks, bilinear along one that grows.
function image.resize(x, h, w)
  return core._image_resize(x, h, w)
end

--- image.load(path [, opts]) -> (C, H, W) tensor, or nil, message
-- opts: channels (1 or 3; default: 1 for a gray file, else 3, alpha
-- dropped), range ("[-1,1]"), size (resize so the shorter side is size,
-- then crop the centre size x size), max_pixels (cap on width * height *
-- channels, checked before decoding; default image.MAX_VALUES).
local LOAD_OPTS = { channels = true, range = true, size = true, max_pixels = true }
function image.load(path, opts)
  if type(path) ~= "string" then fail("image.load", "path must be a string, got %s", type(path)) end
  opts = check_opts("image.load", opts, LOAD_OPTS)
  local lo, hi = range_of("image.load", opts)
  local channels = opts.channels or 0
  if channels ~= 0 and channels ~= 1 and channels ~= 3 then
    fail("image.load", "channels must be 1 or 3, got %s", tostring(opts.channels))
  end
  local cap = positive_int("image.load", opts.max_pixels and "max_pixels" or "image.MAX_VALUES",
    opts.max_pixels or image.MAX_VALUES)
  local size = opts.size and positive_int("image.load", "size", opts.size)
  local x, err = core._image_load(path, channels, cap, lo, hi)
  if not x then return nil, err end
  if size then
    local h, w = x:size(2), x:size(3)
    local nh, nw
    if h <= w then
      nh, nw = size, math.max(size, math.floor(w * size / h + 0.5))
    else
      nh, nw = math.max(size, math.floor(h * size / w + 0.5)), size
    end
    if nh ~= h or nw ~= w then x = core._image_resize(x, nh, nw) end
    local top, left = (nh - size) // 2, (nw - size) // 2
    x = x:narrow(2, top + 1, size):narrow(3, left + 1, size):contiguous()
  end
  return x
end

--- image.save(x, path [, opts]) -> true, or nil, message
-- x is (C, H, W) with C = 1 or 3, or (H, W). opts: range ("[-1,1]").
function image.save(x, path, opts)
  check_tensor("image.save", x)
  if type(path) ~= "string" then fail("image.save", "path must be a string, got %s", type(path)) end
  opts = check_opts("image.save", opts, { range = true })
  local lo, hi = range_of("image.save", opts)
  return core._image_save_png(x, path, lo, hi)
end

--- image.save_grid(x, path [, opts]) -> true, or nil, message
-- x is (N, C, H, W); the images are tiled left to right, nrow to a row,
-- with pad pixels of pad_value around and between them, as one PNG of
-- (C, rows * (H + pad) + pad, min(N, nrow) * (W + pad) + pad).
-- opts: nrow (8), pad (2), pad_value (1: white in [-1,1]), range ("[-1,1]").
local GRID_OPTS = { nrow = true, pad = true, pad_value = true, range = true }
function image.save_grid(x, path, opts)
  check_tensor("image.save_grid", x)
  if type(path) ~= "string" then fail("image.save_grid", "path must be a string, got %s", type(path)) end
  opts = check_opts("image.save_grid", opts, GRID_OPTS)
  local lo, hi = range_of("image.save_grid", opts)
  local nrow = positive_int("image.save_grid", "nrow", opts.nrow or 8)
  local pad = positive_int("image.save_grid", "pad", opts.pad or 2, true)
  local pad_value = opts.pad_value or 1
  if type(pad_value) ~= "number" then fail("image.save_grid", "pad_value must be a number, got %s", type(pad_value)) end
  if x:dim() ~= 4 or x:numel() == 0 then
    fail("image.save_grid", "expected a non-empty (N, C, H, W) tensor, got shape %s", tostring(x:shape()))
  end
  local n, c, h, w = x:size(1), x:size(2), x:size(3), x:size(4)
  if c ~= 1 and c ~= 3 then
    fail("image.save_grid", "a PNG is written from 1 (gray) or 3 (RGB) channels, got shape %s", tostring(x:shape()))
  end
  x = x:detach()
  local cols = math.min(nrow, n)
  local rows = (n + cols - 1) // cols
  local grid = core.full({ c, rows * (h + pad) + pad, cols * (w + pad) + pad }, pad_value)
  for k = 0, n - 1 do
    local r, col = k // cols, k % cols
    grid:narrow(2, r * (h + pad) + pad + 1, h):narrow(3, col * (w + pad) + pad + 1, w):copy_(x[k + 1])
  end
  return core._image_save_png(grid, path, lo, hi)
end

--- image.hflip(x) -> x mirrored along its last dim (a copy; keeps autograd)
function image.hflip(x)
  check_tensor("image.hflip", x)
  if x:dim() < 1 then fail("image.hflip", "expected a tensor with at least 1 dim, got a 0-d tensor") end
  local w = x:size(-1)
  if w == 0 then return x:clone() end
  return x:index_select(-1, core.arange(w, 0, -1))
end

return image
