-- conv2d (stride, padding, dilation, groups, bias), avg_pool2d and
-- upsample_nearest2d: hand-computed values, a naive Lua reference
-- convolution, gradient checks, threads, and every error message.
local D = require "diffusion"
local H = require "helpers"

--- helpers ----------------------------------------------------------------

local function pair(v, default)
  if v == nil then return default, default end
  if type(v) == "number" then return v, v end
  return v[1], v[2]
end

-- Naive convolution of nested tables x (N, C, H, W), w (O, C/g, kh, kw), b (O) or nil.
local function ref_conv(x, w, b, opts)
  opts = opts or {}
  local sh, sw = pair(opts.stride, 1)
  local ph, pw = pair(opts.padding, 0)
  local dh, dw = pair(opts.dilation, 1)
  local groups = opts.groups or 1
  local N, H, W = #x, #x[1][1], #x[1][1][1]
  local O, Cg, KH, KW = #w, #w[1], #w[1][1], #w[1][1][1]
  local OH = (H + 2 * ph - dh * (KH - 1) - 1) // sh + 1
  local OW = (W + 2 * pw - dw * (KW - 1) - 1) // sw + 1
  local Og = O // groups
  local out = {}
  for n = 1, N do
    out[n] = {}
    for o = 1, O do
      local g = (o - 1) // Og
      out[n][o] = {}
      for oh = 1, OH do
        local row = {}
        for ow = 1, OW do
          local acc = b and b[o] or 0
          for ci = 1, Cg do
            local plane = x[n][g * Cg + ci]
            for ki = 1, KH do
              local ih = (oh - 1) * sh - ph + (ki - 1) * dh
              if ih >= 0 and ih < H then
                for kj = 1, KW do
                  local iw = (ow - 1) * sw - pw + (kj - 1) * dw
                  if iw >= 0 and iw < W then acc = acc + plane[ih + 1][iw + 1] * w[o][ci][ki][kj] end
                end
              end
            end
          end
          row[ow] = acc
        end
        out[n][o][oh] = row
      end
    end
  end
  return out
end

local gen = D.Generator(7)
local function randn(...) return D.randn({ ... }, gen) end

local x33 = D.tensor { { { { 1, 2, 3 }, { 4, 5, 6 }, { 7, 8, 9 } } } }
local k22 = D.tensor { { { { 1, 2 }, { 3, 4 } } } }

--- conv2d values -----------------------------------------------------------

