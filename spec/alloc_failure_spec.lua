-- Allocation failures: for n = 1, 2, ... the n-th allocation of an operation
-- fails (D._debug.fail_alloc_at), until the operation runs with no failure
-- left to inject. Every failure must be a clean Lua error that mentions memory,
-- and the process must stay healthy: afterwards the same operation succeeds
-- with the same result as before. "core" counts the C core's allocations
-- (tensors, workspaces, file buffers), "lua" the Lua allocator's (userdata,
-- tables, strings made by the binding). Leaks on these paths are caught by
-- running this file under `make asan` (LeakSanitizer), as Lua's own
-- testes/memerr.lua does for the interpreter.
local D = require "diffusion"
local H = require "helpers"

local MAX_STEPS = 20000 -- an operation needing more allocations than this is a runaway loop

-- Runs op with the n-th allocation failing, for n = 1, 2, ..., and returns
-- the number of failures seen; each must be a Lua error about memory.
local function sweep(kind, op)
  local failures, n = 0, 0
  while true do
    n = n + 1
    assert(n <= MAX_STEPS, "the operation never ran free of injected failures")
    D._debug.fail_alloc_at(n, kind)
    local ok, err = pcall(op)
    local pending = D._debug.alloc_pending()
    D._debug.reset()
    if ok and pending > 0 then break end -- nothing was injected: done
    if not ok then
      failures = failures + 1
      local msg = tostring(err)
      assert(msg:find("memory") or msg:find("allocate"),
        string.format("allocation %d (%s): the error does not mention memory: %s", n, kind, msg))
    end
  end
  return failures
end

describe("allocation failures", function()
  local dir, ck_path, model, x, t, ck_content

  setup(function()
    dir = H.temp_dir()
    ck_path = dir .. "/ck.safetensors"
    D.manual_seed(7)
    model = D.UNet{ channels = 8, groups = 4, mult = { 1, 2 }, res_blocks = 1, attention = {}, image_size = 8,
                    dropout = 0 }
    x = D.randn(1, 1, 8, 8)
    t = D.tensor{ 5 }
    ck_content = { model = model:state_dict(), step = 3, name = "run", nested = { lr = 2e-4, flags = { true } } }
    D.checkpoint.save(ck_path, ck_content)
  end)

  teardown(function()
    D._debug.reset()
    H.remove_tree(dir)
  end)

  after_each(function() D._debug.reset() end)

  local function tensors_op()
    local a = D.arange(12):reshape(3, 4)
    local b = D.ones(4, 2):requires_grad_()
    local y = (a:matmul(b) * 2 + 1):silu():sum()
    y:backward()
    return y:item(), b.grad:sum():item()
  end

  local function unet_build_op()
    local m = D.UNet{ channels = 8, groups = 4, mult = { 1, 2 }, res_blocks = 1, attention = {}, image_size = 8 }
    return #m:parameters()
  end

  local function unet_step_op()
    for _, p in ipairs(model:parameters()) do p.grad = nil end
    local loss = model(x, t):pow(2):mean()
    loss:backward()
    return loss:item(), model:parameters()[1].grad:abs():sum():item()
  end

  local function checkpoint_load_op()
    local ck = D.checkpoint.load(ck_path)
    return ck.step, ck.name, ck.nested.lr, ck.model["conv_in.weight"]:sum():item()
  end

  local function checkpoint_save_op()
    D.checkpoint.save(dir .. "/out.safetensors", { w = x, step = 1 })
    return D.checkpoint.load(dir .. "/out.safetensors").step
  end

  local cases = {
    { "creating tensors and a backward", tensors_op },
    { "building a small U-Net", unet_build_op },
    { "a small U-Net forward and backward", unet_step_op },
    { "loading a checkpoint", checkpoint_load_op },
    { "saving a checkpoint", checkpoint_save_op },
  }

  for _, kind in ipairs{ "core", "lua" } do
    for _, case in ipairs(cases) do
      local name, op = case[1], case[2]
      it(string.format("%s: every failed %s allocation is a clean error", name, kind), function()
        local expected = table.pack(op())
        local failures = sweep(kind, op)
        assert.is_true(failures > 0, "no allocation failed: the hook did not reach this operation")
        -- healthy afterwards: the same result as before the sweep
        local again = table.pack(op())
        assert.are.equal(expected.n, again.n)
        for i = 1, expected.n do
          if type(expected[i]) == "number" then
            H.assert_close(again[i], expected[i], 1e-6, "result " .. i)
          else
            assert.are.equal(expected[i], again[i])
          end
        end
      end)
    end
  end

  it("a failed checkpoint save leaves the previous file as it was", function()
    local path = dir .. "/keep.safetensors"
    D.checkpoint.save(path, { w = D.ones(4), step = 1 })
    local before = H.read_file(path)
    local new_content = { w = D.zeros(64), step = 2 }
    local n, failures = 0, 0
    repeat
      n = n + 1
      D._debug.fail_alloc_at(n)
      local ok = pcall(D.checkpoint.save, path, new_content)
      local pending = D._debug.alloc_pending()
      D._debug.reset()
      if not ok then
        failures = failures + 1
        assert.are.equal(before, H.read_file(path))
      end
    until ok and pending > 0
    assert.is_true(failures > 0)
    assert.are.equal(2, D.checkpoint.load(path).step)
    -- and no temporary file is left behind
    for _, name in ipairs(H.listdir(dir)) do assert.is_nil(name:find("tmp", 1, true), name) end
  end)

  it("the hook's arguments are checked", function()
    H.assert_error_with("invalid option", D._debug.fail_alloc_at, 1, "disk")
    H.assert_error_with(">= 0", D._debug.fail_alloc_at, -1)
    D._debug.fail_alloc_at(5)
    assert.are.equal(5, D._debug.alloc_pending())
    D._debug.reset()
    assert.are.equal(0, D._debug.alloc_pending())
  end)
end)
