-- matmul (2-d, vectors, batched with broadcasting, views, empty, errors),
-- and cat / stack.
local D = require "diffusion"
local H = require "helpers"

local NAN = 0 / 0

--- helpers ----------------------------------------------------------------

-- Reference product of two nested 2-d tables.
local function mm(a, b)
  local n, k, m = #a, #b, #b[1]
  assert(#a[1] == k)
  local r = {}
  for i = 1, n do
    r[i] = {}
    for j = 1, m do
      local s = 0
      for p = 1, k do s = s + a[i][p] * b[p][j] end
      r[i][j] = s
    end
  end
  return r
end

local function transpose(a)
  local r = {}
  for j = 1, #a[1] do
    r[j] = {}
    for i = 1, #a do r[j][i] = a[i][j] end
  end
  return r
end

-- An n x m table of small irregular values (exact in float32).
local function grid(n, m, seed)
  local r = {}
  for i = 1, n do
    r[i] = {}
    for j = 1, m do r[i][j] = ((i * 7 + j * 13 + seed * 5) % 17 - 8) * 0.25 end
  end
  return r
end

--- matmul ------------------------------------------------------------------

describe("matmul", function()
  local A = { { 1, 2, 3 }, { 4, 5, 6 } }
  local B = { { 7, 8 }, { 9, 10 }, { 11, 12 } }

  it("multiplies 2-d matrices", function()
    local r = D.matmul(D.tensor(A), D.tensor(B))
    H.assert_shape(r, { 2, 2 })
    assert.are.same({ { 58, 64 }, { 139, 154 } }, r:totable())
    assert.are.same({ { 39, 54, 69 }, { 49, 68, 87 }, { 59, 82, 105 } },
      D.tensor(B):matmul(D.tensor(A)):totable())
  end)

  it("matches a Lua triple loop on irregular shapes", function()
    for _, dims in ipairs { { 1, 1, 1 }, { 1, 5, 1 }, { 5, 1, 4 }, { 7, 3, 9 }, { 16, 17, 15 }, { 33, 64, 20 } } do
      local n, k, m = dims[1], dims[2], dims[3]
      local a, b = grid(n, k, 1), grid(k, m, 2)
      local r = D.matmul(D.tensor(a), D.tensor(b))
      H.assert_shape(r, { n, m })
      H.assert_close(r, mm(a, b), 1e-5)
    end
  end)

  it("accepts transposed views on either side", function()
    local a, b = grid(4, 3, 3), grid(4, 5, 4)
    local ta, tb = D.tensor(a), D.tensor(b)
    -- a^T (3x4) @ b (4x5)
    assert.is_false(ta:t():is_contiguous())
    H.assert_close(D.matmul(ta:t(), tb), mm(transpose(a), b))
    -- b^T (5x4) @ a (4x3)
    H.assert_close(D.matmul(tb:t(), ta), mm(transpose(b), a))
    -- (a^T)^T == a, both transposed: b^T (5x4) @ (a^T)^T (4x3)
    local c = D.tensor(grid(3, 4, 5))
    H.assert_close(D.matmul(tb:t(), c:t()), mm(transpose(b), transpose(c:totable())))
    -- x^T x
    H.assert_close(ta:t():matmul(ta), mm(transpose(a), a))
    H.assert_close(ta:matmul(ta:t()), mm(a, transpose(a)))
  end)

  it("accepts sliced, narrowed and other non-contiguous views", function()
    local base = grid(6, 8, 6)
    local t = D.tensor(base)
    local function tab(v) return v:totable() end
    local views = {
      t:slice(2, 1, -1, 2),                 -- 6x4, column step 2
      t:slice(1, 1, -1, 2),                 -- 3x8, row step 2
      t:narrow(2, 3, 4),                    -- 6x4, offset and row stride 8
      t:narrow(1, 2, 4):narrow(2, 2, 6),    -- 4x6 window
      t:slice(1, 2, -1, 2):slice(2, 1, -1, 3), -- 3x3, both stepped
      t:t():slice(1, 2, -1, 2),             -- 4x6 of a transpose
      t:t():narrow(2, 2, 3),                -- 8x3 of a transpose
    }
    for vi, v in ipairs(views) do
      assert.is_false(v:is_contiguous(), "view " .. vi)
      local vt = tab(v)
      local rows, cols = #vt, #vt[1]
      local right = grid(cols, 5, vi)
      local left = grid(4, rows, vi + 10)
      H.assert_close(D.matmul(v, D.tensor(right)), mm(vt, right), 1e-5)
      H.assert_close(D.matmul(D.tensor(left), v), mm(left, vt), 1e-5)
      H.assert_close(D.matmul(v, v:t()), mm(vt, transpose(vt)), 1e-5)
      H.assert_close(D.matmul(v:t(), v), mm(transpose(vt), vt), 1e-5)
    end
  end)

  it("accepts expanded inputs and column/row matrices with odd strides", function()
    local e = D.tensor { { 1, 2, 3 } }:expand(4, 3)
    H.assert_close(D.matmul(e, D.tensor(B)), mm(e:totable(), B))
    local col = D.tensor { { 2 }, { 3 } }:expand(2, 3)
    H.assert_close(D.matmul(col, D.tensor(B)), mm(col:totable(), B))
    local row = D.tensor { { 1, -1, 2 } }
    H.assert_close(D.matmul(row:t(), row), mm(transpose(row:totable()), row:totable()))
    H.assert_close(D.matmul(row, row:t()), { { 6 } })
    local big = D.tensor(grid(5, 5, 9))
    local c = big:select(2, 3):view(5, 1) -- a 5x1 column, stride 5
    H.assert_close(D.matmul(big, c), mm(big:totable(), c:totable()))
    H.assert_close(D.matmul(c:t(), big), mm(transpose(c:totable()), big:totable()))
  end)

  it("treats a 1-d left operand as a row vector", function()
    local r = D.matmul(D.tensor { 1, 2, 3 }, D.tensor(B))
    H.assert_shape(r, { 2 })
    assert.are.same({ 58, 64 }, r:totable())
    assert.are.same({ 58, 64 }, D.tensor { 1, 2, 3 }:matmul(D.tensor(B):t():t()):totable())
    assert.are.same({ 7 + 18 + 33, 8 + 20 + 36 }, D.tensor { 1, 2, 3 }:matmul(D.tensor(B)):totable())
  end)

  it("treats a 1-d right operand as a column vector", function()
    local r = D.matmul(D.tensor(A), D.tensor { 1, 0, -1 })
    H.assert_shape(r, { 2 })
    assert.are.same({ -2, -2 }, r:totable())
    assert.are.same({ 58, 139 }, D.matmul(D.tensor(A), D.tensor { 7, 9, 11 }):totable())
    -- a transposed matrix with a vector
    assert.are.same({ 9, 12, 15 }, D.matmul(D.tensor(A):t(), D.tensor { 1, 2 }):totable())
  end)

  it("gives a 0-d tensor for vector . vector", function()
    local r = D.matmul(D.tensor { 1, 2, 3 }, D.tensor { 4, -5, 6 })
    assert.are.equal(0, r:dim())
    H.assert_shape(r, {})
    assert.are.equal(12, r:item())
    local strided = D.arange(1, 7):slice(1, 1, -1, 2) -- {1, 3, 5}
    assert.are.equal(1 * 4 - 3 * 5 + 5 * 6, D.matmul(strided, D.tensor { 4, -5, 6 }):item())
    assert.are.equal(0, D.matmul(D.zeros(0), D.zeros(0)):item())
  end)

  it("multiplies batches of 3-d tensors", function()
    local a1, a2 = grid(2, 3, 1), grid(2, 3, 2)
    local b1, b2 = grid(3, 4, 3), grid(3, 4, 4)
    local a, b = D.tensor { a1, a2 }, D.tensor { b1, b2 }
    local r = D.matmul(a, b)
    H.assert_shape(r, { 2, 2, 4 })
    H.assert_close(r, { mm(a1, b1), mm(a2, b2) })
    -- 3-d with 2-d on either side broadcasts the matrix over the batch
    local w = grid(3, 5, 7)
    H.assert_close(D.matmul(a, D.tensor(w)), { mm(a1, w), mm(a2, w) })
    local l = grid(5, 2, 8)
    H.assert_close(D.matmul(D.tensor(l), a), { mm(l, a1), mm(l, a2) })
    -- batched transposed views
    local bt = D.tensor { transpose(b1), transpose(b2) }:transpose(2, 3)
    assert.is_false(bt:is_contiguous())
    H.assert_close(D.matmul(a, bt), { mm(a1, b1), mm(a2, b2) })
    -- batch dim not outermost in memory
    local perm = D.tensor { { a1[1], a2[1] }, { a1[2], a2[2] } }:permute(2, 1, 3) -- == a
    assert.is_false(perm:is_contiguous())
    H.assert_close(D.matmul(perm, b), { mm(a1, b1), mm(a2, b2) })
  end)

  it("batched with vectors", function()
    local a1, a2 = grid(2, 3, 1), grid(2, 3, 2)
    local a = D.tensor { a1, a2 }
    local v = { 1, -2, 0.5 }
    local r = D.matmul(a, D.tensor(v))
    H.assert_shape(r, { 2, 2 })
    local function mv(m)
      local out = {}
      for i = 1, #m do
        out[i] = 0
        for j = 1, #v do out[i] = out[i] + m[i][j] * v[j] end
      end
      return out
    end
    H.assert_close(r, { mv(a1), mv(a2) })
    local u = D.tensor { 2, -1 }
    local r2 = D.matmul(u, a)
    H.assert_shape(r2, { 2, 3 })
    H.assert_close(r2, { mm({ { 2, -1 } }, a1)[1], mm({ { 2, -1 } }, a2)[1] })
  end)

  it("broadcasts batch dims: {2,1,3,4} x {5,4,2} -> {2,5,3,2}", function()
    local As, Bs = {}, {}
    for i = 1, 2 do As[i] = { grid(3, 4, i) } end
    for j = 1, 5 do Bs[j] = grid(4, 2, 10 + j) end
    local a, b = D.tensor(As), D.tensor(Bs)
    H.assert_shape(a, { 2, 1, 3, 4 })
    H.assert_shape(b, { 5, 4, 2 })
    local r = D.matmul(a, b)
    H.assert_shape(r, { 2, 5, 3, 2 })
    local expected = {}
    for i = 1, 2 do
      expected[i] = {}
      for j = 1, 5 do expected[i][j] = mm(As[i][1], Bs[j]) end
    end
    H.assert_close(r, expected)
    -- and the other way round: {5,4,2}^T-ish: {5,2,4} x {2,1,4,3} -> {2,5,2,3}
    local r2 = D.matmul(b:transpose(2, 3), a:transpose(3, 4))
    H.assert_shape(r2, { 2, 5, 2, 3 })
    local e2 = {}
    for i = 1, 2 do
      e2[i] = {}
      for j = 1, 5 do e2[i][j] = mm(transpose(Bs[j]), transpose(As[i][1])) end
    end
    H.assert_close(r2, e2)
  end)

  it("broadcasts an expanded batch dim", function()
    local m = grid(2, 3, 4)
    local a = D.tensor { m }:expand(3, 2, 3)
    local b = D.tensor { grid(3, 2, 1), grid(3, 2, 2), grid(3, 2, 3) }
    H.assert_close(D.matmul(a, b), { mm(m, grid(3, 2, 1)), mm(m, grid(3, 2, 2)), mm(m, grid(3, 2, 3)) })
  end)

  it("gives zeros when the inner dim k is 0", function()
    local r = D.matmul(D.zeros(2, 0), D.zeros(0, 3))
    H.assert_shape(r, { 2, 3 })
    assert.are.same({ { 0, 0, 0 }, { 0, 0, 0 } }, r:totable())
  end)

  it("gives zeros for a batched product with k = 0", function()
    local rb = D.matmul(D.ones(4, 2, 0), D.ones(0, 3))
    H.assert_shape(rb, { 4, 2, 3 })
    assert.are.equal(0, rb:abs():sum():item())
  end)

  it("gives zeros for vector-matrix products with k = 0", function()
    assert.are.equal(0, D.matmul(D.zeros(0), D.zeros(0)):item())
    local r = D.matmul(D.zeros(0), D.zeros(0, 5))
    H.assert_shape(r, { 5 })
    assert.are.same({ 0, 0, 0, 0, 0 }, r:totable())
  end)

  it("gives empty results for empty outer or batch dims", function()
    H.assert_shape(D.matmul(D.zeros(0, 3), D.ones(3, 2)), { 0, 2 })
    H.assert_shape(D.matmul(D.zeros(0, 2, 3), D.ones(3, 4)), { 0, 2, 4 })
  end)

  it("gives an empty result when m is 0", function()
    H.assert_shape(D.matmul(D.ones(2, 3), D.zeros(3, 0)), { 2, 0 })
    H.assert_shape(D.matmul(D.ones(2, 3), D.zeros(3, 0):t():t()), { 2, 0 })
  end)

  it("propagates NaN and infinity", function()
    local r = D.matmul(D.tensor { { 1, NAN }, { 1, 1 } }, D.tensor { { 1, 0 }, { 0, 1 } })
    assert.is_true(r:get(1, 1) ~= r:get(1, 1))
    assert.are.equal(2, r:get(2, 1) + r:get(2, 2))
  end)

  it("fails on mismatched inner dims, naming both shapes", function()
    local ok, err = pcall(D.matmul, D.zeros(2, 3), D.zeros(4, 5))
    assert.is_false(ok)
    assert.matches("matmul", err, 1, true)
    assert.matches("{2,3}", err, 1, true)
    assert.matches("{4,5}", err, 1, true)
    ok, err = pcall(D.matmul, D.zeros(3), D.zeros(2, 2))
    assert.is_false(ok)
    assert.matches("{3}", err, 1, true)
    assert.matches("{2,2}", err, 1, true)
    ok, err = pcall(D.matmul, D.zeros(5, 2, 3), D.zeros(5, 2, 3))
    assert.is_false(ok)
    assert.matches("{5,2,3}", err, 1, true)
    assert.has_error(function() D.matmul(D.zeros(3), D.zeros(4)) end)
  end)

  it("fails on 0-d operands and non-tensors", function()
    local ok, err = pcall(D.matmul, D.tensor(2), D.zeros(2))
    assert.is_false(ok)
    assert.matches("matmul", err, 1, true)
    assert.has_error(function() D.matmul(D.zeros(2, 2), D.tensor(2)) end)
    assert.has_error(function() D.matmul(D.zeros(2, 2), 2) end)
  end)

  it("fails on batch dims that don't broadcast, naming both operand shapes", function()
    local ok, err = pcall(D.matmul, D.zeros(2, 2, 3), D.zeros(3, 3, 2))
    assert.is_false(ok)
    assert.matches("matmul", err, 1, true)
    assert.matches("{2,2,3}", err, 1, true)
    assert.matches("{3,3,2}", err, 1, true)
  end)

  it("gives the same result with 1 and 2 threads on a larger product", function()
    local saved = D.get_num_threads()
    local a, b = D.tensor(grid(96, 80, 1)), D.tensor(grid(80, 72, 2))
    D.set_num_threads(1)
    local r1 = D.matmul(a, b):totable()
    D.set_num_threads(2)
    local r2 = D.matmul(a, b):totable()
    D.set_num_threads(saved)
    -- products of quarter-integers with k = 80 are exact in float32
    assert.are.same(mm(a:totable(), b:totable()), r1)
    assert.are.same(r1, r2)
  end)
end)

--- cat and stack -----------------------------------------------------------

describe("cat", function()
  local a = D.tensor { { 1, 2, 3 }, { 4, 5, 6 } }

  it("joins along dim 1 (the default)", function()
    local r = D.cat({ a, D.tensor { { 7, 8, 9 } } }, 1)
    H.assert_shape(r, { 3, 3 })
    assert.are.same({ { 1, 2, 3 }, { 4, 5, 6 }, { 7, 8, 9 } }, r:totable())
    assert.are.same(r:totable(), D.cat({ a, D.tensor { { 7, 8, 9 } } }, -2):totable())
  end)

  it("joins along dim 1 when no dim is given", function()
    local r = D.cat({ a, D.tensor { { 7, 8, 9 } } })
    assert.are.same({ { 1, 2, 3 }, { 4, 5, 6 }, { 7, 8, 9 } }, r:totable())
    assert.are.same({ 1, 2, 3, 4 }, D.cat({ D.tensor { 1, 2 }, D.tensor { 3, 4 } }):totable())
  end)

  it("joins along dim 2 and -1", function()
    local b = D.tensor { { 10, 11 }, { 12, 13 } }
    local r = D.cat({ a, b }, 2)
    H.assert_shape(r, { 2, 5 })
    assert.are.same({ { 1, 2, 3, 10, 11 }, { 4, 5, 6, 12, 13 } }, r:totable())
    assert.are.same(r:totable(), D.cat({ a, b }, -1):totable())
    assert.are.same({ { 10, 11, 1, 2, 3 }, { 12, 13, 4, 5, 6 } }, D.cat({ b, a }, -1):totable())
  end)

  it("joins three 3-d tensors along the middle dim", function()
    local x = D.arange(12):view(2, 3, 2)
    local y = D.arange(100, 104):view(2, 1, 2)
    local r = D.cat({ x, y, x }, 2)
    H.assert_shape(r, { 2, 7, 2 })
    assert.are.same({ 100, 101 }, r[1][4]:totable())
    assert.are.same({ 102, 103 }, r[2][4]:totable())
    assert.are.same(x[2]:totable(), r[2]:narrow(1, 5, 3):totable())
  end)

  it("copies from non-contiguous inputs and does not alias them", function()
    local r = D.cat({ a:t(), a:t() }, 2)
    assert.are.same({ { 1, 4, 1, 4 }, { 2, 5, 2, 5 }, { 3, 6, 3, 6 } }, r:totable())
    local one = D.cat({ a }, 1)
    assert.are.same(a:totable(), one:totable())
    one:fill_(0)
    assert.are.same({ { 1, 2, 3 }, { 4, 5, 6 } }, a:totable())
    local e = D.cat({ D.tensor { 1, 2 }:expand(2, 2), a:slice(2, 1, -1, 2) }, 2)
    assert.are.same({ { 1, 2, 1, 3 }, { 1, 2, 4, 6 } }, e:totable())
  end)

  it("accepts zero-size pieces", function()
    local r = D.cat({ D.zeros(0, 3), a, D.zeros(0, 3) }, 1)
    assert.are.same(a:totable(), r:totable())
    H.assert_shape(D.cat({ D.zeros(0, 3), D.zeros(0, 3) }, 1), { 0, 3 })
    H.assert_shape(D.cat({ D.zeros(2, 0), a }, 2), { 2, 3 })
    assert.are.same(a:totable(), D.cat({ D.zeros(2, 0), a }, 2):totable())
  end)

  it("joins tensors that are all empty", function()
    H.assert_shape(D.cat({ D.zeros(2, 0), D.zeros(2, 0) }, 2), { 2, 0 })
    H.assert_shape(D.cat({ D.zeros(2, 0, 3), D.zeros(1, 0, 3) }, 1), { 3, 0, 3 })
  end)

  it("fails on mismatched shapes", function()
    local ok, err = pcall(D.cat, { a, D.zeros(2, 2) }, 1)
    assert.is_false(ok)
    assert.matches("cat: tensor 2 has shape {2,2}, expected {2,3} except in dim 1", err, 1, true)
    assert.has_error(function() D.cat({ a, D.zeros(3) }, 1) end)
    assert.has_error(function() D.cat({ a, D.zeros(3, 3) }, 2) end)
    assert.has_error(function() D.cat({ a, a }, 3) end)
    assert.has_error(function() D.cat({ D.tensor(1), D.tensor(2) }, 1) end)
  end)

  it("fails on an empty list or a non-tensor element", function()
    local ok, err = pcall(D.cat, {})
    assert.is_false(ok)
    assert.matches("non-empty list", err, 1, true)
    ok, err = pcall(D.cat, { a, 3 }, 1)
    assert.is_false(ok)
    assert.matches("element 2 is not a tensor", err, 1, true)
    assert.has_error(function() D.cat(a, 1) end)
  end)
end)

describe("stack", function()
  local a = D.tensor { { 1, 2, 3 }, { 4, 5, 6 } }
  local b = D.tensor { { 7, 8, 9 }, { 10, 11, 12 } }

  it("adds a new dim 1", function()
    local r = D.stack({ a, b }, 1)
    H.assert_shape(r, { 2, 2, 3 })
    assert.are.same({ a:totable(), b:totable() }, r:totable())
    assert.are.same(r:totable(), D.stack({ a, b }, -3):totable())
  end)

  it("adds a new dim 1 when no dim is given", function()
    local r = D.stack({ a, b })
    H.assert_shape(r, { 2, 2, 3 })
    assert.are.same({ a:totable(), b:totable() }, r:totable())
  end)

  it("adds a new dim 2", function()
    local r = D.stack({ a, b }, 2)
    H.assert_shape(r, { 2, 2, 3 })
    assert.are.same({ { { 1, 2, 3 }, { 7, 8, 9 } }, { { 4, 5, 6 }, { 10, 11, 12 } } }, r:totable())
  end)

  it("adds a new last dim with 3 or -1", function()
    local r = D.stack({ a, b }, 3)
    H.assert_shape(r, { 2, 3, 2 })
    assert.are.same({ { { 1, 7 }, { 2, 8 }, { 3, 9 } }, { { 4, 10 }, { 5, 11 }, { 6, 12 } } }, r:totable())
    local r2 = D.stack({ a, b }, -1)
    H.assert_shape(r2, { 2, 3, 2 })
    assert.are.same(r:totable(), r2:totable())
    H.assert_shape(D.stack({ a, b, a }, -1), { 2, 3, 3 })
  end)

  it("stacks 1-d and 0-d tensors", function()
    assert.are.same({ { 1, 2 }, { 3, 4 } }, D.stack({ D.tensor { 1, 2 }, D.tensor { 3, 4 } }, 1):totable())
    assert.are.same({ { 1, 3 }, { 2, 4 } }, D.stack({ D.tensor { 1, 2 }, D.tensor { 3, 4 } }, -1):totable())
    local s = D.stack({ D.tensor(1), D.tensor(2), D.tensor(3) }, 1)
    H.assert_shape(s, { 3 })
    assert.are.same({ 1, 2, 3 }, s:totable())
  end)

  it("stacks empty tensors", function()
    H.assert_shape(D.stack({ D.zeros(0, 3), D.zeros(0, 3) }, 1), { 2, 0, 3 })
    H.assert_shape(D.stack({ D.zeros(2, 0), D.zeros(2, 0) }, 1), { 2, 2, 0 })
  end)

  it("copies from non-contiguous inputs", function()
    local r = D.stack({ a:t(), b:t() }, 2)
    H.assert_shape(r, { 3, 2, 2 })
    assert.are.same({ { { 1, 4 }, { 7, 10 } }, { { 2, 5 }, { 8, 11 } }, { { 3, 6 }, { 9, 12 } } }, r:totable())
  end)

  it("fails on mismatched shapes, an empty list and a bad dim", function()
    local ok, err = pcall(D.stack, { a, D.zeros(3, 2) }, 1)
    assert.is_false(ok)
    assert.matches("stack: tensor 2 has shape {3,2}, expected {2,3}", err, 1, true)
    assert.has_error(function() D.stack({ a, D.zeros(2, 3, 1) }, 1) end)
    ok, err = pcall(D.stack, {})
    assert.is_false(ok)
    assert.matches("non-empty list", err, 1, true)
    assert.has_error(function() D.stack({ a, b }, 4) end)
    assert.has_error(function() D.stack({ a, b }, -4) end)
    assert.has_error(function() D.stack({ a, "b" }, 1) end)
  end)
end)
