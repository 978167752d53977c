-- Creation: zeros/ones/full, arange, linspace, eye, D.tensor from nested
-- tables, totable, the *_like family, shapes as tables or varargs, and
-- zero-size tensors.
local D = require "diffusion"
local H = require "helpers"

describe("zeros, ones, full", function()
  it("zeros takes a shape as varargs", function()
    local x = D.zeros(2, 3)
    assert.are.same({ 2, 3 }, x:shape())
    assert.are.same({ { 0, 0, 0 }, { 0, 0, 0 } }, x:totable())
  end)

  it("zeros takes a shape as a table", function()
    local x = D.zeros({ 3, 1, 2 })
    assert.are.same({ 3, 1, 2 }, x:shape())
    assert.are.equal(6, x:numel())
    assert.are.same({ { { 0, 0 } }, { { 0, 0 } }, { { 0, 0 } } }, x:totable())
  end)

  it("zeros with no shape (or an empty table) is a 0-d tensor holding 0", function()
    for _, x in ipairs({ D.zeros(), D.zeros({}) }) do
      assert.are.equal(0, x:dim())
      assert.are.same({}, x:shape())
      assert.are.equal(1, x:numel())
      assert.are.equal(0, x:item())
    end
  end)

  it("ones, both shape forms", function()
    assert.are.same({ { 1, 1 }, { 1, 1 }, { 1, 1 } }, D.ones(3, 2):totable())
    assert.are.same({ { 1, 1 }, { 1, 1 }, { 1, 1 } }, D.ones({ 3, 2 }):totable())
    assert.are.same({ 1, 1, 1, 1 }, D.ones(4):totable())
    assert.are.equal(1, D.ones():item())
  end)

  it("full fills with the value after a table shape", function()
    assert.are.same({ { 7, 7, 7 }, { 7, 7, 7 } }, D.full({ 2, 3 }, 7):totable())
    assert.are.same({ -2.5, -2.5 }, D.full({ 2 }, -2.5):totable())
    assert.are.equal(H.f32(0.1), D.full({}, 0.1):item())
  end)

  it("full works with a single vararg size followed by the value", function()
    -- varargs consume every number, so `D.full(4, 3)` would be shape {4,3};
    -- the value must follow a table shape when there is more than one dim.
    local x = D.full({ 4 }, 3)
    assert.are.same({ 3, 3, 3, 3 }, x:totable())
  end)

  it("zeros and eye are zero even in a recycled large buffer", function()
    for _ = 1, 3 do
      local junk = D.full({ 300, 300 }, 7) -- 360 KB: big enough to be cached when freed
      junk = nil
      collectgarbage()
      collectgarbage()
      local z = D.zeros(300, 300)
      assert.are.equal(0, z:max():item())
      assert.are.equal(0, z:min():item())
      local e = D.eye(300)
      assert.are.equal(300, e:sum():item())
      assert.are.equal(1, e:max():item())
      assert.are.equal(0, e:min():item())
      local zl = D.zeros_like(D.ones(300, 300))
      assert.are.equal(0, zl:max():item())
    end
  end)

  it("accepts integral floats as sizes", function()
    assert.are.same({ 2, 3 }, D.zeros(2.0, 3.0):shape())
    assert.are.same({ 2, 3 }, D.zeros({ 2.0, 3.0 }):shape())
  end)

  it("rejects negative and fractional sizes", function()
    H.expect_error(function() return D.zeros(-1) end, "shape: size 1 is negative (-1)")
    H.expect_error(function() return D.ones({ 2, -3 }) end, "shape: size 2 is negative (-3)")
    H.expect_error(function() return D.zeros({ 2.5 }) end, "size 1 must be an integer, got number")
    H.expect_error(function() return D.zeros(2.5) end, "number has no integer representation")
    H.expect_error(function() return D.zeros({ 2, "x" }) end, "size 2 must be an integer, got string")
  end)

  it("rejects more than 8 dims", function()
    H.expect_error(function() return D.zeros({ 1, 1, 1, 1, 1, 1, 1, 1, 1 }) end, "a tensor has at most 8 dims, got 9")
    H.expect_error(function() return D.zeros(1, 1, 1, 1, 1, 1, 1, 1, 1) end, "a tensor has at most 8 dims")
    assert.are.equal(8, D.zeros(1, 1, 1, 1, 1, 1, 1, 2):dim())
  end)

  it("does not silently ignore a non-number shape argument", function()
    -- D.zeros("3") must either mean shape {3} or raise; a 0-d tensor is wrong.
    local ok, x = pcall(D.zeros, "3")
    if ok then assert.are.same({ 3 }, x:shape()) end
  end)

  it("full requires a value", function()
    H.expect_error(function() return D.full({ 2 }) end, "number expected")
  end)
end)

