-- Hostile files through the public Lua API.
--
-- 1. Replays the fuzzers' seeds (spec/fuzz/corpus/<harness>/, which must
--    load) and every input a fuzzer ever flagged (spec/fuzz/regressions/
--    <harness>/, written there by `make fuzz`): each gives a clean result or a
--    clean Lua error naming the function, never a crash.
-- 2. A table of hostile inputs, one kind each, and the error each gets
--    (docs/robustness.md lists them).
-- 3. Seeded random mutations of a checkpoint's typed metadata, which
--    lua/diffusion/checkpoint.lua decodes in Lua (the C header parser has its
--    own fuzzer, spec/fuzz/fuzz_header.c).
local D = require "diffusion"
local H = require "helpers"

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec"
local FUZZ = here .. "/fuzz"

local function files_in(dir)
  local names = D.list_dir(dir) or {}
  local out = {}
  for _, name in ipairs(names) do
    if name:sub(1, 1) ~= "." then out[#out + 1] = dir .. "/" .. name end
  end
  return out
end

-- pcall(fn, ...) must succeed, or fail with a string naming `api`.
local function clean(api, fn, ...)
  local ok, res, err = pcall(fn, ...)
  if ok then return true, res, err end
  assert.are.equal("string", type(res), api .. " raised a " .. type(res))
  assert(res:find(api, 1, true), string.format("the error does not name %s: %s", api, res))
  return false, res
end

local function framed(header, data)
  return string.pack("<I8", #header) .. header .. (data or "")
end

-- The same bytes fuzz_header.c builds from an input: byte 0 = data length,
-- the rest the header, then a fixed byte pattern.
local function frame_header_input(bytes)
  local n = bytes:byte(1) or 0
  local data = {}
  for i = 0, n - 1 do data[#data + 1] = string.char((i * 37 + 11) % 256) end
  return framed(bytes:sub(2), table.concat(data))
end

describe("fuzz regressions and seeds", function()
  local dir
  setup(function() dir = H.temp_dir() end)
  teardown(function() H.remove_tree(dir) end)

  local loaders = {
    safetensors = function(path)
      local ok = clean("load_safetensors", D.load_safetensors, path)
      clean("checkpoint.load", D.checkpoint.load, path)
      return ok
    end,
    header = function(path)
      local file = dir .. "/framed.safetensors"
      H.write_file(file, frame_header_input(H.read_file(path)))
      return (clean("load_safetensors", D.load_safetensors, file))
    end,
    idx = function(path)
      local ok = clean("load_idx", D.load_idx, path)
      local gz = dir .. "/data.gz"
      assert(os.execute(string.format("gzip -n -c '%s' > '%s'", path, gz)))
      clean("load_idx", D.load_idx, gz)
      return ok
    end,
    image = function(path)
      local ok = clean("image.load", D.image.load, path)
      for _, channels in ipairs{ 1, 3 } do
        clean("image.load", D.image.load, path, { channels = channels, max_pixels = 1 << 20, range = "[0,1]" })
      end
      return ok
    end,
  }

  for _, harness in ipairs{ "safetensors", "header", "idx", "image" } do
    it(harness .. ": every seed loads", function()
      local seeds = files_in(FUZZ .. "/corpus/" .. harness)
      assert.is_true(#seeds >= 3, "too few seeds for " .. harness)
      for _, path in ipairs(seeds) do assert(loaders[harness](path), "seed " .. path .. " does not load") end
    end)

    it(harness .. ": every regression input gives a result or a clean error", function()
      for _, path in ipairs(files_in(FUZZ .. "/regressions/" .. harness)) do loaders[harness](path) end
    end)
  end

  it("the checkpoint seed loads as a checkpoint with its typed values", function()
    local ck = D.checkpoint.load(FUZZ .. "/corpus/safetensors/checkpoint.safetensors")
    assert.are.equal(12, ck.step)
    assert.are.equal("run \"one\"\n", ck.name)
    assert.are.same({ 1, 2 }, ck.config.mult)
    assert.are.equal(true, ck.flags.ema)
  end)
end)

--- hostile inputs, one kind each -----------------------------------------------------------------------

local function st_entry(name, dtype, shape, b, e)
  return string.format('"%s":{"dtype":"%s","shape":[%s],"data_offsets":[%d,%d]}', name, dtype,
    table.concat(shape, ","), b, e)
end

-- { what, api, make(path) -> writes the file, or a load function, needles }
local HOSTILE = {
  -- safetensors
  { "empty file", "safetensors", "", "too short for a safetensors file" },
  { "header length over 100 MB", "safetensors", string.pack("<I8", 200000000) .. "{}",
    "exceeds the limit of 100000000 bytes (100 MB)" },
  { "header length past the end of the file", "safetensors", string.pack("<I8", 64) .. "{}",
    "runs past the end of the file" },
  { "invalid JSON (trailing comma)", "safetensors", framed('{"__metadata__":{"a":"b",}}'),
    "invalid header at byte 25" },
  { "header that is not an object", "safetensors", framed("[]"), "expected '{' at the start of the header" },
  { "invalid UTF-8 in a name", "safetensors", framed('{"\255x":{}}'), "invalid UTF-8 in a string" },
  { "NUL escaped into a name", "safetensors", framed('{"a\\u0000b":' .. '{"dtype":"F32","shape":[],"data_offsets":[0,4]}}', "\0\0\0\0"),
    "contains a NUL character" },
  { "unknown dtype", "safetensors", framed("{" .. st_entry("w", "F99", { 1 }, 0, 4) .. "}", "\0\0\0\0"),
    'unknown dtype "F99"' },
  { "unsupported dtype", "safetensors", framed("{" .. st_entry("w", "I64", { 1 }, 0, 8) .. "}", string.rep("\0", 8)),
    "has dtype I64; only F32, F16 and BF16 can be loaded" },
  { "negative size in a shape", "safetensors", framed("{" .. st_entry("w", "F32", { -1 }, 0, 0) .. "}"),
    "shape has a negative size (-1)" },
  { "more than 8 dims", "safetensors", framed("{" .. st_entry("w", "F32", { 1, 1, 1, 1, 1, 1, 1, 1, 1 }, 0, 4) .. "}", "\0\0\0\0"),
    "shape has more than 8 dims" },
  { "shape whose byte size overflows", "safetensors",
    framed("{" .. st_entry("w", "F32", { 4294967296, 4294967296, 4294967296 }, 0, 0) .. "}"), "is too large" },
  { "byte range that does not match dtype x shape", "safetensors", framed("{" .. st_entry("w", "F32", { 3 }, 0, 8) .. "}", string.rep("\0", 8)),
    "needs 12 bytes, data_offsets [0, 8] hold 8" },
  { "offsets past the data area", "safetensors", framed("{" .. st_entry("w", "F32", { 4 }, 0, 16) .. "}", "\0\0\0\0"),
    "run past the data area (4 bytes)" },
  { "end offset before the begin offset", "safetensors", framed("{" .. st_entry("w", "F32", { 0 }, 4, 0) .. "}", "\0\0\0\0"),
    "end before they begin" },
  { "overlapping tensors", "safetensors",
    framed("{" .. st_entry("a", "F32", { 2 }, 0, 8) .. "," .. st_entry("b", "F32", { 2 }, 4, 12) .. "}", string.rep("\0", 12)),
    'overlaps tensor "a"' },
  { "a gap between tensors", "safetensors",
    framed("{" .. st_entry("a", "F32", { 1 }, 0, 4) .. "," .. st_entry("b", "F32", { 1 }, 8, 12) .. "}", string.rep("\0", 12)),
    'a gap of 4 bytes before tensor "b"' },
  { "duplicate tensor names", "safetensors",
    framed("{" .. st_entry("a", "F32", { 1 }, 0, 4) .. "," .. st_entry("a", "F32", { 1 }, 4, 8) .. "}", string.rep("\0", 8)),
    'duplicate tensor name "a"' },
  { "bytes after the last tensor", "safetensors", framed("{" .. st_entry("a", "F32", { 1 }, 0, 4) .. "}", string.rep("\0", 9)),
    "the data area has 5 bytes after the last tensor" },
  { "JSON nested 100 deep", "safetensors",
    framed('{"w":{"dtype":"F32","shape":[],"data_offsets":[0,4],"x":' .. string.rep("[", 100) .. string.rep("]", 100) .. "}}", "\0\0\0\0"),
    "values nested deeper than 64" },
  { "a metadata value that is not a string", "safetensors", framed('{"__metadata__":{"step":12}}'),
    '__metadata__ values must be strings; "step" is a number' },
  -- checkpoint metadata (decoded in Lua)
  { "a safetensors file that is not a checkpoint", "checkpoint", framed('{"__metadata__":{"a":"b"}}'),
    "is not a diffusion checkpoint" },
  { "a typed value of an unknown kind", "checkpoint",
    framed('{"__metadata__":{"__format":"diffusion-checkpoint-1","lr":"q:1"}}'), 'metadata lr holds an invalid value "q:1"' },
  { "a number that is not a number", "checkpoint",
    framed('{"__metadata__":{"__format":"diffusion-checkpoint-1","lr":"n:0x1p"}}'), 'metadata lr holds an invalid value "n:0x1p"' },
  { "an entry inside a value", "checkpoint",
    framed('{"__metadata__":{"__format":"diffusion-checkpoint-1","a":"n:1","a/b":"n:2"}}'), "is inside a value" },
  { "an empty path component", "checkpoint",
    framed('{"__metadata__":{"__format":"diffusion-checkpoint-1","a//b":"n:1"}}'), 'bad entry name "a//b"' },
  -- IDX
  { "IDX with a bad magic", "idx", "PK\3\4", "is not an IDX file (bad magic 50 4b)" },
  { "IDX of another data type", "idx", "\0\0\13\1" .. string.pack(">I4", 1) .. "\0\0\0\0", "data type 0x0d" },
  { "IDX with 9 dims", "idx", "\0\0\8\9", "declares 9 dims (1 to 8 allowed)" },
  { "IDX header claiming more data than the file holds", "idx", "\0\0\8\2" .. string.pack(">I4>I4", 60000, 784) .. "abc",
    "is truncated: shape {60000,784} needs 47040000 bytes of data, the file has 3" },
  { "IDX dims whose product overflows", "idx", "\0\0\8\3" .. string.pack(">I4>I4>I4", 4294967295, 4294967295, 4294967295),
    "is too large to allocate" },
  { "empty IDX with huge other dims (strides overflow)", "idx",
    "\0\0\8\3" .. string.pack(">I4>I4>I4", 0, 4294967295, 4294967295), "is too large to allocate" },
  { "IDX with trailing data", "idx", "\0\0\8\1" .. string.pack(">I4", 2) .. "abc",
    "has data after the 2 bytes its header declares" },
  -- images
  { "empty image file", "image", "", "unknown image type: the file is empty" },
  { "text file named .png", "image", "hello, this is not an image\n", "unknown image type" },
  { "TGA file (refused format)", "image", "\0\0\2\0\0\0\0\0\0\0\0\0\1\0\1\0\24\0\255\0\0", "unknown image type" },
  { "HDR file (refused format)", "image", "#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 1 +X 1\n\0\0\0\0",
    "unknown image type" },
  { "BMP header claiming 100000 x 100000", "image",
    "BM" .. string.pack("<I4I2I2I4I4i4i4I2I2I4I4i4i4I4I4", 54, 0, 0, 54, 40, 100000, 100000, 1, 24, 0, 0, 0, 0, 0, 0),
    "over the cap of " .. (64 << 20) },
  { "BMP with sizes near 2^31 (w * h * c overflows)", "image",
    "BM" .. string.pack("<I4I2I2I4I4i4i4I2I2I4I4i4i4I4I4", 54, 0, 0, 54, 40, 0x7f7f7f7f, 0x7f7f7f7f, 1, 24, 0, 0, 0, 0, 0, 0),
    "over the cap of" },
  { "PNG chunk claiming 2 GB", "image",
    "\137PNG\r\n\26\n" .. string.pack(">I4", 13) .. "IHDR" .. string.pack(">I4>I4BBBBB", 1, 1, 8, 0, 0, 0, 0) .. "\0\0\0\0"
      .. string.pack(">I4", 0x7fffffff) .. "IDAT" .. "xx",
    'corrupt PNG: chunk "IDAT" at byte 33 declares 2147483647 bytes, past the end of the file' },
  { "JPEG Huffman table with over 256 codes", "image",
    "\255\216\255\196" .. string.pack(">I2", 19) .. "\0" .. string.rep("\255", 16), "a Huffman table declares 4080 codes" },
  { "JPEG scan using a Huffman table it never defines", "image",
    "\255\216\255\192" .. string.pack(">I2BI2I2BBBB", 11, 8, 8, 8, 1, 1, 0x11, 0)
      .. "\255\218" .. string.pack(">I2BBBBBB", 8, 1, 1, 0, 0, 63, 0) .. "\0\255\217",
    "a scan uses Huffman table DC 0, which is not defined before it" },
  { "PNM width with 12 digits", "image", "P5\n999999999999 1\n255\n\0", "corrupt PNM: its width is over 16777216" },
}

describe("hostile inputs", function()
  local dir
  setup(function() dir = H.temp_dir() end)
  teardown(function() H.remove_tree(dir) end)

  local load = {
    safetensors = function(p) return D.load_safetensors(p) end,
    checkpoint = function(p) return D.checkpoint.load(p) end,
    idx = function(p) return D.load_idx(p) end,
    image = function(p) return D.image.load(p) end,
  }

  it("covers at least 20 kinds", function() assert.is_true(#HOSTILE >= 20) end)

  for i, case in ipairs(HOSTILE) do
    local what, kind, bytes, needle = case[1], case[2], case[3], case[4]
    it(kind .. ": " .. what .. " -> " .. needle, function()
      local path = string.format("%s/case%d", dir, i)
      H.write_file(path, bytes)
      local before = H.settled()
      H.assert_error_with({ path, needle }, load[kind], path)
      assert.are.equal(before, D.memory_allocated()) -- nothing kept from a refused file
    end)
  end

  it("the image cap is configurable: per call, and through D.image.MAX_VALUES", function()
    local path = dir .. "/cap.png"
    assert(D.image.save(D.zeros(3, 4, 4), path))
    H.assert_error_with("over the cap of 47", D.image.load, path, { max_pixels = 47 })
    local default = D.image.MAX_VALUES
    finally(function() D.image.MAX_VALUES = default end)
    D.image.MAX_VALUES = 47
    H.assert_error_with("48 values, over the cap of 47", D.image.load, path)
    D.image.MAX_VALUES = 48
    assert.are.same({ 3, 4, 4 }, D.image.load(path):shape())
    D.image.MAX_VALUES = 0
    H.assert_error_with("image.MAX_VALUES must be a positive integer", D.image.load, path)
  end)

  it("a 16-bit PNM converts channels correctly (stb_image's own conversion overread it)", function()
    local path = dir .. "/deep.pgm"
    H.write_file(path, "P5\n2 1\n65535\n" .. string.pack(">I2>I2", 65535, 0))
    local x = D.image.load(path, { channels = 3, range = "[0,255]" })
    assert.are.same({ { { 255, 0 } }, { { 255, 0 } }, { { 255, 0 } } }, x:totable())
  end)

  it("a checkpoint keeps non-finite numbers", function()
    local path = dir .. "/nonfinite.safetensors"
    D.checkpoint.save(path, { best = math.huge, worst = -math.huge, unknown = 0 / 0 })
    local ck = D.checkpoint.load(path)
    assert.are.equal(math.huge, ck.best)
    assert.are.equal(-math.huge, ck.worst)
    assert.is_true(ck.unknown ~= ck.unknown)
  end)
end)

--- checkpoint metadata under random mutation ---------------------------------------------------------

-- Deep equality of loaded checkpoints (tensors by value; NaN equals NaN).
local function same(a, b)
  if type(a) == "number" and type(b) == "number" then return a == b or (a ~= a and b ~= b) end
  if type(a) ~= type(b) then return false end
  if type(a) == "userdata" then return H.ndiff(a, b) == 0 end
  if type(a) ~= "table" then return a == b end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

describe("checkpoint metadata, randomly mutated", function()
  it("500 mutations each load cleanly or fail with a checkpoint.load error, and what loads saves back", function()
    local dir = H.temp_dir()
    finally(function() H.remove_tree(dir) end)
    local base = dir .. "/base.safetensors"
    D.checkpoint.save(base, {
      step = 7, lr = 2e-4, name = "cosine", flag = true, list = { 1, 2, 3 }, empty = {},
      model = { ["conv.weight"] = D.ones(2, 2), [3] = D.zeros(1) }, nested = { deeper = { x = -1.5 } },
    })
    local tensors0, meta0 = D.load_safetensors(base)
    local BODIES = { "", "1", "-0", "1e999", "nan", "inf", "-inf", "0x10", "1.5", "true", "false", "abc", "#", "/", "\n",
                     "9223372036854775807", "9223372036854775808", "-9223372036854775809", "1e-400" }
    local KINDS = { "n", "s", "b", "t", "x", "", "nn" }
    local PARTS = { "a", "#1", "#-1", "#0", "#x", "#", "", "step", "model", "list", "#99999999999999999999", "é" }
    math.randomseed(42)
    local loaded, failed = 0, 0
    for round = 1, 500 do
      local tensors, meta = {}, {}
      for k, v in pairs(tensors0) do tensors[k] = v end
      for k, v in pairs(meta0) do meta[k] = v end
      for _ = 1, math.random(1, 3) do
        local r = math.random(6)
        local keys = {}
        for k in pairs(meta) do keys[#keys + 1] = k end
        table.sort(keys)
        local key = keys[math.random(#keys)]
        if r == 1 then -- a new typed value
          meta[key] = KINDS[math.random(#KINDS)] .. ":" .. BODIES[math.random(#BODIES)]
        elseif r == 2 then -- a new path
          local parts = {}
          for i = 1, math.random(1, 3) do parts[i] = PARTS[math.random(#PARTS)] end
          meta[table.concat(parts, "/")] = "n:1"
        elseif r == 3 then -- a value without its kind
          meta[key] = BODIES[math.random(#BODIES)]
        elseif r == 4 then -- the format tag
          meta.__format = math.random(2) == 1 and "diffusion-checkpoint-2" or nil
        elseif r == 5 then -- a tensor moved under a value, or a value under a tensor
          meta["model/conv.weight/x"] = "n:2"
          if math.random(2) == 1 then tensors["step/w"] = D.ones(1) end
        else
          meta[key] = nil
        end
      end
      local path = string.format("%s/m%d.safetensors", dir, round)
      local saved = pcall(D.save_safetensors, path, tensors, meta)
      if saved then
        local ok, res = pcall(D.checkpoint.load, path)
        if ok then
          loaded = loaded + 1
          assert.is_table(res)
          -- what loads can be saved and loads back the same, or is refused by save
          local again = dir .. "/again.safetensors"
          local ok2, err2 = pcall(D.checkpoint.save, again, res)
          if ok2 then
            assert(same(res, D.checkpoint.load(again)), "round " .. round .. ": a re-saved checkpoint differs")
          else
            assert(tostring(err2):find("checkpoint.save:", 1, true), tostring(err2))
          end
        else
          failed = failed + 1
          assert.are.equal("string", type(res))
          assert(res:find("checkpoint.load: ", 1, true), "round " .. round .. ": " .. res)
        end
      end
    end
    assert.is_true(loaded > 50 and failed > 50, string.format("%d loaded, %d failed", loaded, failed))
  end)
end)
