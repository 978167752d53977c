-- Crash safety: a process killed with SIGKILL in the middle of saving leaves
-- the old file or the new one, never a broken one (saves write a temporary
-- file in the same directory, fsync it, rename it over the target, fsync the
-- directory); and training stops with a clear error, keeping the last good
-- checkpoint, when the loss, a gradient or a parameter becomes NaN or Inf.
local D = require "diffusion"
local H = require "helpers"

local LUA = os.getenv("LUA") or "lua5.4"

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- A child script that saves in a loop, alternating two distinct contents.
-- It touches `ready` after its first save, so every kill lands in the loop.
local CHILD = [[
local D = require "diffusion"
local mode, path, ready = arg[1], arg[2], arg[3]
local function content(k)
  if mode == "checkpoint" then
    return k == 1 and { w = D.full({ 512, 256 }, 1), step = 1, tag = "A" }
                   or { w = D.full({ 600, 200 }, 2), v = D.ones(7), step = 2, tag = "B" }
  end
  return k == 1 and D.full({ 3, 96, 128 }, -1) or D.full({ 1, 64, 64 }, 1)
end
local a, b = content(1), content(2)
local function save(x)
  if mode == "checkpoint" then D.checkpoint.save(path, x) else assert(D.image.save(x, path)) end
end
save(b)
io.open(ready, "w"):close()
while true do save(a); save(b) end
]]

-- Runs the child for `mode` and SIGKILLs it `delay` seconds into its loop.
local function kill_during_saves(dir, mode, path, delay)
  local child, ready = dir .. "/child.lua", dir .. "/ready"
  H.write_file(child, CHILD)
  os.remove(ready)
  local env = "LUA_PATH=" .. q(package.path) .. " LUA_CPATH=" .. q(package.cpath)
  local cmd = string.format(
    "%s %s %s %s %s %s & pid=$!; n=0; while [ ! -e %s ] && [ $n -lt 1000 ]; do sleep 0.01; n=$((n+1)); done; "
      .. "sleep %.3f; kill -9 $pid; wait $pid 2>/dev/null; exit 0",
    env, LUA, q(child), mode, q(path), q(ready), q(ready), delay)
  assert(os.execute(cmd))
  assert(io.open(ready), "the child never reached its save loop")
end

-- Files in dir besides the target and the test's own: temporary files of a
-- killed save. They are hidden and named apart, so nothing takes them for it.
local function check_strays(dir, target_name, pattern)
  for _, name in ipairs(H.listdir(dir)) do
    if name ~= target_name and name ~= "child.lua" and name ~= "ready" then
      assert(name:match(pattern), "unexpected file left in the directory: " .. name)
    end
  end
end

describe("crash safety", function()
  local dir
  before_each(function() dir = H.temp_dir() end)
  after_each(function() H.remove_tree(dir) end)

  it("a checkpoint killed mid-save is always the old or the new one", function()
    local path = dir .. "/ck.safetensors"
    D.checkpoint.save(path, { w = D.full({ 512, 256 }, 1), step = 1, tag = "A" })
    math.randomseed(20240611)
    local seen = {}
    for _ = 1, 5 do
      kill_during_saves(dir, "checkpoint", path, 0.02 + math.random() * 0.2)
      local ck = D.checkpoint.load(path)
      assert.is_table(ck, "the checkpoint does not load after a kill")
      if ck.tag == "A" then
        assert.are.equal(1, ck.step)
        assert.are.same({ 512, 256 }, ck.w:shape())
        assert.are.equal(512 * 256, ck.w:sum():item())
        assert.is_nil(ck.v)
      else
        assert.are.equal("B", ck.tag)
        assert.are.equal(2, ck.step)
        assert.are.same({ 600, 200 }, ck.w:shape())
        assert.are.equal(2 * 600 * 200, ck.w:sum():item())
        assert.are.same({ 1, 1, 1, 1, 1, 1, 1 }, ck.v:totable())
      end
      seen[ck.tag] = true
      check_strays(dir, "ck.safetensors", "^%.ck%.safetensors%.tmp%-%d+%-%d+$")
    end
    -- a later save in the same directory works, and strays don't change the checkpoint
    D.checkpoint.save(path, { step = 3 })
    assert.are.equal(3, D.checkpoint.load(path).step)
  end)

  it("a PNG killed mid-save is always the old or the new one", function()
    local path = dir .. "/out.png"
    assert(D.image.save(D.full({ 1, 64, 64 }, 1), path))
    math.randomseed(7)
    for _ = 1, 3 do
      kill_during_saves(dir, "image", path, 0.02 + math.random() * 0.1)
      local x = assert(D.image.load(path))
      if x:size(1) == 3 then
        assert.are.same({ 3, 96, 128 }, x:shape())
        assert.are.equal(-1, x:max():item())
      else
        assert.are.same({ 1, 64, 64 }, x:shape())
        assert.are.equal(1, x:min():item())
      end
      check_strays(dir, "out.png", "^out%.png%.tmp%-%d+%-%d+$")
    end
  end)
end)