describe("arange", function()
  it("with one argument counts from 0 up to, not including, the end", function()
    local x = D.arange(5)
    assert.are.same({ 5 }, x:shape())
    assert.are.same({ 0, 1, 2, 3, 4 }, x:totable())
  end)

  it("with two arguments counts from start", function()
    assert.are.same({ 2, 3, 4 }, D.arange(2, 5):totable())
    assert.are.same({ -3, -2, -1, 0 }, D.arange(-3, 1):totable())
  end)

  it("with three arguments uses the step", function()
    assert.are.same({ 1, 4, 7 }, D.arange(1, 10, 3):totable())
    assert.are.same({ 1, 4, 7 }, D.arange(1, 8, 3):totable())
    assert.are.same({ 1, 4, 7, 10 }, D.arange(1, 11, 3):totable())
  end)

  it("counts down with a negative step", function()
    assert.are.same({ 5, 4, 3, 2, 1 }, D.arange(5, 0, -1):totable())
    assert.are.same({ 10, 7, 4, 1 }, D.arange(10, 0, -3):totable())
  end)

  it("takes fractional steps and bounds", function()
    assert.are.same({ 0, 0.25, 0.5, 0.75 }, D.arange(0, 1, 0.25):totable())
    assert.are.same({ 1, 1.5, 2 }, D.arange(1, 2.5, 0.5):totable())
    assert.are.same({ -2.5, -1.5, -0.5, 0.5 }, D.arange(-2.5, 1):totable())
    local x = D.arange(0, 1, 0.1)
    assert.are.equal(10, x:numel())
    for i = 1, 10 do assert.are.equal(H.f32((i - 1) * 0.1), x[i]) end
    local y = D.arange(0, 0.3, 0.1) -- 0.3/0.1 rounds to 2.9999..., so 3 elements
    assert.are.equal(3, y:numel())
    assert.near(0.2, y[3], 1e-7)
  end)

  it("is empty when the step points away from the end", function()
    assert.are.same({ 0 }, D.arange(0):shape())
    assert.are.same({ 0 }, D.arange(-3):shape())
    assert.are.same({ 0 }, D.arange(5, 0):shape())
    assert.are.same({ 0 }, D.arange(1, 0, 0.5):shape())
    assert.are.same({ 0 }, D.arange(0, 5, -1):shape())
    assert.are.same({}, D.arange(3, 3):totable())
  end)

  it("rejects a zero step", function()
    H.expect_error(function() return D.arange(0, 1, 0) end, "arange: step must be nonzero")
    H.expect_error(function() return D.arange(0, 0 / 0) end, "bounds must not be NaN")
  end)
end)

describe("linspace", function()
  it("n = 0 is empty", function()
    local x = D.linspace(0, 1, 0)
    assert.are.same({ 0 }, x:shape())
    assert.are.same({}, x:totable())
  end)

  it("n = 1 is just the start", function()
    assert.are.same({ 3 }, D.linspace(3, 7, 1):totable())
  end)

  it("n = 5 is evenly spaced, both endpoints included", function()
    assert.are.same({ 0, 0.25, 0.5, 0.75, 1 }, D.linspace(0, 1, 5):totable())
    assert.are.same({ 10, 7.5, 5, 2.5, 0 }, D.linspace(10, 0, 5):totable())
    assert.are.same({ -1, 0, 1 }, D.linspace(-1, 1, 3):totable())
  end)

  it("hits the endpoints exactly", function()
    local x = D.linspace(0.1, 0.7, 7)
    assert.are.equal(H.f32(0.1), x[1])
    assert.are.equal(H.f32(0.7), x[7])
    for i = 2, 6 do assert.near(0.1 * i, x[i], 1e-6) end
    local y = D.linspace(-1, 1 / 3, 4)
    assert.are.equal(-1, y[1])
    assert.are.equal(H.f32(1 / 3), y[4])
  end)

  it("rejects a negative count", function()
    H.expect_error(function() return D.linspace(0, 1, -1) end, "linspace: number of points must be >= 0, got -1")
  end)
end)

