-- IDX files (plain and gzipped), index_select, datasets and batches.
local D = require "diffusion"
local H = require "helpers"

-- Writes an IDX file byte by byte, independently of the library.
local function write_idx(path, dims, bytes, opts)
  opts = opts or {}
  local parts = { string.char(0, 0, opts.type or 8, opts.ndim or #dims) }
  for _, d in ipairs(dims) do parts[#parts + 1] = string.pack(">I4", d) end
  for _, b in ipairs(bytes) do parts[#parts + 1] = string.char(b) end
  local f = assert(io.open(path, "wb"))
  f:write(table.concat(parts), opts.trailer or "")
  f:close()
  return path
end

local function gzip(path)
  assert(os.execute("gzip -f -k " .. path))
  return path .. ".gz"
end

describe("load_idx", function()
  local path
  before_each(function() path = os.tmpname() end)
  after_each(function()
    os.remove(path)
    os.remove(path .. ".gz")
  end)

  it("reads a 2 x 3 file of bytes, plain and gzipped", function()
    write_idx(path, { 2, 3 }, { 0, 1, 2, 253, 254, 255 })
    local want = { { 0, 1, 2 }, { 253, 254, 255 } }
    assert.are.same(want, D.load_idx(path):totable())
    assert.are.same(want, D.load_idx(gzip(path)):totable())
  end)

  it("reads labels (1-d)", function()
    write_idx(path, { 4 }, { 9, 0, 3, 7 })
    assert.are.same({ 9, 0, 3, 7 }, D.load_idx(path):totable())
  end)

  it("returns nil and a message for a missing file", function()
    local t, msg = D.load_idx("/nonexistent/file-idx1-ubyte")
    assert.is_nil(t)
    assert.is_truthy(msg:find("cannot open /nonexistent/file-idx1-ubyte", 1, true))
  end)

  it("rejects a bad magic", function()
    local f = assert(io.open(path, "wb"))
    f:write("PNG\0\0\0\0\0")
    f:close()
    H.expect_error(function() D.load_idx(path) end, "is not an IDX file (bad magic 50 4e)")
  end)

  it("rejects an unsupported type, a bad dim count, a short header", function()
    write_idx(path, { 2 }, { 1, 2 }, { type = 0x0D })
    H.expect_error(function() D.load_idx(path) end, "data type 0x0d")
    write_idx(path, {}, {}, { ndim = 0 })
    H.expect_error(function() D.load_idx(path) end, "declares 0 dims")
    write_idx(path, { 2 }, {}, { ndim = 3 })
    H.expect_error(function() D.load_idx(path) end, "truncated inside its header")
    local f = assert(io.open(path, "wb"))
    f:write("\0\0")
    f:close()
    H.expect_error(function() D.load_idx(path) end, "too short for an IDX header")
  end)

  it("rejects short data, plain and gzipped, naming the sizes", function()
    write_idx(path, { 2, 3 }, { 1, 2, 3, 4 })
    H.expect_error(function() D.load_idx(path) end, "is truncated: shape {2,3} needs 6 bytes of data, the file has 4")
    H.expect_error(function() D.load_idx(gzip(path)) end, "needs 6 bytes of data, the file has 4")
  end)

  it("rejects a header that lies about a huge size without allocating it", function()
    write_idx(path, { 65535, 65535, 65535 }, { 1, 2, 3 })
    local before = D.memory_allocated()
    H.expect_error(function() D.load_idx(path) end, "the file has 3")
    assert.are.equal(before, D.memory_allocated())
  end)

  it("rejects trailing data", function()
    write_idx(path, { 2 }, { 1, 2 }, { trailer = "x" })
    H.expect_error(function() D.load_idx(path) end, "has data after the 2 bytes its header declares")
  end)

  it("rejects a corrupt gzip stream", function()
    write_idx(path, { 64 }, (function() local t = {} for i = 1, 64 do t[i] = i end return t end)())
    local gz = gzip(path)
    local f = assert(io.open(gz, "rb"))
    local bytes = f:read("a")
    f:close()
    f = assert(io.open(gz, "wb"))
    f:write(bytes:sub(1, 12) .. string.rep("\255", #bytes - 12))
    f:close()
    local ok, err = pcall(D.load_idx, gz)
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find("load_idx", 1, true))
  end)
end)

describe("index_select", function()
  it("picks rows and columns by 1-based index, from a list or a tensor", function()
    local x = D.arange(12):view(4, 3)
    assert.are.same({ { 9, 10, 11 }, { 0, 1, 2 }, { 9, 10, 11 } }, x:index_select(1, { 4, 1, 4 }):totable())
    assert.are.same({ { 2, 0 }, { 5, 3 }, { 8, 6 }, { 11, 9 } }, x:index_select(2, D.tensor{ 3, 1 }):totable())
    assert.are.same({ 0, 3 }, x:index_select(1, {}):shape())
  end)

  it("works on non-contiguous input", function()
    local x = D.arange(12):view(4, 3):t() -- (3, 4)
    assert.are.same({ { 2, 5, 8, 11 } }, x:index_select(1, { 3 }):totable())
  end)

  it("scatter-adds its gradient, repeated indices summed", function()
    local x = D.arange(12):view(4, 3):requires_grad_()
    x:index_select(1, { 4, 1, 4 }):sum():backward()
    assert.are.same({ { 1, 1, 1 }, { 0, 0, 0 }, { 0, 0, 0 }, { 2, 2, 2 } }, x.grad:totable())
    assert.is_true(D.gradcheck(function(t) return t:index_select(2, { 2, 2, 1 }) end, { D.randn(3, 4) }))
  end)

  it("rejects bad indices and dims", function()
    local x = D.zeros(4, 3)
    H.expect_error(function() x:index_select(1, { 5 }) end, "index_select: index 5 at position 1 is not an integer in [1, 4]")
    H.expect_error(function() x:index_select(1, { 0 }) end, "index 0 at position 1")
    H.expect_error(function() x:index_select(2, { 1, 2.5 }) end, "index 2.5 at position 2")
    H.expect_error(function() x:index_select(1, D.zeros(1, 1)) end, "indices must be a 1-d tensor")
    H.expect_error(function() x:index_select(3, { 1 }) end, "dim 3 out of range")
    H.expect_error(function() x:index_select(1, { "a" }) end, "indices must be numbers")
  end)
end)

describe("datasets", function()
  it("makes shuffled batches that cover every sample once, deterministic per seed", function()
    local ds = D.data.Dataset{ images = D.arange(10):view(10, 1), labels = D.arange(1, 11) }
    local seen, sizes = {}, {}
    for b, x, y in ds:batches(4, { seed = 3 }) do
      sizes[b] = x:size(1)
      for i = 1, x:size(1) do
        assert.are.equal(x:get(i, 1) + 1, y[i]) -- images and labels stay paired
        seen[y[i]] = (seen[y[i]] or 0) + 1
      end
    end
    assert.are.same({ 4, 4, 2 }, sizes)
    for i = 1, 10 do assert.are.equal(1, seen[i]) end
    local function order(seed)
      local out = {}
      for _, _, y in ds:batches(10, { seed = seed }) do out = y:totable() end
      return out
    end
    assert.are.same(order(5), order(5))
    assert.are_not.same(order(5), order(6))
  end)

  it("keeps the order without shuffling and drops the last partial batch on request", function()
    local ds = D.data.Dataset{ images = D.arange(5):view(5, 1) }
    local batches = {}
    for _, x, y in ds:batches(2, { shuffle = false, drop_last = true }) do
      batches[#batches + 1] = x:view(-1):totable()
      assert.is_nil(y)
    end
    assert.are.same({ { 0, 1 }, { 2, 3 } }, batches)
    H.expect_error(function() ds:batches(0) end, "batch size must be a positive integer")
  end)

  it("rejects images and labels of different counts", function()
    H.expect_error(function() D.data.Dataset{ images = D.zeros(3, 1), labels = D.zeros(2) } end, "3 images but 2 labels")
  end)

  it("reads Fashion-MNIST's test split, scaled, padded and labelled 1..10", function()
    local ds = D.data.fashion_mnist{ split = "test", pad_to = 32, limit = 500 }
    assert.are.equal(500, #ds)
    assert.are.same({ 500, 1, 32, 32 }, ds.images:shape())
    assert.are.equal(-1, ds.images:min():item())
    assert.are.equal(1, ds.images:max():item())
    assert.are.same({ -1, -1 }, { ds.images:get(1, 1, 1, 1), ds.images:get(1, 1, 32, 32) }) -- the padding
    assert.are.equal(1, ds.labels:min():item())
    assert.are.equal(10, ds.labels:max():item())
    assert.are.equal(10, ds.labels[1]) -- the first test image is an ankle boot
    assert.are.equal("Ankle boot", ds.classes[ds.labels[1]])
    local unit = D.data.fashion_mnist{ split = "test", range = "[0,1]", limit = 10 }
    assert.are.same({ 10, 1, 28, 28 }, unit.images:shape())
    assert.are.equal(0, unit.images:min():item())
  end)

  it("names its bad options", function()
    H.expect_error(function() D.data.fashion_mnist{ split = "val" } end, 'split must be "train" or "test"')
    H.expect_error(function() D.data.fashion_mnist{ split = "test", range = "0-255", limit = 1 } end, "range must be")
    H.expect_error(function() D.data.fashion_mnist{ split = "test", pad_to = 31, limit = 1 } end, "pad_to must be 28 + an even number")
    H.expect_error(function() D.data.fashion_mnist{ dir = "/nonexistent" } end, "install Debian's dataset-fashion-mnist")
  end)
end)

describe("image folders", function()
  local dir
  before_each(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p '" .. dir .. "/coats' '" .. dir .. "/bags'"))
  end)
  after_each(function() os.execute("rm -rf '" .. dir .. "'") end)

  it("lists a directory sorted, or says why it can't", function()
    D.image.save(D.zeros(1, 2, 2), dir .. "/z.png")
    assert.are.same({ "bags", "coats", "z.png" }, D.list_dir(dir))
    local none, msg = D.list_dir(dir .. "/missing")
    assert.is_nil(none)
    assert.is_truthy(msg:find("No such file or directory", 1, true))
  end)

  it("reads one class per folder, resized and center-cropped, labels 1-based by sorted folder name", function()
    -- a 20 x 40 image: left half black, right half white -> the 16 x 16 centre crop of its 16 x 32 resize
    local wide = D.full({ 1, 20, 40 }, -1)
    wide:narrow(3, 21, 20):fill_(1)
    D.image.save(wide, dir .. "/coats/wide.png")
    D.image.save(D.ones(3, 8, 8), dir .. "/bags/white.png")
    D.image.save(D.full({ 3, 8, 8 }, -1), dir .. "/bags/black.png")
    local f = assert(io.open(dir .. "/bags/notes.txt", "w")) -- not an image: skipped
    f:write("x")
    f:close()
    local ds = D.data.image_folder{ dir = dir, size = 16, channels = 1 }
    assert.are.same({ "bags", "coats" }, ds.classes)
    assert.are.same({ 1, 1, 2 }, ds.labels:totable())
    assert.are.same({ 3, 1, 16, 16 }, ds.images:shape())
    assert.are.equal(-1, ds.images:get(1, 1, 8, 8)) -- bags/black.png comes first
    assert.are.equal(1, ds.images:get(2, 1, 8, 8))
    local crop = ds.images[3][1] -- the wide image: black on the left, white on the right
    assert.are.equal(-1, crop:get(8, 1))
    assert.are.equal(1, crop:get(8, 16))
  end)

  it("flips about half of a batch left-right, the same way for the same seed", function()
    local x = D.arange(4):view(1, 1, 1, 4):expand(200, 1, 1, 4):contiguous()
    local ds = D.data.Dataset{ images = x }
    local function flipped(seed)
      local _, b = ds:batches(200, { seed = seed, flip = true, shuffle = false })()
      local n = 0
      for i = 1, 200 do
        local row = b[i][1][1]:totable()
        if row[1] == 3 then
          n = n + 1
          assert.are.same({ 3, 2, 1, 0 }, row)
        else
          assert.are.same({ 0, 1, 2, 3 }, row)
        end
      end
      return n
    end
    local n = flipped(4)
    assert.is_true(n > 70 and n < 130, "flipped " .. n .. " of 200")
    assert.are.equal(n, flipped(4))
  end)

  it("names what is wrong with a folder", function()
    H.expect_error(function() D.data.image_folder{ dir = dir .. "/missing" } end, "cannot open")
    H.expect_error(function() D.data.image_folder{ dir = dir } end, "no PNG, JPEG or BMP images in")
    D.image.save(D.zeros(1, 4, 4), dir .. "/loose.png")
    H.expect_error(function() D.data.image_folder{ dir = dir } end, "holds both images and class folders")
    os.remove(dir .. "/loose.png")
    local f = assert(io.open(dir .. "/coats/broken.png", "w"))
    f:write("not a png")
    f:close()
    H.expect_error(function() D.data.image_folder{ dir = dir } end, "broken.png")
    H.expect_error(function() D.data.image_folder{} end, "dir must be a path")
  end)
end)