describe("conv2d", function()
  it("a 2x2 kernel over a 3x3 input, no padding", function()
    local y = D.conv2d(x33, k22)
    assert.are.same({ 1, 1, 2, 2 }, y:shape())
    H.assert_close(y, { { { { 37, 47 }, { 67, 77 } } } })
  end)

  it("with a bias, given as a number of channels", function()
    H.assert_close(D.conv2d(x33, k22, D.tensor { 10 }), { { { { 47, 57 }, { 77, 87 } } } })
  end)

  it("padding 1, stride 2", function()
    local y = D.conv2d(x33, k22, nil, { padding = 1, stride = 2 })
    H.assert_close(y, { { { { 4, 18 }, { 36, 77 } } } })
  end)

  it("dilation 2: the kernel taps the corners", function()
    local y = x33:conv2d(k22, { dilation = 2 })
    assert.are.same({ 1, 1, 1, 1 }, y:shape())
    H.assert_close(y, { { { { 1 * 1 + 3 * 2 + 7 * 3 + 9 * 4 } } } })
  end)

  it("stride and padding given per dim", function()
    -- stride {1, 2}, padding {0, 1}: columns -1..0 and 1..2 of rows 0..1 and 1..2
    local y = D.conv2d(x33, k22, nil, { stride = { 1, 2 }, padding = { 0, 1 } })
    assert.are.same({ 1, 1, 2, 2 }, y:shape())
    H.assert_close(y, { { { { 1 * 2 + 4 * 4, 2 * 1 + 3 * 2 + 5 * 3 + 6 * 4 },
                          { 4 * 2 + 7 * 4, 5 * 1 + 6 * 2 + 8 * 3 + 9 * 4 } } } })
  end)

  it("groups 2 with 4 channels: each output sees only its group's channels, plus the bias", function()
    local x = D.tensor { { { { 1 } }, { { 2 } }, { { 3 } }, { { 4 } } } }  -- (1, 4, 1, 1)
    local w = D.tensor { { { { 1 } }, { { 10 } } }, { { { 100 } }, { { 1000 } } } } -- (2, 2, 1, 1)
    local y = D.conv2d(x, w, D.tensor { 0.5, -1 }, { groups = 2 })
    assert.are.same({ 1, 2, 1, 1 }, y:shape())
    H.assert_close(y, { { { { 1 + 20 + 0.5 } }, { { 300 + 4000 - 1 } } } })
  end)

  it("groups 2 with two outputs per group", function()
    local x = D.tensor { { { { 1, 2 } }, { { 3, 4 } } } }                       -- (1, 2, 1, 2)
    local w = D.tensor { { { { 1, 1 } } }, { { { 1, -1 } } }, { { { 2, 0 } } }, { { { 0, 3 } } } } -- (4, 1, 1, 2)
    H.assert_close(D.conv2d(x, w, nil, { groups = 2 }), { { { { 3 } }, { { -1 } }, { { 6 } }, { { 12 } } } })
  end)

  it("a batch of two images uses the same weights", function()
    local x = D.cat({ x33, x33 * 2 }, 1)
    H.assert_close(D.conv2d(x, k22), { { { { 37, 47 }, { 67, 77 } } }, { { { 74, 94 }, { 134, 154 } } } })
  end)

  it("matches a naive reference on random inputs", function()
    local cases = {
      { x = { 2, 3, 5, 6 }, w = { 4, 3, 3, 3 }, bias = true, opts = {} },
      { x = { 1, 4, 7, 5 }, w = { 6, 2, 2, 3 }, bias = true, opts = { groups = 2, stride = 2, padding = 1 } },
      { x = { 2, 2, 6, 6 }, w = { 3, 2, 3, 2 }, bias = false, opts = { dilation = { 2, 1 }, padding = { 2, 1 } } },
      { x = { 1, 6, 5, 5 }, w = { 6, 1, 3, 3 }, bias = true, opts = { groups = 6, padding = 1 } }, -- depthwise
      { x = { 1, 3, 8, 7 }, w = { 2, 3, 1, 1 }, bias = false, opts = { stride = { 3, 2 } } },
      { x = { 2, 4, 6, 7 }, w = { 4, 1, 2, 2 }, bias = true,
        opts = { stride = { 2, 1 }, padding = { 1, 0 }, dilation = { 1, 3 }, groups = 4 } },
      { x = { 1, 2, 4, 4 }, w = { 2, 2, 4, 4 }, bias = false, opts = {} }, -- kernel as large as the input
    }
    for i, c in ipairs(cases) do
      local x, w = randn(table.unpack(c.x)), randn(table.unpack(c.w))
      local b = c.bias and randn(c.w[1]) or nil
      local y = D.conv2d(x, w, b, c.opts)
      local ok, msg = H.compare(y:totable(), ref_conv(x:totable(), w:totable(), b and b:totable(), c.opts), 1e-4,
        "case " .. i)
      assert.is_true(ok, msg)
    end
  end)

  it("reads non-contiguous inputs and weights as they look", function()
    local x = randn(2, 3, 6, 5):transpose(3, 4) -- (2, 3, 5, 6)
    local w = randn(3, 4, 3, 2):transpose(1, 2) -- (4, 3, 3, 2)
    local b = randn(8):slice(1, 1, 8, 2)        -- (4), stride 2
    assert.is_false(x:is_contiguous())
    local opts = { padding = 1, stride = { 2, 1 } }
    local ok, msg = H.compare(D.conv2d(x, w, b, opts):totable(),
      ref_conv(x:totable(), w:totable(), b:totable(), opts), 1e-4, "value")
    assert.is_true(ok, msg)
  end)

  it("an empty batch gives an empty result; zero input channels give the bias", function()
    assert.are.same({ 0, 2, 2, 2 }, D.conv2d(D.zeros(0, 3, 3, 3), D.zeros(2, 3, 2, 2)):shape())
    local y = D.conv2d(D.zeros(1, 0, 3, 3), D.zeros(2, 0, 2, 2), D.tensor { 1.5, -2 })
    H.assert_close(y, { { { { 1.5, 1.5 }, { 1.5, 1.5 } }, { { -2, -2 }, { -2, -2 } } } })
    H.assert_close(D.conv2d(D.zeros(1, 0, 2, 2), D.zeros(1, 0, 1, 1)), { { { { 0, 0 }, { 0, 0 } } } })
  end)

  it("gives the same result at 1 and 3 threads on a size that splits im2col", function()
    local x, w, b = randn(2, 8, 24, 24), randn(4, 8, 3, 3), randn(4)
    local threads = D.get_num_threads()
    local ys = {}
    for _, n in ipairs({ 1, 3 }) do
      D.set_num_threads(n)
      local xl, wl = x:clone():requires_grad_(true), w:clone():requires_grad_(true)
      local y = D.conv2d(xl, wl, b, { padding = 1 })
      y:backward(D.ones(y:shape()))
      ys[n] = { y = y:detach(), dx = xl.grad, dw = wl.grad }
    end
    D.set_num_threads(threads)
    H.assert_close(ys[3].y, ys[1].y, 1e-5)
    H.assert_close(ys[3].dx, ys[1].dx, 1e-5)
    H.assert_close(ys[3].dw, ys[1].dw, 1e-4)
    local ok, msg = H.compare(ys[1].y:narrow(1, 1, 1):totable(),
      ref_conv(x:narrow(1, 1, 1):totable(), w:totable(), b:totable(), { padding = 1 }), 1e-4, "value")
    assert.is_true(ok, msg)
  end)
end)