describe("eye", function()
  it("square", function()
    assert.are.same({ { 1, 0, 0 }, { 0, 1, 0 }, { 0, 0, 1 } }, D.eye(3):totable())
    assert.are.same({ { 1 } }, D.eye(1):totable())
  end)

  it("n x m, wide and tall", function()
    assert.are.same({ { 1, 0, 0 }, { 0, 1, 0 } }, D.eye(2, 3):totable())
    assert.are.same({ { 1, 0 }, { 0, 1 }, { 0, 0 } }, D.eye(3, 2):totable())
  end)

  it("zero sizes", function()
    assert.are.same({ 0, 0 }, D.eye(0):shape())
    assert.are.same({ 3, 0 }, D.eye(3, 0):shape())
  end)

  it("rejects negative sizes", function()
    H.expect_error(function() return D.eye(-1) end, "eye: sizes must be >= 0, got -1 and -1")
    H.expect_error(function() return D.eye(2, -3) end, "eye: sizes must be >= 0, got 2 and -3")
  end)
end)

describe("D.tensor", function()
  it("0-d from a number", function()
    local x = D.tensor(3.5)
    assert.are.equal(0, x:dim())
    assert.are.same({}, x:shape())
    assert.are.equal(1, x:numel())
    assert.are.equal(3.5, x:item())
  end)

  it("1-d", function()
    local x = D.tensor({ 1, -2, 3.5 })
    assert.are.same({ 3 }, x:shape())
    assert.are.equal(1, x[1])
    assert.are.equal(-2, x[2])
    assert.are.equal(3.5, x[3])
  end)

  it("2-d, row-major", function()
    local x = D.tensor({ { 1, 2, 3 }, { 4, 5, 6 } })
    assert.are.same({ 2, 3 }, x:shape())
    assert.are.equal(3, x:get(1, 3))
    assert.are.equal(4, x:get(2, 1))
    assert.are.same({ 3, 1 }, x:stride())
  end)

  it("3-d", function()
    local x = D.tensor({ { { 1, 2 }, { 3, 4 }, { 5, 6 } }, { { 7, 8 }, { 9, 10 }, { 11, 12 } } })
    assert.are.same({ 2, 3, 2 }, x:shape())
    assert.are.equal(6, x:get(1, 3, 2))
    assert.are.equal(9, x:get(2, 2, 1))
  end)

  it("4-d", function()
    local x = D.tensor({ { { { 1, 2 } } }, { { { 3, 4 } } } })
    assert.are.same({ 2, 1, 1, 2 }, x:shape())
    assert.are.equal(4, x:get(2, 1, 1, 2))
    assert.are.equal(3, x:get(2, 1, 1, 1))
  end)

  it("an empty table is a 1-d tensor with 0 elements", function()
    local x = D.tensor({})
    assert.are.same({ 0 }, x:shape())
    assert.are.equal(1, x:dim())
    assert.are.equal(0, x:numel())
  end)

  it("a table of empty tables is {n, 0}", function()
    assert.are.same({ 2, 0 }, D.tensor({ {}, {} }):shape())
  end)

  it("allows 8 levels of nesting and rejects 9", function()
    local x = D.tensor({ { { { { { { { 5 } } } } } } } })
    assert.are.equal(8, x:dim())
    assert.are.equal(5, x:item())
    H.expect_error(function() return D.tensor({ { { { { { { { { 5 } } } } } } } } }) end,
      "tensor: nested deeper than 8 levels")
  end)

  it("rejects a row of the wrong length", function()
    H.expect_error(function() return D.tensor({ { 1, 2 }, { 3 } }) end,
      "tensor: ragged nested table: expected 2 elements at [2], got 1")
    H.expect_error(function() return D.tensor({ { 1, 2 }, { 3, 4, 5 } }) end,
      "tensor: ragged nested table: expected 2 elements at [2], got 3")
    H.expect_error(function() return D.tensor({ { { 1 }, { 2 } }, { { 3 }, { 4, 5 } } }) end,
      "tensor: ragged nested table: expected 1 elements at [2][2], got 2")
    H.expect_error(function() return D.tensor({ {}, { 1 } }) end,
      "tensor: ragged nested table: expected 0 elements at [2], got 1")
  end)

  it("rejects a number where a table is expected", function()
    H.expect_error(function() return D.tensor({ { 1, 2 }, 3 }) end,
      "tensor: ragged nested table: expected a table at [2], got number")
  end)

  it("rejects non-number leaves", function()
    H.expect_error(function() return D.tensor({ 1, { 2 } }) end, "tensor: expected a number at [2], got table")
    H.expect_error(function() return D.tensor({ { 1, 2 }, { 3, "x" } }) end,
      "tensor: expected a number at [2][2], got string")
    H.expect_error(function() return D.tensor({ true }) end, "tensor: expected a number at [1], got boolean")
  end)

  it("rejects arguments that are neither a table nor a number", function()
    H.expect_error(function() return D.tensor("abc") end, "table expected, got string")
    H.expect_error(function() return D.tensor() end, "table expected, got no value")
  end)
end)

