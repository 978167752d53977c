-- benchmark.lua: the benchmark U-Nets of ../shared/bench/torch_unet.py in
-- diffusion and in PyTorch, back to back, one table with the ratio per row.
--
--   lua5.4 examples/benchmark.lua                                  # tiny and small, 1 and 2 threads
--   lua5.4 examples/benchmark.lua --configs tiny --threads 2 --batches 32 --steps 5
--   lua5.4 examples/benchmark.lua --no-torch                       # ours only
--   make bench BENCH_ARGS="--configs tiny --threads 2"
--
-- Each measurement runs in a fresh process (ours: this script with --worker;
-- PyTorch: torch_unet.py's own worker, called the way its driver calls it:
-- OMP_NUM_THREADS and OPENBLAS_NUM_THREADS set, tcmalloc preloaded when it is
-- installed), so peak RSS is per measurement. Each row is measured --repeats
-- times on each side (default 2), alternately, and shows each side's best:
-- on a shared machine other load can only slow a measurement down. Progress
-- goes to stderr; the table comes at the end, on stdout.
--
-- What a row measures, the same on both sides (torch_unet.py's worker):
--   train b<N>  a training step at batch N, median of --steps after --warmup:
--               N random images (uniform over all 60000), each converted from
--               bytes to float x / 127.5 - 1; t uniform over the 1000 steps
--               of the linear schedule (1e-4 .. 0.02); noise ~ N(0, 1);
--               x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise; the model in
--               training mode (dropout 0.1); mean squared error against the
--               noise; gradients dropped (set to none), backward; AdamW with
--               lr 2e-4, betas (0.9, 0.999), eps 1e-8, weight decay 1e-2
--               (torch's defaults); and the loss read back as a number.
--   sample NxS  N images at once, S DDIM steps (eta 0, x0 clipped to [-1, 1],
--               timesteps 1 + k * (1000 / S), "leading"), eval mode, no_grad,
--               after one untimed forward at batch N (when --warmup > 0).
--   GF/s        the reference's FLOP count (torch_unet.py --flops-only:
--               convolutions, linear layers and attention products; training
--               = 3 x forward) over the measured time, for both sides.
--   % peak      GF/s over the machine's FMA peak at that thread count, which
--               D.fma_peak measures first (all threads running independent
--               FMAs of the widest SIMD, best of 3 loops; --fma-also adds
--               narrower ones, shown for information).
--
-- What each side holds, so that the peak-RSS column compares like with like:
--   PyTorch  load_data(): the 60000 Fashion-MNIST training images padded to
--            32 x 32 with 0, as one uint8 tensor (60000 x 1 x 32 x 32 bytes,
--            61.4 MB); each step gathers its batch and converts only that to
--            float.
--   ours     the same 61.4 MB of bytes, padded the same way, in Lua strings
--            of 1000 images (the library's tensors are float32 only, and a
--            float copy of the data would be 246 MB); each step builds its
--            batch's float tensor from those bytes (string.byte, D.tensor:
--            about 3 ms a step at batch 128, under 1% of the step) and
--            scales it. The file is decompressed a block at a time (through
--            gzip), so loading never holds more than the kept bytes + 1 MB.
--   both     the model, its gradients, AdamW's two moments and one step's
--            activations; the sampling rows hold no data. Without the
--            dataset, both draw uniform noise in [-1, 1] per batch instead.
-- The machine is shared and noisy: compare the ratios of one run, never
-- figures from different runs.
local argparse = require "argparse"