-- A dataset whose batch `nan_batch` holds a NaN (any other: noise), seeded by
-- the batch number so runs are reproducible.
local function dataset(nan_batch)
  local ds = { images = D.zeros(400, 1, 8, 8) }
  function ds.batches(_, n, opts)
    local b = opts.skip or 0
    return function()
      b = b + 1
      local x = D.randn({ n, 1, 8, 8 }, D.Generator(b))
      if b == nan_batch then x[2][1][3][4] = 0 / 0 end
      return b, x
    end
  end
  return setmetatable(ds, { __len = function() return 400 end })
end

local function small_unet()
  return D.UNet{ channels = 8, groups = 4, mult = { 1, 2 }, res_blocks = 1, attention = {}, image_size = 8, dropout = 0 }
end

describe("training on NaN or Inf", function()
  local dir, path, sched
  before_each(function()
    dir = H.temp_dir()
    path = dir .. "/run.safetensors"
    sched = D.schedule.linear{ T = 50 }
  end)
  after_each(function()
    D._debug_corrupt_backward()
    H.remove_tree(dir)
  end)

  local function opts(extra)
    local o = { model = small_unet(), schedule = sched, steps = 6, batch = 4, checkpoint = path, checkpoint_every = 2,
                progress = false, seed = 1 }
    for k, v in pairs(extra) do o[k] = v end
    return o
  end

  it("a NaN in a batch stops at that step, naming the loss, and keeps the last checkpoint", function()
    local saved
    local o = opts{ data = dataset(6), on_step = function(step)
      if step == 5 then saved = H.read_file(path) end -- the step-4 checkpoint, as written
    end }
    local msg = H.error_of(D.train, o)
    H.assert_has(msg, { "train: step 6: the loss is ", "nan", "stopped without saving",
                        "the last good checkpoint (step 4) is kept in " .. path })
    assert.are.equal(saved, H.read_file(path))
    local ck = D.checkpoint.load(path)
    assert.are.equal(4, ck.step)
    -- only the checkpoint is in the directory: nothing half-written after the NaN
    assert.are.same({ "run.safetensors" }, H.listdir(dir))
    for name, t in pairs(ck.model) do
      local s = t:sum():item()
      assert(s == s and math.abs(s) < math.huge, name .. " is not finite in the kept checkpoint")
    end
  end)

  it("a NaN gradient stops the run naming the first parameter where it appears", function()
    D.train(opts{ data = dataset(0), steps = 2 }) -- a good checkpoint at step 2
    local before = H.read_file(path)
    D._debug_corrupt_backward("conv2d", 0 / 0) -- conv2d's backward now returns NaN gradients
    local o = opts{ data = dataset(0), steps = 4 }
    local msg = H.error_of(D.train, o)
    D._debug_corrupt_backward()
    -- the named parameter is the first, in model order, whose gradient holds NaN
    local first
    for _, entry in ipairs(o.model:named_parameters()) do
      local g = entry[2].grad
      if g and g:sum():item() ~= g:sum():item() then first = entry[1]; break end
    end
    assert.is_not_nil(first)
    H.assert_has(msg, { "train: step 3: the gradient of " .. first .. " holds NaN or Inf",
                        "the last good checkpoint (step 2) is kept in " .. path })
    assert.are.equal(before, H.read_file(path))
  end)

  it("a parameter blown up by a huge learning rate is not saved", function()
    D.train(opts{ data = dataset(0), steps = 2 })
    local before = H.read_file(path)
    local msg = H.error_of(D.train, opts{ data = dataset(0), steps = 4, lr = 1e39, warmup = 0, checkpoint_every = 1 })
    assert.is_truthy(msg:find("train: step 3: parameter [%w%._]+ became NaN or Inf in the optimizer step"), msg)
    H.assert_has(msg, "the last good checkpoint (step 2) is kept in " .. path)
    assert.are.equal(before, H.read_file(path))
    assert.are.equal(2, D.checkpoint.load(path).step)
  end)

  it("says when there is no checkpoint to keep", function()
    local o = opts{ data = dataset(1) }
    o.checkpoint = nil
    H.assert_error_with({ "train: step 1: the loss is", "no checkpoint was configured" }, D.train, o)
  end)
end)