describe("totable", function()
  local cases = {
    { 1, 2, 3 },
    { { 1, 2 }, { 3, 4 }, { 5, 6 } },
    { { { 0.5, -1.25 }, { 2, 3 } }, { { 4, 5 }, { -6, 7.75 } } },
    { { { { 1 }, { 2 } } }, { { { 3 }, { 4 } } }, { { { 5 }, { 6 } } } },
  }
  for i, t in ipairs(cases) do
    it("round-trips a " .. i .. "-d table", function()
      assert.are.same(t, D.tensor(t):totable())
    end)
  end

  it("of a 0-d tensor is the number", function()
    assert.are.equal(2.5, D.tensor(2.5):totable())
  end)

  it("follows the view, not the storage", function()
    local x = D.tensor({ { 1, 2, 3 }, { 4, 5, 6 } })
    assert.are.same({ { 1, 4 }, { 2, 5 }, { 3, 6 } }, x:t():totable())
    assert.are.same({ 1, 3 }, x[1]:slice(1, 1, -1, 2):totable())
  end)

  it("is a module function too", function()
    assert.are.same({ 1, 2 }, D.totable(D.tensor({ 1, 2 })))
  end)
end)

describe("*_like", function()
  local base = D.tensor({ { 1, 2, 3 }, { 4, 5, 6 } })

  it("zeros_like, ones_like, full_like copy the shape and fill", function()
    assert.are.same({ { 0, 0, 0 }, { 0, 0, 0 } }, D.zeros_like(base):totable())
    assert.are.same({ { 1, 1, 1 }, { 1, 1, 1 } }, D.ones_like(base):totable())
    assert.are.same({ { 7, 7, 7 }, { 7, 7, 7 } }, D.full_like(base, 7):totable())
    assert.are.same({ { 1, 1, 1 }, { 1, 1, 1 } }, base:ones_like():totable())
  end)

  it("do not share or change the source", function()
    local z = D.zeros_like(base)
    assert.is_false(z:same_storage(base))
    z:fill_(9)
    assert.are.same({ { 1, 2, 3 }, { 4, 5, 6 } }, base:totable())
  end)

  it("take the shape of a non-contiguous view and are contiguous", function()
    local v = base:t()
    local z = D.zeros_like(v)
    assert.are.same({ 3, 2 }, z:shape())
    assert.is_true(z:is_contiguous())
    assert.are.same({ 2, 1 }, z:stride())
  end)

  it("rand_like is uniform in [0, 1) with the source's shape", function()
    local x = D.rand_like(D.zeros(4, 5, 6))
    assert.are.same({ 4, 5, 6 }, x:shape())
    local t, distinct = x:reshape(-1):totable(), {}
    for _, v in ipairs(t) do
      assert.is_true(v >= 0 and v < 1)
      distinct[v] = true
    end
    local n = 0
    for _ in pairs(distinct) do n = n + 1 end
    assert.is_true(n > 100)
  end)

  it("randn_like has the source's shape and takes negative values", function()
    local x = D.randn_like(D.zeros(10, 20))
    assert.are.same({ 10, 20 }, x:shape())
    local neg, pos = 0, 0
    for _, v in ipairs(x:reshape(-1):totable()) do
      if v < 0 then neg = neg + 1 elseif v > 0 then pos = pos + 1 end
    end
    assert.is_true(neg > 20 and pos > 20)
  end)

  it("randint_like draws integers in [lo, hi) with the source's shape", function()
    local x = D.randint_like(D.zeros(3, 50), 2, 5)
    assert.are.same({ 3, 50 }, x:shape())
    local seen = {}
    for _, v in ipairs(x:reshape(-1):totable()) do
      assert.are.equal(math.floor(v), v)
      assert.is_true(v >= 2 and v < 5)
      seen[v] = true
    end
    assert.is_true(seen[2] and seen[3] and seen[4])
  end)

  it("of 0-d and zero-size tensors", function()
    assert.are.same({}, D.ones_like(D.tensor(3)):shape())
    assert.are.same({ 2, 0, 3 }, D.zeros_like(D.zeros(2, 0, 3)):shape())
    assert.are.same({ 2, 0, 3 }, D.full_like(D.zeros(2, 0, 3), 1):shape())
  end)

  it("random *_like of a zero-size tensor", function()
    local z = D.zeros(2, 0, 3)
    assert.are.same({ 2, 0, 3 }, D.rand_like(z):shape())
    assert.are.same({ 2, 0, 3 }, D.randn_like(z):shape())
    assert.are.same({ 2, 0, 3 }, D.randint_like(z, 0, 4):shape())
  end)
end)

