-- Random numbers: Philox streams, generators, state, thread and layout
-- independence, distribution moments, and argument checks.
local D = require "diffusion"
local H = require "helpers"

local function concat(...)
  local out = {}
  for _, t in ipairs { ... } do
    for _, v in ipairs(t) do out[#out + 1] = v end
  end
  return out
end

local function slice(t, i, j)
  return table.move(t, i, j, 1, {})
end

describe("rng", function()
  describe("manual_seed", function()
    it("gives identical tensors for the same seed", function()
      D.manual_seed(42)
      local a, b, c = D.randn(1000), D.rand(3, 7), D.randint(0, 100, { 50 })
      D.manual_seed(42)
      local a2, b2, c2 = D.randn(1000), D.rand(3, 7), D.randint(0, 100, { 50 })
      H.assert_identical(a, a2)
      H.assert_identical(b, b2)
      H.assert_identical(c, c2)
    end)

    it("gives different tensors for different seeds", function()
      D.manual_seed(42)
      local a, u = D.randn(1000), D.rand(1000)
      D.manual_seed(43)
      local b, v = D.randn(1000), D.rand(1000)
      assert.is_true(H.ndiff(a, b) > 990)
      assert.is_true(H.ndiff(u, v) > 990)
    end)

    it("consecutive draws after a seed differ from each other", function()
      D.manual_seed(1)
      local a, b = D.rand(1000), D.rand(1000)
      assert.is_true(H.ndiff(a, b) > 990)
    end)

    it("accepts negative and large 64-bit seeds deterministically", function()
      for _, seed in ipairs { -1, math.maxinteger, math.mininteger, 0 } do
        D.manual_seed(seed)
        local a = D.randn(64)
        D.manual_seed(seed)
        H.assert_identical(a, D.randn(64))
      end
      D.manual_seed(-1)
      local a = D.randn(64)
      D.manual_seed(1)
      assert.is_true(H.ndiff(a, D.randn(64)) > 60)
    end)
  end)

  describe("distributions", function()
    it("normals have mean 0 and std 1 (10^6 samples)", function()
      D.manual_seed(123)
      local x = D.randn(1000000)
      assert.are.same({ 1000000 }, x:shape())
      assert.is_true(math.abs(x:mean():item()) < 0.01)
      assert.is_true(math.abs(x:std():item() - 1) < 0.01)
      -- about 68.27% within one std, 95.45% within two
      local within1 = x:abs():lt(1):mean():item()
      local within2 = x:abs():lt(2):mean():item()
      assert.is_true(math.abs(within1 - 0.6827) < 0.005, tostring(within1))
      assert.is_true(math.abs(within2 - 0.9545) < 0.005, tostring(within2))
      -- symmetric
      assert.is_true(math.abs(x:gt(0):mean():item() - 0.5) < 0.005)
      -- all finite
      assert.are.equal(0, x:ne(x):sum():item())
      assert.is_true(x:abs():max():item() < 10)
    end)

    it("normal_(mean, std) shifts and scales", function()
      D.manual_seed(7)
      local x = D.zeros(1000000):normal_(3, 2)
      assert.is_true(math.abs(x:mean():item() - 3) < 0.02)
      assert.is_true(math.abs(x:std():item() - 2) < 0.02)
    end)

    it("normal_ with std 0 gives the mean exactly", function()
      local x = D.zeros(100):normal_(1.5, 0)
      assert.are.equal(1.5, x:min():item())
      assert.are.equal(1.5, x:max():item())
    end)

    it("uniforms have mean 1/2, variance 1/12 and lie in [0, 1)", function()
      D.manual_seed(99)
      local x = D.rand(1000000)
      assert.is_true(math.abs(x:mean():item() - 0.5) < 0.002)
      assert.is_true(math.abs(x:var():item() - 1 / 12) < 0.002)
      assert.is_true(x:min():item() >= 0)
      assert.is_true(x:max():item() < 1)
      assert.is_true(x:min():item() < 1e-4)
      assert.is_true(x:max():item() > 1 - 1e-4)
      -- each tenth holds about a tenth
      for k = 0, 9 do
        local frac = x:ge(k / 10):mul(x:lt((k + 1) / 10)):mean():item()
        assert.is_true(math.abs(frac - 0.1) < 0.003, ("bin %d: %g"):format(k, frac))
      end
    end)

    it("uniform_(lo, hi) lies in [lo, hi)", function()
      D.manual_seed(5)
      local x = D.zeros(200000):uniform_(-2, 3)
      assert.is_true(x:min():item() >= -2)
      assert.is_true(x:max():item() < 3)
      assert.is_true(math.abs(x:mean():item() - 0.5) < 0.02)
      assert.is_true(math.abs(x:var():item() - 25 / 12) < 0.03)
    end)

    it("uniform_(lo, hi) never returns hi, even where float32 rounding of lo + (hi - lo) * u would", function()
      -- Generator(0), counter block 2330056, third word: u = 1 - 2^-24, and
      -- 1 + (1 - 2^-24) rounds to 2 in float32
      local g = D.Generator(0)
      g:set_state { seed = 0, offset = 2330056 }
      local x = D.zeros(4):uniform_(1, 2, g)
      assert.is_true(x:min():item() >= 1)
      assert.is_true(x:max():item() < 2, "got " .. x:max():item())
      -- the float32 spacing at 1e8 is 8: most draws round to a multiple of 8
      D.manual_seed(1)
      local y = D.zeros(1000):uniform_(1e8, 1e8 + 16)
      assert.is_true(y:max():item() < 1e8 + 16, "got " .. y:max():item())
    end)

    it("empty requests work and use no counter blocks", function()
      D.manual_seed(6)
      assert.are.same({ 0 }, D.rand(0):shape())
      assert.are.same({ 3, 0 }, D.randn(3, 0):shape())
      assert.are.same({ 0 }, D.randint(0, 2, { 0 }):shape())
      assert.are.same({ seed = 6, offset = 0 }, D.get_rng_state())
      local g = D.Generator(1)
      D.zeros(0):normal_(0, 1, g)
      assert.are.same({ seed = 1, offset = 0 }, g:get_state())
    end)

    it("randint lies in [low, high), hits both ends, gives integers, roughly uniform", function()
      D.manual_seed(2024)
      local n = 100000
      local x = D.randint(0, 10, { n })
      assert.are.equal(0, x:min():item())
      assert.are.equal(9, x:max():item())
      local counts = {}
      for k = 0, 9 do counts[k] = 0 end
      for _, v in ipairs(x:totable()) do
        assert(v == math.floor(v), "not an integer: " .. v)
        assert(v >= 0 and v < 10, "out of range: " .. v)
        counts[v] = counts[v] + 1
      end
      local expected, chi2 = n / 10, 0
      for k = 0, 9 do chi2 = chi2 + (counts[k] - expected) ^ 2 / expected end
      -- 9 degrees of freedom: P(chi2 > 40) is about 1e-5
      assert.is_true(chi2 < 40, "chi-square " .. chi2)
    end)

    it("randint with negative bounds and a width of one", function()
      D.manual_seed(3)
      local x = D.randint(-3, 2, { 10000 })
      assert.are.equal(-3, x:min():item())
      assert.are.equal(1, x:max():item())
      local y = D.randint(5, 6, { 100 })
      assert.are.equal(5, y:min():item())
      assert.are.equal(5, y:max():item())
    end)

    it("randint_like and rand_like keep the shape", function()
      local x = D.zeros(4, 5)
      local r = D.randint_like(x, 0, 3)
      assert.are.same({ 4, 5 }, r:shape())
      assert.is_true(r:min():item() >= 0 and r:max():item() <= 2)
      local u = x:rand_like()
      assert.are.same({ 4, 5 }, u:shape())
      assert.is_true(u:min():item() >= 0 and u:max():item() < 1)
      local n = D.randn_like(x)
      assert.are.same({ 4, 5 }, n:shape())
    end)
  end)

  describe("Generator", function()
    it("explicit generators leave the default stream untouched", function()
      D.manual_seed(1)
      local ref = D.randn(8)
      D.manual_seed(1)
      local g = D.Generator(99)
      local x = D.zeros(2, 3)
      D.randn({ 2, 3 }, g)
      D.rand(2, 3, g)
      D.randint(0, 10, { 5 }, g)
      D.randn_like(x, g)
      D.rand_like(x, g)
      D.randint_like(x, 0, 4, g)
      x:normal_(0, 1, g)
      x:uniform_(0, 1, g)
      H.assert_identical(ref, D.randn(8))
    end)

    it("each form draws from the generator it is given", function()
      local g = D.Generator(99)
      local x = D.zeros(2, 3)
      -- six numbers are two counter blocks per call
      local forms = {
        function() return D.randn({ 2, 3 }, g) end,
        function() return D.rand(2, 3, g) end,
        function() return D.randint(0, 10, { 6 }, g) end,
        function() return D.randn_like(x, g) end,
        function() return x:clone():normal_(0, 1, g) end,
        function() return x:clone():uniform_(0, 1, g) end,
      }
      local refs = {
        function(h) return D.randn({ 2, 3 }, h) end,
        function(h) return D.rand({ 2, 3 }, h) end,
        function(h) return D.randint(0, 10, { 6 }, h) end,
        function(h) return D.randn({ 2, 3 }, h) end,
        function(h) return D.randn({ 2, 3 }, h) end,
        function(h) return D.rand({ 2, 3 }, h) end,
      }
      for i, form in ipairs(forms) do
        local h = D.Generator(99)
        h:set_state { seed = 99, offset = 2 * (i - 1) }
        assert.are.equal(2 * (i - 1), g:get_state().offset)
        H.assert_identical(refs[i](h), form())
        assert.are.equal(2 * i, g:get_state().offset)
      end
    end)

    it("two generators with the same seed give the same stream", function()
      local g1, g2 = D.Generator(5), D.Generator(5)
      H.assert_identical(D.randn({ 100 }, g1), D.randn({ 100 }, g2))
      H.assert_identical(D.rand({ 33 }, g1), D.rand({ 33 }, g2))
      local g3 = D.Generator(6)
      assert.is_true(H.ndiff(D.randn({ 100 }, g1), D.randn({ 100 }, g3)) > 95)
    end)

    it("a generator seeded s gives the default generator's stream after manual_seed(s)", function()
      D.manual_seed(77)
      local a = D.randn(50)
      H.assert_identical(a, D.randn({ 50 }, D.Generator(77)))
    end)

    it("D.Generator() without a seed uses seed 0", function()
      local g = D.Generator()
      assert.are.equal(0, g:get_state().seed)
      H.assert_identical(D.rand({ 10 }, g), D.rand({ 10 }, D.Generator(0)))
    end)

    it("g:seed resets the stream and returns the generator", function()
      local g = D.Generator(3)
      local a = D.randn({ 20 }, g)
      assert.are.equal(g, g:seed(3))
      assert.are.equal(0, g:get_state().offset)
      H.assert_identical(a, D.randn({ 20 }, g))
    end)

    it("D.default_generator() is the generator manual_seed seeds", function()
      local dg = D.default_generator()
      dg:seed(11)
      local a = D.rand(10)
      D.manual_seed(11)
      H.assert_identical(a, D.rand(10))
      D.manual_seed(12)
      assert.are.equal(12, D.default_generator():get_state().seed)
      assert.are.equal(0, D.default_generator():get_state().offset)
    end)

    it("tostring shows seed and offset", function()
      local g = D.Generator(11)
      assert.are.equal("Generator(seed=11, offset=0)", tostring(g))
      D.rand({ 8 }, g)
      assert.are.equal("Generator(seed=11, offset=2)", tostring(g))
      D.rand({ 1 }, g)
      assert.are.equal("Generator(seed=11, offset=3)", tostring(g))
      D.manual_seed(4)
      assert.are.equal("Generator(seed=4, offset=0) [default]", tostring(D.default_generator()))
    end)
  end)

  describe("state", function()
    it("get_state/set_state on a generator restore the exact stream", function()
      local g = D.Generator(11)
      D.rand({ 5 }, g)
      local s = g:get_state()
      assert.are.same({ seed = 11, offset = 2 }, s)
      local a = D.randn({ 100 }, g)
      assert.are.same({ seed = 11, offset = 2 }, s) -- a snapshot, not a live view
      g:set_state(s)
      H.assert_identical(a, D.randn({ 100 }, g))
    end)

    it("a state moves a stream from one generator to another", function()
      local g1 = D.Generator(21)
      D.randn({ 17 }, g1)
      local g2 = D.Generator(0)
      g2:set_state(g1:get_state())
      H.assert_identical(D.rand({ 40 }, g1), D.rand({ 40 }, g2))
    end)

    it("D.get_rng_state/D.set_rng_state restore the default stream", function()
      D.manual_seed(8)
      D.rand(3)
      local s = D.get_rng_state()
      assert.are.same({ seed = 8, offset = 1 }, s)
      local a = D.rand(50)
      D.set_rng_state(s)
      H.assert_identical(a, D.rand(50))
    end)

    it("the default generator object restores the default stream too", function()
      D.manual_seed(8)
      local s = D.default_generator():get_state()
      local a = D.randn(30)
      D.default_generator():set_state(s)
      H.assert_identical(a, D.randn(30))
    end)

    it("set_state rejects a malformed state", function()
      local g = D.Generator(1)
      H.assert_error_with_twice("state.seed must be an integer", function() g:set_state { offset = 0 } end)
      H.assert_error_with_twice("state.offset must be an integer", function() g:set_state { seed = 1, offset = 0.5 } end)
      assert.has_error(function() g:set_state("x") end)
      assert.are.same({ seed = 1, offset = 0 }, g:get_state())
    end)
  end)

  describe("independence of threads, splits and layout", function()
    local function draws(seed, n)
      D.manual_seed(seed)
      return D.randn(n), D.rand(n), D.randint(-50, 50, { n })
    end

    for _, n in ipairs { 1000, 32767, 32768 * 4 + 3, 300001 } do
      it("gives the same numbers at 1 and 2 threads (" .. n .. " elements)", function()
        local a1, b1, c1 = H.with_threads(1, function() return draws(5, n) end)
        local a2, b2, c2 = H.with_threads(2, function() return draws(5, n) end)
        local a3, b3, c3 = H.with_threads(3, function() return draws(5, n) end)
        H.assert_identical(a1, a2)
        H.assert_identical(b1, b2)
        H.assert_identical(c1, c2)
        H.assert_identical(a1, a3)
        H.assert_identical(b1, b3)
        H.assert_identical(c1, c3)
      end)
    end

    it("two requests of 4 numbers equal one request of 8", function()
      for _, f in ipairs { D.rand, D.randn } do
        D.manual_seed(31)
        local whole = f(8):totable()
        D.manual_seed(31)
        local p, q = f(4):totable(), f(4):totable()
        assert.are.same(whole, concat(p, q))
      end
      D.manual_seed(31)
      local whole = D.randint(0, 1000, { 8 }):totable()
      D.manual_seed(31)
      local p, q = D.randint(0, 1000, { 4 }):totable(), D.randint(0, 1000, { 4 }):totable()
      assert.are.same(whole, concat(p, q))
    end)

    it("a request starts at a fresh counter block (3 then 5 numbers)", function()
      D.manual_seed(31)
      local whole = D.rand(12):totable()
      D.manual_seed(31)
      local p = D.rand(3):totable()
      assert.are.equal(1, D.get_rng_state().offset)
      local q = D.rand(5):totable()
      assert.are.equal(3, D.get_rng_state().offset)
      assert.are.same(slice(whole, 1, 3), p)
      assert.are.same(slice(whole, 5, 9), q)
    end)

    it("a large request equals its parts when the split is at a multiple of 4", function()
      D.manual_seed(17)
      local whole = D.randn(100000)
      D.manual_seed(17)
      local p, q = D.randn(40000), D.randn(60000)
      H.assert_identical(whole, D.cat({ p, q }, 1))
    end)

    it("fills a transposed view in element order", function()
      D.manual_seed(3)
      local c = D.randn(3, 4)
      D.manual_seed(3)
      local z = D.zeros(4, 3):t()
      assert.is_false(z:is_contiguous())
      z:normal_(0, 1)
      H.assert_identical(c, z)
      assert.are.equal(3, D.get_rng_state().offset)
    end)

    it("fills a strided view in element order and leaves the rest alone", function()
      D.manual_seed(4)
      local ref = D.rand(5):totable()
      D.manual_seed(4)
      local x = D.zeros(10)
      local v = x:slice(1, 1, 10, 2)
      assert.are.equal(5, v:numel())
      v:uniform_(0, 1)
      local got = x:totable()
      for i = 1, 5 do
        assert.are.equal(ref[i], got[2 * i - 1])
        assert.are.equal(0, got[2 * i])
      end
    end)

    it("randn_like of a transposed tensor equals randn of its shape", function()
      local x = D.zeros(5, 7):t()
      D.manual_seed(9)
      local a = D.randn_like(x)
      D.manual_seed(9)
      H.assert_identical(D.randn(7, 5), a)
    end)
  end)

  describe("Philox4x32-10", function()
    it("matches the Random123 known answer for counter 0, key 0 (the top 24 bits of each word)", function()
      -- Random123's kat_vectors: philox4x32 10, counter {0,0,0,0}, key {0,0}
      -- -> 6627e8d5 e169c58d bc57ac4c 9b00dbd8; randint over [0, 2^24) keeps word >> 8
      local v = D.randint(0, 1 << 24, { 4 }, D.Generator(0)):totable()
      assert.are.same({ 0x6627e8, 0xe169c5, 0xbc57ac, 0x9b00db }, v)
    end)

    it("gives the same bits on the 16-block AVX-512 path as on the scalar one", function()
      -- sizes around the 16-block batches and a task's edges; an offset whose
      -- counters carry from the low 32 bits into the high ones inside a batch
      local code = [[
        local D = require "diffusion"
        local out = {}
        for _, threads in ipairs { 1, 2 } do
          D.set_num_threads(threads)
          for _, n in ipairs { 1, 5, 63, 64, 65, 100003 } do
            for _, offset in ipairs { 0, (1 << 32) - 5, 12345 } do
              local g = D.Generator(77)
              g:set_state { seed = 0x5eed, offset = offset }
              for _, x in ipairs { D.rand({ n }, g), D.randn({ n }, g), D.randint(-9, 1 << 20, { n }, g) } do
                out[#out + 1] = string.format("%.9g:%.9g", x:sum():item(), (x * x):sum():item())
              end
            end
          end
        end
        io.write(table.concat(out, " "))
      ]]
      local wide, scalar = H.run_child("", code), H.run_child("DIFFUSION_SIMD=scalar", code)
      assert.is_true(#wide > 100, wide)
      assert.are.equal(scalar, wide)
    end)
  end)

  describe("bad arguments", function()
    it("randint with low >= high", function()
      H.assert_error_with_twice("randint: expected low < high", D.randint, 5, 5, { 3 })
      H.assert_error_with_twice("randint: expected low < high", D.randint, 6, 5, { 3 })
      H.assert_error_with_twice("expected low < high", D.randint_like, D.zeros(3), 2, 1)
    end)

    it("randint bounds beyond float32's exact integers", function()
      H.assert_error_with_twice("2^24", D.randint, 0, 2 ^ 25 // 1, { 3 })
      H.assert_error_with_twice("2^24", D.randint, -(2 ^ 25 // 1), 0, { 3 })
    end)

    it("randint with non-integer bounds", function()
      assert.has_error(function() D.randint(0.5, 3, { 2 }) end)
      assert.has_error(function() D.randint(0, "x", { 2 }) end)
    end)

    it("normal_ with std < 0 or a non-finite mean", function()
      local x = D.zeros(4)
      H.assert_error_with_twice("std >= 0", function() x:normal_(0, -1) end)
      H.assert_error_with_twice("randn", function() x:normal_(0 / 0, 1) end)
      H.assert_error_with_twice("randn", function() x:normal_(0, math.huge) end)
      assert.are.equal(0, x:abs():sum():item()) -- untouched
    end)

    it("uniform_ with lo > hi or infinite bounds", function()
      local x = D.zeros(4)
      H.assert_error_with_twice("lo <= hi", function() x:uniform_(1, 0) end)
      H.assert_error_with_twice("rand", function() x:uniform_(0, math.huge) end)
      H.assert_error_with_twice("rand", function() x:uniform_(0 / 0, 1) end)
    end)

    it("a failed request does not advance the generator", function()
      D.manual_seed(1)
      local s = D.get_rng_state()
      pcall(D.randint, 3, 3, { 100 })
      pcall(function() D.zeros(10):normal_(0, -1) end)
      assert.are.same(s, D.get_rng_state())
      local g = D.Generator(2)
      pcall(D.randint, 3, 1, { 100 }, g)
      assert.are.same({ seed = 2, offset = 0 }, g:get_state())
    end)

    it("cannot fill an expanded tensor", function()
      local x = D.zeros(1):expand(4)
      H.assert_error_with_twice("expanded", function() x:normal_() end)
      H.assert_error_with_twice("expanded", function() x:uniform_() end)
    end)

    it("non-integer seeds", function()
      H.assert_error_with_twice("integer", D.manual_seed, 1.5)
      H.assert_error_with_twice("integer", D.Generator, 0.25)
      assert.has_error(function() D.manual_seed("x") end)
      assert.has_error(function() D.manual_seed() end)
      assert.has_error(function() D.Generator(1):seed(2.5) end)
      assert.has_error(function() D.manual_seed(0 / 0) end)
    end)

    it("something other than a Generator where one is expected", function()
      H.assert_error_with_twice("Generator expected", D.randn, { 2 }, D.zeros(1))
      H.assert_error_with_twice("Generator expected", D.rand, 2, 3, "g")
      H.assert_error_with_twice("Generator expected", function() D.zeros(3):normal_(0, 1, {}) end)
      H.assert_error_with_twice("Generator expected", D.randn_like, D.zeros(3), 7)
    end)
  end)
end)
