-- nn modules: parameter bookkeeping, state dicts, initialisation, and each
-- layer against the functional op it wraps.
local D = require "diffusion"
local nn = D.nn
local H = require "helpers"

describe("Module bookkeeping", function()
  local function net()
    return nn.Sequential(nn.Conv2d(1, 4, 3, { padding = 1 }), nn.GroupNorm(2, 4), nn.SiLU(),
      nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
  end

  it("names parameters with stable dotted names in registration order", function()
    local names = {}
    for _, e in ipairs(net():named_parameters()) do names[#names + 1] = e[1] end
    assert.are.same({ "1.weight", "1.bias", "2.weight", "2.bias", "5.weight", "5.bias" }, names)
    local m = net()
    local params = m:parameters()
    assert.are.equal(6, #params)
    assert.are.equal(m:named_parameters()[5][2], params[5])
    for _, p in ipairs(params) do assert.is_true(p.requires_grad and p.is_leaf) end
    assert.are.equal(4 * 9 + 4 + 4 + 4 + 100 * 3 + 3, m:num_parameters())
  end)

  it("nests children's names", function()
    local Block = nn.Module:extend("Block")
    function Block:init() self:add("inner", nn.Linear(2, 2)) end
    function Block:forward(x) return self.inner(x) end
    local outer = nn.Sequential(Block(), Block())
    assert.are.equal("2.inner.bias", outer:named_parameters()[4][1])
  end)

  it("zero_grad clears gradients", function()
    local m = nn.Linear(3, 2)
    m(D.randn(4, 3)):sum():backward()
    assert.is_not_nil(m.weight.grad)
    m:zero_grad()
    assert.is_nil(m.weight.grad)
    assert.is_nil(m.bias.grad)
  end)

  it("train and eval reach every child, and change dropout", function()
    local m = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    assert.is_true(m["2"].training)
    m:eval()
    assert.is_false(m.training)
    assert.is_false(m["2"].training)
    local x = D.randn(8, 4)
    assert.are.equal(0, H.max_diff(m(x), m["1"](x)))
    m:train()
    assert.is_true(m["2"].training)
    assert.is_true(H.max_diff(m(x), m["1"](x)) > 0)
  end)

  it("round-trips a state_dict into a fresh model", function()
    D.manual_seed(1)
    local a, b = net(), net()
    local x = D.randn(2, 1, 5, 5)
    assert.is_true(H.max_diff(a(x), b(x)) > 0)
    b:load_state_dict(a:state_dict())
    assert.are.equal(0, H.max_diff(a(x), b(x)))
    -- a copy, not shared storage
    D.no_grad(function() a["5"].bias:add_(1) end)
    assert.is_true(H.max_diff(a(x), b(x)) > 0)
  end)

  it("strict load_state_dict lists every problem and copies nothing", function()
    local m = nn.Linear(3, 2)
    local before = m.weight:clone()
    local sd = { weight = D.zeros(2, 4), extra = D.zeros(1) }
    H.expect_error(function() m:load_state_dict(sd) end,
      "load_state_dict: weight has shape {2,4}, the model expects {2,3}; missing bias; unexpected extra")
    assert.are.equal(0, H.max_diff(before, m.weight))
    H.expect_error(function() m:load_state_dict({ weight = "x", bias = D.zeros(2) }) end, "weight is a string, not a tensor")
    H.expect_error(function() m:load_state_dict(5) end, "expected a table of tensors")
  end)

  it("non-strict load_state_dict skips missing and unexpected names but not bad shapes", function()
    local m = nn.Linear(3, 2)
    m:load_state_dict({ bias = D.full({ 2 }, 7), other = D.zeros(1) }, false)
    assert.are.same({ 7, 7 }, m.bias:totable())
    H.expect_error(function() m:load_state_dict({ bias = D.zeros(3) }, false) end, "bias has shape {3}")
  end)

  it("prints a summary with parameter counts", function()
    local s = tostring(net())
    assert.is_truthy(s:find("Sequential", 1, true))
    assert.is_truthy(s:find("1: Conv2d(1 -> 4, 3x3, stride 1, padding 1)", 1, true))
    assert.is_truthy(s:find("5: Linear(100 -> 3)", 1, true))
    assert.is_truthy(s:find("351 parameters", 1, true))
  end)
end)

describe("initialisation", function()
  it("draws Linear and Conv2d weights uniformly within 1/sqrt(fan_in), as PyTorch does", function()
    D.manual_seed(2)
    local lin = nn.Linear(400, 300)
    local bound = 1 / math.sqrt(400)
    assert.is_true(lin.weight:abs():max():item() <= bound)
    assert.is_true(math.abs(lin.weight:var():item() - bound ^ 2 / 3) < 0.05 * bound ^ 2 / 3)
    assert.is_true(lin.bias:abs():max():item() <= bound)
    local conv = nn.Conv2d(8, 16, 3, { groups = 2 })
    local cbound = 1 / math.sqrt(4 * 9)
    assert.is_true(conv.weight:abs():max():item() <= cbound)
    assert.is_true(conv.weight:abs():max():item() > 0.9 * cbound)
    assert.are.same({ 16, 4, 3, 3 }, conv.weight:shape())
  end)

  it("zero_init starts at zero; norms start at identity", function()
    local lin = nn.Linear(3, 2, { zero_init = true })
    assert.are.equal(0, lin.weight:abs():max():item())
    assert.are.equal(0, lin.bias:abs():max():item())
    local gn = nn.GroupNorm(2, 4)
    assert.are.same({ 1, 1, 1, 1 }, gn.weight:totable())
    assert.are.same({ 0, 0, 0, 0 }, gn.bias:totable())
    assert.is_nil(nn.Linear(3, 2, { bias = false }).bias)
  end)

  it("rejects bad configurations", function()
    H.expect_error(function() nn.Conv2d(3, 4, 3, { groups = 2 }) end, "not divisible by groups 2")
    H.expect_error(function() nn.GroupNorm(3, 4) end, "4 channels are not divisible by 3 groups")
    H.expect_error(function() nn.Dropout(1) end, "p must be in [0, 1)")
    H.expect_error(function() nn.MultiheadAttention(6, 4) end, "dim 6 is not divisible by 4 heads")
    H.expect_error(function() nn.Linear(0, 2) end, "in_features must be a positive integer")
  end)
end)

describe("layers match their ops", function()
  it("Linear, Conv2d, GroupNorm, LayerNorm, pooling, upsampling, activations", function()
    D.manual_seed(3)
    local x = D.randn(2, 4, 6, 6)
    local conv = nn.Conv2d(4, 6, 3, { stride = 2, padding = 1 })
    assert.are.equal(0, H.max_diff(conv(x), D.conv2d(x, conv.weight, conv.bias, { stride = 2, padding = 1 })))
    local gn = nn.GroupNorm(2, 4)
    assert.are.equal(0, H.max_diff(gn(x), D.group_norm(x, 2, gn.weight, gn.bias)))
    local ln = nn.LayerNorm({ 6, 6 })
    assert.are.equal(0, H.max_diff(ln(x), D.layer_norm(x, { 6, 6 }, ln.weight, ln.bias)))
    local lin = nn.Linear(6, 5)
    assert.is_true(H.max_diff(lin(x), x:matmul(lin.weight:t()) + lin.bias) < 1e-5)
    assert.are.same({ 2, 4, 3, 3 }, nn.AvgPool2d(2)(x):shape())
    assert.are.same({ 2, 4, 12, 12 }, nn.Upsample(2)(x):shape())
    assert.are.equal(0, H.max_diff(nn.SiLU()(x), x:silu()))
    assert.are.equal(0, H.max_diff(nn.ReLU()(x), x:relu()))
    assert.are.same({ 2, 144 }, nn.Flatten()(x):shape())
  end)

  it("Embedding looks up rows by 1-based index", function()
    local e = nn.Embedding(5, 3)
    local rows = e(D.tensor{ 5, 1 })
    assert.are.same(e.weight[5]:totable(), rows[1]:totable())
    assert.are.same(e.weight[1]:totable(), rows[2]:totable())
  end)

  it("MultiheadAttention: self and cross attention equal the computation by hand", function()
    D.manual_seed(4)
    local mha = nn.MultiheadAttention(8, 2, { context_dim = 6 })
    local x, ctx = D.randn(2, 5, 8), D.randn(2, 7, 6)
    local y = mha(x, ctx)
    assert.are.same({ 2, 5, 8 }, y:shape())
    -- by hand, head by head
    local q, k, v = mha.q(x), mha.k(ctx), mha.v(ctx)
    local heads = {}
    for h = 1, 2 do
      local cols = function(t) return t:narrow(3, (h - 1) * 4 + 1, 4) end
      local w = (cols(q):matmul(cols(k):transpose(2, 3)) / 2):softmax(-1) -- sqrt(4) = 2
      heads[h] = w:matmul(cols(v))
    end
    local want = mha.out(D.cat(heads, 3))
    assert.is_true(H.max_diff(y, want) < 1e-5)
    -- self-attention by default
    local self_mha = nn.MultiheadAttention(8, 2)
    assert.are.same({ 2, 5, 8 }, self_mha(x):shape())
  end)
end)

describe("training", function()
  it("a small MLP learns XOR with AdamW", function()
    D.manual_seed(5)
    local x = D.tensor{ { 0, 0 }, { 0, 1 }, { 1, 0 }, { 1, 1 } }
    local y = D.tensor{ { 0 }, { 1 }, { 1 }, { 0 } }
    local m = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))
    local opt = D.optim.AdamW(m:parameters(), { lr = 0.05, weight_decay = 0 })
    local loss
    for _ = 1, 300 do
      loss = D.bce_with_logits(m(x), y)
      opt:zero_grad()
      loss:backward()
      opt:step()
    end
    assert.is_true(loss:item() < 0.05, "final loss " .. loss:item())
    local pred = m(x):sigmoid():gt(0.5)
    assert.are.same({ { 0 }, { 1 }, { 1 }, { 0 } }, pred:totable())
  end)
end)