--- conv2d gradients ------------------------------------------------------------

describe("conv2d gradients", function()
  it("hand-computed: sum of a 2x2 convolution over a 3x3 input", function()
    local x, w, b = x33:clone():requires_grad_(true), k22:clone():requires_grad_(true), D.tensor({ 0 }):requires_grad_(true)
    local y = D.conv2d(x, w, b)
    assert.are.equal("conv2d", y.grad_fn)
    y:sum():backward()
    -- each input cell collects the kernel weights that touch it
    H.assert_close(x.grad, { { { { 1, 3, 2 }, { 4, 10, 6 }, { 3, 7, 4 } } } })
    -- each weight collects the inputs it touched
    H.assert_close(w.grad, { { { { 12, 16 }, { 24, 28 } } } })
    H.assert_close(b.grad, { 4 })
  end)

  it("records nothing when nothing requires grad", function()
    assert.is_nil(D.conv2d(x33, k22).grad_fn)
    local w = k22:clone():requires_grad_(true)
    assert.is_nil(D.no_grad(function() return D.conv2d(x33, w) end).grad_fn)
  end)

  local configs = {
    { x = { 2, 2, 5, 4 }, w = { 3, 2, 3, 3 }, opts = {} },
    { x = { 1, 3, 5, 5 }, w = { 2, 3, 2, 2 }, opts = { stride = 2, padding = 1 } },
    { x = { 1, 2, 6, 5 }, w = { 2, 2, 2, 2 }, opts = { dilation = 2, padding = { 1, 2 } } },
    { x = { 2, 4, 4, 4 }, w = { 4, 2, 3, 1 }, opts = { groups = 2, stride = { 1, 2 }, padding = { 1, 0 } } },
    { x = { 1, 3, 5, 6 }, w = { 3, 1, 2, 3 }, opts = { groups = 3, stride = { 2, 1 }, dilation = { 1, 2 }, padding = 1 } },
  }
  for i, c in ipairs(configs) do
    it(string.format("gradcheck for x, w and b, config %d", i), function()
      local x, w, b = randn(table.unpack(c.x)), randn(table.unpack(c.w)), randn(c.w[1])
      local ok, report = D.gradcheck(function(xi, wi, bi) return D.conv2d(xi, wi, bi, c.opts) end, { x, w, b },
        { eps = 1e-2, atol = 2e-3, rtol = 1e-3 })
      assert.is_true(ok, report)
    end)
  end

  it("gradcheck with only one input requiring grad at a time, and without bias", function()
    local x, w, b = randn(1, 4, 5, 5), randn(2, 2, 3, 3), randn(2)
    local opts = { groups = 2, padding = 1, stride = 2 }
    local fn = function(xi, wi, bi) return D.conv2d(xi, wi, bi, opts) end
    for k = 1, 3 do
      local ok, report = D.gradcheck(fn, { x, w, b }, { wrt = { k }, atol = 2e-3, rtol = 1e-3 })
      assert.is_true(ok, "input " .. k .. ": " .. report)
    end
    local ok, report = D.gradcheck(function(xi, wi) return D.conv2d(xi, wi, nil, opts) end, { x, w },
      { atol = 2e-3, rtol = 1e-3 })
    assert.is_true(ok, report)
  end)

  it("the gradient flows through a non-contiguous gradient and a second use of the input", function()
    local x = randn(1, 2, 4, 4)
    local w = randn(2, 2, 3, 3)
    local ok, report = D.gradcheck(function(xi, wi)
      local y = D.conv2d(xi, wi, nil, { padding = 1 })
      return (y:transpose(3, 4) + xi):tanh()
    end, { x, w }, { atol = 2e-3, rtol = 2e-3 })
    assert.is_true(ok, report)
  end)

  it("gradcheck catches a wrong conv2d backward", function()
    local x, w = randn(1, 2, 3, 3), randn(2, 2, 2, 2)
    D._debug_corrupt_backward("conv2d", 1.1)
    local ok = pcall(function()
      local good = D.gradcheck(function(xi, wi) return D.conv2d(xi, wi) end, { x, w })
      assert(not good)
    end)
    D._debug_corrupt_backward(nil)
    assert.is_true(ok)
  end)
end)

