-- The direct AVX-512 convolution kernels (csrc/ops/conv_direct.c) against
-- the im2col + GEMM path they replace for stride 1: forward, input, weight
-- and bias gradients over shapes that reach every edge case of the kernels
-- (planes narrower, wider and not a multiple of 16 lanes, the packed 8x8,
-- 4x4, 2x2 and 1x1 planes, channel counts that leave partial blocks of 8
-- and 4, padding 0 .. k - 1), bitwise the same at 1, 2 and 3 threads, and
-- a gradient check on the direct path. D._debug.conv_direct(false) sends
-- conv2d through im2col + GEMM; on a CPU without AVX-512 both runs take that
-- path and the comparisons hold trivially (the spec says which it ran).
-- The Winograd kernel (spec/conv_winograd_spec.lua) is off here, so the 3x3
-- "same" shapes it would take test the direct kernels too.
local D = require "diffusion"
local H = require "helpers"

local direct_available = D._debug.conv_direct(true)

-- y, dx, dw, db of one conv2d with one path
local function run(x0, w0, b0, gy, opts, direct)
  D._debug.conv_direct(direct)
  local ok, r = pcall(H.conv2d_grads, x0, w0, b0, gy, opts)
  D._debug.conv_direct(true)
  if not ok then error(r, 0) end
  return r
end

-- relative to the largest magnitude, as float sums in another order differ
local function assert_near(a, e, what) H.assert_near_max(a, e, 2e-6, what) end

local gen = D.Generator(11)

-- { N, C, H, W, O, k, padding }: 8 or more channels in and out (fewer take im2col + GEMM)
local SHAPES = {
  { 2, 8, 32, 32, 9, 3, 1 },   -- a U-Net's first level, small
  { 3, 9, 8, 8, 13, 3, 1 },    -- packed 8x8 plane, partial output blocks
  { 2, 9, 4, 4, 12, 3, 1 },    -- packed 4x4
  { 2, 8, 2, 2, 10, 3, 1 },    -- packed 2x2
  { 3, 8, 1, 1, 11, 3, 1 },    -- packed 1x1: every tap but the centre is padding
  { 2, 8, 5, 7, 9, 3, 0 },     -- no padding: the output is smaller
  { 2, 8, 20, 33, 9, 3, 2 },   -- padding 2 and a row of 33: three vectors, the last one live lane
  { 1, 8, 17, 16, 17, 3, 1 },  -- 16 exactly, odd height
  { 2, 8, 6, 40, 12, 3, 1 },   -- 40: 16 + 16 + 8
  { 2, 10, 17, 19, 10, 1, 0 }, -- 1x1 on a ragged plane
  { 1, 33, 8, 8, 96, 1, 0 },   -- 1x1, packed, input channels leave a partial block
  { 2, 32, 16, 16, 64, 3, 1 },
  { 2, 9, 3, 12, 8, 3, 2 },    -- 12 wide: not packed (16 % 12 ~= 0)
  { 2, 40, 9, 9, 36, 3, 1 },   -- 40 input channels: several input-channel blocks of 16
  { 2, 150, 4, 4, 8, 1, 0 },   -- 1x1 with 150 inputs: more than one block of 144
}