local p = argparse("benchmark.lua", "diffusion vs PyTorch on the benchmark U-Nets.")
p:option("--configs", "Comma-separated: tiny, small.", "tiny,small")
p:option("--threads", "Comma-separated thread counts.", "1,2")
p:option("--batches", "Comma-separated training batch sizes.", "32,128")
p:option("--steps", "Timed training steps per measurement.", "6"):convert(math.tointeger)
p:option("--warmup", "Untimed training steps first.", "2"):convert(math.tointeger)
p:option("--sample-n", "Images sampled at once.", "64"):convert(math.tointeger)
p:option("--ddim-steps", "DDIM steps of the sampling row.", "50"):convert(math.tointeger)
p:option("--what", "train, sample or train,sample.", "train,sample")
p:option("--repeats", "Measurements per row and side, taken alternately (ours, torch, then torch, ours, ...); "
  .. "a row shows each side's best.", "2"):convert(math.tointeger)
p:option("--fma-seconds", "Seconds of each FMA-peak loop (the peak is the best of 3).", "0.5"):convert(tonumber)
p:option("--fma-also", "Narrower SIMD peaks to show too (comma-separated: avx2, scalar; 'none').", "avx2")
p:option("--torch", "The reference script.", "../shared/bench/torch_unet.py")
p:option("--python", "The Python with torch.", "/usr/bin/python3")
p:option("--allocator", "malloc of the PyTorch worker: auto (tcmalloc when installed, as torch_unet.py's "
  .. "driver), glibc, tcmalloc, jemalloc.", "auto"):choices({ "auto", "glibc", "tcmalloc", "jemalloc" })
p:flag("--no-torch", "Our rows only (the FLOP count still comes from the reference script when it runs).")
p:option("--worker", "(internal) run one measurement: train or sample."):choices({ "train", "sample" })
p:option("--config", "(internal) the worker's config.", "tiny")
p:option("--batch", "(internal) the worker's batch.", "32"):convert(math.tointeger)
local args = p:parse()

local CONFIGS = { -- as torch_unet.py's CONFIGS: unconditional, 2 ResBlocks down, 3 up, attention at 8 x 8
  tiny = { channels = 32, groups = 8, mult = { 1, 2, 2 }, res_blocks = 2, attention = { 8 }, dropout = 0.1,
           num_classes = 0, image_size = 32 },
  small = { channels = 64, groups = 32, mult = { 1, 2, 2 }, res_blocks = 2, attention = { 8 }, dropout = 0.1,
            num_classes = 0, image_size = 32 },
}
local T = 1000 -- the schedule's steps, as torch_unet.py's T_STEPS

local function peak_rss_mib()
  local f = io.open("/proc/self/status")
  if not f then return 0 / 0 end
  local kb = f:read("a"):match("VmHWM:%s*(%d+)")
  f:close()
  return tonumber(kb) / 1024
end

