-- Access: shape/size/dim/numel/#, get/set, x[i] reads and writes, item,
-- printing, <close>, the extensible D.Tensor methods table, and the errors
-- for bad indices and fields.
local D = require "diffusion"
local H = require "helpers"

-- {{0,1,2,3},{4,5,6,7},{8,9,10,11}}
local function m34() return D.arange(12):view(3, 4) end

describe("shape, size, dim, numel, #", function()
  it("of a 3-d tensor", function()
    local x = D.zeros(2, 3, 4)
    assert.are.same({ 2, 3, 4 }, x:shape())
    assert.are.same({ 2, 3, 4 }, x:size())
    assert.are.equal(2, x:size(1))
    assert.are.equal(3, x:size(2))
    assert.are.equal(4, x:size(3))
    assert.are.equal(4, x:size(-1))
    assert.are.equal(2, x:size(-3))
    assert.are.equal(3, x:dim())
    assert.are.equal(24, x:numel())
    assert.are.equal(2, #x)
  end)

  it("are module functions too", function()
    local x = D.zeros(5, 6)
    assert.are.same({ 5, 6 }, D.shape(x))
    assert.are.equal(6, D.size(x, 2))
    assert.are.equal(2, D.dim(x))
    assert.are.equal(30, D.numel(x))
  end)

  it("shape returns a fresh table each time", function()
    local x = D.zeros(2, 3)
    local s = x:shape()
    s[1] = 99
    assert.are.same({ 2, 3 }, x:shape())
  end)

  it("a shape prints as {2,3} and compares by value", function()
    local s = D.zeros(2, 3):shape()
    assert.are.equal("{2,3}", tostring(s))
    assert.are.equal("{}", tostring(D.tensor(1):shape()))
    assert.are.equal("{0}", tostring(D.tensor({}):shape()))
    assert.is_true(s == D.ones(2, 3):shape())
    assert.is_true(s == { 2, 3 })
    assert.is_false(s == { 3, 2 })
    assert.is_false(s == { 2, 3, 1 })
    assert.is_false(s == D.zeros(2, 3, 1):shape())
  end)

  it("of a view follow the view", function()
    local v = m34():t()
    assert.are.same({ 4, 3 }, v:shape())
    assert.are.equal(4, #v)
    assert.are.equal(12, v:numel())
  end)

  it("of a 0-d tensor", function()
    local x = D.tensor(3)
    assert.are.same({}, x:shape())
    assert.are.equal(0, x:dim())
    assert.are.equal(1, x:numel())
    H.expect_error(function() return #x end, "#: a 0-d tensor has no length (use numel)")
  end)

  it("size rejects a dim out of range", function()
    H.expect_error(function() return D.zeros(2, 3):size(3) end, "dim 3 out of range for a 2-d tensor")
    H.expect_error(function() return D.zeros(2, 3):size(0) end, "dim 0 out of range for a 2-d tensor")
    H.expect_error(function() return D.zeros(2, 3):size(-3) end, "dim -3 out of range for a 2-d tensor")
  end)
end)

describe("get and set", function()
  it("get takes 1-based indices, one per dim", function()
    local x = m34()
    assert.are.equal(0, x:get(1, 1))
    assert.are.equal(6, x:get(2, 3))
    assert.are.equal(11, x:get(3, 4))
    assert.are.equal(7, D.get(x, 2, 4))
  end)

  it("negative indices count from the end", function()
    local x = m34()
    assert.are.equal(11, x:get(-1, -1))
    assert.are.equal(8, x:get(-1, 1))
    assert.are.equal(1, x:get(-3, -3))
  end)

  it("integral floats are accepted as indices", function()
    assert.are.equal(6, m34():get(2.0, 3.0))
  end)

  it("set(value, indices...) writes one element and returns the tensor", function()
    local x = D.zeros(2, 3)
    local r = x:set(5, 2, 3)
    assert.is_true(rawequal(x, r))
    assert.are.same({ { 0, 0, 0 }, { 0, 0, 5 } }, x:totable())
    x:set(-1.5, -2, -3):set(7, 1, 2)
    assert.are.same({ { -1.5, 7, 0 }, { 0, 0, 5 } }, x:totable())
  end)

  it("set stores float32", function()
    local x = D.zeros(1)
    x:set(0.1, 1)
    assert.are.equal((string.unpack("f", string.pack("f", 0.1))), x:get(1))
    assert.are_not.equal(0.1, x:get(1))
  end)

  it("get and set on a 0-d tensor take no indices", function()
    local x = D.tensor(4)
    assert.are.equal(4, x:get())
    x:set(9)
    assert.are.equal(9, x:item())
  end)

  it("reject out-of-range indices", function()
    local x = m34()
    H.expect_error(function() return x:get(4, 1) end, "index 4 out of range for a dim of size 3")
    H.expect_error(function() return x:get(1, 0) end, "index 0 out of range for a dim of size 4")
    H.expect_error(function() return x:get(-4, 1) end, "index -4 out of range for a dim of size 3")
    H.expect_error(function() return x:set(1, 1, 5) end, "index 5 out of range for a dim of size 4")
  end)

  it("reject the wrong number of indices", function()
    local x = m34()
    H.expect_error(function() return x:get(1) end, "get: expected 2 indices for a 2-d tensor, got 1")
    H.expect_error(function() return x:get(1, 1, 1) end, "get: expected 2 indices for a 2-d tensor, got 3")
    H.expect_error(function() return x:set(0, 1) end, "set: expected 2 indices for a 2-d tensor, got 1")
    H.expect_error(function() return D.tensor(1):get(1) end, "get: expected 0 indices for a 0-d tensor, got 1")
  end)

  it("reject non-integer indices and values", function()
    local x = m34()
    H.expect_error(function() return x:get(1.5, 1) end, "number has no integer representation")
    H.expect_error(function() return x:get("a", 1) end, "number expected, got string")
    H.expect_error(function() return x:set("v", 1, 1) end, "number expected, got string")
  end)
end)

describe("x[i]", function()
  it("of a 1-d tensor is a number", function()
    local x = D.tensor({ 10, 20, 30 })
    assert.are.equal("number", type(x[1]))
    assert.are.equal(10, x[1])
    assert.are.equal(30, x[3])
    assert.are.equal(30, x[-1])
    assert.are.equal(10, x[-3])
  end)

  it("of a non-contiguous 1-d view reads the right element", function()
    local col = m34():select(2, 3)
    assert.are.equal(2, col[1])
    assert.are.equal(6, col[2])
    assert.are.equal(10, col[-1])
    local strided = D.arange(10):slice(1, 2, -1, 3) -- 1, 4, 7
    assert.are.equal(7, strided[3])
  end)

  it("of an n-d tensor is the view x:select(1, i)", function()
    local x = m34()
    local row = x[2]
    assert.are.equal("userdata", type(row))
    assert.are.same({ 4 }, row:shape())
    assert.are.same({ 4, 5, 6, 7 }, row:totable())
    assert.is_true(row:same_storage(x))
    assert.are.same({ 8, 9, 10, 11 }, x[-1]:totable())
    assert.are.equal(9, x[3][2])
    local y = D.arange(24):view(2, 3, 4)
    assert.are.same({ 3, 4 }, y[2]:shape())
    assert.are.equal(23, y[2][3][4])
  end)

  it("x[i] = number sets an element of a 1-d tensor", function()
    local x = D.zeros(3)
    x[1] = 5
    x[-1] = 7.5
    assert.are.same({ 5, 0, 7.5 }, x:totable())
  end)

  it("x[i] = number fills a row of an n-d tensor", function()
    local x = D.zeros(2, 3)
    x[2] = 4
    assert.are.same({ { 0, 0, 0 }, { 4, 4, 4 } }, x:totable())
    local y = D.zeros(2, 2, 2)
    y[1] = 1
    assert.are.same({ { { 1, 1 }, { 1, 1 } }, { { 0, 0 }, { 0, 0 } } }, y:totable())
  end)

  it("x[i] = tensor copies into the row, broadcasting", function()
    local x = D.zeros(2, 3)
    x[1] = D.tensor({ 1, 2, 3 })
    x[-1] = D.tensor(9)
    assert.are.same({ { 1, 2, 3 }, { 9, 9, 9 } }, x:totable())
    local y = D.zeros(3, 2, 2)
    y[2] = D.tensor({ { 1 }, { 2 } })
    assert.are.same({ { { 0, 0 }, { 0, 0 } }, { { 1, 1 }, { 2, 2 } }, { { 0, 0 }, { 0, 0 } } }, y:totable())
  end)

  it("x[i] = tensor on a 1-d tensor takes a 0-d tensor", function()
    local x = D.zeros(3)
    x[2] = D.tensor(6)
    assert.are.same({ 0, 6, 0 }, x:totable())
  end)

  it("x[i] = tensor copies values, not a reference", function()
    local x = D.zeros(2, 2)
    local src = D.tensor({ 1, 2 })
    x[1] = src
    src:fill_(0)
    assert.are.same({ 1, 2 }, x[1]:totable())
  end)

  it("x[i] = tensor with a shape that does not broadcast errors", function()
    local x = D.zeros(2, 2)
    H.expect_error(function() x[1] = D.ones(3) end, "copy_: shapes {2} and {3} cannot broadcast")
    assert.are.same({ { 0, 0 }, { 0, 0 } }, x:totable())
  end)

  it("x.method finds methods; an unknown name is nil", function()
    local x = D.zeros(2)
    assert.are.equal(D.Tensor.numel, x.numel)
    assert.is_nil(x.no_such_method)
  end)

  it("rejects an out-of-range index", function()
    local x = D.zeros(2)
    H.expect_error(function() return x[3] end, "index 3 out of range for a dim of size 2")
    H.expect_error(function() return x[0] end, "index 0 out of range for a dim of size 2")
    H.expect_error(function() return x[-3] end, "index -3 out of range for a dim of size 2")
    H.expect_error(function() return D.zeros(2, 2)[3] end, "index 3 out of range for a dim of size 2")
    H.expect_error(function() x[3] = 1 end, "index 3 out of range for a dim of size 2")
  end)

  it("rejects a non-integer index", function()
    local x = D.zeros(2)
    H.expect_error(function() return x[1.5] end, "number has no integer representation")
    H.expect_error(function() x[1.5] = 1 end, "number has no integer representation")
    assert.are.equal(0, x[2.0])
  end)

  it("rejects a non-number value", function()
    local x = D.zeros(2)
    H.expect_error(function() x[1] = "a" end, "number expected, got string")
    H.expect_error(function() x[1] = {} end, "number expected, got table")
  end)

  it("cannot index a 0-d tensor", function()
    local x = D.tensor(1)
    H.expect_error(function() return x[1] end, "index: a 0-d tensor cannot be indexed (use item)")
    H.expect_error(function() x[1] = 2 end, "index: a 0-d tensor cannot be indexed (use fill_)")
    assert.are.equal(1, x:item())
  end)

  it("rejects setting a field", function()
    local x = D.zeros(2)
    H.expect_error(function() x.foo = 1 end, "Tensor: cannot set field 'foo' (only integer indices can be assigned)")
    H.expect_error(function() x.numel = 1 end, "Tensor: cannot set field 'numel'")
    H.expect_error(function() x[true] = 1 end, "Tensor: cannot set field 'true'")
    assert.is_nil(x.foo)
  end)
end)

describe("item", function()
  it("reads a one-element tensor of any rank", function()
    assert.are.equal(2.5, D.tensor(2.5):item())
    assert.are.equal(-3, D.tensor({ -3 }):item())
    assert.are.equal(7, D.tensor({ { { 7 } } }):item())
    assert.are.equal(6, m34()[2]:select(1, 3):item())
  end)

  it("reads through a view's offset", function()
    assert.are.equal(10, m34():narrow(1, 3, 1):narrow(2, 3, 1):item())
  end)

  it("rejects other sizes", function()
    H.expect_error(function() return D.zeros(2, 3):item() end, "item: expected a tensor with one element, got 6")
    H.expect_error(function() return D.zeros(0):item() end, "item: expected a tensor with one element, got 0")
  end)
end)

describe("tostring", function()
  it("of a 2x2 integer matrix", function()
    assert.are.equal("tensor([[1, 2],\n        [3, 4]], shape={2,2})", tostring(D.tensor({ { 1, 2 }, { 3, 4 } })))
  end)

  it("of a 1-d tensor", function()
    assert.are.equal("tensor([1, 2, 3], shape={3})", tostring(D.tensor({ 1, 2, 3 })))
  end)

  it("of a 0-d tensor", function()
    assert.are.equal("tensor(5, shape={})", tostring(D.tensor(5)))
    assert.are.equal("tensor(0.5000, shape={})", tostring(D.tensor(0.5)))
  end)

  it("pads every value to the widest", function()
    assert.are.equal("tensor([  1, -10], shape={2})", tostring(D.tensor({ 1, -10 })))
    assert.are.equal("tensor([[ 1, 20],\n        [ 3,  4]], shape={2,2})", tostring(D.tensor({ { 1, 20 }, { 3, 4 } })))
  end)

  it("uses 4 decimals when a value is fractional", function()
    assert.are.equal("tensor([ 1.5000, -2.2500], shape={2})", tostring(D.tensor({ 1.5, -2.25 })))
    assert.are.equal("tensor([1.0000, 0.5000], shape={2})", tostring(D.tensor({ 1, 0.5 })))
  end)

  it("uses scientific notation for very small or large values", function()
    assert.are.equal("tensor([1.0000e-05, 1.0000e+00], shape={2})", tostring(D.tensor({ 1e-5, 1 })))
    assert.are.equal("tensor([1.0000e+08], shape={1})", tostring(D.tensor({ 1e8 })))
  end)

  it("names non-finite values and prints -0 as 0", function()
    assert.are.equal("tensor([ nan,  inf, -inf,    1], shape={4})", tostring(D.tensor({ 0 / 0, 1 / 0, -1 / 0, 1 })))
    assert.are.equal("tensor([0, 1], shape={2})", tostring(D.tensor({ -0.0, 1 })))
  end)

  it("of a 3-d tensor separates blocks with a blank line", function()
    assert.are.equal("tensor([[[1, 2],\n         [3, 4]],\n\n        [[5, 6],\n         [7, 8]]], shape={2,2,2})",
      tostring(D.tensor({ { { 1, 2 }, { 3, 4 } }, { { 5, 6 }, { 7, 8 } } })))
  end)

  it("of a view prints the view's elements in order", function()
    assert.are.equal("tensor([[1, 3],\n        [2, 4]], shape={2,2})", tostring(D.tensor({ { 1, 2 }, { 3, 4 } }):t()))
    assert.are.equal("tensor([[0]], shape={1,1})", tostring(D.zeros(1, 1)))
  end)

  it("of an empty tensor", function()
    assert.are.equal("tensor([], shape={0})", tostring(D.zeros(0)))
  end)

  it("abbreviates a 100x100 tensor with ...", function()
    local s = tostring(D.arange(10000):view(100, 100))
    assert.is_truthy(s:find("...", 1, true))
    assert.are.equal("shape={100,100})", s:sub(-#"shape={100,100})"))
    assert.are.equal(table.concat({
      "tensor([[   0,    1,    2, ...,   97,   98,   99],",
      "        [ 100,  101,  102, ...,  197,  198,  199],",
      "        [ 200,  201,  202, ...,  297,  298,  299],",
      "        ...,",
      "        [9700, 9701, 9702, ..., 9797, 9798, 9799],",
      "        [9800, 9801, 9802, ..., 9897, 9898, 9899],",
      "        [9900, 9901, 9902, ..., 9997, 9998, 9999]], shape={100,100})",
    }, "\n"), s)
  end)

  it("abbreviates beyond 1000 elements only", function()
    assert.is_nil(tostring(D.arange(1000)):find("...", 1, true))
    assert.are.equal("tensor([   0,    1,    2, ...,  998,  999, 1000], shape={1001})", tostring(D.arange(1001)))
  end)

  it("is also x:tostring() and D.tostring(x)", function()
    local x = D.tensor({ 1, 2 })
    assert.are.equal("tensor([1, 2], shape={2})", x:tostring())
    assert.are.equal("tensor([1, 2], shape={2})", D.tostring(x))
  end)
end)

describe("<close>", function()
  it("releases the tensor at the end of the scope; later use errors with 'closed'", function()
    local kept
    do
      local x <close> = D.zeros(2)
      x[1] = 3
      assert.are.equal(3, x[1])
      kept = x
    end
    H.expect_error(function() return kept:numel() end, "tensor is closed")
    H.expect_error(function() return kept[1] end, "tensor is closed")
    H.expect_error(function() kept[1] = 1 end, "tensor is closed")
    H.expect_error(function() return tostring(kept) end, "closed")
    H.expect_error(function() return D.zeros(2) + kept end, "closed")
  end)

  it("views taken before closing stay valid", function()
    local v
    do
      local x <close> = D.arange(6):view(2, 3)
      v = x:t()
    end
    assert.are.same({ { 0, 3 }, { 1, 4 }, { 2, 5 } }, v:totable())
  end)

  it("closing twice is harmless", function()
    local x = D.zeros(3)
    local close = getmetatable(x).__close
    close(x)
    close(x)
    H.expect_error(function() return x:shape() end, "tensor is closed")
    collectgarbage()
  end)

  it("closes on an error too", function()
    local kept
    local ok = pcall(function()
      local x <close> = D.zeros(2)
      kept = x
      error("boom")
    end)
    assert.is_false(ok)
    H.expect_error(function() return kept:dim() end, "tensor is closed")
  end)
end)

describe("D.Tensor", function()
  it("is the methods table shared by all tensors", function()
    assert.are.equal("table", type(D.Tensor))
    assert.are.equal(D.Tensor.shape, D.zeros(1).shape)
  end)

  it("can be extended with new methods", function()
    assert.is_nil(D.Tensor.sum_of_squares_test)
    D.Tensor.sum_of_squares_test = function(self)
      local s = 0
      for _, v in ipairs(self:reshape(-1):totable()) do s = s + v * v end
      return s
    end
    local ok, err = pcall(function()
      assert.are.equal(14, D.tensor({ 1, 2, 3 }):sum_of_squares_test())
      assert.are.equal(30, D.tensor({ { 1, 2 }, { 3, 4 } }):sum_of_squares_test())
      assert.are.equal(5, D.tensor({ { 1, 2 }, { 3, 4 } })[1]:sum_of_squares_test())
    end)
    D.Tensor.sum_of_squares_test = nil
    assert(ok, err)
    assert.is_nil(D.zeros(1).sum_of_squares_test)
  end)
end)
