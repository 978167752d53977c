-- make_seeds.lua — writes the fuzzers' seed corpora: small valid files, made
-- by the project itself wherever it can write the format.
--   lua5.4 spec/fuzz/make_seeds.lua OUT_DIR [WRITE_IMAGES]
-- (`make fuzz-seeds` runs it with this checkout's build). OUT_DIR/<harness>/
-- receives the files; the output is deterministic, so a rerun changes nothing.
-- WRITE_IMAGES is the helper built from spec/fuzz/write_images.c, which writes
-- the JPEG/BMP seeds through libstb (the Lua API saves PNG only).
local D = require "diffusion"

local out, write_images = arg[1], arg[2]
assert(out, "usage: make_seeds.lua OUT_DIR [WRITE_IMAGES]")

local function sh(cmd) assert(os.execute(cmd), "failed: " .. cmd) end
local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
local function write(path, bytes)
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
end
local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

for _, h in ipairs{ "safetensors", "header", "idx", "image" } do sh("mkdir -p " .. q(out .. "/" .. h)) end

--- safetensors: files written by D.save_safetensors and D.checkpoint.save --------------------------

D.manual_seed(1)
local st = out .. "/safetensors/"
D.save_safetensors(st .. "empty.safetensors", {})
D.save_safetensors(st .. "tensors.safetensors", {
  weight = D.randn(3, 4), bias = D.arange(4), scalar = D.tensor(2.5), empty = D.zeros(0, 3),
}, { note = "seed", ["ключ"] = "значение" })
D.save_safetensors(st .. "special-values.safetensors", {
  x = D.tensor{ 0 / 0, math.huge, -math.huge, -0.0, 1e-45, 3.4e38 },
})
local model = D.UNet{ channels = 4, groups = 2, mult = { 1 }, res_blocks = 1, attention = {}, image_size = 4 }
local small = {}
for name, t in pairs(model:state_dict()) do
  if t:numel() <= 16 then small[name] = t end
end
D.checkpoint.save(st .. "checkpoint.safetensors", {
  kind = "diffusion-training", step = 12, config = { mult = { 1, 2 }, channels = 4, dropout = 0.1 },
  model = small, flags = { ema = true, resume = false }, empty = {}, lr = 2e-4, name = "run \"one\"\n",
})

-- F16 and BF16 (which the reader converts, but the project never writes), framed by hand
local function frame(header, data)
  header = header .. string.rep(" ", (8 - #header % 8) % 8)
  return string.pack("<I8", #header) .. header .. data
end
local half = string.pack("<I2I2I2I2I2I2", 0x3c00, 0xc000, 0x0001, 0x7bff, 0x7c00, 0x7e00) -- 1 -2 subnormal max inf nan
local bf16 = string.pack("<I2I2I2I2", 0x3f80, 0xc000, 0x7f80, 0x0001)
write(st .. "f16-bf16.safetensors", frame(
  '{"__metadata__":{"format":"pt"},"h":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]},'
    .. '"b":{"dtype":"BF16","shape":[4],"data_offsets":[12,20]},"extra":{"dtype":"F32","shape":[0],'
    .. '"data_offsets":[20,20],"note":[1,{"a":null}]}}', half .. bf16))

--- header: byte 0 = data area length, then the header text (see fuzz_header.c) --------------------

for _, name in ipairs{ "empty", "tensors", "special-values", "f16-bf16" } do
  local bytes = read(st .. name .. ".safetensors")
  local n = string.unpack("<I8", bytes)
  local data_len = #bytes - 8 - n
  if data_len <= 255 then write(out .. "/header/" .. name .. ".seed", string.char(data_len) .. bytes:sub(9, 8 + n)) end
end
-- the checkpoint's header with its tensors dropped: the typed metadata alone
do
  local bytes = read(st .. "checkpoint.safetensors")
  local n = string.unpack("<I8", bytes)
  local header = bytes:sub(9, 8 + n)
  local meta = header:match('^{("__metadata__":%b{})')
  write(out .. "/header/checkpoint-metadata.seed", string.char(0) .. "{" .. meta .. "}")
end

--- idx: the MNIST layout, plain and gzipped ----------------------------------------------------------

local function idx(path, dims, values)
  local parts = { "\0\0\8", string.char(#dims) }
  for _, d in ipairs(dims) do parts[#parts + 1] = string.pack(">I4", d) end
  for _, v in ipairs(values) do parts[#parts + 1] = string.char(v) end
  write(path, table.concat(parts))
end
local pixels = {}
for i = 1, 2 * 3 * 3 do pixels[i] = (i * 29) % 256 end
idx(out .. "/idx/images-idx3-ubyte", { 2, 3, 3 }, pixels)
idx(out .. "/idx/labels-idx1-ubyte", { 5 }, { 9, 0, 3, 7, 1 })
idx(out .. "/idx/empty-idx2-ubyte", { 0, 4 }, {})
sh("gzip -9 -n -c " .. q(out .. "/idx/images-idx3-ubyte") .. " > " .. q(out .. "/idx/images-idx3-ubyte.gz"))
sh("gzip -9 -n -c " .. q(out .. "/idx/labels-idx1-ubyte") .. " > " .. q(out .. "/idx/labels-idx1-ubyte.gz"))

--- image: PNG from D.image.save, PGM/PPM and GIF by hand, the rest from write_images ---------------

local im = out .. "/image/"
local gradient = D.arange(3 * 5 * 7):reshape(3, 5, 7):div(3 * 5 * 7 - 1):mul(2):sub(1)
assert(D.image.save(gradient, im .. "rgb.png"))
assert(D.image.save(gradient[1], im .. "gray.png"))
assert(D.image.save(D.ones(1, 1, 1), im .. "one-pixel.png"))

local function netpbm(path, magic, w, h, c)
  local body = {}
  for i = 1, w * h * c do body[i] = string.char((i * 41) % 256) end
  write(path, string.format("%s\n%d %d\n255\n", magic, w, h) .. table.concat(body))
end
netpbm(im .. "gray.pgm", "P5", 4, 3, 1)
netpbm(im .. "rgb.ppm", "P6", 3, 2, 3)

-- A 4x2 GIF of a 4-colour palette. Its LZW stream sends a clear code before
-- every two pixels, so the codes stay 3 bits wide: easy to write by hand.
do
  local bits, nbits, bytes = 0, 0, {}
  local function put(code)
    bits = bits | (code << nbits)
    nbits = nbits + 3
    while nbits >= 8 do
      bytes[#bytes + 1] = string.char(bits & 255)
      bits, nbits = bits >> 8, nbits - 8
    end
  end
  local image = { 0, 1, 2, 3, 3, 2, 1, 0 }
  for i = 1, #image, 2 do
    put(4)
    put(image[i])
    put(image[i + 1])
  end
  put(5)
  if nbits > 0 then bytes[#bytes + 1] = string.char(bits & 255) end
  local lzw = table.concat(bytes)
  write(im .. "palette.gif", "GIF89a" .. string.pack("<I2I2BBB", 4, 2, 0x81, 0, 0)
    .. "\0\0\0\255\0\0\0\255\0\0\0\255" -- black, red, green, blue
    .. "," .. string.pack("<I2I2I2I2B", 0, 0, 4, 2, 0) .. "\2" .. string.char(#lzw) .. lzw .. "\0;")
end

if write_images then sh(q(write_images) .. " " .. q(im)) end

-- every image seed must decode, or it seeds nothing but an error path
for _, name in ipairs(D.list_dir(im)) do
  assert(D.image.load(im .. name), "seed " .. name .. " does not load")
end
for _, name in ipairs(D.list_dir(st)) do assert(D.load_safetensors(st .. name)) end
for _, name in ipairs(D.list_dir(out .. "/idx")) do assert(D.load_idx(out .. "/idx/" .. name)) end
print("seeds written to " .. out)