describe("zero-size tensors", function()
  it("{0}", function()
    local x = D.zeros(0)
    assert.are.same({ 0 }, x:shape())
    assert.are.equal(0, x:numel())
    assert.are.equal(0, #x)
    assert.are.same({}, x:totable())
    assert.are.equal("tensor([], shape={0})", tostring(x))
    assert.are.same({ 0 }, D.ones({ 0 }):shape())
    assert.are.same({ 0 }, D.full({ 0 }, 3):shape())
  end)

  it("{2,0,3} through creation", function()
    for _, x in ipairs({ D.zeros(2, 0, 3), D.ones({ 2, 0, 3 }), D.full({ 2, 0, 3 }, 5) }) do
      assert.are.same({ 2, 0, 3 }, x:shape())
      assert.are.equal(0, x:numel())
      assert.are.equal(3, x:dim())
      assert.are.equal(2, #x)
    end
  end)

  it("{2,0,3} from rand, randn, randint", function()
    assert.are.same({ 0 }, D.rand(0):shape())
    assert.are.same({ 2, 0, 3 }, D.rand(2, 0, 3):shape())
    assert.are.same({ 2, 0, 3 }, D.randn(2, 0, 3):shape())
    assert.are.same({ 2, 0, 3 }, D.randint(0, 5, 2, 0, 3):shape())
  end)

  it("{2,0,3} through totable and printing", function()
    local x = D.zeros(2, 0, 3)
    assert.are.same({ {}, {} }, x:totable())
    assert.are.equal("tensor([], shape={2,0,3})", tostring(x))
  end)

  it("{2,0,3} through views", function()
    local x = D.zeros(2, 0, 3)
    assert.are.same({ 0, 3 }, x:select(1, 2):shape())
    assert.are.same({ 2, 3, 0 }, x:transpose(2, 3):shape())
    assert.are.same({ 3, 0, 2 }, x:permute(3, 2, 1):shape())
    assert.are.same({ 0, 3 }, x:view(-1, 3):shape())
    assert.are.same({ 0 }, x:view(-1):shape())
    assert.are.same({ 0 }, x:flatten():shape())
    assert.are.same({ 2, 0, 2 }, x:slice(3, 2, 3):shape())
    assert.are.same({ 1, 0, 3 }, x:narrow(1, 2, 1):shape())
    assert.are.same({ 2, 1, 0, 3 }, x:unsqueeze(2):shape())
    assert.is_true(x:is_contiguous())
    assert.is_true(rawequal(x, x:contiguous()))
    assert.are.equal("tensor([], shape={2,1,0,3})", tostring(x:unsqueeze(2)))
  end)

  it("{2,0,3} can be cloned, filled and copied into", function()
    local x = D.zeros(2, 0, 3)
    local c = x:clone()
    assert.are.same({ 2, 0, 3 }, c:shape())
    assert.is_false(c:same_storage(x))
    assert.is_true(rawequal(x, x:fill_(1)))
    assert.is_true(rawequal(x, x:copy_(D.ones(2, 0, 3))))
  end)

  it("empty slices of non-empty tensors", function()
    local x = D.arange(5)
    assert.are.same({ 0 }, x:slice(1, 3, 2):shape())
    assert.are.equal("tensor([], shape={0})", tostring(x:slice(1, 3, 2)))
    assert.are.same({ 0, 3 }, D.zeros(2, 3):narrow(1, 2, 0):shape())
  end)
end)
