-- Checkpoints of nested tables, and the training loop: it learns, it resumes
-- exactly, and it names its bad options.
local D = require "diffusion"
local H = require "helpers"
local expect_error = H.expect_error

local function tmp()
  local p = os.tmpname()
  os.remove(p)
  return p
end

describe("checkpoint", function()
  it("round-trips nested tables of tensors, numbers, strings and booleans", function()
    local path = tmp()
    local t = D.randn(2, 3)
    D.checkpoint.save(path, {
      step = 12, lr = 2e-4, third = 1 / 3, name = "cosine", flag = false, list = { 1, 2, 2 },
      nested = { weights = { ["conv.weight"] = t, [3] = D.ones(1) } }, empty = {},
    })
    local ck = D.checkpoint.load(path)
    os.remove(path)
    assert.are.equal(12, ck.step)
    assert.are.equal("integer", math.type(ck.step))
    assert.are.equal(2e-4, ck.lr)
    assert.are.equal(1 / 3, ck.third) -- exactly
    assert.are.equal("cosine", ck.name)
    assert.are.equal(false, ck.flag)
    assert.are.same({ 1, 2, 2 }, ck.list)
    assert.are.same(t:totable(), ck.nested.weights["conv.weight"]:totable())
    assert.are.same({ 1 }, ck.nested.weights[3]:totable())
    assert.are.same({}, ck.empty)
  end)

  it("opens in any safetensors reader: weights are plain entries", function()
    local path = tmp()
    D.checkpoint.save(path, { model = { ["a.weight"] = D.ones(2) }, step = 1 })
    local tensors, meta = D.load_safetensors(path)
    os.remove(path)
    assert.are.same({ 1, 1 }, tensors["model/a.weight"]:totable())
    assert.are.equal("n:1", meta.step)
  end)

  it("refuses what it can't store, and files that aren't checkpoints", function()
    local path = tmp()
    expect_error(function() D.checkpoint.save(path, { f = print }) end, "function at f can't be stored")
    expect_error(function() D.checkpoint.save(path, { ["a/b"] = 1 }) end, "key a/b at the top can't be stored")
    local loop = {}
    loop.self = loop
    expect_error(function() D.checkpoint.save(path, loop) end, "contains itself")
    D.save_safetensors(path, { w = D.ones(1) })
    expect_error(function() D.checkpoint.load(path) end, "is not a diffusion checkpoint")
    D.save_safetensors(path, { w = D.ones(1) }, { __format = "diffusion-checkpoint-1", x = "q:1" })
    expect_error(function() D.checkpoint.load(path) end, 'metadata x holds an invalid value "q:1"')
    os.remove(path)
    local none, msg = D.checkpoint.load(path)
    assert.is_nil(none)
    assert.is_truthy(msg:find("cannot open", 1, true))
  end)
end)

