-- The Winograd F(2x2, 3x3) kernel (csrc/ops/conv_winograd.c) against the
-- direct kernel and im2col + GEMM: forward and input gradient (the same
-- kernel over the flipped, transposed weights) for every way it cuts a
-- plane into vectors of 16 tiles — 4 tile rows of an 8-wide plane, 2 of a
-- 16-wide one, one row of 32, and rows of 64 and 96 whose vectors take a
-- neighbour's column from the next vector — with partial blocks of output
-- channels, one input channel, many, and batches whose last block is short.
-- Shapes it does not take still come out right (by the direct kernel). The
-- results are bitwise the same at 1, 2 and 3 threads, and a gradient check
-- runs on it. D._debug.conv_winograd(false) sends its shapes to the direct
-- kernel; on a CPU without AVX-512 every run takes im2col + GEMM and the
-- comparisons hold trivially (the spec says which it ran).
local D = require "diffusion"
local H = require "helpers"

local available = D._debug.conv_winograd(true)

-- y, dx, dw, db of one conv2d (padding 1) with the Winograd kernel on or off
-- (and, with gemm, the direct kernels off too)
local function run(x0, w0, b0, gy, winograd, gemm)
  D._debug.conv_winograd(winograd)
  D._debug.conv_direct(not gemm)
  local ok, r = pcall(H.conv2d_grads, x0, w0, b0, gy, { padding = 1 })
  D._debug.conv_winograd(true)
  D._debug.conv_direct(true)
  if not ok then error(r, 0) end
  return r
end

-- relative to the largest magnitude: the transforms round differently from
-- the direct sums, by a few float ulps of the largest term
local function assert_near(a, e, what) H.assert_near_max(a, e, 4e-6, what) end

local gen = D.Generator(23)

