-- activation_accuracy.lua: measures exp, sigmoid, silu and the gradients of
-- sigmoid and silu against double-precision references, in float ulps, over
-- inputs from the whole float range (huge, tiny, subnormal, ±0, ±inf, NaN).
-- Used by spec/activation_speed_spec.lua, in its own process and in child
-- processes that cap the SIMD form (DIFFUSION_SIMD=avx2 / scalar).
local D = require "diffusion"

local M = {}

local INF, NAN = math.huge, 0 / 0
local FLT_MAX = (2 - 2 ^ -23) * 2 ^ 127
local FLT_MIN = 2 ^ -126

-- Inputs: a sweep over the range where the functions change, random floats
-- of every magnitude and sign, and the special values.
function M.inputs()
  local xs = {}
  for i = -130 * 64, 130 * 64 do xs[#xs + 1] = i / 64 + i * 1e-7 end -- off the grid, so r is not always 0
  for i = -2000, 2000 do xs[#xs + 1] = i / 1000 end
  local seed = 12345
  local function uniform() -- an LCG, so the inputs are the same in every process
    seed = (seed * 6364136223846793005 + 1442695040888963407) & 0x7fffffffffffffff
    return (seed >> 11) / 2 ^ 52
  end
  for _ = 1, 40000 do
    local v = 2 ^ (uniform() * 277 - 149) -- 2^-149 .. 2^128
    xs[#xs + 1] = uniform() < 0.5 and -v or v
  end
  for _, v in ipairs { 0, -0.0, INF, -INF, NAN, 1e30, -1e30, FLT_MAX, -FLT_MAX, FLT_MIN, -FLT_MIN, 2 ^ -149, -2 ^ -149,
    88.72, 88.73, 89, 100, -87.3, -103.2, -103.9, -104, -110, -200, 1e-8, -1e-8, 1e-20, -1e-20 } do
    xs[#xs + 1] = v
  end
  return xs
end

-- The distance from got (a float) to ref (a double) in ulps of the float
-- nearest ref. Subnormal results count in ulps of the least subnormal.
local function ulp(a)
  a = math.abs(a)
  if a < FLT_MIN then return 2 ^ -149 end
  local e = math.floor(math.log(a, 2))
  while 2 ^ e > a do e = e - 1 end
  while 2 ^ (e + 1) <= a do e = e + 1 end
  return 2 ^ (e - 23)
end

function M.ulp_error(got, ref)
  if ref ~= ref then return got ~= got and 0 or INF end
  if got ~= got then return INF end
  if got == ref then return 0 end
  if math.abs(ref) > FLT_MAX then -- beyond the float range: inf is right
    if got == (ref > 0 and INF or -INF) then return 0 end
    ref = ref > 0 and FLT_MAX or -FLT_MAX
  end
  if math.abs(got) == INF then return INF end
  return math.abs(got - ref) / ulp(ref)
end

-- References in double. The logistic from t = exp(-|x|): s and 1 - s without
-- overflow or cancellation.
local function logistic(x)
  local t = math.exp(-math.abs(x))
  local q, a = 1 / (1 + t), t / (1 + t)
  if x >= 0 then return q, a end
  return a, q
end

M.reference = {
  exp = math.exp,
  sigmoid = function(x) return (logistic(x)) end,
  silu = function(x)
    if x == -INF then return 0 end
    return x * (logistic(x))
  end,
  sigmoid_grad = function(x)
    local s, c = logistic(x)
    return s * c
  end,
  silu_grad = function(x)
    if x ~= x then return NAN end
    if x == INF then return 1 elseif x == -INF then return 0 end
    local s, c = logistic(x)
    return s * (1 + x * c)
  end,
}
M.names = { "exp", "sigmoid", "silu", "sigmoid_grad", "silu_grad" }

-- The op's results for the float tensor x, as a table.
local function compute(name, x)
  if name == "sigmoid_grad" or name == "silu_grad" then
    local leaf = x:detach():requires_grad_()
    D[name:sub(1, -6)](leaf):backward(D.ones_like(leaf))
    return leaf.grad:totable()
  end
  return D[name](x):totable()
end

-- Results below this magnitude count in absolute error: silu(x) = x s(x)
-- for x < -87.3 multiplies a subnormal s, which has lost relative accuracy
-- in any float arithmetic, into a result as small as 1e-36.
M.FLOOR = 2 ^ -119

-- Per op: the largest ulp error over results of at least M.FLOOR and the
-- input where it was; the largest absolute error over the results whose ulp
-- error exceeds `limit` (cancellation: silu' crosses 0 near x = -1.28); the
-- largest absolute error over results below M.FLOOR.
function M.measure(limit)
  local x = D.tensor(M.inputs())
  local xs = x:totable() -- the float inputs the ops really see
  local out = {}
  for _, name in ipairs(M.names) do
    local got, ref = compute(name, x), M.reference[name]
    local worst, worst_x, abs_over, abs_small = 0, nil, 0, 0
    for i, xv in ipairs(xs) do
      local r = ref(xv)
      if r == r and math.abs(r) < M.FLOOR then
        local e = math.abs(got[i] - r)
        if not (e <= abs_small) then abs_small = e end -- NaN too
      else
        local e = M.ulp_error(got[i], r)
        if e > worst then worst, worst_x = e, xv end
        if e > limit then
          local a = math.abs(got[i] - r)
          if not (a <= abs_over) then abs_over = a end
        end
      end
    end
    out[name] = { ulps = worst, at = worst_x, abs_over = abs_over, abs_small = abs_small }
  end
  return out
end

-- One line per op, for a child process to print and a parent to parse.
function M.report(results)
  local lines = {}
  for _, name in ipairs(M.names) do
    local r = results[name]
    lines[#lines + 1] = string.format("%s %.17g %.17g %.17g %.17g", name, r.ulps, r.at or 0, r.abs_over, r.abs_small)
  end
  return table.concat(lines, "\n")
end

function M.parse(text)
  local out = {}
  for name, ulps, at, abs_over, abs_small in text:gmatch("(%S+) (%S+) (%S+) (%S+) (%S+)") do
    out[name] = { ulps = tonumber(ulps), at = tonumber(at), abs_over = tonumber(abs_over), abs_small = tonumber(abs_small) }
  end
  return out
end

return M