describe("train", function()
  local function tiny_model(classes)
    return D.UNet{ channels = 4, groups = 2, mult = { 1, 2 }, res_blocks = 1, attention = { 4 }, image_size = 8,
                   dropout = 0.1, num_classes = classes }
  end
  local function data()
    return D.data.Dataset{ images = D.randn({ 40, 1, 8, 8 }, D.Generator(9)):tanh(),
                           labels = D.randint(1, 4, { 40 }, D.Generator(10)) }
  end

  local function run(steps, opts)
    D.manual_seed(5)
    local o = { model = tiny_model(3), schedule = D.schedule.cosine{ T = 100 }, data = data(), steps = steps,
                batch = 8, progress = false, warmup = 2, checkpoint_every = 3 }
    for k, v in pairs(opts or {}) do o[k] = v end
    return D.train(o)
  end

  it("lowers the loss on a fixed batch of data", function()
    local _, _, info = run(40, { lr = 3e-3 })
    local first, last = 0, 0
    for i = 1, 5 do first, last = first + info.losses[i], last + info.losses[#info.losses - 5 + i] end
    assert.is_true(last < 0.8 * first, string.format("loss %g -> %g", first / 5, last / 5))
  end)

  it("continues exactly after a stop: N + resume + N steps equal 2N steps", function()
    local ck = tmp()
    local straight = run(10)
    run(5, { checkpoint = ck })
    local resumed, ema, info = run(10, { checkpoint = ck })
    os.remove(ck)
    assert.are.equal(5, #info.losses) -- only the steps after the checkpoint ran
    local a, b = straight:parameters(), resumed:parameters()
    for i = 1, #a do assert.are.equal(0, (a[i] - b[i]):abs():max():item()) end
    assert.is_not_nil(ema)
  end)

  it("weights each sample's error by sched:loss_weight", function()
    local _, _, plain = run(1)
    -- gamma far above every SNR: min(snr, gamma) / snr = 1, the plain loss again
    local _, _, same = run(1, { loss_weight = "min_snr", min_snr_gamma = 1e12 })
    H.assert_close(plain.losses[1], same.losses[1], 1e-5)
    -- a tiny gamma weights every sample by gamma / snr < 1
    local _, _, small = run(1, { loss_weight = "min_snr", min_snr_gamma = 1e-4 })
    assert.is_true(small.losses[1] < 0.5 * plain.losses[1], string.format("%g vs %g", small.losses[1], plain.losses[1]))
    -- snr + 1 on epsilon: (snr + 1) / snr > 1
    local _, _, big = run(1, { loss_weight = "snr_plus_one" })
    assert.is_true(big.losses[1] > plain.losses[1], string.format("%g vs %g", big.losses[1], plain.losses[1]))
  end)

  it("writes a checkpoint holding the model, EMA, optimizer, step and generator", function()
    local ck = tmp()
    run(4, { checkpoint = ck, checkpoint_every = 2 })
    local saved = D.checkpoint.load(ck)
    os.remove(ck)
    assert.are.equal(4, saved.step)
    assert.are.equal("diffusion-training", saved.kind)
    assert.are.equal(3, saved.config.num_classes)
    assert.is_not_nil(saved.model["conv_in.weight"])
    assert.is_not_nil(saved.ema)
    assert.is_not_nil(saved.optim)
    assert.is_number(saved.generator.offset)
  end)

  it("refuses a checkpoint written for another model", function()
    local ck = tmp()
    run(3, { checkpoint = ck })
    D.manual_seed(5)
    local other = D.UNet{ channels = 8, groups = 2, mult = { 1, 2 }, res_blocks = 1, attention = { 4 }, image_size = 8,
                          num_classes = 3 }
    expect_error(function()
      D.train{ model = other, schedule = D.schedule.cosine{ T = 100 }, data = data(), steps = 4, batch = 8,
               progress = false, checkpoint = ck }
    end, "was written for a model with channels = 4, this model has 8")
    os.remove(ck)
  end)

  it("names bad options", function()
    local base = { model = tiny_model(3), schedule = D.schedule.cosine{ T = 10 }, data = data(), progress = false }
    local function with(k, v)
      local o = {}
      for kk, vv in pairs(base) do o[kk] = vv end
      o[k] = v
      return o
    end
    expect_error(function() D.train(with("stepz", 3)) end, "unknown option 'stepz'")
    expect_error(function() D.train(with("steps", -1)) end, "steps must be a non-negative integer")
    expect_error(function() D.train(with("prediction", "noise")) end, 'prediction must be "epsilon", "x0" or "v"')
    expect_error(function() D.train(with("cfg_dropout", 1)) end, "cfg_dropout must be in [0, 1)")
    expect_error(function() D.train(with("loss_weight", "snr")) end, 'loss_weight must be "uniform", "min_snr" or "snr_plus_one"')
    expect_error(function() D.train(with("min_snr_gamma", 0)) end, "min_snr_gamma must be a number > 0")
    expect_error(function() D.train(with("model", {})) end, "model must be a D.UNet")
    expect_error(function() D.train(with("data", D.data.Dataset{ images = D.zeros(4, 1, 8, 8) })) end,
      "a class-conditional model needs a dataset with labels")
    expect_error(function() D.train(with("batch", 64)) end, "fewer than one batch of 64")
  end)
end)
