-- Helpers shared by the spec files: `local H = require "helpers"` (the
-- Makefile's test environment puts spec/ on LUA_PATH). A plain module, not a
-- spec: busted only runs files named *_spec.lua.
local D = require "diffusion"
local assert = require "luassert"

local H = {}

local INF = math.huge

--- errors ----------------------------------------------------------------------

--- H.error_of(fn, ...) -> the error message of fn(...), which must fail.
function H.error_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return tostring(err)
end

--- H.error_of_twice(fn, ...) -> the error message of a second call fn(...):
-- the call must fail twice in a row (busted's has_error, then H.error_of),
-- so a failed call must not leave a state in which the same call passes.
-- Only for calls whose failure has no side effect (misuse caught up front);
-- a failing backward, say, frees its graph and fails differently next time.
function H.error_of_twice(fn, ...)
  local args = table.pack(...)
  assert.has_error(function() fn(table.unpack(args, 1, args.n)) end)
  return H.error_of(fn, table.unpack(args, 1, args.n))
end

--- H.assert_has(msg, needles): msg contains every needle (a string or a list
-- of strings; plain text, not patterns).
function H.assert_has(msg, needles)
  if type(needles) == "string" then needles = { needles } end
  for _, needle in ipairs(needles) do
    assert(msg:find(needle, 1, true), ("expected %q in the error message, got %q"):format(needle, msg))
  end
end

--- H.assert_error_with(needles, fn, ...) -> msg: fn(...) fails with a message
-- containing every needle (a string or a list; plain text).
function H.assert_error_with(needles, fn, ...)
  local msg = H.error_of(fn, ...)
  H.assert_has(msg, needles)
  return msg
end

--- H.assert_error_with_twice(needles, fn, ...) -> msg: H.assert_error_with
-- on H.error_of_twice.
function H.assert_error_with_twice(needles, fn, ...)
  local msg = H.error_of_twice(fn, ...)
  H.assert_has(msg, needles)
  return msg
end

--- H.expect_error(fn, needle): H.assert_error_with with the arguments the other
-- way round, for a closure that takes no arguments.
function H.expect_error(fn, needle)
  return H.assert_error_with(needle, fn)
end

--- H.assert_error_matching(pattern, fn, ...) -> msg: fn(...) fails with a
-- message matching the Lua pattern.
function H.assert_error_matching(pattern, fn, ...)
  local msg = H.error_of(fn, ...)
  assert.is_truthy(msg:find(pattern), "error '" .. msg .. "' does not match '" .. pattern .. "'")
  return msg
end

--- approximate equality -------------------------------------------------------

--- H.tolist(v): a tensor as a number (0-d) or nested table; anything else as is.
function H.tolist(v)
  if type(v) == "userdata" then
    if v:dim() == 0 then return v:item() end
    return v:totable()
  end
  return v
end

--- H.close(a, e, tol): |a - e| <= tol * max(1, |e|) (a mixed absolute and
-- relative tolerance); NaN matches only NaN, an infinity only itself.
function H.close(a, e, tol)
  if type(a) ~= "number" then return false end
  if e ~= e then return a ~= a end
  if a ~= a then return false end
  if e == INF or e == -INF then return a == e end
  return math.abs(a - e) <= tol * math.max(1, math.abs(e))
end

--- H.compare(a, e, tol, path) -> ok, message: H.close over nested tables (or
-- numbers) of the same shape; the message names the first difference.
function H.compare(a, e, tol, path)
  if type(e) == "table" then
    if type(a) ~= "table" then return false, path .. ": expected a table, got " .. tostring(a) end
    if #a ~= #e then return false, string.format("%s: expected %d elements, got %d", path, #e, #a) end
    for i = 1, #e do
      local ok, msg = H.compare(a[i], e[i], tol, path .. "[" .. i .. "]")
      if not ok then return false, msg end
    end
    return true
  end
  if not H.close(a, e, tol) then
    return false, string.format("%s: expected %.9g, got %s", path, e, tostring(a))
  end
  return true
end

--- H.assert_close(actual, expected [, tol [, what]]): tensors, nested tables
-- or numbers, equal within tol (default 1e-5) by H.compare; `what` names the
-- value in the message.
function H.assert_close(actual, expected, tol, what)
  assert.is_not_nil(actual, "expected a tensor, got nil")
  local ok, msg = H.compare(H.tolist(actual), H.tolist(expected), tol or 1e-5, what or "value")
  assert.is_true(ok, msg)
end

--- H.assert_near_max(actual, expected, rel [, what]): max |actual - expected|
--- at most rel times the largest |expected| (for sums taken in another order,
--- which differ by a few ulps of the largest term).
function H.assert_near_max(actual, expected, rel, what)
  local scale = expected:abs():max():item() + 1e-6
  local got = (actual - expected):abs():max():item() / scale
  assert(got < rel, ("%s: relative difference %.3g"):format(what or "value", got))
end

--- H.conv2d_grads(x, w, b, gy, opts) -> { y, dx, dw, db } of D.conv2d(x, w, b,
--- opts) backward from gy, on fresh copies of x, w and b (b may be nil).
function H.conv2d_grads(x0, w0, b0, gy, opts)
  local x, w = x0:clone():requires_grad_(true), w0:clone():requires_grad_(true)
  local b = b0 and b0:clone():requires_grad_(true)
  local y = D.conv2d(x, w, b, opts)
  y:backward(gy)
  return { y = y, dx = x.grad, dw = w.grad, db = b and b.grad }
end

--- H.max_diff(a, b) -> max |a - b| over the elements of two tensors.
function H.max_diff(a, b) return (a - b):abs():max():item() end

--- tensors ------------------------------------------------------------------------

function H.assert_shape(t, shape)
  assert.are.same(shape, t:shape())
end

--- H.shape_string(shape) -> "{2,3}", as the library prints shapes.
function H.shape_string(shape) return "{" .. table.concat(shape, ",") .. "}" end

--- H.ndiff(a, b) -> the number of positions where a and b differ (the shapes
-- must match).
function H.ndiff(a, b)
  assert.are.same(a:shape(), b:shape())
  return a:ne(b):sum():item()
end

--- H.assert_identical(a, b [, what]): same shape and the same value everywhere.
function H.assert_identical(a, b, what)
  local nd = H.ndiff(a, b)
  assert(nd == 0, ("%s: %d elements differ"):format(what or "tensor", nd))
end

--- H.leaf(values) -> a leaf tensor of the values that requires grad.
function H.leaf(values) return D.tensor(values):requires_grad_() end

--- H.f32(v) -> the float32 nearest to v (what a tensor stores).
function H.f32(v)
  return (string.unpack("f", string.pack("f", v)))
end

--- H.flatten(t) -> the row-major values of a nested table, as a flat list.
function H.flatten(t, out)
  out = out or {}
  if type(t) ~= "table" then out[#out + 1] = t; return out end
  for i = 1, #t do H.flatten(t[i], out) end
  return out
end

--- H.values(x) -> a tensor's values, row-major, as a flat list (a 0-d tensor
-- gives one).
function H.values(x)
  if x:numel() == 0 then return {} end
  return x:flatten():totable()
end

--- H.try_child(env, code) -> whether a Lua chunk run in a child interpreter
-- (this one's module paths, under an environment prefix such as
-- "DIFFUSION_SIMD=scalar", sanitizers included) exited cleanly, and its
-- output: a crash then fails one test instead of ending the whole run.
function H.try_child(env, code)
  local interpreter, i = "lua5.4", -1
  while arg and arg[i] do
    interpreter = arg[i]
    i = i - 1
  end
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(("package.path = %q\npackage.cpath = %q\n"):format(package.path, package.cpath), code)
  f:close()
  local pipe = assert(io.popen(("%s %s %s 2>&1"):format(env, interpreter, path)))
  local out = pipe:read("a")
  local ok = pipe:close()
  os.remove(path)
  return ok == true, out
end

--- H.run_child(env, code) -> the child's output, as H.try_child; fails with
-- that output if the child fails.
function H.run_child(env, code)
  local ok, out = H.try_child(env, code)
  assert(ok, out)
  return out
end

--- threads and memory -------------------------------------------------------

--- H.with_threads(n, fn) -> fn's results, run at n threads; the previous
-- count is restored, even on failure.
function H.with_threads(n, fn)
  local prev = D.get_num_threads()
  D.set_num_threads(n)
  local r = table.pack(pcall(fn))
  D.set_num_threads(prev)
  if not r[1] then error(r[2], 0) end
  return table.unpack(r, 2, r.n)
end

--- H.full_gc(): two full collections (the second runs what the first's
-- finalizers freed).
function H.full_gc()
  collectgarbage()
  collectgarbage()
end

--- H.settled() -> D.memory_allocated() after a full collection.
function H.settled()
  H.full_gc()
  return D.memory_allocated()
end

--- files ----------------------------------------------------------------------------

function H.read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

function H.write_file(path, bytes)
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
end

--- H.listdir(dir) -> the names in dir, sorted (hidden ones included).
function H.listdir(dir)
  local p = assert(io.popen("ls -A '" .. dir .. "'"))
  local names = {}
  for line in p:lines() do names[#names + 1] = line end
  p:close()
  table.sort(names)
  return names
end

--- H.mkdir(path): makes the directory (its parent must exist).
function H.mkdir(path)
  assert(os.execute("mkdir '" .. path .. "'"))
end

--- H.temp_dir() -> the path of a new empty directory; H.remove_tree(dir)
-- deletes it and everything in it.
function H.temp_dir()
  local dir = os.tmpname()
  os.remove(dir)
  H.mkdir(dir)
  return dir
end

function H.remove_tree(dir)
  os.execute("rm -rf '" .. dir .. "'")
end

return H