-- { N, C, H, W, O }
local SHAPES = {
  { 3, 16, 8, 8, 13 },   -- 8 wide: a vector is 4 tile rows; output channels leave a partial block
  { 2, 9, 16, 8, 8 },    -- 8 wide, two vectors per image
  { 3, 8, 16, 16, 16 },  -- 16 wide: 2 tile rows per vector
  { 2, 8, 4, 16, 11 },   -- 16 wide, 4 high: one vector per image
  { 2, 8, 32, 32, 9 },   -- 32 wide: one tile row per vector
  { 1, 8, 6, 64, 12 },   -- 64 wide: two vectors per row, each with its neighbour's column
  { 2, 8, 2, 96, 8 },    -- 96 wide: the middle vector has neighbours on both sides
  { 7, 8, 8, 8, 32 },    -- 7 vectors: blocks of 3, 3, 1
  { 5, 32, 8, 8, 8 },    -- blocks of 3, 2
  { 2, 300, 8, 8, 24 },  -- many input channels
  { 1, 72, 16, 16, 70 }, -- 64 channels or more: passes of 8 output blocks, then 1 (partial; the input gradient's is whole)
}

describe("conv2d Winograd kernel", function()
  it("says whether this CPU runs it", function()
    assert.is_boolean(available)
    print(("\n    (Winograd F(2x2, 3x3) on this CPU: %s)"):format(available and "yes" or "no, GEMM only"))
  end)

  for _, s in ipairs(SHAPES) do
    local n, c, h, w, o = table.unpack(s)
    it(("matches the direct kernel and GEMM: x {%d,%d,%d,%d}, w {%d,%d,3,3}, bias"):format(n, c, h, w, o, c), function()
      local x0, w0, b0 = D.randn({ n, c, h, w }, gen), D.randn({ o, c, 3, 3 }, gen) * 0.3, D.randn({ o }, gen)
      local gy = D.randn({ n, o, h, w }, gen)
      local a, d, e = run(x0, w0, b0, gy, true), run(x0, w0, b0, gy, false), run(x0, w0, b0, gy, false, true)
      H.assert_shape(a.y, { n, o, h, w })
      assert_near(a.y, d.y, "y vs direct")
      assert_near(a.y, e.y, "y vs GEMM")
      assert_near(a.dx, d.dx, "dx vs direct")
      assert_near(a.dx, e.dx, "dx vs GEMM")
      -- the weight and bias gradients never take the Winograd kernel
      H.assert_identical(a.dw, d.dw, "dw")
      H.assert_identical(a.db, d.db, "db")
    end)
  end

  it("really runs on the U-Net's shapes (its rounding differs from the direct kernel's)", function()
    if not available then return print("\n    (skipped the check: no AVX-512 here)") end
    local x0, w0 = D.randn({ 2, 16, 16, 16 }, gen), D.randn({ 16, 16, 3, 3 }, gen)
    local gy = D.randn({ 2, 16, 16, 16 }, gen)
    local a, d = run(x0, w0, nil, gy, true), run(x0, w0, nil, gy, false)
    assert.is_true((a.y - d.y):abs():max():item() > 0, "the forward came out bitwise the direct kernel's")
    assert.is_true((a.dx - d.dx):abs():max():item() > 0, "the input gradient came out bitwise the direct kernel's")
  end)

  it("leaves the shapes it cannot cut to the direct kernel, which gets them right", function()
    -- odd sizes, 12 wide (6 tiles a row), 8 wide but 4 high (half a vector),
    -- fewer than 8 input or output channels (a U-Net's first and last
    -- convolutions: there the transforms cost more than they save), padding 0
    for _, s in ipairs { { 2, 8, 9, 9, 8 }, { 2, 8, 8, 12, 8 }, { 3, 8, 4, 8, 8 }, { 1, 8, 7, 32, 8 },
                         { 2, 1, 8, 8, 16 }, { 2, 16, 8, 8, 1 }, { 2, 7, 16, 16, 8 }, { 2, 8, 16, 16, 7 } } do
      local n, c, h, w, o = table.unpack(s)
      local x0, w0 = D.randn({ n, c, h, w }, gen), D.randn({ o, c, 3, 3 }, gen)
      local gy = D.randn({ n, o, h, w }, gen)
      local a, d = run(x0, w0, nil, gy, true), run(x0, w0, nil, gy, false)
      for _, key in ipairs { "y", "dx", "dw" } do H.assert_identical(a[key], d[key], key) end
    end
    local x0, w0 = D.randn({ 2, 4, 8, 8 }, gen), D.randn({ 5, 4, 3, 3 }, gen)
    D._debug.conv_winograd(false)
    local d = D.conv2d(x0, w0, nil, { padding = 0 })
    D._debug.conv_winograd(true)
    H.assert_identical(D.conv2d(x0, w0, nil, { padding = 0 }), d, "padding 0")
  end)

  it("gives bitwise the same forward and input gradient at 1, 2 and 3 threads", function()
    local x0, w0, b0 = D.randn({ 9, 12, 16, 16 }, gen), D.randn({ 20, 12, 3, 3 }, gen), D.randn({ 20 }, gen)
    local gy = D.randn({ 9, 20, 16, 16 }, gen)
    local base
    for _, threads in ipairs { 1, 2, 3 } do
      local r = H.with_threads(threads, function() return run(x0, w0, b0, gy, true) end)
      if not base then
        base = r
      else
        for _, key in ipairs { "y", "dx", "dw", "db" } do H.assert_identical(r[key], base[key], key) end
      end
    end
  end)

  it("passes a gradient check for x, w and b", function()
    for _, s in ipairs { { 1, 8, 8, 8, 8 }, { 1, 8, 4, 32, 9 } } do
      local n, c, h, w, o = table.unpack(s)
      local x, wt, b = D.randn({ n, c, h, w }, gen), D.randn({ o, c, 3, 3 }, gen) * 0.5, D.randn({ o }, gen)
      local ok, report = D.gradcheck(function(xi, wi, bi) return D.conv2d(xi, wi, bi, { padding = 1 }) end,
        { x, wt, b }, { eps = 1e-2, atol = 5e-3, rtol = 2e-3 })
      assert.is_true(ok, report)
    end
  end)

  it("carries NaN through to the outputs of its tiles and no further", function()
    local x0, w0 = D.zeros { 1, 8, 8, 8 }, D.ones { 8, 8, 3, 3 }
    x0:set(0 / 0, 1, 1, 4, 4)
    local y = D.conv2d(x0, w0, nil, { padding = 1 })
    for o = 1, 8 do
      for i = 1, 8 do
        for j = 1, 8 do
          local v = y:get(1, o, i, j)
          -- NaN at least in the 3x3 neighbourhood the direct sum reaches; the
          -- transform spreads it over the 2x2 tiles whose 4x4 patches hold it
          -- (rows and columns 3 .. 6 here); every other output stays 0
          if math.abs(i - 4) <= 1 and math.abs(j - 4) <= 1 then assert.is_true(v ~= v, ("(%d,%d)"):format(i, j)) end
          if i < 3 or i > 6 or j < 3 or j > 6 then assert.are.equal(0, v) end
        end
      end
    end
  end)
end)
