-- The `diffusion` command, run as a user would: train (a very small model for
-- a few steps), export, info, sample, and its errors.
local D = require "diffusion"

local LAUNCHER = "lua/bin/diffusion"

-- runs the command; returns its exit status and everything it printed
local function run(args)
  local p = io.popen(string.format("lua5.4 %s %s 2>&1; echo \"exit=$?\"", LAUNCHER, args))
  local out = p:read("a")
  p:close()
  local status = tonumber(out:match("exit=(%d+)%s*$"))
  return status, out
end

local function tmp(suffix)
  local p = os.tmpname()
  os.remove(p)
  return p .. (suffix or "")
end

describe("the diffusion command", function()
  local ckpt, model, log, curve = tmp(".ckpt"), tmp(".model"), tmp(".csv"), tmp(".png")
  teardown(function()
    for _, path in ipairs({ ckpt, model, log, curve }) do os.remove(path) end
  end)

  it("lists its commands", function()
    local status, out = run("--help")
    assert.are.equal(0, status)
    for _, c in ipairs({ "train", "sample", "evaluate", "info" }) do assert.is_truthy(out:find(c, 1, true)) end
  end)

  it("trains, resumes, exports, describes and samples", function()
    local common = string.format("train --channels 8 --groups 2 --batch 8 --limit 64 --checkpoint %s --log %s --loss-plot %s",
      ckpt, log, curve)
    local status, out = run(common .. " --steps 2")
    assert.are.equal(0, status, out)
    status, out = run(common .. " --steps 3 --export " .. model) -- resumes at step 2
    assert.are.equal(0, status, out)
    assert.is_truthy(out:find("done: step 3", 1, true), out)
    assert.are.equal(3, D.checkpoint.load(ckpt).step)
    assert.are.same({ 1, 2, 3 }, (D.plot.read_loss_log(log))) -- one log across the resume
    assert.are.equal(3, D.image.load(curve):size(1)) -- the loss curve, in colour
    status, out = run("info " .. model)
    assert.are.equal(0, status, out)
    assert.is_truthy(out:find("diffusion-model", 1, true))
    assert.is_truthy(out:find("trained 3 steps of 8 (24 images seen)", 1, true), out)
    local png, traj = tmp(".png"), tmp(".png")
    status, out = run(string.format("sample --ckpt %s --n 20 --steps 3 --out %s --trajectory %s --quiet", model, png, traj))
    assert.are.equal(0, status, out)
    local grid = D.image.load(png)
    -- 10 classes x 2 per class: rows of 2 tiles of 28 px (the default model's size) with 2 px padding
    assert.are.same({ 1, 10 * 30 + 2, 2 * 30 + 2 }, grid:shape()) -- grey, as the model makes them
    assert.is_not_nil(D.image.load(traj))
    status, out = run(string.format("sample --ckpt %s --class Sneaker --n 3 --steps 2 --out %s --quiet", ckpt, png))
    assert.are.equal(0, status, out)
    status, out = run("evaluate --ckpt " .. model .. " --per-class 1 --steps 2 --quiet")
    assert.are.equal(0, status, out)
    assert.is_truthy(out:find("class%-conditional: [%d.]+%% of 10 samples %(1 per class"), out)
    assert.is_truthy(out:find("unconditional: 10 samples spread as T-shirt/top", 1, true), out)
    assert.is_falsy(out:find("sample.ddim", 1, true), "--quiet still printed progress: " .. out)
    os.remove(png)
    os.remove(traj)
  end)

  it("samples from the shipped model by default, a row per class", function()
    local png = tmp(".png")
    local status, out = run(string.format("sample --n 10 --steps 2 --out %s --quiet", png))
    assert.are.equal(0, status, out)
    assert.is_truthy(out:find("guidance 3", 1, true), out)
    assert.are.same({ 1, 10 * 30 + 2, 30 + 2 }, D.image.load(png):shape())
    os.remove(png)
  end)

  it("says what is wrong, with a non-zero status", function()
    local cases = {
      { "sample --ckpt /nonexistent/x", "cannot open /nonexistent/x" },
      { "sample --ckpt " .. model .. " --class 11", "--class must be 1..10" },
      { "sample --ckpt " .. model .. " --steps 0", "--steps must be an integer >= 1" },
      { "sample --n 0", "--n must be an integer >= 1" },
      { "sample --ckpt examples/models/fashion-classifier.safetensors", "is not a diffusion checkpoint" },
      { "train --steps 0", "--steps must be an integer >= 1" },
      { "frobnicate", "unknown command 'frobnicate'" },
    }
    for _, case in ipairs(cases) do
      local status, out = run(case[1])
      assert.are_not.equal(0, status, case[1])
      assert.is_truthy(out:find(case[2], 1, true), case[1] .. " printed: " .. out)
    end
  end)
end)
