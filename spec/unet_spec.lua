-- The U-Net: shapes, parameter names, gradients, modes and bad input.
local D = require "diffusion"
local H = require "helpers"

local tiny = { channels = 4, groups = 2, mult = { 1, 2 }, res_blocks = 1, attention = { 4 }, image_size = 8, dropout = 0 }

local function with(base, changes)
  local c = {}
  for k, v in pairs(base) do c[k] = v end
  for k, v in pairs(changes or {}) do c[k] = v end
  return c
end

describe("UNet", function()
  it("maps (N, C, H, W) to the same shape for several configurations", function()
    D.manual_seed(1)
    local configs = {
      tiny,
      with(tiny, { in_channels = 3, mult = { 1, 2, 2 }, attention = { 2, 8 }, heads = 2 }),
      with(tiny, { out_channels = 2, res_blocks = 2, attention = {} }),
      with(tiny, { num_classes = 3, mult = { 1 } }),
    }
    for i, c in ipairs(configs) do
      local m = D.UNet(c)
      local cin = c.in_channels or 1
      local x = D.randn(2, cin, 8, 8)
      local y = c.num_classes and D.tensor{ 1, 4 } or nil
      local out = m(x, D.tensor{ 1, 500 }, y)
      assert.are.same({ 2, c.out_channels or cin, 8, 8 }, out:shape(), "config " .. i)
    end
    -- other resolutions than the training one, as long as they halve evenly
    assert.are.same({ 1, 1, 16, 12 }, D.UNet(tiny)(D.randn(1, 1, 16, 12), 3):shape())
  end)

  it("names parameters like the reference model's state_dict", function()
    local m = D.UNet(with(tiny, { num_classes = 2 }))
    local names = {}
    for _, e in ipairs(m:named_parameters()) do names[e[1]] = e[2]:shape() end
    assert.are.same({ 16, 4 }, names["temb.0.weight"])
    assert.are.same({ 16, 16 }, names["temb.2.weight"])
    assert.are.same({ 3, 16 }, names["class_emb.weight"])
    assert.are.same({ 4, 1, 3, 3 }, names["conv_in.weight"])
    assert.are.same({ 4, 4, 3, 3 }, names["down.0.0.conv1.weight"])
    assert.are.same({ 4, 4, 3, 3 }, names["down.1.0.conv.weight"]) -- the stride-2 downsample
    assert.are.same({ 8, 4, 1, 1 }, names["down.2.0.skip.weight"]) -- 4 -> 8 channels
    assert.are.same({ 24, 8, 1, 1 }, names["down.2.1.qkv.weight"]) -- attention at 4x4
    assert.are.same({ 24, 8, 1, 1 }, names["mid_attn.qkv.weight"])
    assert.are.same({ 8, 16, 3, 3 }, names["up.0.0.conv1.weight"]) -- cat(8, skip 8)
    assert.are.same({ 1, 4, 3, 3 }, names["conv_out.weight"])
    assert.is_nil(names["down.0.1.qkv.weight"]) -- no attention at 8x8
    -- every parameter is a leaf that requires grad
    for _, p in ipairs(m:parameters()) do assert.is_true(p.requires_grad and p.is_leaf) end
  end)

  it("has the reference's parameter count for the benchmark 'tiny' model", function()
    -- torch_unet.py's tiny model (C = 32, GroupNorm(8), no classes): counted from its definition
    local m = D.UNet{ channels = 32, groups = 8, mult = { 1, 2, 2 }, res_blocks = 2, attention = { 8 } }
    local count = 0
    local function conv(cin, cout, k) count = count + cout * cin * k * k + cout end
    local function lin(cin, cout) count = count + cin * cout + cout end
    local function norm(c) count = count + 2 * c end
    local function res(cin, cout)
      norm(cin); conv(cin, cout, 3); lin(128, cout); norm(cout); conv(cout, cout, 3)
      if cin ~= cout then conv(cin, cout, 1) end
    end
    local function attn(c) norm(c); conv(c, 3 * c, 1); conv(c, c, 1) end
    lin(32, 128); lin(128, 128); conv(1, 32, 3)
    res(32, 32); res(32, 32); conv(32, 32, 3)
    res(32, 64); res(64, 64); conv(64, 64, 3)
    res(64, 64); attn(64); res(64, 64); attn(64)
    res(64, 64); attn(64); res(64, 64)
    res(128, 64); attn(64); res(128, 64); attn(64); res(128, 64); attn(64); conv(64, 64, 3)
    res(128, 64); res(128, 64); res(96, 64); conv(64, 64, 3)
    res(96, 32); res(64, 32); res(64, 32)
    norm(32); conv(32, 1, 3)
    assert.are.equal(count, m:num_parameters())
  end)

  it("passes a gradient check through the whole network", function()
    D.manual_seed(2)
    local m = D.UNet(with(tiny, { num_classes = 2 }))
    m:eval()
    local t, y = D.tensor{ 7, 300 }, D.tensor{ 1, 3 }
    local ok, report = D.gradcheck(function(x) return m(x, t, y) end, { D.randn(2, 1, 8, 8) },
      { eps = 1e-2, atol = 2e-2, rtol = 3e-2 })
    assert.is_true(ok, report)
    -- and through some weights
    local w = m:named_parameters()
    local by_name = {}
    for _, e in ipairs(w) do by_name[e[1]] = e[2] end
    local x = D.randn(2, 1, 8, 8)
    for _, name in ipairs({ "down.2.1.qkv.weight", "up.0.0.temb_proj.weight", "class_emb.weight" }) do
      local p = by_name[name]
      local out0 = m(x, t, y)
      local r = D.randn(out0:shape())
      m:zero_grad()
      ;(m(x, t, y) * r):sum():backward()
      -- a directional derivative along a random direction, by central differences
      local dir = D.randn(p:shape())
      local analytic = (p.grad * dir):sum():item()
      local eps = 1e-2
      local function loss_at(s)
        D.no_grad(function() p:add_(dir * s) end)
        local l = D.no_grad(function() return (m(x, t, y) * r):sum():item() end)
        D.no_grad(function() p:sub_(dir * s) end)
        return l
      end
      local numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
      assert.is_true(math.abs(analytic - numeric) <= 2e-2 + 3e-2 * math.abs(numeric),
        string.format("%s: autograd %g, finite differences %g", name, analytic, numeric))
    end
  end)

  it("is deterministic under a seed; dropout only in training mode", function()
    D.manual_seed(3)
    local a = D.UNet(with(tiny, { dropout = 0.5 }))
    D.manual_seed(3)
    local b = D.UNet(with(tiny, { dropout = 0.5 }))
    local x = D.randn(2, 1, 8, 8)
    a:eval(); b:eval()
    assert.are.equal(0, (a(x, 5) - b(x, 5)):abs():max():item())
    assert.are.equal(0, (a(x, 5) - a(x, 5)):abs():max():item())
    a:train()
    assert.is_true((a(x, 5) - a(x, 5)):abs():max():item() > 0)
  end)

  it("rejects bad configurations and inputs", function()
    H.expect_error(function() D.UNet(with(tiny, { groups = 3 })) end, "not divisible by 3 groups")
    H.expect_error(function() D.UNet(with(tiny, { heads = 3 })) end, "not divisible by 3 heads")
    H.expect_error(function() D.UNet(with(tiny, { mult = {} })) end, "mult must list 1 to 8 levels")
    H.expect_error(function() D.UNet(with(tiny, { dropout = 1 })) end, "dropout must be in [0, 1)")
    H.expect_error(function() D.UNet(with(tiny, { channels = 2.5 })) end, "channels must be an integer")
    H.expect_error(function() D.UNet(with(tiny, { image_size = 6, mult = { 1, 2, 2 } })) end, "image_size 6 must be divisible by")
    H.expect_error(function() D.UNet(with(tiny, { colour = 1 })) end, "unknown config field 'colour'")
    local m = D.UNet(tiny)
    H.expect_error(function() m(D.randn(2, 3, 8, 8), 1) end, "x must be (N, 1, H, W), got {2,3,8,8}")
    H.expect_error(function() m(D.randn(2, 1, 5, 5), 1) end, "image size 5x5 must be a multiple of 2")
    H.expect_error(function() m(D.randn(2, 1, 8, 8), D.tensor{ 1, 2, 3 }) end, "t must be (N) = (2)")
    H.expect_error(function() m(D.randn(2, 1, 8, 8), 1, 1) end, "class labels given to an unconditional model")
    local c = D.UNet(with(tiny, { num_classes = 2 }))
    H.expect_error(function() c(D.randn(2, 1, 8, 8), 1, D.tensor{ 1, 4 }) end, "class labels must be in 1..3 (3 = null), got 1..4")
    H.expect_error(function() c(D.randn(2, 1, 8, 8), 1, D.tensor{ 0, 1 }) end, "class labels must be in 1..3")
  end)

  it("round-trips its weights through a state_dict", function()
    D.manual_seed(4)
    local a, b = D.UNet(tiny), D.UNet(tiny)
    local x = D.randn(1, 1, 8, 8)
    a:eval(); b:eval()
    b:load_state_dict(a:state_dict())
    assert.are.equal(0, (a(x, 9) - b(x, 9)):abs():max():item())
  end)
end)