--- avg_pool2d -------------------------------------------------------------------

describe("avg_pool2d", function()
  local x44 = D.arange(1, 17):view(1, 1, 4, 4)

  it("a 2x2 kernel; stride defaults to the kernel", function()
    H.assert_close(D.avg_pool2d(x44, 2), { { { { 3.5, 5.5 }, { 11.5, 13.5 } } } })
    H.assert_close(x44:avg_pool2d({ 2, 2 }, 2, 0), { { { { 3.5, 5.5 }, { 11.5, 13.5 } } } })
  end)

  it("kernel 3, stride 1, padding 1: padded cells count as zeros", function()
    local y = D.avg_pool2d(x33, 3, 1, 1)
    H.assert_close(y, { { { { 12 / 9, 21 / 9, 16 / 9 }, { 27 / 9, 45 / 9, 33 / 9 }, { 24 / 9, 39 / 9, 28 / 9 } } } })
  end)

  it("rectangular kernel and stride", function()
    -- kernel {1, 2}, stride {2, 1}: rows 1 and 3, pairs of neighbours
    H.assert_close(D.avg_pool2d(x44, { 1, 2 }, { 2, 1 }),
      { { { { 1.5, 2.5, 3.5 }, { 9.5, 10.5, 11.5 } } } })
  end)

  it("pools each plane of a batch on its own", function()
    local x = D.cat({ x44, -x44, x44 * 10 }, 2):expand(2, 3, 4, 4) -- non-contiguous
    local y = D.avg_pool2d(x, 4)
    assert.are.same({ 2, 3, 1, 1 }, y:shape())
    H.assert_close(y, { { { { 8.5 } }, { { -8.5 } }, { { 85 } } }, { { { 8.5 } }, { { -8.5 } }, { { 85 } } } })
  end)

  it("backward spreads each gradient evenly over its window", function()
    local x = x33:clone():requires_grad_(true)
    local y = D.avg_pool2d(x, 3, 1, 1)
    assert.are.equal("avg_pool2d", y.grad_fn)
    y:sum():backward()
    H.assert_close(x.grad, { { { { 4 / 9, 6 / 9, 4 / 9 }, { 6 / 9, 1, 6 / 9 }, { 4 / 9, 6 / 9, 4 / 9 } } } })
  end)

  local configs = {
    { x = { 2, 2, 4, 4 }, k = 2 },
    { x = { 1, 3, 5, 5 }, k = 3, s = 2, p = 1 },
    { x = { 1, 2, 5, 6 }, k = { 2, 3 }, s = { 1, 2 }, p = { 1, 1 } },
    { x = { 2, 1, 6, 5 }, k = { 3, 2 }, s = 1, p = { 1, 0 } },
  }
  for i, c in ipairs(configs) do
    it("gradcheck, config " .. i, function()
      local ok, report = D.gradcheck(function(xi) return D.avg_pool2d(xi, c.k, c.s, c.p) end,
        { randn(table.unpack(c.x)) }, { atol = 1e-3, rtol = 1e-3 })
      assert.is_true(ok, report)
    end)
  end
end)

