-- benchmark.lua: the benchmark U-Nets of ../shared/bench/torch_unet.py in
-- diffusion and in PyTorch, back to back, one table with the ratio per row.
--
--   lua5.4 examples/benchmark.lua                                  # tiny and small, 1 and 2 threads
--   lua5.4 examples/benchmark.lua --configs tiny --threads 2 --batches 32 --steps 5
--   lua5.4 examples/benchmark.lua --no-torch                       # ours only
--
-- Each measurement runs in a fresh process (ours: this script with --worker;
-- PyTorch: torch_unet.py's own worker, called the same way its driver calls
-- it), so peak RSS is per measurement. Rows: a training step (forward, MSE
-- against the noise, backward, AdamW at lr 2e-4) on Fashion-MNIST padded to
-- 32 x 32, median of --steps after --warmup; and sampling --sample-n images
-- with 50 DDIM steps (eta 0) on the 1000-step linear schedule, no_grad. The
-- GFLOP/s column uses the reference's FLOP count (--flops-only: convolutions,
-- linear layers and attention products; training = 3 x forward) for both.
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
p:option("--torch", "The reference script.", "../shared/bench/torch_unet.py")
p:option("--python", "The Python with torch.", "/usr/bin/python3")
p:flag("--no-torch", "Our rows only.")
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

-- one measurement in this process; prints "key=value" lines
local function worker()
  local D = require "diffusion"
  D.set_num_threads(math.tointeger(tonumber(args.threads)))
  D.manual_seed(0)
  local model = D.UNet(CONFIGS[args.config])
  local out = {}
  if args.worker == "train" then
    local data = D.data.fashion_mnist{ split = "train", pad_to = 32 }
    local sched = D.schedule.linear{ T = 1000 }
    local opt = D.optim.AdamW(model:parameters(), { lr = 2e-4, weight_decay = 1e-2 })
    local gen = D.Generator(1)
    local B = args.batch
    local function step()
      local idx = D.randint(1, #data, { B }, gen)
      local x0 = data.images:index_select(1, idx)
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
    local sched = D.schedule.linear{ T = 1000 }
    D.no_grad(function() return model(D.randn(args.sample_n, 1, 32, 32), D.full({ args.sample_n }, 1)) end) -- warm-up
    local t0 = D.clock()
    local x = D.sample.ddim(model, sched, { n = args.sample_n, shape = { 1, 32, 32 }, steps = args.ddim_steps, seed = 2,
      spacing = "leading" })
    out.seconds = D.clock() - t0
    out.img_per_s = args.sample_n / out.seconds
    local total = x:sum():item()
    assert(total == total and math.abs(total) < math.huge, "non-finite samples")
  end
  out.peak_rss_mib = peak_rss_mib()
  for k, v in pairs(out) do print(k .. "=" .. v) end
end

if args.worker then return worker() end

-- the text a command printed (stdout), or fails
local function capture(cmd)
  local f = assert(io.popen(cmd, "r"))
  local text = f:read("a")
  local ok, _, code = f:close()
  if not ok then error("benchmark.lua: '" .. cmd .. "' failed (" .. tostring(code) .. "):\n" .. text, 0) end
  return text
end

local function split(s)
  local list = {}
  for item in s:gmatch("[^,]+") do list[#list + 1] = item end
  return list
end

local function json_number(text, key)
  return tonumber(text:match('"' .. key .. '":%s*([-%d.eE+]+)'))
end

local self_cmd = "lua5.4 " .. (arg and arg[0] or "examples/benchmark.lua")
local function ours(kind, config, threads, batch)
  local text = capture(string.format("%s --worker %s --config %s --threads %d --batch %d --steps %d --warmup %d "
    .. "--sample-n %d --ddim-steps %d", self_cmd, kind, config, threads, batch, args.steps, args.warmup,
    args.sample_n, args.ddim_steps))
  local r = {}
  for k, v in text:gmatch("([%w_]+)=([-%d.eE+naif]+)") do r[k] = tonumber(v) end
  return r
end

local function theirs(kind, config, threads, batch)
  if args.no_torch then return {} end
  local env = string.format("OMP_NUM_THREADS=%d OPENBLAS_NUM_THREADS=%d", threads, threads)
  local text = capture(string.format("%s %s %s --_worker %s --config %s --threads %d --batch %d --steps %d --warmup %d "
    .. "--sample-n %d --ddim-steps %d 2>/dev/null", env, args.python, args.torch, kind, config, threads, batch, args.steps,
    args.warmup, args.sample_n, args.ddim_steps))
  return { median_ms = json_number(text, "median_ms"), img_per_s = json_number(text, "img_per_s"),
           peak_rss_mib = json_number(text, "peak_rss_mib") }
end

local function flops(config)
  if args.no_torch then return {} end
  local text = capture(string.format("%s %s --config %s --flops-only --json 2>/dev/null", args.python, args.torch, config))
  return { fwd = json_number(text, "fwd_gflop_per_img"), train = json_number(text, "train_gflop_per_img") }
end

local D = require "diffusion"
print("OpenBLAS: " .. D.blas_info() .. "; OPENBLAS_CORETYPE=" .. tostring(os.getenv("OPENBLAS_CORETYPE")))
print(string.format("%-6s %-3s %-14s %10s %10s %7s %9s %9s %9s %9s %6s", "model", "thr", "row", "ours img/s",
  "torch", "ratio", "ours GF/s", "torch", "ours MiB", "torch", "ratio"))
local what = args.what
for _, config in ipairs(split(args.configs)) do
  if not CONFIGS[config] then error("benchmark.lua: unknown config " .. config, 0) end
  local gf = flops(config)
  for _, th in ipairs(split(args.threads)) do
    local threads = math.tointeger(tonumber(th))
    local rows = {}
    if what:find("train") then
      for _, b in ipairs(split(args.batches)) do rows[#rows + 1] = { "train", math.tointeger(tonumber(b)) } end
    end
    if what:find("sample") then rows[#rows + 1] = { "sample", args.sample_n } end
    for _, row in ipairs(rows) do
      local kind, batch = row[1], row[2]
      local a, b = ours(kind, config, threads, batch), theirs(kind, config, threads, batch)
      local function rate(r)
        if kind == "train" then return r.median_ms and batch * 1e3 / r.median_ms end
        return r.img_per_s
      end
      local ra, rb = rate(a), rate(b)
      local per_img = kind == "train" and gf.train or (gf.fwd and gf.fwd * args.ddim_steps)
      local function fmt(v, f) return v and string.format(f, v) or "-" end
      print(string.format("%-6s %-3d %-14s %10s %10s %7s %9s %9s %9s %9s %6s", config, threads,
        kind == "train" and ("train b" .. batch) or string.format("sample %dx%d", batch, args.ddim_steps),
        fmt(ra, "%.1f"), fmt(rb, "%.1f"), fmt(ra and rb and ra / rb, "%.2f"),
        fmt(per_img and ra and ra * per_img, "%.1f"), fmt(per_img and rb and rb * per_img, "%.1f"),
        fmt(a.peak_rss_mib, "%.0f"), fmt(b.peak_rss_mib, "%.0f"),
        fmt(a.peak_rss_mib and b.peak_rss_mib and a.peak_rss_mib / b.peak_rss_mib, "%.2f")))
      io.stdout:flush()
    end
  end
end