local function median(list)
  local s = {}
  for i, v in ipairs(list) do s[i] = v end
  table.sort(s)
  local n = #s
  return n % 2 == 1 and s[(n + 1) // 2] or (s[n // 2] + s[n // 2 + 1]) / 2
end

local function fail(fmt, ...) error("benchmark.lua: " .. string.format(fmt, ...), 0) end

-- the training images as bytes -------------------------------------------------

local SIDE = 32 -- images are padded from 28 x 28 to SIDE x SIDE
local IMAGE_BYTES = SIDE * SIDE
local CHUNK_IMAGES = 1000 -- images per string

-- Fashion-MNIST's training images as torch_unet.py's load_data holds them:
-- bytes 0..255, padded with 0 to 32 x 32, CHUNK_IMAGES images a string.
-- Returns the strings and the image count, or nil when the file is missing.
local function load_image_bytes(D)
  local dir = os.getenv("FASHION_MNIST_DIR") or D.data.FASHION_MNIST_DIR
  local path = dir .. "/train-images-idx3-ubyte.gz"
  local probe = io.open(path, "rb")
  if not probe then return nil end
  probe:close()
  -- decompressed through a pipe a block at a time, so the 47 MB of raw bytes are never held at once
  local pipe = assert(io.popen("gzip -dc '" .. path:gsub("'", "'\\''") .. "'", "r"))
  local header = pipe:read(16)
  local magic, n, h, w = string.unpack(">I4I4I4I4", header and #header == 16 and header or ("\0"):rep(16))
  if magic ~= 0x803 or h ~= 28 or w ~= 28 then pipe:close(); fail("%s is not an IDX file of 28 x 28 images", path) end
  local row, image = ("."):rep(w), ("."):rep(SIDE * h) -- one source row; one image of padded rows
  local side_pad, top_pad = ("\0"):rep((SIDE - w) // 2), ("\0"):rep(SIDE * (SIDE - h) // 2)
  local chunks = {}
  for first = 0, n - 1, CHUNK_IMAGES do
    local count = math.min(CHUNK_IMAGES, n - first)
    local block = pipe:read(count * h * w)
    if not block or #block ~= count * h * w then pipe:close(); fail("%s ends inside image %d", path, first + 1) end
    block = block:gsub(row, side_pad .. "%0" .. side_pad)
    chunks[#chunks + 1] = (block:gsub(image, top_pad .. "%0" .. top_pad))
  end
  if not pipe:close() then fail("cannot decompress %s", path) end
  return chunks, n
end

-- (B, 1, 32, 32) floats x / 127.5 - 1 of the images at the 1-based positions in idx
local function batch_from_bytes(D, chunks, idx)
  local rows = {}
  for i, k in ipairs(idx:totable()) do
    k = math.tointeger(k) - 1
    local at = (k % CHUNK_IMAGES) * IMAGE_BYTES + 1
    rows[i] = { chunks[k // CHUNK_IMAGES + 1]:byte(at, at + IMAGE_BYTES - 1) }
  end
  return D.tensor(rows):view(#rows, 1, SIDE, SIDE) / 127.5 - 1
end

-- the worker: one measurement in this process; prints "key=value" lines ------

local function worker()
  local D = require "diffusion"
  D.set_num_threads(math.tointeger(tonumber(args.threads)))
  D.manual_seed(0)
  local model = D.UNet(CONFIGS[args.config])
  local out = {}
  if args.worker == "train" then
    local chunks, n = load_image_bytes(D)
    out.data = chunks and "fashion-mnist" or "synthetic"
    local sched = D.schedule.linear{ T = T, beta_start = 1e-4, beta_end = 0.02 }
    local opt = D.optim.AdamW(model:parameters(), { lr = 2e-4, betas = { 0.9, 0.999 }, eps = 1e-8,
                                                    weight_decay = 1e-2 })
    model:train()
    local gen = D.Generator(1)
    local B = args.batch
    local function step()
      local x0
      if chunks then
        x0 = batch_from_bytes(D, chunks, D.randint(1, n + 1, { B }, gen))
      else
        x0 = D.rand({ B, 1, SIDE, SIDE }, gen) * 2 - 1
      end
      local t = sched:sample_t(B, gen)
      local noise = D.randn_like(x0, gen)
      local loss = D.mse_loss(model(sched:add_noise(x0, noise, t), t), noise)
      opt:zero_grad()
      loss:backward()
      opt:step()
      return loss:item()
    end
    for _ = 1, args.warmup do step() end
    local times = {}
    for i = 1, args.steps do
      local t0 = D.clock()
      step()
      times[i] = D.clock() - t0
    end
    out.median_ms = 1e3 * median(times)
  else
    model:eval()
    local sched = D.schedule.linear{ T = T, beta_start = 1e-4, beta_end = 0.02 }
    if args.warmup > 0 then -- one forward at the sampling batch, as the reference
      D.no_grad(function() return model(D.randn(args.sample_n, 1, SIDE, SIDE), D.full({ args.sample_n }, 1)) end)
    end
    local t0 = D.clock()
    local x = D.sample.ddim(model, sched, { n = args.sample_n, shape = { 1, SIDE, SIDE }, steps = args.ddim_steps,
      seed = 2, spacing = "leading", eta = 0, clip_x0 = true })
    out.seconds = D.clock() - t0
    out.img_per_s = args.sample_n / out.seconds
    local total = x:sum():item()
    assert(total == total and math.abs(total) < math.huge, "non-finite samples")
  end
  out.peak_rss_mib = peak_rss_mib()
  for k, v in pairs(out) do print(k .. "=" .. v) end
end

if args.worker then return worker() end

-- the driver ---------------------------------------------------------------------

-- the text a command printed (stdout), or fails
local function capture(cmd)
  local f = assert(io.popen(cmd, "r"))
  local text = f:read("a")
  local ok, _, code = f:close()
  if not ok then fail("'%s' failed (%s):\n%s", cmd, tostring(code), text) end
  return text
end

local function split(s)
  local list = {}
  for item in s:gmatch("[^,%s]+") do list[#list + 1] = item end
  return list
end

local function positive_integers(option, s)
  local list = {}
  for i, item in ipairs(split(s)) do
    list[i] = math.tointeger(tonumber(item))
    if not list[i] or list[i] < 1 then fail("%s must list integers >= 1, got '%s'", option, s) end
  end
  if #list == 0 then fail("%s is empty", option) end
  return list
end

local function file_exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function json_number(text, key)
  return tonumber(text:match('"' .. key .. '":%s*([-%d.eE+]+)'))
end

local function json_string(text, key)
  return text:match('"' .. key .. '":%s*"([^"]*)"')
end

-- check the options before anything runs
local configs = split(args.configs)
for _, config in ipairs(configs) do
  if not CONFIGS[config] then fail("unknown config '%s' (expected tiny, small)", config) end
end
local thread_counts = positive_integers("--threads", args.threads)
local batch_sizes = positive_integers("--batches", args.batches)
if not args.steps or args.steps < 1 then fail("--steps must be an integer >= 1") end
if not args.repeats or args.repeats < 1 then fail("--repeats must be an integer >= 1") end
if not args.warmup or args.warmup < 0 then fail("--warmup must be an integer >= 0") end
if not args.sample_n or args.sample_n < 1 then fail("--sample-n must be an integer >= 1") end
if not args.ddim_steps or args.ddim_steps < 1 or args.ddim_steps > T then
  fail("--ddim-steps must be an integer in [1, %d]", T)
end
if not args.fma_seconds or not (args.fma_seconds > 0 and args.fma_seconds <= 60) then
  fail("--fma-seconds must be a number in (0, 60]")
end
local what = {}
for _, w in ipairs(split(args.what)) do
  if w ~= "train" and w ~= "sample" then fail("--what lists train and/or sample, got '%s'", args.what) end
  what[w] = true
end
local fma_also = {}
for _, s in ipairs(split(args.fma_also)) do
  if s ~= "none" then
    if s ~= "avx512f" and s ~= "avx2" and s ~= "scalar" then
      fail("--fma-also lists avx512f, avx2, scalar or none, got '%s'", s)
    end
    fma_also[#fma_also + 1] = s
  end
end
if not args.no_torch and not file_exists(args.torch) then
  fail("the reference %s is missing (pass --torch PATH, or --no-torch)", args.torch)
end

local ALLOCATORS = { -- as torch_unet.py's ALLOCATORS
  tcmalloc = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
  jemalloc = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
}
local allocator = args.allocator
if allocator == "auto" then allocator = file_exists(ALLOCATORS.tcmalloc) and "tcmalloc" or "glibc" end
if ALLOCATORS[allocator] and not file_exists(ALLOCATORS[allocator]) then
  fail("--allocator %s: %s is missing (apt-get install libtcmalloc-minimal4 / libjemalloc2)", allocator,
    ALLOCATORS[allocator])
end

local self_cmd = "lua5.4 " .. quote(arg and arg[0] or "examples/benchmark.lua")
local function ours(kind, config, threads, batch)
  local text = capture(string.format("%s --worker %s --config %s --threads %d --batch %d --steps %d --warmup %d "
    .. "--sample-n %d --ddim-steps %d", self_cmd, kind, config, threads, batch, args.steps, args.warmup,
    args.sample_n, args.ddim_steps))
  local r = {}
  for k, v in text:gmatch("([%w_]+)=(%S+)") do r[k] = tonumber(v) or v end
  return r
end

local function theirs(kind, config, threads, batch)
  if args.no_torch then return {} end
  local env = string.format("OMP_NUM_THREADS=%d OPENBLAS_NUM_THREADS=%d", threads, threads)
  if ALLOCATORS[allocator] then env = env .. " LD_PRELOAD=" .. ALLOCATORS[allocator] end
  local text = capture(string.format("%s %s %s --_worker %s --config %s --threads %d --batch %d --steps %d --warmup %d "
    .. "--sample-n %d --ddim-steps %d 2>/dev/null", env, quote(args.python), quote(args.torch), kind, config, threads,
    batch, args.steps, args.warmup, args.sample_n, args.ddim_steps))
  return { median_ms = json_number(text, "median_ms"), img_per_s = json_number(text, "img_per_s"),
           peak_rss_mib = json_number(text, "peak_rss_mib"), data = json_string(text, "data") }
end

-- the reference's FLOP count per image (and torch's version), or {} when it can't run
local function flops(config)
  local ok, text = pcall(capture, string.format("%s %s --config %s --flops-only --json 2>/dev/null",
    quote(args.python), quote(args.torch), config))
  if not ok then
    if not args.no_torch then error(text, 0) end
    return {}
  end
  return { fwd = json_number(text, "fwd_gflop_per_img"), train = json_number(text, "train_gflop_per_img"),
           torch_version = json_string(text, "torch_version") }
end

local D = require "diffusion"
local function progress(fmt, ...)
  io.stderr:write(string.format(fmt, ...), "\n")
  io.stderr:flush()
end

-- the FMA peak per thread count, measured first (the widest SIMD, then --fma-also):
-- the best of 3 loops, as other load on the machine can only lower it
local simd = D.cpu_simd()
local function fma_peak(threads, which)
  local best = 0
  for _ = 1, 3 do best = math.max(best, D.fma_peak{ threads = threads, seconds = args.fma_seconds, simd = which }) end
  return best
end
local peaks, peak_notes = {}, {}
for _, threads in ipairs(thread_counts) do
  peaks[threads] = fma_peak(threads, simd)
  local note = { string.format("%.0f (%s)", peaks[threads], simd) }
  for _, s in ipairs(fma_also) do
    if s ~= simd then
      local ok, gf = pcall(fma_peak, threads, s)
      note[#note + 1] = ok and string.format("%.0f (%s)", gf, s) or string.format("- (%s: not on this CPU)", s)
    end
  end
  peak_notes[#peak_notes + 1] = string.format("%d thread%s %s", threads, threads == 1 and "" or "s",
    table.concat(note, ", "))
  progress("FMA peak, %s GFLOP/s", peak_notes[#peak_notes])
end

local function fmt(v, f) return v and v == v and string.format(f, v) or "-" end

local rows, torch_version, data_used = {}, nil, {}
for _, config in ipairs(configs) do
  local gf = flops(config)
  torch_version = torch_version or gf.torch_version
  for _, threads in ipairs(thread_counts) do
    local jobs = {}
    if what.train then
      for _, b in ipairs(batch_sizes) do jobs[#jobs + 1] = { "train", b } end
    end
    if what.sample then jobs[#jobs + 1] = { "sample", args.sample_n } end
    for _, job in ipairs(jobs) do
      local kind, batch = job[1], job[2]
      local function rate(r)
        if kind == "train" then return r.median_ms and batch * 1e3 / r.median_ms end
        return r.img_per_s
      end
      -- each side's best of --repeats (other load on the machine can only
      -- slow a measurement down), in the order ours, torch, torch, ours, ...
      -- so that neither side always runs first; peak RSS is the largest seen
      local a, b = {}, {}
      local function keep(best, r)
        local rss = math.max(best.peak_rss_mib or 0, r.peak_rss_mib or 0)
        if not best.rate or (rate(r) or 0) > best.rate then
          for k, v in pairs(r) do best[k] = v end
          best.rate = rate(r)
        end
        best.peak_rss_mib = rss > 0 and rss or nil
      end
      for r = 1, args.repeats do
        if r % 2 == 1 then
          keep(a, ours(kind, config, threads, batch))
          keep(b, theirs(kind, config, threads, batch))
        else
          keep(b, theirs(kind, config, threads, batch))
          keep(a, ours(kind, config, threads, batch))
        end
        if args.repeats > 1 and r < args.repeats then
          progress("%s %d threads %s, %d of %d: ours %s img/s, torch %s img/s so far", config, threads,
            kind == "train" and ("train b" .. batch) or "sample", r, args.repeats, fmt(a.rate, "%.1f"),
            fmt(b.rate, "%.1f"))
        end
      end
      if a.data then data_used["ours: " .. a.data] = true end
      if b.data then data_used["torch: " .. b.data] = true end
      local per_img = kind == "train" and gf.train or (gf.fwd and gf.fwd * args.ddim_steps)
      local ra, rb = a.rate, b.rate
      local ga, gb = per_img and ra and ra * per_img, per_img and rb and rb * per_img
      local row = {
        config = config, threads = threads,
        name = kind == "train" and ("train b" .. batch) or string.format("sample %dx%d", batch, args.ddim_steps),
        ours = ra, torch = rb, ours_gf = ga, torch_gf = gb,
        ours_pct = ga and 100 * ga / peaks[threads], torch_pct = gb and 100 * gb / peaks[threads],
        ours_mib = a.peak_rss_mib, torch_mib = b.peak_rss_mib,
      }
      rows[#rows + 1] = row
      progress("%s %d threads %s: ours %s img/s, torch %s img/s; peak RSS ours %s MiB, torch %s MiB", config, threads,
        row.name, fmt(ra, "%.1f"), fmt(rb, "%.1f"), fmt(a.peak_rss_mib, "%.0f"), fmt(b.peak_rss_mib, "%.0f"))
    end
  end
end

-- the table ----------------------------------------------------------------------
local command = { "lua5.4", arg and arg[0] or "examples/benchmark.lua" }
for i = 1, #arg do command[#command + 1] = arg[i] end
print("command: " .. table.concat(command, " "))
print("OpenBLAS: " .. D.blas_info() .. "; OPENBLAS_CORETYPE=" .. tostring(os.getenv("OPENBLAS_CORETYPE")))
print(string.format("CPU: widest SIMD %s; FMA peak (GFLOP/s, best of 3 loops of %g s): %s", simd, args.fma_seconds,
  table.concat(peak_notes, "; ")))
if not args.no_torch then
  print(string.format("PyTorch %s (%s), malloc %s", torch_version or "?", args.python, allocator))
end
local used = {}
for k in pairs(data_used) do used[#used + 1] = k end
table.sort(used)
if #used > 0 then print("training data: " .. table.concat(used, ", ")) end
local line = "%-6s %-3s %-14s %10s %10s %6s %9s %9s %8s %7s %8s %8s %6s"
print(string.format(line, "model", "thr", "row", "ours img/s", "torch", "ratio", "ours GF/s", "torch",
  "ours %pk", "torch", "ours MiB", "torch", "ratio"))
for _, r in ipairs(rows) do
  print(string.format(line, r.config, r.threads, r.name, fmt(r.ours, "%.1f"), fmt(r.torch, "%.1f"),
    fmt(r.ours and r.torch and r.ours / r.torch, "%.2f"), fmt(r.ours_gf, "%.1f"), fmt(r.torch_gf, "%.1f"),
    fmt(r.ours_pct, "%.1f"), fmt(r.torch_pct, "%.1f"), fmt(r.ours_mib, "%.0f"), fmt(r.torch_mib, "%.0f"),
    fmt(r.ours_mib and r.torch_mib and r.ours_mib / r.torch_mib, "%.2f")))
end