--- upsample_nearest2d ---------------------------------------------------------

describe("upsample_nearest2d", function()
  local x22 = D.tensor { { { { 1, 2 }, { 3, 4 } } } }

  it("scale 2 repeats each cell in a 2x2 block", function()
    H.assert_close(D.upsample_nearest2d(x22, 2),
      { { { { 1, 1, 2, 2 }, { 1, 1, 2, 2 }, { 3, 3, 4, 4 }, { 3, 3, 4, 4 } } } })
  end)

  it("a scale per dim, as a method", function()
    H.assert_close(x22:upsample_nearest2d({ 1, 3 }), { { { { 1, 1, 1, 2, 2, 2 }, { 3, 3, 3, 4, 4, 4 } } } })
    H.assert_close(x22:upsample_nearest2d({ 2, 1 }), { { { { 1, 2 }, { 1, 2 }, { 3, 4 }, { 3, 4 } } } })
  end)

  it("scale 1 is a copy, and planes stay apart on a non-contiguous input", function()
    local x = randn(2, 3, 4, 5):transpose(3, 4)
    H.assert_close(D.upsample_nearest2d(x, 1), x)
    local y = D.upsample_nearest2d(x, { 2, 3 })
    assert.are.same({ 2, 3, 10, 12 }, y:shape())
    assert.are.equal(x:get(2, 3, 5, 4), y:get(2, 3, 10, 12))
    assert.are.equal(x:get(1, 2, 3, 1), y:get(1, 2, 6, 2))
  end)

  it("backward sums the gradient over each block", function()
    local x = x22:clone():requires_grad_(true)
    local y = D.upsample_nearest2d(x, { 2, 3 })
    assert.are.equal("upsample_nearest2d", y.grad_fn)
    y:backward(D.arange(1, 25):view(1, 1, 4, 6))
    -- block of (1,1): rows 1-2, cols 1-3 of 1..24 in rows of 6
    H.assert_close(x.grad, { { { { 1 + 2 + 3 + 7 + 8 + 9, 4 + 5 + 6 + 10 + 11 + 12 },
                               { 13 + 14 + 15 + 19 + 20 + 21, 16 + 17 + 18 + 22 + 23 + 24 } } } })
  end)

  for i, scale in ipairs({ 2, { 1, 3 }, { 3, 2 } }) do
    it("gradcheck, scale " .. i, function()
      local ok, report = D.gradcheck(function(xi) return D.upsample_nearest2d(xi, scale) end,
        { randn(2, 2, 3, 2) }, { atol = 1e-3, rtol = 1e-3 })
      assert.is_true(ok, report)
    end)
  end
end)

--- errors ---------------------------------------------------------------------

