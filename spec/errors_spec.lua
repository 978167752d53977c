-- Misuse raises a Lua error whose message names the problem; nothing crashes.
local D = require "diffusion"
local H = require "helpers"

describe("errors", function()
  local a, b, v

  before_each(function()
    a, b, v = D.zeros(2, 3), D.zeros(4, 5), D.zeros(5)
  end)

  describe("wrong argument types", function()
    it("a string where a tensor is expected", function()
      H.assert_error_with_twice("Tensor expected, got string", D.exp, "x")
      H.assert_error_with_twice("Tensor expected, got string", D.sum, "a")
      H.assert_error_with_twice("Tensor expected, got string", D.matmul, a, "x")
      H.assert_error_with_twice("Tensor expected, got string", function() return a:matmul("x") end)
      H.assert_error_with_twice("Tensor expected, got string", D.zeros_like, "x")
      H.assert_error_with_twice("expected a number or a Tensor, got string", function() return a + "x" end)
      H.assert_error_with_twice("expected a number or a Tensor, got string", function() return "x" + a end)
      H.assert_error_with_twice("expected a number or a Tensor, got string", function() return a * "2" end)
      H.assert_error_with_twice("expected a number or a Tensor, got string", function() return a:add_("x") end)
      H.assert_error_with_twice("expected at least one Tensor", D.add, "x", "y")
    end)

    it("a non-Tensor userdata where a tensor is expected", function()
      H.assert_error_with_twice("Tensor expected, got FILE*", D.exp, io.stdout)
      H.assert_error_with_twice("Tensor expected, got diffusion.Generator", D.exp, D.Generator(1))
      H.assert_error_with_twice("Tensor expected", D.matmul, a, D.Generator(1))
      H.assert_error_with_twice("expected a number or a Tensor", D.add, a, io.stdout)
      H.assert_error_with_twice("expected a number or a Tensor", D.mul, D.Generator(1), a)
      H.assert_error_with_twice("Tensor expected", D.where, io.stdout, a, a)
      H.assert_error_with_twice("Tensor expected", function() return a:copy_(D.Generator(2)) end)
    end)

    it("a Tensor method called on something else", function()
      H.assert_error_with_twice("Tensor expected", a.sum, io.stdout)
      H.assert_error_with_twice("Tensor expected", a.view, D.Generator(1), 6)
      H.assert_error_with_twice("Tensor expected", a.numel, {})
    end)

    it("nil or nothing where a tensor is expected", function()
      H.assert_error_with_twice("Tensor expected, got nil", D.exp, nil)
      H.assert_error_with_twice("Tensor expected, got no value", D.exp)
      H.assert_error_with_twice("Tensor expected", D.matmul, a, nil)
      H.assert_error_with_twice("expected a number or a Tensor, got nil", function() return a + nil end)
      H.assert_error_with_twice("Tensor expected", D.exp, {})
    end)

    it("a non-number where a number is expected", function()
      H.assert_error_with_twice("number expected", D.full, { 2 })
      H.assert_error_with_twice("number expected", function() return a:fill_("x") end)
      H.assert_error_with_twice("number expected", function() return a:clamp("x") end)
      H.assert_error_with_twice("number expected", D.arange, "x")
      assert.has_error(function() D.linspace(0, 1, 2.5) end)
    end)

    it("a shape that is not a shape", function()
      H.assert_error_with_twice("size 1 must be an integer, got string", D.zeros, { "a" })
      H.assert_error_with_twice("size 1 must be an integer, got boolean", D.zeros, { true })
      H.assert_error_with_twice("size 2 must be an integer, got table", D.ones, { 2, {} })
      -- a shape argument that is neither a table nor numbers is not a 0-d shape
      assert.has_error(function() D.zeros("x") end)
      assert.has_error(function() D.ones(true) end)
      assert.has_error(function() D.zeros(io.stdout) end)
      assert.has_error(function() D.randn("x") end)
    end)

    it("D.tensor of something that is not a number or a table", function()
      H.assert_error_with_twice("table expected, got string", D.tensor, "x")
      H.assert_error_with_twice("table expected", D.tensor, io.stdout)
      H.assert_error_with_twice("table expected", D.tensor)
      H.assert_error_with_twice("expected a number at [2], got string", D.tensor, { 1, "x" })
      H.assert_error_with_twice("expected a number at [2][2], got string", D.tensor, { { 1, 2 }, { 3, "a" } })
      H.assert_error_with_twice("got boolean", D.tensor, { true })
    end)

    it("cat and stack of non-tensors", function()
      H.assert_error_with_twice("element 2 is not a tensor", D.cat, { a, "x" }, 1)
      H.assert_error_with_twice("element 1 is not a tensor", D.stack, { io.stdout }, 1)
      H.assert_error_with_twice("non-empty list of tensors", D.cat, {}, 1)
      H.assert_error_with_twice("table expected", D.cat, a, 1)
    end)
  end)

  describe("mismatched shapes", function()
    it("binary ops say 'cannot broadcast' and name both shapes", function()
      for _, f in ipairs {
        function() return a + b end,
        function() return a - b end,
        function() return a * b end,
        function() return a / b end,
        function() return D.maximum(a, b) end,
        function() return a:lt(b) end,
        function() return a:add_(b) end,
      } do
        H.assert_error_with_twice({ "cannot broadcast", "{2,3}", "{4,5}" }, f)
      end
      H.assert_error_with_twice({ "cannot broadcast", "{2,3}", "{5}" }, function() return a + v end)
    end)

    it("in-place ops whose result would grow", function()
      H.assert_error_with_twice({ "{2,2,3}", "{2,3}" }, function() return a:add_(D.zeros(2, 1, 3)) end)
    end)

    it("copy_ and where", function()
      H.assert_error_with_twice({ "cannot broadcast", "{2,3}", "{4,5}" }, function() return a:copy_(b) end)
      H.assert_error_with_twice({ "cannot broadcast", "{2,3}", "{4,5}" }, D.where, a, b, 1)
      H.assert_error_with_twice({ "cannot broadcast", "{3}", "{4,5}" }, function() a[1] = b end)
    end)

    it("writing in place into an expanded tensor", function()
      local e = D.zeros(1, 3):expand(2, 3)
      H.assert_error_with_twice("expanded", function() return e:add_(1) end)
      H.assert_error_with_twice("expanded", function() return e:add_(a) end)
    end)

    it("expand to an incompatible shape", function()
      H.assert_error_with_twice({ "cannot expand", "{2,3}", "{4,4}" }, function() return a:expand(4, 4) end)
    end)
  end)

  describe("out-of-range dims and indices", function()
    it("dims", function()
      H.assert_error_with_twice("dim 3 out of range for a 2-d tensor", function() return a:sum(3) end)
      H.assert_error_with_twice("dim 0 out of range for a 2-d tensor", function() return a:sum(0) end)
      H.assert_error_with_twice("dim -3 out of range for a 2-d tensor", function() return a:sum(-3) end)
      H.assert_error_with_twice("dim 3 out of range", function() return a:size(3) end)
      H.assert_error_with_twice("dim 3 out of range", function() return a:transpose(1, 3) end)
      H.assert_error_with_twice("dim 3 out of range", function() return a:select(3, 1) end)
      H.assert_error_with_twice("dim 3 out of range", function() return a:squeeze(3) end)
      H.assert_error_with_twice("dim 4 out of range", function() return a:unsqueeze(4) end)
      H.assert_error_with_twice("dim 3 out of range", function() return a:argmax(3) end)
      H.assert_error_with_twice("dim 3 out of range", function() return a:max(3) end)
      H.assert_error_with_twice("dim 3 out of range", D.cat, { a, a }, 3)
      H.assert_error_with_twice("dim 4 out of range", D.stack, { a, a }, 4)
      H.assert_error_with_twice("given twice", function() return a:sum({ 1, 1 }) end)
      H.assert_error_with_twice("more dims than the tensor has", function() return a:sum({ 1, 2, 1 }) end)
      H.assert_error_with_twice("expected a 2-d tensor, got 1-d", function() return v:t() end)
    end)

    it("indices", function()
      H.assert_error_with_twice("index 3 out of range for a dim of size 2", function() return a:get(3, 1) end)
      H.assert_error_with_twice("index 0 out of range for a dim of size 2", function() return a:get(0, 1) end)
      H.assert_error_with_twice("index -3 out of range for a dim of size 2", function() return a:get(-3, 1) end)
      H.assert_error_with_twice("index 4 out of range for a dim of size 3", function() return a:get(1, 4) end)
      H.assert_error_with_twice("index 3 out of range", function() return a:set(1, 3, 1) end)
      H.assert_error_with_twice("index 0 out of range", function() return a[0] end)
      H.assert_error_with_twice("index 6 out of range for a dim of size 5", function() return v[6] end)
      H.assert_error_with_twice("index 3 out of range", function() a[3] = 1 end)
      H.assert_error_with_twice("index 3 out of range", function() return a:select(1, 3) end)
      H.assert_error_with_twice("out of bounds", function() return a:narrow(1, 2, 5) end)
      H.assert_error_with_twice("expected 2 indices for a 2-d tensor, got 1", function() return a:get(1) end)
      H.assert_error_with_twice("expected 2 indices for a 2-d tensor, got 3", function() return a:get(1, 1, 1) end)
      H.assert_error_with_twice("0-d tensor cannot be indexed", function() return D.tensor(1)[1] end)
      H.assert_error_with_twice("no length", function() return #D.tensor(1) end)
    end)

    it("assigning a non-integer key", function()
      H.assert_error_with_twice("cannot set field 'foo'", function() a.foo = 1 end)
    end)
  end)

  describe("bad sizes", function()
    it("negative sizes", function()
      H.assert_error_with_twice("negative", D.zeros, { -1 })
      H.assert_error_with_twice("negative", D.zeros, -1)
      H.assert_error_with_twice({ "size 2", "negative" }, D.ones, { 2, -5 })
      H.assert_error_with_twice("negative", D.full, { -1 }, 2)
      H.assert_error_with_twice("negative", D.rand, { -1 })
      H.assert_error_with_twice("negative", D.randn, 3, -1)
      H.assert_error_with_twice("negative", D.randint, 0, 3, { -2 })
      H.assert_error_with_twice(">= 0", D.eye, -1)
      H.assert_error_with_twice(">= 0", D.linspace, 0, 1, -1)
    end)

    it("more than 8 dims", function()
      H.assert_error_with_twice("at most 8 dims", D.zeros, { 1, 2, 3, 4, 5, 6, 7, 8, 9 })
      H.assert_error_with_twice("at most 8 dims", D.ones, 1, 1, 1, 1, 1, 1, 1, 1, 1)
      H.assert_error_with_twice("at most 8 dims", D.randn, 1, 1, 1, 1, 1, 1, 1, 1, 1)
      H.assert_error_with_twice("at most 8 dims", function() return D.zeros(1, 1, 1, 1, 1, 1, 1, 1):unsqueeze(1) end)
      H.assert_error_with_twice("too many dims", function() return a:view(1, 1, 1, 1, 1, 1, 1, 1, 6) end)
      H.assert_error_with_twice("too many dims", function() return a:reshape { 1, 1, 1, 1, 1, 1, 1, 1, 6 } end)
      H.assert_error_with_twice("too many dims", function() return a:expand(1, 1, 1, 1, 1, 1, 1, 2, 3) end)
      H.assert_error_with_twice("deeper than 8", D.tensor, { { { { { { { { { 1 } } } } } } } } })
      -- exactly 8 is fine
      assert.are.equal(8, D.zeros(1, 1, 1, 1, 1, 1, 1, 2):dim())
    end)

    it("byte counts that overflow or cannot be allocated raise", function()
      H.assert_error_with_twice({ "zeros", "{1000000000000}" }, D.zeros, { 1e12 })
      H.assert_error_with_twice({ "too large", "{1099511627776,1099511627776}" }, D.zeros, { 2 ^ 40, 2 ^ 40 })
      H.assert_error_with_twice("{100000000000}", D.ones, 1e11)
      H.assert_error_with_twice("{1000000000000}", D.randn, { 1e12 })
      H.assert_error_with_twice("too large", D.zeros, 2 ^ 62, 4)
      H.assert_error_with_twice("too large", D.zeros, math.maxinteger)
      H.assert_error_with_twice("too large", D.zeros, { 2 ^ 31, 2 ^ 31, 2 ^ 31 })
      H.assert_error_with_twice("too large", D.full, { 2 ^ 61 }, 1)
      H.assert_error_with_twice("too large", D.rand, 2 ^ 40, 2 ^ 40)
      -- and the library still works afterwards
      assert.are.equal(6, D.ones(2, 3):sum():item())
    end)

    it("ragged nested tables", function()
      H.assert_error_with_twice("ragged nested table: expected 2 elements at [2], got 1", D.tensor, { { 1, 2 }, { 3 } })
      H.assert_error_with_twice("ragged nested table: expected 2 elements at [2], got 3", D.tensor, { { 1, 2 }, { 3, 4, 5 } })
      H.assert_error_with_twice("ragged nested table: expected a table at [2], got number", D.tensor, { { 1, 2 }, 3 })
      H.assert_error_with_twice("ragged", D.tensor, { { 1 }, { 2 }, 3 })
      H.assert_error_with_twice("ragged", D.tensor, { { 1, 2 }, {} })
      H.assert_error_with_twice("expected a number at [2], got table", D.tensor, { 1, { 2 } })
      H.assert_error_with_twice("[2][1]", D.tensor, { { { 1 } }, { 2 } })
    end)

    it("non-integer sizes", function()
      H.assert_error_with_twice("size 1 must be an integer", D.zeros, { 2.5 })
      H.assert_error_with_twice("integer", D.zeros, 2.5)
      H.assert_error_with_twice("size 2 must be an integer", D.ones, { 2, 0.5 })
      H.assert_error_with_twice("integer", D.randn, 1.5)
      H.assert_error_with_twice("integer", function() return a:view(2.5) end)
      H.assert_error_with_twice("sizes must be integers", function() return a:view { 2.5, 2 } end)
    end)

    it("NaN and infinite sizes", function()
      H.assert_error_with_twice("size 1 must be an integer", D.zeros, { 0 / 0 })
      H.assert_error_with_twice("integer", D.zeros, 0 / 0)
      H.assert_error_with_twice("size 1 must be an integer", D.zeros, { math.huge })
      H.assert_error_with_twice("integer", D.ones, -math.huge)
    end)
  end)

  describe("shape operations", function()
    it("view of an incompatible shape or layout", function()
      H.assert_error_with_twice({ "view", "{4}", "{2,3}" }, function() return a:view(4) end)
      H.assert_error_with_twice({ "{6,5}", "{2,3,4}" }, function() return D.zeros(2, 3, 4):view(6, 5) end)
      H.assert_error_with_twice({ "without copying", "reshape" }, function() return a:t():view(6) end)
      H.assert_error_with_twice("only one size may be -1", function() return a:view(-1, -1) end)
      H.assert_error_with_twice({ "reshape", "{4}", "{2,3}" }, function() return a:reshape(4) end)
    end)

    it("permute with a repeated or missing dim", function()
      H.assert_error_with_twice("dim 1 appears twice", function() return a:permute(1, 1) end)
      H.assert_error_with_twice("dim 2 appears twice", function() return a:permute { 2, 2 } end)
      H.assert_error_with_twice("dim 2 appears twice", function() return D.zeros(2, 3, 4):permute(3, 2, 2) end)
      H.assert_error_with_twice("expected 2 dims for a 2-d tensor, got 1", function() return a:permute(1) end)
      H.assert_error_with_twice("dim 3 out of range", function() return a:permute(1, 3) end)
    end)

    it("cat and stack of mismatched shapes", function()
      H.assert_error_with_twice({ "cat", "{4,5}", "{2,3}" }, D.cat, { a, b }, 1)
      H.assert_error_with_twice({ "cat", "{4,5}", "{2,3}" }, D.cat, { a, b }, 2)
      H.assert_error_with_twice({ "cat", "{2,4}" }, D.cat, { a, D.zeros(2, 4) }, 1)
      H.assert_error_with_twice({ "stack", "{4,5}", "{2,3}" }, D.stack, { a, b }, 1)
      H.assert_error_with_twice("stack", D.stack, { a, D.zeros(3, 2) }, 1)
    end)

    it("cat and stack work without a dim (defaulting to 1)", function()
      assert.are.same({ 4, 3 }, D.cat({ a, a }):shape())
      assert.are.same({ 2, 2, 3 }, D.stack({ a, a }):shape())
      H.assert_error_with_twice({ "cat", "{4,5}", "{2,3}" }, D.cat, { a, b })
    end)

    it("matmul with mismatched inner dims", function()
      H.assert_error_with_twice({ "matmul", "{2,3}", "inner dims 3 and 2" }, D.matmul, a, a)
      H.assert_error_with_twice({ "matmul", "{2,3}", "{5}" }, D.matmul, a, v)
      H.assert_error_with_twice({ "matmul", "{2,3}", "{4,5}" }, D.matmul, a, b)
      H.assert_error_with_twice({ "matmul", "cannot broadcast" }, D.matmul, D.zeros(2, 3, 4), D.zeros(3, 4, 5))
      H.assert_error_with_twice({ "matmul", "0-d" }, D.matmul, D.tensor(1), a)
    end)

    it("item on a tensor without exactly one element", function()
      H.assert_error_with_twice("item: expected a tensor with one element, got 6", function() return a:item() end)
      H.assert_error_with_twice("got 0", function() return D.zeros(0):item() end)
      assert.are.equal(7, D.full({ 1, 1 }, 7):item())
    end)
  end)

  describe("closed tensors", function()
    local function closed()
      local c, view
      do
        local x <close> = D.ones(2, 3)
        c, view = x, x:t()
      end
      return c, view
    end

    it("every use of a closed tensor raises 'tensor is closed'", function()
      local c = closed()
      local uses = {
        function() return c:sum() end,
        function() return c:numel() end,
        function() return c:shape() end,
        function() return c:t() end,
        function() return c[1] end,
        function() c[1] = 5 end,
        function() return c + 1 end,
        function() return 1 + c end,
        function() return a + c end,
        function() return -c end,
        function() return #c end,
        function() return D.matmul(a:t(), c) end,
        function() return a:copy_(c) end,
        function() return D.where(c, a, a) end,
        function() return D.zeros_like(c) end,
        function() return c:normal_() end,
        function() return D.randn_like(c) end,
        function() return c:item() end,
      }
      for i, use in ipairs(uses) do
        local msg = H.error_of_twice(use)
        assert(msg:find("tensor is closed", 1, true), ("use %d: %q"):format(i, msg))
      end
      H.assert_error_with_twice("element 2 is not a tensor", D.cat, { a, c }, 1)
    end)

    it("tostring of a closed tensor does not crash", function()
      local c = closed()
      local ok, s = pcall(tostring, c)
      if ok then
        assert.is_string(s)
        assert.is_truthy(s:find("closed", 1, true))
      else
        assert.is_truthy(tostring(s):find("tensor is closed", 1, true))
      end
    end)

    it("a view taken before closing stays valid", function()
      local _, view = closed()
      assert.are.same({ 3, 2 }, view:shape())
      assert.are.equal(6, view:sum():item())
      assert.are.equal(1, view:get(3, 2))
    end)

    it("closing again and collecting are harmless", function()
      local c = closed()
      local close = getmetatable(c).__close
      close(c)
      close(c)
      c = nil
      collectgarbage()
      collectgarbage()
      assert.are.equal(6, D.ones(6):sum():item())
    end)
  end)

  describe("errors leave things usable", function()
    it("a tensor is unchanged after a failed in-place op", function()
      local x = D.tensor { { 1, 2, 3 }, { 4, 5, 6 } }
      pcall(function() x:add_(b) end)
      pcall(function() x:copy_(b) end)
      assert.are.same({ { 1, 2, 3 }, { 4, 5, 6 } }, x:totable())
    end)
  end)
end)
