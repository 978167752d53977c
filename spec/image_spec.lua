-- Images: PNG save/load round trips, the value mapping (rounding, clamping,
-- NaN), grids, BMP and PNG decoding, resize and centre crop, hflip, and
-- every failure: not an image, truncated, empty, over the pixel cap, bad
-- tensors, unwritable paths, atomic replacement.
local D = require "diffusion"
local image = require "diffusion.image"
local H = require "helpers"

local NAN, INF = 0 / 0, math.huge

--- helpers ----------------------------------------------------------------

-- A tensor of the given shape from f(i1, i2, ...) (1-based positions).
local function from_fn(shape, f)
  local function build(d, idx)
    if d > #shape then return f(table.unpack(idx)) end
    local t = {}
    for i = 1, shape[d] do
      idx[d] = i
      t[i] = build(d + 1, idx)
    end
    idx[d] = nil
    return t
  end
  return D.tensor(build(1, {}))
end

-- A 24-bit (or 32-bit, with alpha) uncompressed BMP: rows bottom-up, BGR(A),
-- each row padded to 4 bytes. pixel(x, y) -> r, g, b[, a] with y = 1 at the top.
local function write_bmp(path, w, h, pixel, bpp)
  bpp = bpp or 24
  local bytes_pp = bpp // 8
  local row_bytes = (w * bytes_pp + 3) // 4 * 4
  local rows = {}
  for y = h, 1, -1 do
    local parts = {}
    for x = 1, w do
      local r, g, b, a = pixel(x, y)
      parts[#parts + 1] = bpp == 32 and string.char(b, g, r, a or 255) or string.char(b, g, r)
    end
    parts[#parts + 1] = string.rep("\0", row_bytes - w * bytes_pp)
    rows[#rows + 1] = table.concat(parts)
  end
  local data = table.concat(rows)
  local file_header = string.pack("<c2I4I2I2I4", "BM", 14 + 40 + #data, 0, 0, 14 + 40)
  local info_header = string.pack("<I4i4i4I2I2I4I4i4i4I4I4", 40, w, h, 1, bpp, 0, #data, 2835, 2835, 0, 0)
  H.write_file(path, file_header .. info_header .. data)
end

--- specs ------------------------------------------------------------------

describe("image", function()
  local dir

  setup(function() dir = H.temp_dir() end)
  teardown(function() H.remove_tree(dir) end)

  local function path(name) return dir .. "/" .. name end

  describe("save and load", function()
    it("round-trips byte values exactly for 3 channels", function()
      local x = from_fn({ 3, 5, 7 }, function(c, y, x) return (c * 97 + y * 31 + x * 13) % 256 end)
      assert.is_true(image.save(x, path("rgb.png"), { range = "[0,255]" }))
      local y = image.load(path("rgb.png"), { range = "[0,255]" })
      assert.are.same({ 3, 5, 7 }, y:shape())
      assert.are.same(x:totable(), y:totable())
    end)

    it("round-trips byte values exactly for 1 channel and for (H, W)", function()
      local x = from_fn({ 1, 4, 6 }, function(_, y, x) return (y * 61 + x * 7) % 256 end)
      assert.is_true(image.save(x, path("gray.png"), { range = "[0,255]" }))
      local y = image.load(path("gray.png"), { range = "[0,255]" })
      assert.are.same({ 1, 4, 6 }, y:shape()) -- a gray file stays 1 channel
      assert.are.same(x:totable(), y:totable())
      assert.is_true(image.save(x[1], path("hw.png"), { range = "[0,255]" }))
      assert.are.same(x:totable(), image.load(path("hw.png"), { range = "[0,255]" }):totable())
    end)

    it("round-trips the [-1,1] values of every byte exactly", function()
      local bytes = from_fn({ 1, 16, 16 }, function(_, y, x) return (y - 1) * 16 + (x - 1) end)
      assert(image.save(bytes, path("all.png"), { range = "[0,255]" }))
      local x = image.load(path("all.png")) -- default range [-1,1]
      assert.are.equal(-1, x[1][1][1])
      assert.are.equal(1, x[1][16][16])
      assert.is_true(math.abs(x[1][1][2] - (2 / 255 - 1)) < 1e-7)
      assert(image.save(x, path("all2.png"))) -- default range [-1,1]
      assert.are.same(x:totable(), image.load(path("all2.png")):totable())
      local u = image.load(path("all.png"), { range = "[0,1]" })
      assert.are.equal(0, u[1][1][1])
      assert.are.equal(1, u[1][16][16])
      assert.is_true(math.abs(u[1][8][1] - 112 / 255) < 1e-7)
    end)

    it("maps [-1,1] to bytes with rounding half up, clamping, NaN -> 0", function()
      local x = D.tensor { { -1, 0, 1, -3, 7, NAN, INF, -INF, -0.999, 0.996, 0.5, -0.5 } }
      assert(image.save(x, path("map.png")))
      local y = image.load(path("map.png"), { range = "[0,255]" })
      -- 0 -> 127.5 -> 128; 0.996 -> 254.49 -> 254; 0.5 -> 191.25; -0.5 -> 63.75
      assert.are.same({ { { 0, 128, 255, 0, 255, 0, 255, 0, 0, 254, 191, 64 } } }, y:totable())
    end)

    it("rounds half up in the [0,255] range and clamps", function()
      local x = D.tensor { { 1.49, 1.5, 2.5, 254.5, -0.4, 255.4, 300, -20 } }
      assert(image.save(x, path("round.png"), { range = "[0,255]" }))
      assert.are.same({ { { 1, 2, 3, 255, 0, 255, 255, 0 } } }, image.load(path("round.png"), { range = "[0,255]" }):totable())
    end)

    it("saves strided views as they look", function()
      local x = from_fn({ 3, 4, 5 }, function(c, y, x) return c * 50 + y * 10 + x end)
      local t = x:transpose(2, 3) -- (3, 5, 4), not contiguous
      assert(image.save(t, path("strided.png"), { range = "[0,255]" }))
      assert.are.same(t:contiguous():totable(), image.load(path("strided.png"), { range = "[0,255]" }):totable())
    end)

    it("converts channels on request", function()
      local x = from_fn({ 1, 2, 3 }, function(_, y, x) return y * 40 + x end)
      assert(image.save(x, path("g.png"), { range = "[0,255]" }))
      local rgb = image.load(path("g.png"), { range = "[0,255]", channels = 3 })
      assert.are.same({ 3, 2, 3 }, rgb:shape())
      for c = 1, 3 do assert.are.same(x[1]:totable(), rgb[c]:totable()) end
      -- RGB to gray: stb's luma (77 R + 150 G + 29 B) >> 8
      local c3 = D.tensor { { { 255, 10 } }, { { 0, 10 } }, { { 0, 10 } } }
      assert(image.save(c3, path("c3.png"), { range = "[0,255]" }))
      local g = image.load(path("c3.png"), { range = "[0,255]", channels = 1 })
      assert.are.same({ { { 76, 10 } } }, g:totable())
    end)

    it("replaces an existing file and leaves no temporary file", function()
      local sub = path("replace")
      H.mkdir(sub)
      H.write_file(sub .. "/a.png", "old contents")
      assert.is_true(image.save(D.zeros(1, 2, 2), sub .. "/a.png"))
      assert.are.same({ "a.png" }, H.listdir(sub))
      assert.are.same({ { { 128, 128 }, { 128, 128 } } }, image.load(sub .. "/a.png", { range = "[0,255]" }):totable())
    end)
  end)

  describe("decoding files written by hand", function()
    it("reads a 24-bit BMP (bottom-up rows, row padding, BGR order)", function()
      local colours = {
        { { 255, 0, 0 }, { 0, 255, 0 }, { 0, 0, 255 } },
        { { 10, 20, 30 }, { 40, 50, 60 }, { 70, 80, 90 } },
      }
      write_bmp(path("a.bmp"), 3, 2, function(x, y) return table.unpack(colours[y][x]) end)
      local t = image.load(path("a.bmp"), { range = "[0,255]" })
      assert.are.same({ 3, 2, 3 }, t:shape())
      assert.are.same({ { 255, 0, 0 }, { 10, 40, 70 } }, t[1]:totable()) -- red plane
      assert.are.same({ { 0, 255, 0 }, { 20, 50, 80 } }, t[2]:totable()) -- green
      assert.are.same({ { 0, 0, 255 }, { 30, 60, 90 } }, t[3]:totable()) -- blue
      local g = image.load(path("a.bmp"), { range = "[0,255]", channels = 1 })
      assert.are.same({ 1, 2, 3 }, g:shape())
      assert.are.equal(76, g[1][1][1]) -- (77 * 255) >> 8
    end)

    it("drops the alpha of a 32-bit BMP by default", function()
      write_bmp(path("a32.bmp"), 2, 1, function(x) return 100 + x, 50, 7, 128 end, 32)
      local t = image.load(path("a32.bmp"), { range = "[0,255]" })
      assert.are.same({ { { 101, 102 } }, { { 50, 50 } }, { { 7, 7 } } }, t:totable())
    end)

    it("reads a PNG written by image.save, in [-1,1] by default", function()
      assert(image.save(D.tensor { { 0, 255 } }, path("p.png"), { range = "[0,255]" }))
      assert.are.same({ { { -1, 1 } } }, image.load(path("p.png")):totable())
    end)
  end)

  describe("save_grid", function()
    -- tile k (1..10) pixel (i, j) holds 10 k + 2 (i - 1) + (j - 1)
    local N, TH, TW, PAD = 10, 3, 2, 2
    local function tiles()
      return from_fn({ N, 1, TH, TW }, function(k, _, i, j) return 10 * k + 2 * (i - 1) + (j - 1) end)
    end

    it("tiles N = 10 with nrow = 4 into 3 rows with padding", function()
      assert(image.save_grid(tiles(), path("grid.png"), { nrow = 4, pad = PAD, pad_value = 255, range = "[0,255]" }))
      local g = image.load(path("grid.png"), { range = "[0,255]" })
      assert.are.same({ 1, 3 * (TH + PAD) + PAD, 4 * (TW + PAD) + PAD }, g:shape()) -- {1, 17, 18}
      -- hand-picked positions (1-based)
      assert.are.equal(255, g[1][1][1])   -- top-left padding
      assert.are.equal(10, g[1][3][3])    -- tile 1, first pixel
      assert.are.equal(15, g[1][5][4])    -- tile 1, last pixel
      assert.are.equal(255, g[1][3][5])   -- padding between tiles 1 and 2
      assert.are.equal(20, g[1][3][7])    -- tile 2 starts at column 2 + 4 + 1
      assert.are.equal(50, g[1][8][3])    -- tile 5 opens the second row
      assert.are.equal(100, g[1][13][7])  -- tile 10: third row, second column
      assert.are.equal(105, g[1][15][8])  -- its last pixel
      assert.are.equal(255, g[1][13][11]) -- where tile 11 would be
      assert.are.equal(255, g[1][17][18]) -- bottom-right padding
      -- every pixel
      for gy = 0, 16 do
        for gx = 0, 17 do
          local r, i = gy // (TH + PAD), gy % (TH + PAD) - PAD
          local c, j = gx // (TW + PAD), gx % (TW + PAD) - PAD
          local k = r * 4 + c + 1
          local want = 255
          if i >= 0 and j >= 0 and c < 4 and k <= N then want = 10 * k + 2 * i + j end
          assert.are.equal(want, g[1][gy + 1][gx + 1], string.format("pixel (%d, %d)", gy + 1, gx + 1))
        end
      end
    end)

    it("uses one row when N <= nrow, and RGB tiles with the default padding", function()
      local x = D.full({ 3, 3, 4, 5 }, 0)
      assert(image.save_grid(x, path("g3.png")))
      local g = image.load(path("g3.png"))
      assert.are.same({ 3, 4 + 2 * 2, 3 * (5 + 2) + 2 }, g:shape())
      assert.are.equal(1, g[2][1][1]) -- pad_value 1 is white in [-1,1]
      assert.is_true(math.abs(g[2][3][3] - (128 / 127.5 - 1)) < 1e-7)
    end)

    it("works without padding", function()
      local x = from_fn({ 4, 1, 1, 1 }, function(k) return k end)
      assert(image.save_grid(x, path("g0.png"), { nrow = 2, pad = 0, range = "[0,255]" }))
      assert.are.same({ { { 1, 2 }, { 3, 4 } } }, image.load(path("g0.png"), { range = "[0,255]" }):totable())
    end)

    it("rejects bad grids", function()
      H.assert_error_with({ "image.save_grid", "(N, C, H, W)", "{3,4,5}" }, image.save_grid, D.zeros(3, 4, 5), path("x.png"))
      H.assert_error_with({ "image.save_grid", "1 (gray) or 3 (RGB)", "{2,2,4,4}" }, image.save_grid, D.zeros(2, 2, 4, 4), path("x.png"))
      H.assert_error_with({ "image.save_grid", "(N, C, H, W)", "{0,3,4,4}" }, image.save_grid, D.zeros(0, 3, 4, 4), path("x.png"))
      H.assert_error_with({ "nrow must be a positive integer" }, image.save_grid, D.zeros(2, 1, 2, 2), path("x.png"), { nrow = 0 })
      H.assert_error_with({ "pad must be a non-negative integer" }, image.save_grid, D.zeros(2, 1, 2, 2), path("x.png"), { pad = -1 })
      assert.is_nil(io.open(path("x.png")))
    end)
  end)

  describe("resize and centre crop", function()
    it("averages areas when shrinking and interpolates bilinearly when growing", function()
      assert.are.same({ { 0.5, 2.5 } }, image.resize(D.tensor { { 0, 1, 2, 3 } }, 1, 2):totable())
      assert.are.same({ { 0, 0.25, 0.75, 1 } }, image.resize(D.tensor { { 0, 1 } }, 1, 4):totable())
      -- 3 -> 2: output 1 covers [0, 1.5): (1 * 0 + 0.5 * 3) / 1.5
      local r = image.resize(D.tensor { { 0, 3, 6 } }, 1, 2):totable()
      assert.is_true(math.abs(r[1][1] - 1) < 1e-6 and math.abs(r[1][2] - 5) < 1e-6)
      -- both axes, batched over leading dims, identity at the same size
      local x = from_fn({ 2, 3, 4 }, function(c, y, x) return c * 100 + y * 10 + x end)
      assert.are.same(x:totable(), image.resize(x, 3, 4):totable())
      assert.are.same({ 2, 6, 2 }, image.resize(x, 6, 2):shape())
    end)

    it("keeps a constant image constant", function()
      local c = D.full({ 3, 7, 5 }, 0.3)
      for _, hw in ipairs { { 3, 11 }, { 13, 2 }, { 1, 1 }, { 7, 5 } } do
        local r = image.resize(c, hw[1], hw[2])
        assert.are.same({ 3, hw[1], hw[2] }, r:shape())
        assert.are.equal(c[1][1][1], r:max():item())
        assert.are.equal(c[1][1][1], r:min():item())
      end
      assert(image.save(D.full({ 3, 3, 7 }, 77), path("const.png"), { range = "[0,255]" }))
      local y = image.load(path("const.png"), { range = "[0,255]", size = 5 })
      assert.are.same({ 3, 5, 5 }, y:shape())
      assert.are.equal(77, y:max():item())
      assert.are.equal(77, y:min():item())
    end)

    it("resizes the shorter side, then crops the centre", function()
      -- W = 8, H = 4, column j holds 10 (j - 1): to 2 x 4 by area, then columns 2..3
      local x = from_fn({ 1, 4, 8 }, function(_, _, j) return 10 * (j - 1) end)
      assert(image.save(x, path("wide.png"), { range = "[0,255]" }))
      local y = image.load(path("wide.png"), { range = "[0,255]", size = 2 })
      assert.are.same({ { { 25, 45 }, { 25, 45 } } }, y:totable())
      -- H = 6, W = 3, row i holds 10 (i - 1): no resize needed, rows 2..4 kept
      local p = from_fn({ 1, 6, 3 }, function(_, i) return 10 * (i - 1) end)
      assert(image.save(p, path("tall.png"), { range = "[0,255]" }))
      local q = image.load(path("tall.png"), { range = "[0,255]", size = 3 })
      assert.are.same({ { { 10, 10, 10 }, { 20, 20, 20 }, { 30, 30, 30 } } }, q:totable())
      -- growing: 2 x 3 to shorter side 4 -> 4 x 6, crop 4 x 4
      write_bmp(path("small.bmp"), 3, 2, function(x, y) return 10 * x, 20 * y, 30 end)
      local g = image.load(path("small.bmp"), { size = 4 })
      assert.are.same({ 3, 4, 4 }, g:shape())
    end)

    it("rejects bad sizes", function()
      H.assert_error_with({ "image.resize", "must be positive" }, image.resize, D.zeros(2, 2), 0, 2)
      H.assert_error_with({ "image.resize", "empty image", "{0,2}" }, image.resize, D.zeros(0, 2), 2, 2)
      H.assert_error_with({ "image.resize", "(..., H, W)", "{4}" }, image.resize, D.zeros(4), 2, 2)
      H.assert_error_with({ "size must be a positive integer" }, image.load, path("p.png"), { size = 0 })
    end)
  end)

  describe("hflip", function()
    it("mirrors the last dim", function()
      local x = D.tensor { { { 1, 2, 3 }, { 4, 5, 6 } } }
      assert.are.same({ { { 3, 2, 1 }, { 6, 5, 4 } } }, image.hflip(x):totable())
      assert.are.same({ 3, 2, 1 }, image.hflip(D.tensor { 1, 2, 3 }):totable())
      local b = from_fn({ 2, 3, 4, 5 }, function(n, c, y, x) return n * 1000 + c * 100 + y * 10 + x end)
      local f = image.hflip(b)
      assert.are.same({ 2, 3, 4, 5 }, f:shape())
      assert.are.equal(b[2][3][4][1], f[2][3][4][5])
      assert.are.same(b:totable(), image.hflip(f):totable())
    end)

    it("passes gradients through", function()
      local x = D.tensor { { 1, 2, 3 } }:requires_grad_()
      local w = D.tensor { { 10, 20, 30 } }
      local loss = (image.hflip(x) * w):sum()
      loss:backward()
      assert.are.same({ { 30, 20, 10 } }, x.grad:totable())
    end)

    it("rejects what is not a tensor", function()
      H.assert_error_with({ "image.hflip", "expected a tensor" }, image.hflip, { 1, 2 })
      H.assert_error_with({ "image.hflip", "0-d" }, image.hflip, D.tensor(1))
    end)
  end)

  describe("bad inputs", function()
    it("returns nil, message for a missing file", function()
      local x, err = image.load(path("missing.png"))
      assert.is_nil(x)
      assert.is_truthy(err:find("image.load: cannot open " .. path("missing.png"), 1, true))
      assert.is_truthy(err:find("No such file", 1, true))
    end)

    it("raises for a text file, naming the file and stb's reason", function()
      H.write_file(path("notes.txt"), "hello, this is not an image\n")
      H.assert_error_with({ "image.load", path("notes.txt"), "not an image", "unknown image type" }, image.load, path("notes.txt"))
    end)

    it("raises for a zero-size file", function()
      H.write_file(path("empty.png"), "")
      H.assert_error_with({ "image.load", path("empty.png"), "not an image" }, image.load, path("empty.png"))
    end)

    it("raises for a truncated PNG", function()
      local state = 12345 -- an LCG: noise that deflate can't shrink
      local x = from_fn({ 3, 32, 32 }, function()
        state = (state * 1103515245 + 12345) % 2147483648
        return state >> 23
      end)
      assert(image.save(x, path("full.png"), { range = "[0,255]" }))
      local bytes = H.read_file(path("full.png"))
      assert.is_true(#bytes > 1000)
      H.write_file(path("cut.png"), bytes:sub(1, #bytes // 2))
      H.assert_error_with({ "image.load", "cannot decode", path("cut.png") }, image.load, path("cut.png"))
    end)

    it("checks the pixel cap before decoding", function()
      assert(image.save(D.zeros(3, 4, 4), path("cap.png")))
      H.assert_error_with({ "image.load", path("cap.png"), "4x4 with 3 channel(s) = 48 values, over the cap of 47" },
        image.load, path("cap.png"), { max_pixels = 47 })
      assert.are.same({ 3, 4, 4 }, image.load(path("cap.png"), { max_pixels = 48 }):shape())
      -- the cap counts the channels asked for
      assert.are.same({ 1, 4, 4 }, image.load(path("cap.png"), { max_pixels = 16, channels = 1 }):shape())
      -- a header that claims more than the cap is refused without decoding: a
      -- 100000 x 100000 BMP header with no pixel data at all
      local header = string.pack("<c2I4I2I2I4", "BM", 54, 0, 0, 54)
        .. string.pack("<I4i4i4I2I2I4I4i4i4I4I4", 40, 100000, 100000, 1, 24, 0, 0, 2835, 2835, 0, 0)
      H.write_file(path("huge.bmp"), header)
      H.assert_error_with({ "image.load", "over the cap of " .. image.MAX_VALUES }, image.load, path("huge.bmp"))
    end)

    it("rejects bad load options", function()
      H.assert_error_with({ "image.load", "channels must be 1 or 3" }, image.load, path("cap.png"), { channels = 2 })
      H.assert_error_with({ "image.load", "range must be" }, image.load, path("cap.png"), { range = "[0,2]" })
      H.assert_error_with({ "image.load", "max_pixels must be a positive integer" }, image.load, path("cap.png"), { max_pixels = 0 })
      H.assert_error_with({ "image.load", "unknown option chanels" }, image.load, path("cap.png"), { chanels = 1 })
      H.assert_error_with({ "image.load", "path must be a string" }, image.load, 42)
    end)

    it("rejects tensors that are not images", function()
      local p = path("bad.png")
      H.assert_error_with({ "image.save", "(C, H, W) or (H, W)", "{1,3,4,4}" }, image.save, D.zeros(1, 3, 4, 4), p)
      H.assert_error_with({ "image.save", "(C, H, W) or (H, W)", "{4}" }, image.save, D.zeros(4), p)
      H.assert_error_with({ "image.save", "1 (gray) or 3 (RGB) channels", "{2,4,4}" }, image.save, D.zeros(2, 4, 4), p)
      H.assert_error_with({ "image.save", "empty", "{3,0,4}" }, image.save, D.zeros(3, 0, 4), p)
      H.assert_error_with({ "image.save", "empty", "{0,4}" }, image.save, D.zeros(0, 4), p)
      H.assert_error_with({ "image.save", "expected a tensor" }, image.save, { 1, 2 }, p)
      H.assert_error_with({ "image.save", "range must be" }, image.save, D.zeros(1, 2, 2), p, { range = "[-2,2]" })
      assert.is_nil(io.open(p))
    end)

    it("returns nil, message for a missing directory and leaves nothing behind", function()
      local ok, err = image.save(D.zeros(3, 2, 2), path("no/such/dir/x.png"))
      assert.is_nil(ok)
      assert.is_truthy(err:find("image.save: cannot create a temporary file next to " .. path("no/such/dir/x.png"), 1, true))
      assert.is_truthy(err:find("No such file or directory", 1, true))
      assert.is_nil(io.open(path("no")))
    end)

    it("leaves an existing file unchanged when a save fails", function()
      local sub = path("keep")
      H.mkdir(sub)
      -- a name just under the 255-byte limit: the temporary name is too long
      local target = sub .. "/" .. string.rep("k", 250) .. ".png"
      H.write_file(target, "original")
      local ok, err = image.save(D.zeros(3, 2, 2), target)
      assert.is_nil(ok)
      assert.is_truthy(err:find("File name too long", 1, true))
      assert.are.equal("original", H.read_file(target))
      -- a bad tensor fails before anything is written
      assert.has_error(function() image.save(D.zeros(2, 2, 2), target) end)
      assert.are.equal("original", H.read_file(target))
      assert.are.same({ string.rep("k", 250) .. ".png" }, H.listdir(sub))
    end)

    it("removes its temporary file when the final rename fails", function()
      local sub = path("rename")
      assert(os.execute("mkdir -p '" .. sub .. "/target.png/inner'"))
      local ok, err = image.save(D.zeros(1, 2, 2), sub .. "/target.png") -- a directory: rename refuses
      assert.is_nil(ok)
      assert.is_truthy(err:find("cannot rename", 1, true))
      assert.are.same({ "target.png" }, H.listdir(sub))
      assert.are.same({ "inner" }, H.listdir(sub .. "/target.png"))
    end)
  end)
end)