describe("errors", function()
  local x = D.zeros(1, 4, 5, 5)
  local w = D.zeros(2, 4, 3, 3)

  it("conv2d shapes", function()
    H.assert_error_with("conv2d: expected a 4-d input (N, C, H, W), got shape {4,5,5}", D.conv2d, D.zeros(4, 5, 5), w)
    H.assert_error_with("conv2d: expected a 4-d weight (O, C / groups, kh, kw), got shape {2,4,3}", D.conv2d, x,
      D.zeros(2, 4, 3))
    H.assert_error_with("conv2d: weight has 3 input channels, input has 4", D.conv2d, x, D.zeros(2, 3, 3, 3))
    H.assert_error_with("conv2d: weight has 1 input channels per group x 2 groups, input has 4", D.conv2d, x,
      D.zeros(2, 1, 3, 3), { groups = 2 })
    H.assert_error_with("conv2d: input has 4 channels, not divisible by groups = 3", D.conv2d, x, D.zeros(3, 1, 3, 3),
      { groups = 3 })
    H.assert_error_with("conv2d: weight has 3 output channels, not divisible by groups = 2", D.conv2d, x,
      D.zeros(3, 2, 3, 3), { groups = 2 })
    H.assert_error_with("conv2d: weight {2,4,0,3} has an empty kernel", D.conv2d, x, D.zeros(2, 4, 0, 3))
    H.assert_error_with("conv2d: bias must have shape {2} (one per output channel), got {3}", D.conv2d, x, w, D.zeros(3))
    H.assert_error_with("conv2d: bias must have shape {2} (one per output channel), got {1,2}", D.conv2d, x, w,
      D.zeros(1, 2))
  end)

  it("conv2d output size", function()
    H.assert_error_with("conv2d: input {1,1,2,2} padded by {0,0} is 2x2, smaller than the dilated kernel 3x3",
      D.conv2d, D.zeros(1, 1, 2, 2), D.zeros(1, 1, 3, 3))
    H.assert_error_with("conv2d: input {1,1,2,4} padded by {0,0} is 2x4, smaller than the dilated kernel 3x3",
      D.conv2d, D.zeros(1, 1, 2, 4), D.zeros(1, 1, 2, 2), { dilation = 2 })
    H.assert_error_with("conv2d: input {1,1,0,3} padded by {0,1} is 0x5", D.conv2d, D.zeros(1, 1, 0, 3),
      D.zeros(1, 1, 1, 1), { padding = { 0, 1 } })
    -- padding makes it fit
    assert.are.same({ 1, 1, 2, 2 }, D.conv2d(D.zeros(1, 1, 2, 2), D.zeros(1, 1, 3, 3), { padding = 1 }):shape())
  end)

  it("conv2d parameters", function()
    H.assert_error_with("conv2d: stride must be >= 1, got {0,0}", D.conv2d, x, w, nil, { stride = 0 })
    H.assert_error_with("conv2d: stride must be >= 1, got {1,-1}", D.conv2d, x, w, { stride = { 1, -1 } })
    H.assert_error_with("conv2d: padding must be >= 0, got {-1,0}", D.conv2d, x, w, { padding = { -1, 0 } })
    H.assert_error_with("conv2d: dilation must be >= 1, got {0,0}", D.conv2d, x, w, { dilation = 0 })
    H.assert_error_with("conv2d: groups must be >= 1, got 0", D.conv2d, x, w, { groups = 0 })
  end)

  it("conv2d arguments", function()
    H.assert_error_with("unknown option 'strides' (expected stride, padding, dilation or groups)", D.conv2d, x, w,
      { strides = 1 })
    H.assert_error_with("unknown option 'number'", D.conv2d, x, w, { 1 })
    H.assert_error_with("stride must be an integer or {h, w}, got string", D.conv2d, x, w, { stride = "2" })
    H.assert_error_with("padding must be an integer or {h, w}, got a table of another length", D.conv2d, x, w,
      { padding = { 1, 1, 1 } })
    H.assert_error_with("dilation must be an integer, got number", D.conv2d, x, w, { dilation = 1.5 })
    H.assert_error_with("dilation must be an integer, got string", D.conv2d, x, w, { dilation = { 1, "x" } })
    H.assert_error_with("groups must be an integer, got table", D.conv2d, x, w, { groups = { 2 } })
    H.assert_error_with("groups 4294967296 is out of range", D.conv2d, x, w, { groups = 1 << 32 })
    H.assert_error_with("nothing may follow the options table", D.conv2d, x, w, {}, 1)
    H.assert_error_with("diffusion.Tensor expected, got number", D.conv2d, x, w, 5)
    H.assert_error_with("diffusion.Tensor expected, got table", D.conv2d, x, { 1 })
    H.assert_error_with("diffusion.Tensor expected, got no value", D.conv2d, x)
    H.assert_error_with("table expected, got string", D.conv2d, x, w, nil, "stride")
  end)

  it("avg_pool2d", function()
    H.assert_error_with("avg_pool2d: expected a 4-d input (N, C, H, W), got shape {4,4}", D.avg_pool2d, D.zeros(4, 4), 2)
    H.assert_error_with("avg_pool2d: kernel must be >= 1, got {0,2}", D.avg_pool2d, x, { 0, 2 })
    H.assert_error_with("avg_pool2d: stride must be >= 1, got {0,0}", D.avg_pool2d, x, 2, 0)
    H.assert_error_with("avg_pool2d: padding must be >= 0, got {0,-1}", D.avg_pool2d, x, 2, 2, { 0, -1 })
    H.assert_error_with("avg_pool2d: padding {2,1} must be at most half the kernel {3,3}", D.avg_pool2d, x, 3, 1, { 2, 1 })
    H.assert_error_with("avg_pool2d: input {1,4,5,5} padded by {0,0} is 5x5, smaller than the kernel 6x2", D.avg_pool2d, x,
      { 6, 2 })
    H.assert_error_with("kernel must be an integer or {h, w}, got no value", D.avg_pool2d, x)
    H.assert_error_with("stride must be an integer, got number", D.avg_pool2d, x, 2, 0.5)
  end)

  it("upsample_nearest2d", function()
    H.assert_error_with("upsample_nearest2d: expected a 4-d input (N, C, H, W), got shape {1,2,2,2,2}",
      D.upsample_nearest2d, D.zeros(1, 2, 2, 2, 2), 2)
    H.assert_error_with("upsample_nearest2d: scale must be >= 1, got {0,0}", D.upsample_nearest2d, x, 0)
    H.assert_error_with("upsample_nearest2d: scale must be >= 1, got {2,-1}", D.upsample_nearest2d, x, { 2, -1 })
    H.assert_error_with("scale must be an integer or {h, w}, got a table of another length", D.upsample_nearest2d, x, { 2 })
    local huge = D.zeros(1, 1, 1, 1):expand(1, 1, 1 << 20, 1 << 20) -- one element, viewed as 2^40
    H.assert_error_with("upsample_nearest2d: shape {1,1,1125899906842624,1125899906842624} is too large to allocate",
      D.upsample_nearest2d, huge, 1 << 30)
    local taller = D.zeros(1, 1, 1, 1):expand(1, 1, 1 << 40, 1)
    H.assert_error_with("upsample_nearest2d: input {1,1,1099511627776,1} scaled by {2147483647,1} is too large to allocate",
      D.upsample_nearest2d, taller, { (1 << 31) - 1, 1 })
  end)
end)

