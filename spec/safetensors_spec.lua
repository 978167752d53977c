-- safetensors checkpoints: D.save_safetensors / D.load_safetensors.
-- Round trips (shapes, metadata, non-contiguous inputs, many tensors, exact
-- bytes), files written by this spec's own byte writer (F32, F16, BF16 by
-- hand), every malformed file with its message, and saves that fail
-- leaving the old file byte-identical and no temporary file behind.
local D = require "diffusion"
local H = require "helpers"

--- helpers ----------------------------------------------------------------

-- A safetensors file from a header string and raw data, as the format says.
local function st_file(header, data)
  return string.pack("<I8", #header) .. header .. (data or "")
end

local function f32(...)
  local out = {}
  for i, v in ipairs({ ... }) do out[i] = string.pack("<f", v) end
  return table.concat(out)
end

local function u16(...)
  local out = {}
  for i, v in ipairs({ ... }) do out[i] = string.pack("<I2", v) end
  return table.concat(out)
end

local function assert_same_tensor(expected, actual, label)
  assert(actual, (label or "tensor") .. " is missing")
  assert.are.same(expected:shape(), actual:shape(), label)
  local e, a = H.values(expected), H.values(actual)
  assert.are.equal(#e, #a, label)
  for i = 1, #e do
    if e[i] ~= a[i] and not (e[i] ~= e[i] and a[i] ~= a[i]) then
      error(("%s: element %d: expected %.9g, got %.9g"):format(label or "tensor", i, e[i], a[i]))
    end
  end
end

local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

describe("safetensors", function()
  local dir

  setup(function() dir = H.temp_dir() end)
  teardown(function() H.remove_tree(dir) end)

  -- a fresh directory per test, so listings show exactly what the test made
  local sub, sub_count = nil, 0
  before_each(function()
    sub_count = sub_count + 1
    sub = dir .. "/t" .. sub_count
    H.mkdir(sub)
  end)

  -- Loads bytes written to a file in sub; must raise with the path and needles.
  local function load_bad(bytes, needles)
    local path = sub .. "/bad.safetensors"
    H.write_file(path, bytes)
    local msg = H.assert_error_with(needles, D.load_safetensors, path)
    H.assert_has(msg, { "load_safetensors: ", path })
    return msg
  end

  -- A header string with one F32 tensor entry per {name, shape, offsets}.
  local function entry(name, shape, b, e, dtype)
    return ('"%s":{"dtype":"%s","shape":[%s],"data_offsets":[%d,%d]}'):format(name, dtype or "F32",
      table.concat(shape, ","), b, e)
  end

  describe("round trips", function()
    it("keeps shapes and values exactly, 0-d and zero-size included, and returns true", function()
      D.manual_seed(7)
      local ts = {
        scalar = D.tensor(3.25),
        vec = D.randn(5),
        mat = D.randn(3, 4),
        cube = D.randn(2, 3, 4),
        eight = D.randn(1, 2, 1, 2, 1, 2, 1, 2),
        empty = D.zeros(0),
        empty3 = D.zeros(2, 0, 3),
        special = D.tensor({ 0 / 0, math.huge, -math.huge, -0.0, 1e-45, 3.4e38 }),
      }
      local path = sub .. "/a.safetensors"
      assert.are.equal(true, D.save_safetensors(path, ts))
      local back, meta = D.load_safetensors(path)
      assert.are.same({}, meta)
      assert.are.equal(count(ts), count(back))
      for name, t in pairs(ts) do assert_same_tensor(t, back[name], name) end
      assert.are.equal(0, back.scalar:dim())
      assert.are.equal(3.25, back.scalar:item())
      assert.are.same({ 2, 0, 3 }, back.empty3:shape())
      assert.are.equal(-math.huge, 1 / back.special[4]) -- -0 kept
      assert.are.same({ "a.safetensors" }, H.listdir(sub))
    end)

    it("an empty table makes a valid 16-byte file", function()
      local path = sub .. "/e.safetensors"
      assert.is_true(D.save_safetensors(path, {}))
      assert.are.equal(string.pack("<I8", 8) .. "{}      ", H.read_file(path))
      local t, m = D.load_safetensors(path)
      assert.are.same({}, t)
      assert.are.same({}, m)
    end)

    it("writes exactly the bytes the format prescribes, names sorted, header padded to 8", function()
      local path = sub .. "/x.safetensors"
      D.save_safetensors(path, { b = D.tensor({ 1, 2 }), a = D.tensor({ { 0.5 }, { -3 } }) }, { step = 12, note = "hi" })
      local header = '{"__metadata__":{"note":"hi","step":"12"},' .. entry("a", { 2, 1 }, 0, 8) .. ","
        .. entry("b", { 2 }, 8, 16) .. "}"
      header = header .. string.rep(" ", (8 - #header % 8) % 8)
      assert.are.equal(0, #header % 8)
      assert.are.equal(st_file(header, f32(0.5, -3, 1, 2)), H.read_file(path))
    end)

    it("the same tensors make the same bytes whatever the table's insertion order", function()
      local names = {}
      for i = 1, 40 do names[i] = ("w%02d"):format(i) end
      local tensors = {}
      for i, n in ipairs(names) do tensors[n] = D.full({ i % 3 + 1 }, i) end
      local p1, p2 = sub .. "/1.st", sub .. "/2.st"
      local forward, backward = {}, {}
      for i = 1, #names do forward[names[i]] = tensors[names[i]] end
      for i = #names, 1, -1 do backward[names[i]] = tensors[names[i]] end
      D.save_safetensors(p1, forward, { z = "1", a = "2" })
      D.save_safetensors(p2, backward, { a = "2", z = "1" })
      assert.are.equal(H.read_file(p1), H.read_file(p2))
    end)

    it("pads the header to a multiple of 8 for every name length", function()
      for len = 1, 17 do
        local path = sub .. "/p" .. len
        D.save_safetensors(path, { [string.rep("n", len)] = D.ones(1) })
        local s = H.read_file(path)
        local n = string.unpack("<I8", s)
        assert.are.equal(0, n % 8, "name length " .. len)
        assert.are.equal(8 + n + 4, #s)
        assert.truthy(s:sub(9, 8 + n):match("^{.*} *$"))
        assert.are.equal(1, D.load_safetensors(path)[string.rep("n", len)][1])
      end
    end)

    it("metadata: strings kept, numbers converted with tostring", function()
      local path = sub .. "/m.safetensors"
      local meta = { epoch = 3, lr = 0.5, big = 1e20, name = "unet \"v2\"\n\t\\ é 😀", [7] = "seven", empty = "" }
      D.save_safetensors(path, { w = D.ones(2) }, meta)
      local t, m = D.load_safetensors(path)
      assert.are.same({ epoch = "3", lr = "0.5", big = tostring(1e20), name = "unet \"v2\"\n\t\\ é 😀",
        ["7"] = "seven", empty = "" }, m)
      assert_same_tensor(D.ones(2), t.w, "w")
    end)

    it("names with quotes, escapes, control characters and non-ASCII round trip", function()
      local path = sub .. "/n.safetensors"
      local names = { 'a"b', "back\\slash", "line\nbreak", "tab\t", "\1ctl", "é", "😀", "model.down.0.conv.weight" }
      local ts = {}
      for i, n in ipairs(names) do ts[n] = D.full({ i }, i) end
      D.save_safetensors(path, ts)
      local back = D.load_safetensors(path)
      assert.are.equal(#names, count(back))
      for i, n in ipairs(names) do assert_same_tensor(D.full({ i }, i), back[n], n) end
    end)

    it("non-contiguous inputs (transposed, strided, expanded, selected) save their values", function()
      D.manual_seed(3)
      local base = D.randn(4, 6)
      local ts = {
        t = base:t(),
        s = base:slice(2, 1, 6, 2),
        e = D.tensor({ 1, 2, 3 }):view(3, 1):expand(3, 4),
        c = base:select(2, 3),
        p = D.randn(2, 3, 4):permute(3, 1, 2),
      }
      for n, x in pairs(ts) do assert(n == "c" or not x:is_contiguous(), n .. " should be non-contiguous") end
      local p1, p2 = sub .. "/nc.st", sub .. "/c.st"
      D.save_safetensors(p1, ts)
      local contiguous = {}
      for n, x in pairs(ts) do contiguous[n] = x:contiguous() end
      D.save_safetensors(p2, contiguous)
      assert.are.equal(H.read_file(p2), H.read_file(p1))
      local back = D.load_safetensors(p1)
      for n, x in pairs(ts) do assert_same_tensor(x, back[n], n) end
      assert.are.same({ { 1, 1, 1, 1 }, { 2, 2, 2, 2 }, { 3, 3, 3, 3 } }, back.e:totable())
    end)

    it("a tensor that requires grad saves its values; loaded tensors are plain", function()
      local path = sub .. "/g.st"
      local w = D.tensor({ 1, 2, 3 }):requires_grad_()
      D.save_safetensors(path, { w = w, y = w * 2 })
      local back = D.load_safetensors(path)
      assert.are.same({ 1, 2, 3 }, back.w:totable())
      assert.are.same({ 2, 4, 6 }, back.y:totable())
    end)

    it("1000 tensors", function()
      D.manual_seed(11)
      local ts = {}
      for i = 1, 1000 do ts[("layer%04d.weight"):format(i)] = D.randn(i % 5, i % 3 + 1) end
      local path = sub .. "/many.safetensors"
      D.save_safetensors(path, ts)
      local back = D.load_safetensors(path)
      assert.are.equal(1000, count(back))
      for n, x in pairs(ts) do assert_same_tensor(x, back[n], n) end
    end)

    it("overwrites an existing file and leaves no temporary file", function()
      local path = sub .. "/ck.safetensors"
      D.save_safetensors(path, { a = D.ones(3) })
      D.save_safetensors(path, { b = D.zeros(2) }, { v = "2" })
      local t, m = D.load_safetensors(path)
      assert.is_nil(t.a)
      assert.are.same({ 0, 0 }, t.b:totable())
      assert.are.same({ v = "2" }, m)
      assert.are.same({ "ck.safetensors" }, H.listdir(sub))
    end)
  end)

  describe("files from an independent writer", function()
    it("reads F32, F16 and BF16 (exact conversions, subnormals, infinities, NaN)", function()
      -- offsets not in name order: "z" comes first in the data
      local header = "{" .. entry("z", { 2, 2 }, 0, 16) .. ","
        .. entry("h", { 10 }, 16, 36, "F16") .. ","
        .. entry("b", { 2, 3 }, 36, 48, "BF16") .. "}"
      local data = f32(1.5, -2.25, 3e38, 0.1)
        .. u16(0x3C00, 0xC100, 0x0001, 0x03FF, 0x7C00, 0xFC00, 0x7BFF, 0x8000, 0x7E00, 0x3555)
        .. u16(0x3F80, 0xC020, 0x7F80, 0x3DCD, 0x0001, 0xFF80)
      local path = sub .. "/ind.safetensors"
      H.write_file(path, st_file(header, data))
      local t, m = D.load_safetensors(path)
      assert.are.same({}, m)
      assert.are.same({ 2, 2 }, t.z:shape())
      local z = H.values(t.z)
      assert.are.equal(1.5, z[1])
      assert.are.equal(-2.25, z[2])
      assert.are.equal(string.unpack("<f", string.pack("<f", 3e38)), z[3])
      assert.are.equal(string.unpack("<f", string.pack("<f", 0.1)), z[4])
      local h = H.values(t.h)
      assert.are.equal(1.0, h[1])
      assert.are.equal(-2.5, h[2])
      assert.are.equal(2.0 ^ -24, h[3])       -- smallest subnormal
      assert.are.equal(1023 * 2.0 ^ -24, h[4]) -- largest subnormal
      assert.are.equal(math.huge, h[5])
      assert.are.equal(-math.huge, h[6])
      assert.are.equal(65504, h[7])            -- largest finite half
      assert.are.equal(0, h[8])
      assert.are.equal(-math.huge, 1 / h[8])   -- -0
      assert.is_true(h[9] ~= h[9])             -- NaN
      assert.are.equal(1365 / 4096, h[10])     -- 0x3555 = 0.333251953125
      assert.are.same({ 2, 3 }, t.b:shape())
      local b = H.values(t.b)
      assert.are.equal(1.0, b[1])
      assert.are.equal(-2.5, b[2])
      assert.are.equal(math.huge, b[3])
      assert.are.equal(0.10009765625, b[4])
      assert.are.equal(2.0 ^ -133, b[5])       -- a float subnormal
      assert.are.equal(-math.huge, b[6])
    end)

    it("accepts whitespace, any key order, escapes, unknown entry keys, 0-d and zero-size tensors", function()
      local header = ' { "__metadata__" : { "format" : "pt", "\\u00e9" : "\\ud83d\\ude00" } ,\n'
        .. '\t"n\\u00e9\\"q\\"\\/" : { "shape" : [ ] , "extra": {"deep": [1, -2.5e3, true, null, "x"]},'
        .. ' "data_offsets" : [ 0 , 4 ] , "dtype" : "F32" } ,\r\n'
        .. '"e": {"dtype": "F16", "shape": [3, 0], "data_offsets": [4, 4]},'
        .. '"e2": {"dtype": "BF16", "shape": [0], "data_offsets": [4, 4]}'
        .. ' }      '
      local path = sub .. "/ws.safetensors"
      H.write_file(path, st_file(header, f32(42)))
      local t, m = D.load_safetensors(path)
      assert.are.same({ format = "pt", ["é"] = "😀" }, m)
      local x = t['né"q"/']
      assert.are.equal(0, x:dim())
      assert.are.equal(42, x:item())
      assert.are.same({ 3, 0 }, t.e:shape())
      assert.are.same({ 0 }, t.e2:shape())
    end)

    it("an empty header object", function()
      local path = sub .. "/empty.st"
      H.write_file(path, st_file("{}"))
      local t, m = D.load_safetensors(path)
      assert.are.same({}, t)
      assert.are.same({}, m)
    end)
  end)

  describe("bad files", function()
    it("a missing file gives nil and a message", function()
      local path = sub .. "/nope.safetensors"
      local t, msg = D.load_safetensors(path)
      assert.is_nil(t)
      assert.are.equal("load_safetensors: cannot open " .. path .. ": No such file or directory", msg)
    end)

    it("a directory is not a checkpoint", function()
      H.assert_error_with({ sub, "is not a regular file" }, D.load_safetensors, sub)
    end)

    it("a file too short for the header length", function()
      load_bad("", "too short for a safetensors file (0 bytes")
      load_bad("abcdefg", "too short for a safetensors file (7 bytes")
    end)

    it("a file cut anywhere fails with the right message", function()
      local path = sub .. "/good.safetensors"
      D.save_safetensors(path, { a = D.randn(3, 2), b = D.ones(4), c = D.tensor(5) }, { k = "v" })
      local s = H.read_file(path)
      local n = string.unpack("<I8", s)
      for cut = 0, #s - 1 do
        local needle = cut < 8 and "too short" or cut < 8 + n and ("header length %d runs past the end of the file (%d bytes)"):format(n, cut)
          or "run past the data area"
        load_bad(s:sub(1, cut), needle)
      end
      -- and the whole file still loads
      assert.are.equal(5, D.load_safetensors(path).c:item())
    end)

    it("a header length larger than the file", function()
      load_bad(string.pack("<I8", 1000) .. "{}", "header length 1000 runs past the end of the file (10 bytes)")
      load_bad(string.pack("<I8", 9) .. "{}      ", "header length 9 runs past the end of the file (16 bytes)")
    end)

    it("a header claiming more than 100 MB", function()
      load_bad(string.pack("<I8", 100000001) .. "{}", "header length 100000001 exceeds the limit of 100000000 bytes")
      load_bad(string.pack("<i8", -1) .. "{}", "header length 18446744073709551615 exceeds the limit")
      load_bad(string.pack("<I8", 1 << 40) .. "{}", "exceeds the limit")
    end)

    it("invalid JSON, naming the byte", function()
      local good = entry("a", { 1 }, 0, 4)
      local cases = {
        { "", "at byte 0: expected '{' at the start of the header, got the end of the header" },
        { "[]", "at byte 0: expected '{' at the start of the header, got an array" },
        { "  x", "at byte 2: expected '{'" },
        { "{" .. good .. ",}", "at byte " .. (#good + 2) .. ": expected a string, got an invalid character" },
        { '{"a" 1}', "at byte 5: expected ':' after an object key, got a number" },
        { '{"a":{"dtype":"F32"', "expected '}' or ',' in an object, got the end of the header" },
        { '{"a":{"dtype":"F32" "shape":[1]}}', "at byte 20: expected '}' or ',' in an object, got a string" },
        { '{"ab', "at byte 1: unterminated string" },
        { '{"a\\x":{}}', "at byte 3: invalid escape '\\x'" },
        { '{"a\nb":{}}', "at byte 3: control character 0x0a in a string" },
        { '{"\255":{}}', "at byte 2: invalid UTF-8" },
        { '{"\192\128":{}}', "at byte 2: invalid UTF-8" }, -- overlong NUL
        { '{"\237\160\128":{}}', "invalid UTF-8" },         -- encoded surrogate
        { '{"\\udc00":{}}', "at byte 2: \\u escape is a lone low surrogate" },
        { '{"\\ud800x":{}}', "at byte 2: \\u escape is a high surrogate without its low half" },
        { '{"\\u12g4":{}}', "at byte 6: \\u escape needs 4 hex digits" },
        { "{'a':1}", "at byte 1: expected a string, got an invalid character" },
        { '{"a":{"dtype":"F32","shape":[01],"data_offsets":[0,4]}}', "at byte 29: tensor \"a\": shape[0]: a number must not have a leading zero" },
        { '{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}', "shape[0] must be an integer, got a fraction or exponent" },
        { '{"a":{"dtype":"F32","shape":[1e0],"data_offsets":[0,4]}}', "shape[0] must be an integer, got a fraction or exponent" },
        { '{"a":{"dtype":"F32","shape":[1,],"data_offsets":[0,4]}}', "shape[1] must be an integer, got an invalid character" },
        { '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,99999999999999999999]}}', "data_offsets[1] is out of range" },
        { '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":tru}}', "expected a value, got a boolean" },
        { '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":[1 2]}}', "expected ']' or ',' in an array, got a number" },
        { '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":-}}', "invalid number" },
        { '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":' .. string.rep("[", 100) .. string.rep("]", 100) .. "}}",
          "values nested deeper than 64" },
        { "{} x", "at byte 3: unexpected data after the header object" },
        { "{}}", "at byte 2: unexpected data after the header object" },
        { "{}\0\0\0\0\0\0", "at byte 2: unexpected data after the header object" },
      }
      for _, c in ipairs(cases) do
        local h = c[1]
        -- a data area of 4 bytes, so entries like `good` are otherwise valid
        load_bad(st_file(h, f32(1)), { "invalid header", c[2] })
      end
    end)

    it("wrong types in the header", function()
      local cases = {
        { '{"a":[1]}', 'tensor "a" must be an object, got an array' },
        { '{"a":"x"}', 'tensor "a" must be an object, got a string' },
        { '{"a":{"dtype":4,"shape":[1],"data_offsets":[0,4]}}', 'tensor "a": dtype must be a string, got a number' },
        { '{"a":{"dtype":"F32","shape":"1","data_offsets":[0,4]}}', 'tensor "a": shape must be an array, got a string' },
        { '{"a":{"dtype":"F32","shape":["1"],"data_offsets":[0,4]}}', 'tensor "a": shape[0] must be an integer, got a string' },
        { '{"a":{"dtype":"F32","shape":[1],"data_offsets":{}}}', 'tensor "a": data_offsets must be an array, got an object' },
        { '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}}', 'tensor "a": data_offsets must be [begin, end], got 1 numbers' },
        { '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}', 'tensor "a": data_offsets has more than 2 elements' },
        { '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,null]}}', 'data_offsets[1] must be an integer, got null' },
        { '{"a":{"shape":[1],"data_offsets":[0,4]}}', 'tensor "a" has no dtype' },
        { '{"a":{"dtype":"F32","data_offsets":[0,4]}}', 'tensor "a" has no shape' },
        { '{"a":{"dtype":"F32","shape":[1]}}', 'tensor "a" has no data_offsets' },
        { '{"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 'tensor "a" has two "dtype" keys' },
        { '{"__metadata__":[],"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', "__metadata__ must be an object, got an array" },
        { '{"__metadata__":{"k":1}}', '__metadata__ values must be strings; "k" is a number' },
        { '{"__metadata__":{"k":{}}}', '__metadata__ values must be strings; "k" is an object' },
        { '{"__metadata__":{"k":"1","k":"2"}}', '__metadata__ has the key "k" twice' },
        { '{"__metadata__":{},"__metadata__":{}}', 'the header has two "__metadata__" keys' },
        { '{"__metadata__":{"k\\u0000":"v"}}', "__metadata__ key contains a NUL character" },
        { '{"":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', "at byte 1: a tensor name is empty" },
        { '{"a\\u0000b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', "contains a NUL character" },
      }
      for _, c in ipairs(cases) do load_bad(st_file(c[1], f32(1)), { "invalid header", c[2] }) end
    end)

    it("unknown and unsupported dtypes, naming the dtype", function()
      load_bad(st_file("{" .. entry("w", { 1 }, 0, 4, "F33") .. "}", f32(1)), 'tensor "w" has unknown dtype "F33"')
      load_bad(st_file("{" .. entry("w", { 1 }, 0, 4, "f32") .. "}", f32(1)), 'unknown dtype "f32"')
      load_bad(st_file("{" .. entry("w", { 1 }, 0, 8, "F64") .. "}", f32(1, 2)),
        'tensor "w" has dtype F64; only F32, F16 and BF16 can be loaded')
      load_bad(st_file("{" .. entry("w", { 4 }, 0, 4, "U8") .. "}", f32(1)), "has dtype U8")
      load_bad(st_file("{" .. entry("w", { 1 }, 0, 8, "I64") .. "}", f32(1, 2)), "has dtype I64")
    end)

    it("offsets outside the data area, reversed or negative", function()
      load_bad(st_file("{" .. entry("a", { 2 }, 0, 8) .. "}", f32(1)),
        'tensor "a": data_offsets [0, 8] run past the data area (4 bytes)')
      load_bad(st_file("{" .. entry("a", { 1 }, 4, 8) .. "}", f32(1)), "run past the data area (4 bytes)")
      load_bad(st_file("{" .. entry("a", { 0 }, 4, 0) .. "}", f32(1)), 'tensor "a": data_offsets [4, 0] end before they begin')
      load_bad(st_file("{" .. entry("a", { 1 }, -4, 0) .. "}", f32(1)), 'tensor "a": data_offsets must not be negative')
    end)

    it("overlapping, gapped and uncovered byte ranges", function()
      load_bad(st_file("{" .. entry("a", { 2 }, 0, 8) .. "," .. entry("b", { 2 }, 4, 12) .. "}", f32(1, 2, 3)),
        'tensor "b" (data_offsets [4, 12]) overlaps tensor "a"')
      load_bad(st_file("{" .. entry("a", { 1 }, 0, 4) .. "," .. entry("b", { 1 }, 0, 4) .. "}", f32(1)),
        'overlaps tensor "a"')
      load_bad(st_file("{" .. entry("a", { 1 }, 0, 4) .. "," .. entry("b", { 1 }, 8, 12) .. "}", f32(1, 2, 3)),
        'a gap of 4 bytes before tensor "b" (data_offsets [8, 12]); tensors must be contiguous')
      load_bad(st_file("{" .. entry("a", { 1 }, 4, 8) .. "}", f32(1, 2)), 'a gap of 4 bytes before tensor "a"')
      load_bad(st_file("{" .. entry("a", { 1 }, 0, 4) .. "}", f32(1, 2)), "the data area has 4 bytes after the last tensor")
      load_bad(st_file("{}", f32(1)), "the data area has 4 bytes after the last tensor")
    end)

    it("byte sizes that don't match the shape", function()
      load_bad(st_file("{" .. entry("a", { 3 }, 0, 8) .. "}", f32(1, 2)),
        'tensor "a": shape {3} of F32 needs 12 bytes, data_offsets [0, 8] hold 8')
      load_bad(st_file("{" .. entry("h", { 2, 2 }, 0, 4, "F16") .. "}", f32(1)), "shape {2,2} of F16 needs 8 bytes")
      load_bad(st_file("{" .. entry("s", {}, 0, 0) .. "}"), "shape {} of F32 needs 4 bytes, data_offsets [0, 0] hold 0")
      load_bad(st_file("{" .. entry("z", { 0, 5 }, 0, 4) .. "}", f32(1)), "shape {0,5} of F32 needs 0 bytes")
      load_bad(st_file("{" .. entry("o", { 4294967296, 4294967296, 4294967296 }, 0, 4) .. "}", f32(1)),
        'tensor "o": shape {4294967296,4294967296,4294967296} is too large')
    end)

    it("duplicate names, negative dims, too many dims", function()
      load_bad(st_file("{" .. entry("a", { 1 }, 0, 4) .. "," .. entry("a", { 1 }, 4, 8) .. "}", f32(1, 2)),
        'duplicate tensor name "a"')
      load_bad(st_file("{" .. entry("a", { 2, -1 }, 0, 4) .. "}", f32(1)), 'tensor "a": shape has a negative size (-1)')
      load_bad(st_file("{" .. entry("a", { 1, 1, 1, 1, 1, 1, 1, 1, 1 }, 0, 4) .. "}", f32(1)),
        'tensor "a": shape has more than 8 dims')
      -- 8 dims is the limit, not past it
      local path = sub .. "/8d.st"
      H.write_file(path, st_file("{" .. entry("a", { 1, 1, 1, 1, 1, 1, 1, 1 }, 0, 4) .. "}", f32(9)))
      assert.are.equal(8, D.load_safetensors(path).a:dim())
    end)
  end)

  describe("failed saves", function()
    local path, original

    before_each(function()
      path = sub .. "/keep.safetensors"
      D.save_safetensors(path, { w = D.tensor({ 1, 2, 3 }) }, { v = "1" })
      original = H.read_file(path)
    end)

    local function assert_untouched(extra)
      assert.are.equal(original, H.read_file(path))
      local expected = { "keep.safetensors" }
      for _, e in ipairs(extra or {}) do expected[#expected + 1] = e end
      table.sort(expected)
      assert.are.same(expected, H.listdir(sub))
    end

    it("misuse raises and leaves the old file byte-identical", function()
      H.assert_error_with('save_safetensors: tensors["b"] is a string, not a tensor', D.save_safetensors, path,
        { a = D.zeros(2), b = "x" })
      assert_untouched()
      H.assert_error_with('tensors["b"] is a table, not a tensor', D.save_safetensors, path, { b = {} })
      H.assert_error_with("save_safetensors: tensor names must be strings, got a number key", D.save_safetensors, path,
        { D.zeros(1) })
      H.assert_error_with("save_safetensors: a tensor name contains a NUL character", D.save_safetensors, path,
        { ["a\0b"] = D.zeros(1) })
      H.assert_error_with("save_safetensors: a tensor name is empty", D.save_safetensors, path, { [""] = D.zeros(1) })
      H.assert_error_with('"__metadata__" is reserved', D.save_safetensors, path, { __metadata__ = D.zeros(1) })
      H.assert_error_with('save_safetensors: tensor name "\255" is not valid UTF-8', D.save_safetensors, path,
        { ["\255"] = D.zeros(1) })
      H.assert_error_with('save_safetensors: metadata["k"] must be a string or a number, got boolean',
        D.save_safetensors, path, { a = D.zeros(1) }, { k = true })
      H.assert_error_with("save_safetensors: a metadata key must be a string or a number, got boolean",
        D.save_safetensors, path, { a = D.zeros(1) }, { [true] = "x" })
      H.assert_error_with('metadata["k"] contains a NUL character', D.save_safetensors, path, { a = D.zeros(1) },
        { k = "a\0b" })
      H.assert_error_with("metadata value \"\255\" is not valid UTF-8", D.save_safetensors, path, { a = D.zeros(1) },
        { k = "\255" })
      H.assert_error_with({ "bad argument #2 to", "save_safetensors' (table expected, got no value)" },
        D.save_safetensors, path)
      H.assert_error_with({ "bad argument #3 to", "save_safetensors' (table expected, got number)" },
        D.save_safetensors, path, {}, 5)
      H.assert_error_with({ "bad argument #1 to", "load_safetensors' (string expected, got no value)" },
        D.load_safetensors)
      assert_untouched()
    end)

    it("a directory that doesn't exist raises", function()
      local ok, msg = pcall(D.save_safetensors, sub .. "/missing/x.safetensors", { w = D.zeros(1) })
      assert.is_false(ok)
      H.assert_has(msg, { "save_safetensors: cannot create a temporary file for " .. sub
        .. "/missing/x.safetensors: No such file or directory" })
      assert_untouched()
    end)

    it("a failed rename removes the written temporary file", function()
      -- the target is a non-empty directory: everything is written, then rename fails
      local target = sub .. "/target"
      assert(os.execute("mkdir '" .. target .. "' && touch '" .. target .. "/inside'"))
      local ok, msg = pcall(D.save_safetensors, target, { w = D.ones(1000) })
      assert.is_false(ok)
      H.assert_has(msg, { "save_safetensors: cannot replace " .. target .. ": " })
      assert_untouched({ "target" })
      assert.are.same({ "inside" }, H.listdir(target))
    end)
  end)
end)