describe("conv2d direct kernels", function()
  setup(function() D._debug.conv_winograd(false) end)
  teardown(function() D._debug.conv_winograd(true) end)

  it("say whether this CPU runs them", function()
    assert.is_boolean(direct_available)
    print(("\n    (direct convolution kernels on this CPU: %s)"):format(direct_available and "yes" or "no, GEMM only"))
  end)

  for _, s in ipairs(SHAPES) do
    local n, c, h, w, o, k, p = table.unpack(s)
    for _, bias in ipairs { true, false } do
      it(("match im2col + GEMM: x {%d,%d,%d,%d}, w {%d,%d,%d,%d}, padding %d%s"):format(n, c, h, w, o, c, k, k, p,
        bias and ", bias" or ""), function()
        local x0, w0 = D.randn({ n, c, h, w }, gen), D.randn({ o, c, k, k }, gen) * 0.3
        local b0 = bias and D.randn({ o }, gen) or nil
        local oh, ow = h + 2 * p - k + 1, w + 2 * p - k + 1
        local gy = D.randn({ n, o, oh, ow }, gen)
        local a, e = run(x0, w0, b0, gy, { padding = p }, true), run(x0, w0, b0, gy, { padding = p }, false)
        H.assert_shape(a.y, { n, o, oh, ow })
        assert_near(a.y, e.y, "y")
        assert_near(a.dx, e.dx, "dx")
        assert_near(a.dw, e.dw, "dw")
        if bias then assert_near(a.db, e.db, "db") end
      end)
    end
  end

  it("give bitwise the same forward and gradients at 1, 2 and 3 threads", function()
    local x0, w0, b0 = D.randn({ 5, 12, 16, 16 }, gen), D.randn({ 20, 12, 3, 3 }, gen), D.randn({ 20 }, gen)
    local gy = D.randn({ 5, 20, 16, 16 }, gen)
    local x1, w1 = D.randn({ 3, 40, 8, 8 }, gen), D.randn({ 24, 40, 1, 1 }, gen)
    local gy1 = D.randn({ 3, 24, 8, 8 }, gen)
    local base, base1
    for _, threads in ipairs { 1, 2, 3 } do
      local r = H.with_threads(threads, function() return run(x0, w0, b0, gy, { padding = 1 }, true) end)
      local r1 = H.with_threads(threads, function() return run(x1, w1, nil, gy1, {}, true) end)
      if not base then
        base, base1 = r, r1
      else
        for _, key in ipairs { "y", "dx", "dw", "db" } do H.assert_identical(r[key], base[key], key .. " 3x3") end
        for _, key in ipairs { "y", "dx", "dw" } do H.assert_identical(r1[key], base1[key], key .. " 1x1") end
      end
    end
  end)

  it("read a non-contiguous input and weight", function()
    local x0 = D.randn({ 2, 8, 10, 9 }, gen):transpose(3, 4) -- (2, 8, 9, 10), strided
    local w0 = D.randn({ 8, 9, 3, 3 }, gen):transpose(1, 2)  -- (9, 8, 3, 3), strided
    local gy = D.randn({ 2, 9, 9, 10 }, gen)
    local a = run(x0, w0, nil, gy, { padding = 1 }, true)
    local e = run(x0:contiguous(), w0:contiguous(), nil, gy, { padding = 1 }, false)
    assert_near(a.y, e.y, "y")
    assert_near(a.dx, e.dx, "dx")
    assert_near(a.dw, e.dw, "dw")
  end)

  it("pass a gradient check for x, w and b (3x3 packed and row planes, 1x1)", function()
    for _, s in ipairs { { 1, 8, 4, 4, 8, 3, 1 }, { 1, 8, 3, 18, 8, 3, 1 }, { 2, 8, 4, 4, 9, 1, 0 } } do
      local n, c, h, w, o, k, p = table.unpack(s)
      local x, wt, b = D.randn({ n, c, h, w }, gen), D.randn({ o, c, k, k }, gen) * 0.5, D.randn({ o }, gen)
      local ok, report = D.gradcheck(function(xi, wi, bi) return D.conv2d(xi, wi, bi, { padding = p }) end, { x, wt, b },
        { eps = 1e-2, atol = 5e-3, rtol = 2e-3 })
      assert.is_true(ok, report)
    end
  end)

  it("leave the GEMM path on for strided, dilated and grouped convolutions", function()
    -- these shapes never take the direct kernels; both switches give the same bits
    local x0, gy = D.randn({ 2, 8, 9, 9 }, gen), nil
    for _, opts in ipairs { { stride = 2, padding = 1 }, { dilation = 2, padding = 2 }, { groups = 2, padding = 1 } } do
      local w0 = D.randn({ 8, 8 // (opts.groups or 1), 3, 3 }, gen)
      local y = D.conv2d(x0, w0, nil, opts)
      gy = D.randn(y:shape(), gen)
      local a, e = run(x0, w0, nil, gy, opts, true), run(x0, w0, nil, gy, opts, false)
      for _, key in ipairs { "y", "dx", "dw" } do H.assert_identical(a[key], e[key], key) end
    end
  end)

  it("take one input or output channel (a U-Net's first and last convolutions), the latter's weight gradient by GEMM", function()
    local x1, w1 = D.randn({ 3, 1, 12, 12 }, gen), D.randn({ 16, 1, 3, 3 }, gen)
    local gy1 = D.randn({ 3, 16, 12, 12 }, gen)
    local a, e = run(x1, w1, nil, gy1, { padding = 1 }, true), run(x1, w1, nil, gy1, { padding = 1 }, false)
    for _, key in ipairs { "y", "dx", "dw" } do assert_near(a[key], e[key], key .. " (1 channel in)") end
    local x2, w2 = D.randn({ 3, 16, 12, 12 }, gen), D.randn({ 1, 16, 3, 3 }, gen)
    local gy2 = D.randn({ 3, 1, 12, 12 }, gen)
    a, e = run(x2, w2, nil, gy2, { padding = 1 }, true), run(x2, w2, nil, gy2, { padding = 1 }, false)
    assert_near(a.y, e.y, "y (1 channel out)")
    assert_near(a.dx, e.dx, "dx (1 channel out)")
    H.assert_identical(a.dw, e.dw, "dw (1 channel out: im2col + GEMM either way)")
  end)
end)
