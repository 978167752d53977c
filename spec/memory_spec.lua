-- Tensor memory: D.memory_allocated() tracks storage bytes, garbage tensors
-- are freed, the binding keeps loops of big temporaries bounded, and views
-- share storage.
local D = require "diffusion"
local H = require "helpers"

local MB = 1024 * 1024

describe("memory", function()
  it("memory_allocated is an integer byte count", function()
    local m = D.memory_allocated()
    assert.are.equal("integer", math.type(m))
    assert.is_true(m >= 0)
  end)

  it("rises by the storage size when a tensor is created and falls when it is collected", function()
    local m0 = H.settled()
    local x = D.zeros(1000, 1000)
    assert.are.equal(m0 + 4000000, D.memory_allocated())
    local y = D.randn(10, 10)
    assert.are.equal(m0 + 4000400, D.memory_allocated())
    x = nil
    H.full_gc()
    assert.are.equal(m0 + 400, D.memory_allocated())
    y = nil
    H.full_gc()
    assert.are.equal(m0, D.memory_allocated())
  end)

  it("counts every way of making a tensor", function()
    local makers = {
      function() return D.zeros(100) end,
      function() return D.ones(100) end,
      function() return D.full({ 100 }, 3) end,
      function() return D.rand(100) end,
      function() return D.randn(10, 10) end,
      function() return D.randint(0, 5, { 100 }) end,
      function() return D.arange(100) end,
      function() return D.linspace(0, 1, 100) end,
      function() return D.eye(10) end,
      function() return D.tensor { { 1, 2, 3, 4, 5 }, { 6, 7, 8, 9, 10 } }:expand(10, 2, 5):contiguous() end,
    }
    for i, make in ipairs(makers) do
      local m0 = H.settled()
      local x = make()
      H.full_gc() -- intermediates go, x stays
      assert(D.memory_allocated() == m0 + 400, ("maker %d: %d bytes"):format(i, D.memory_allocated() - m0))
      x = nil
      assert.are.equal(m0, H.settled())
    end
  end)

  it("closing a tensor frees its storage at once", function()
    local m0 = H.settled()
    do
      local x <close> = D.zeros(1000, 1000)
      assert.are.equal(m0 + 4000000, D.memory_allocated())
    end
    assert.are.equal(m0, D.memory_allocated())
  end)

  it("a view keeps the storage of a closed tensor until the view goes", function()
    local m0 = H.settled()
    local view
    do
      local x <close> = D.ones(1000, 1000)
      view = x:t()
    end
    assert.are.equal(m0 + 4000000, H.settled())
    assert.are.equal(1000000, view:sum():item())
    view = nil
    assert.are.equal(m0, H.settled())
  end)

  it("views do not allocate new storage", function()
    local x = D.randn(100, 200)
    local m0 = H.settled()
    local views = {
      x:t(),
      x:view(200, 100),
      x:view(-1),
      x:view { 10, 10, 200 },
      x:reshape(50, 400), -- contiguous: a view
      x:flatten(),
      x:transpose(1, 2),
      x:permute(2, 1),
      x:narrow(2, 5, 10),
      x:slice(1, 1, 100, 3),
      x:select(1, 7),
      x[3],
      x:unsqueeze(1),
      x:unsqueeze(1):squeeze(),
      x:view(1, 100, 200):expand(4, 100, 200),
      x:contiguous(), -- already contiguous: x itself
    }
    assert.are.equal(m0, D.memory_allocated())
    for i, v in ipairs(views) do
      assert(v:same_storage(x), "view " .. i .. " does not share storage")
    end
    -- a view of a view
    local vv = x:t():narrow(1, 2, 3):select(2, 4)
    assert.are.equal(m0, D.memory_allocated())
    assert.is_true(vv:same_storage(x))
    -- views alias: writing through one shows in the other
    x:t():set(9, 1, 2)
    assert.are.equal(9, x:get(2, 1))
  end)

  it("copies do allocate", function()
    local x = D.randn(100, 200)
    local m0 = H.settled()
    local c = x:t():contiguous()
    assert.are.equal(m0 + 80000, D.memory_allocated())
    local r = x:t():reshape(-1) -- not viewable: copies
    assert.are.equal(m0 + 160000, D.memory_allocated())
    local k = x:clone()
    assert.are.equal(m0 + 240000, D.memory_allocated())
    assert.is_false(c:same_storage(x))
    assert.is_false(r:same_storage(x))
    assert.is_false(k:same_storage(x))
  end)

  it("in-place ops do not allocate", function()
    local x = D.randn(500, 500)
    local y = D.randn(500)
    local m0 = H.settled()
    x:add_(1):mul_(y):exp_():clamp_(0, 2):fill_(3):zero_():normal_():uniform_()
    x:copy_(y)
    x:t():add_(2)
    assert.are.equal(m0, D.memory_allocated())
  end)

  local BOUND = 512 * MB
  local N = 2 * MB -- floats: 8 MB per tensor

  -- { name, maker, steps }: steps * 8 MB is well above the bound, so a
  -- binding that never collected on its own would fail
  local loops = {
    { "zeros", function() return D.zeros(N) end, 200 },
    { "x + i", function(base, i) return base + i end, 200 },
    { "clone", function(base) return base:clone() end, 200 },
    { "view * 2", function(base) return base:view(2048, 1024) * 2 end, 200 },
    { "matmul", function(_, _, p, q) return D.matmul(p, q) end, 200 },
    { "rand", function() return D.rand(N) end, 80 },
    { "rand_like", function(base) return D.rand_like(base) end, 80 },
  }

  for _, case in ipairs(loops) do
    local name, make, steps = case[1], case[2], case[3]
    it(steps .. " temporaries of 8 MB (" .. name .. ") stay below 512 MB without collectgarbage", function()
      assert.is_true(steps * 8 * MB > BOUND)
      local base = D.ones(N)
      local p, q = D.ones(2048, 8), D.ones(8, 1024) -- their product is 8 MB
      H.full_gc()
      local peak = 0
      for i = 1, steps do
        local t = make(base, i, p, q)
        assert.are.equal(8 * MB, t:numel() * 4)
        local now = D.memory_allocated()
        if now > peak then peak = now end
        assert(now < BOUND, ("step %d: %d MB allocated"):format(i, now // MB))
        -- recycled buffers held for reuse count against the process too
        local cached = D.cached_bytes()
        assert(now + cached < BOUND, ("step %d: %d MB allocated + %d MB cached"):format(i, now // MB, cached // MB))
      end
      assert.is_true(peak < BOUND)
    end)
  end

  describe("buffer cache", function()
    -- The cache is off in sanitizer builds (they must see every free); then
    -- it must hold nothing.
    local function cache_enabled()
      H.full_gc()
      D.empty_cache()
      local x = D.zeros(N)
      x = nil
      H.full_gc()
      local on = D.cached_bytes() > 0
      D.empty_cache()
      return on
    end

    it("keeps a large freed buffer and empty_cache gives it back", function()
      local on = cache_enabled()
      local m0 = H.settled()
      D.empty_cache()
      assert.are.equal(0, D.cached_bytes())
      local x = D.zeros(N)
      assert.are.equal(m0 + 8 * MB, D.memory_allocated())
      x = nil
      H.full_gc()
      assert.are.equal(m0, D.memory_allocated()) -- not live any more
      local expected = on and 8 * MB or 0
      assert.are.equal(expected, D.cached_bytes())
      assert.are.equal(expected, D.empty_cache())
      assert.are.equal(0, D.cached_bytes())
      assert.are.equal(0, D.empty_cache())
    end)

    it("does not keep small buffers", function()
      H.full_gc()
      D.empty_cache()
      local x = D.zeros(1000)
      x = nil
      H.full_gc()
      assert.are.equal(0, D.cached_bytes())
    end)

    it("a recycled buffer is zeroed for zeros and overwritten by ones", function()
      local on = cache_enabled()
      local x = D.full({ N }, 3)
      x = nil
      H.full_gc()
      assert.are.equal(on and 8 * MB or 0, D.cached_bytes())
      local z = D.zeros(N)
      assert.are.equal(0, D.cached_bytes()) -- it was reused
      assert.are.equal(0, z:abs():max():item())
      z:fill_(5)
      z = nil
      H.full_gc()
      local o = D.ones(N)
      assert.are.equal(1, o:min():item())
      assert.are.equal(1, o:max():item())
      o = nil
      H.full_gc()
      local l = D.zeros(2048, 1024) -- same bytes, another shape
      assert.are.equal(0, l:abs():max():item())
      l = nil
      H.full_gc()
      local near = D.zeros(N - 1000) -- a little smaller: may reuse the buffer
      assert.are.equal(0, near:abs():max():item())
      D.empty_cache()
    end)

    it("is bounded in entries", function()
      local on = cache_enabled()
      local xs = {}
      -- the smallest cached size (256 KiB), more buffers than the cache's 2048 entries
      for i = 1, 2100 do xs[i] = D.zeros(64 * 1024) end
      xs = nil
      H.full_gc()
      local cached = D.cached_bytes()
      assert.are.equal(on, cached > 0)
      assert.is_true(cached <= 2048 * 256 * 1024, "cached " .. cached)
      D.empty_cache()
      assert.are.equal(0, D.cached_bytes())
    end)
  end)

  it("a loop of temporaries ends with its garbage collectable", function()
    local m0 = H.settled()
    for _ = 1, 50 do
      local _ = D.zeros(N) + 1
    end
    assert.are.equal(m0, H.settled())
  end)

  it("failed allocations and failed ops leave nothing behind", function()
    local a, b = D.zeros(2, 3), D.zeros(4, 5)
    local m0 = H.settled()
    pcall(D.zeros, { 1e12 })
    pcall(D.ones, 1e11)
    pcall(D.randn, { 1e12 })
    pcall(D.zeros, { 2 ^ 40, 2 ^ 40 })
    pcall(function() return a + b end)
    pcall(D.matmul, a, a)
    pcall(D.randint, 5, 5, { 1000 })
    pcall(D.cat, { a, b }, 1)
    pcall(D.tensor, { { 1, 2 }, { 3 } })
    pcall(function() return D.zeros(1000):normal_(0, -1) end)
    assert.are.equal(m0, H.settled())
  end)
end)