describe("conv2d over several image chunks", function()
  -- 10 images of 8 x 64 x 64 take more than one chunk of the column workspace;
  -- each image's result must equal the one computed alone
  it("matches image-by-image forward and backward at the chunk boundaries", function()
    D.manual_seed(77)
    local x = D.randn(10, 8, 64, 64):requires_grad_()
    local w = D.randn(8, 8, 3, 3):requires_grad_()
    local b = D.randn(8)
    local y = D.conv2d(x, w, b, { padding = 1 })
    local r = D.randn(y:shape())
    ;(y * r):sum():backward()
    local dw_sum = D.zeros(8, 8, 3, 3)
    for n = 1, 10 do
      local xn = x:narrow(1, n, 1):detach():requires_grad_()
      local wn = w:detach():requires_grad_()
      local yn = D.conv2d(xn, wn, b, { padding = 1 })
      assert.is_true((yn - y:narrow(1, n, 1)):abs():max():item() < 1e-4, "forward of image " .. n)
      ;(yn * r:narrow(1, n, 1)):sum():backward()
      assert.is_true((xn.grad - x.grad:narrow(1, n, 1)):abs():max():item() < 1e-4, "input gradient of image " .. n)
      dw_sum = dw_sum + wn.grad
    end
    assert.is_true((dw_sum - w.grad):abs():max():item() < 1e-2 * w.grad:abs():max():item(), "weight gradient")
  end)
end)
