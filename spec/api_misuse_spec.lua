-- The Lua API survives misuse: thousands of seeded random calls of public
-- functions and methods (tensor creation, ops, methods, nn modules,
-- schedules, samplers, images, checkpoints, safetensors, ...) with random
-- arguments (nil, booleans, numbers with NaN/inf/huge/negative, strings,
-- tables, tensors of random shapes and layouts, functions, coroutines, live
-- objects). Each call must succeed or raise a Lua error; never crash.
--
-- The calls run in a child process (spec/fuzz/misuse_driver.lua) whose
-- working directory is a scratch directory, so a random string taken as a
-- path writes nowhere else, and so a crash is seen as the child's death,
-- with the call that caused it named from its trace file. Under `make asan`
-- the child inherits the sanitizers, so a memory error fails this spec too.
local H = require "helpers"

local LUA = os.getenv("LUA") or "lua5.4"
local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- The directory of this spec file, for the driver's absolute path.
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec"
if here:sub(1, 1) ~= "/" then here = os.getenv("PWD") .. "/" .. here end

local function run_driver(seed, calls)
  local dir = H.temp_dir()
  local trace, summary, log = dir .. "/trace.txt", dir .. "/summary.txt", dir .. "/log.txt"
  local work = dir .. "/work"
  H.mkdir(work)
  H.write_file(work .. "/junk.bin", "\0\1\2junk\255")
  -- a memory cap, so a runaway allocation fails inside the child instead of
  -- pressing on the machine: ulimit where no sanitizer runs (ASan reserves
  -- terabytes of address space), ASan's own allocation cap where one does
  local limit = (os.getenv("LD_PRELOAD") or ""):find("asan", 1, true)
    and "ASAN_OPTIONS=\"${ASAN_OPTIONS:+$ASAN_OPTIONS:}max_allocation_size_mb=2048\""
    or "ulimit -v 6000000 &&"
  local cmd = string.format("cd %s && %s LUA_PATH=%s LUA_CPATH=%s timeout 300 %s %s %d %d %s %s > %s 2>&1",
    q(work), limit, q(package.path), q(package.cpath), LUA, q(here .. "/fuzz/misuse_driver.lua"), seed, calls,
    q(trace), q(summary), q(log))
  local ok, how, code = os.execute(cmd)
  local result = { ok = ok, how = how, code = code }
  local f = io.open(summary)
  if f then
    result.calls, result.succeeded, result.failed, result.functions = f:read("n", "n", "n", "n")
    f:close()
  end
  if not ok then
    local lines = {}
    for line in io.lines(trace) do lines[#lines + 1] = line end
    result.last_call = lines[#lines]
    result.log = H.read_file(log):sub(-3000)
  end
  H.remove_tree(dir)
  return result
end

describe("API misuse", function()
  for _, seed in ipairs{ 1, 2 } do
    it("3000 random calls (seed " .. seed .. ") each succeed or raise a Lua error", function()
      local r = run_driver(seed, 3000)
      assert(r.ok, string.format("the child died (%s %s) during call: %s\n%s", tostring(r.how), tostring(r.code),
        tostring(r.last_call), tostring(r.log)))
      assert.are.equal(3000, r.calls)
      -- both outcomes occur often, so the calls reach past the argument checks
      assert.is_true(r.succeeded > 300, "only " .. tostring(r.succeeded) .. " calls succeeded")
      assert.is_true(r.failed > 300, "only " .. tostring(r.failed) .. " calls failed")
      assert.is_true(r.functions > 150, "only " .. tostring(r.functions) .. " API functions were found")
    end)
  end
end)
