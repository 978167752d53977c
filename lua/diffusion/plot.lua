--- diffusion.plot: line charts as PNG files, for schedules, loss curves and
-- the like.
--
--   D.plot.lines{ path = "loss.png", title = "training loss", xlabel = "step", ylabel = "loss",
--                 logy = true, series = { {name = "train", x = steps, y = losses} } }
--   D.plot.panels{ path = "three.png", charts = { chart1, chart2, chart3 } }  -- side by side
--   sched:plot("schedules.png", other_sched)                                  -- see schedule.lua
--
-- A chart: white background, a frame with ticks at round numbers and their
-- labels, light grid lines, a title and axis labels, one colour per series
-- (a ten-colour palette, or series.color), and a legend in the corner the
-- data leaves emptiest. Points whose x or y is NaN or infinite (or <= 0 on a
-- log axis) are skipped, breaking the line there: log-SNR = -inf at the end of
-- a zero terminal SNR schedule simply ends its line. Text is stb_easy_font
-- (ASCII; other bytes show as '?'). The drawing (anti-aliased lines, text) is
-- C (csrc/io/plot.c); the layout is here. Files are written atomically by the
-- image writer (8-bit RGB PNG of width x height).
--
-- Chart options (plot.lines takes them with `path`; plot.panels takes a list):
--   series     list of {x = list or 1-d tensor (default 1..#y), y = list or 1-d
--              tensor, name = string, color = {r, g, b} (0..255), width = line
--              width in pixels (2), marker = dot radius in pixels (0: none),
--              dash = dash length in pixels (0: a solid line)}
--   title, xlabel, ylabel   strings
--   logx, logy booleans: log10 axes
--   xlim, ylim {lo, hi}: the axis range (default: the data's, y padded by 5%)
--   legend     false hides it (default: shown when a series has a name)
--   width, height  pixels (640 x 400; for plot.panels, of each panel)
-- Misuse raises an error naming the function; a file that cannot be written
-- gives nil, message (as D.image.save does).
local core = require "diffusion.core"
local util = require "diffusion.util"

local plot = {}

local INF = math.huge
local is_tensor = util.is_tensor

--- plot.PALETTE: the series colours, in order (matplotlib's "tab10")
plot.PALETTE = {
  { 31, 119, 180 }, { 255, 127, 14 }, { 44, 160, 44 }, { 214, 39, 40 }, { 148, 103, 189 },
  { 140, 86, 75 }, { 227, 119, 194 }, { 127, 127, 127 }, { 188, 189, 34 }, { 23, 190, 207 },
}

local BLACK, FRAME, GRID, WHITE = { 20, 20, 20 }, { 90, 90, 90 }, { 225, 225, 225 }, { 255, 255, 255 }
local TITLE_SCALE, LABEL_SCALE, TICK_SCALE = 2, 1.5, 1.5
local PAD, GAP, TICK_LEN = 10, 6, 5

local function fail(fname, fmt, ...)
  error(fname .. ": " .. string.format(fmt, ...), 0)
end

--- ticks ------------------------------------------------------------------------

-- a round step (1, 2 or 5 times a power of ten) giving about `target` intervals
local function nice_step(span, target)
  local raw = span / target
  local mag = 10 ^ math.floor(math.log(raw, 10))
  local m = raw / mag
  return (m < 1.5 and 1 or m < 3 and 2 or m < 7 and 5 or 10) * mag
end

-- v with the significant digits a step of `step` needs
local function linear_label(v, step, biggest)
  if math.abs(v) < step * 1e-9 then return "0" end
  if biggest < 1e6 and step >= 1e-4 then -- plain decimals: as many as the step has
    return string.format("%." .. math.max(0, -math.floor(math.log(step, 10) + 1e-9)) .. "f", v)
  end
  local digits = math.floor(math.log(biggest, 10) + 1e-9) - math.floor(math.log(step, 10) + 1e-9) + 1
  local s = string.format("%." .. math.max(1, math.min(digits, 15)) .. "g", v)
  return (s:gsub("e%+?(%-?)0*(%d)", "e%1%2")) -- 1e+05 -> 1e5, 1e-05 -> 1e-5
end

local function linear_ticks(lo, hi, target)
  local step = nice_step(hi - lo, target)
  local biggest = math.max(math.abs(lo), math.abs(hi), step)
  local ticks = {}
  for k = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) do
    local v = k * step
    ticks[#ticks + 1] = { value = v, label = linear_label(v, step, biggest) }
  end
  return ticks
end

local function power_label(d)
  if d >= -3 and d <= 4 then return string.format("%g", 10.0 ^ d) end
  return "1e" .. d
end

--- plot.ticks(lo, hi [, log]) -> list of {value = position, label = string}:
-- round values in [lo, hi] (about 5 to 8 of them). With log, lo and hi are
-- log10 of the range and the positions are log10 of the labelled values.
function plot.ticks(lo, hi, log)
  if type(lo) ~= "number" or type(hi) ~= "number" or not (lo < hi) or lo == -INF or hi == INF then
    fail("plot.ticks", "expected finite lo < hi, got %s and %s", tostring(lo), tostring(hi))
  end
  if not log then return linear_ticks(lo, hi, 6) end
  local d0, d1 = math.ceil(lo - 1e-9), math.floor(hi + 1e-9)
  if d1 - d0 + 1 >= 3 then -- whole decades, every stride-th
    local stride = math.ceil((d1 - d0 + 1) / 8)
    local ticks = {}
    for d = d0 - d0 % stride, d1, stride do
      if d >= d0 then ticks[#ticks + 1] = { value = d, label = power_label(d) } end
    end
    if #ticks >= 2 then return ticks end
  end
  local ticks = {} -- less than about two decades: 1, 2 and 5 times the powers of ten
  for d = math.floor(lo) - 1, math.ceil(hi) do
    for _, m in ipairs { 1, 2, 5 } do
      local pos = d + math.log(m, 10)
      if pos >= lo - 1e-9 and pos <= hi + 1e-9 then
        ticks[#ticks + 1] = { value = pos, label = linear_label(m * 10.0 ^ d, 10.0 ^ d, m * 10.0 ^ d) }
      end
    end
  end
  if #ticks >= 3 then return ticks end
  ticks = {} -- within one octave or so: round values of the data, at their log positions
  for _, t in ipairs(linear_ticks(10 ^ lo, 10 ^ hi, 4)) do
    if t.value > 0 then ticks[#ticks + 1] = { value = math.log(t.value, 10), label = t.label } end
  end
  return ticks
end

--- checking the options ---------------------------------------------------------

-- a list of numbers from a list or a 1-d tensor
local function numbers(fname, v, what)
  if is_tensor(v) then
    if v:dim() ~= 1 then fail(fname, "%s must be a list or a 1-d tensor, got a tensor of shape %s", what,
      util.shape_string(v)) end
    return v:totable()
  end
  if type(v) ~= "table" then fail(fname, "%s must be a list or a 1-d tensor, got %s", what, type(v)) end
  local n = #v
  for i = 1, n do
    if type(v[i]) ~= "number" then fail(fname, "%s[%d] must be a number, got %s", what, i, type(v[i])) end
  end
  for k in pairs(v) do
    if math.type(k) ~= "integer" or k < 1 or k > n then fail(fname, "%s must be a list (a sequence), got key %s", what, tostring(k)) end
  end
  return v
end

local function color_of(fname, c, what)
  if type(c) ~= "table" or #c ~= 3 then fail(fname, "%s must be {r, g, b}, got %s", what, type(c)) end
  for i = 1, 3 do
    if type(c[i]) ~= "number" or not (c[i] >= 0 and c[i] <= 255) then
      fail(fname, "%s component %d must be a number in [0, 255], got %s", what, i, tostring(c[i]))
    end
  end
  return c
end

local function range_of(fname, r, what, log)
  if r == nil then return nil end
  if type(r) ~= "table" or type(r[1]) ~= "number" or type(r[2]) ~= "number" then
    fail(fname, "%s must be {lo, hi}, got %s", what, type(r))
  end
  local lo, hi = r[1], r[2]
  if not (lo < hi) or lo == -INF or hi == INF then fail(fname, "%s must have finite lo < hi, got {%s, %s}", what, tostring(lo), tostring(hi)) end
  if log then
    if not (lo > 0) then fail(fname, "%s must be > 0 on a log axis, got {%s, %s}", what, tostring(lo), tostring(hi)) end
    return { math.log(lo, 10), math.log(hi, 10) }
  end
  return { lo, hi }
end

local function size_of(fname, v, what, default)
  if v == nil then return default end
  if math.type(v) ~= "integer" or v < 64 or v > 8192 then
    fail(fname, "%s must be an integer in [64, 8192], got %s", what, tostring(v))
  end
  return v
end

local function opt_string(fname, v, what)
  if v ~= nil and type(v) ~= "string" then fail(fname, "%s must be a string, got %s", what, type(v)) end
  return v
end

local CHART_KEYS = {
  series = true, title = true, xlabel = true, ylabel = true, logx = true, logy = true, xlim = true, ylim = true,
  legend = true, width = true, height = true,
}
local SERIES_KEYS = { x = true, y = true, name = true, color = true, width = true, marker = true, dash = true }

-- A checked copy of a chart's options, with the data in axis units (log10
-- on a log axis; nil where a point is not drawable).
local function check_chart(fname, c, extra)
  if type(c) ~= "table" then fail(fname, "expected a table of options, got %s", type(c)) end
  for k in pairs(c) do
    if not CHART_KEYS[k] and not (extra and extra[k]) then fail(fname, "unknown option '%s'", tostring(k)) end
  end
  local o = {
    title = opt_string(fname, c.title, "title"), xlabel = opt_string(fname, c.xlabel, "xlabel"),
    ylabel = opt_string(fname, c.ylabel, "ylabel"),
    width = size_of(fname, c.width, "width", 640), height = size_of(fname, c.height, "height", 400),
  }
  for _, k in ipairs { "logx", "logy" } do
    if c[k] ~= nil and type(c[k]) ~= "boolean" then fail(fname, "%s must be a boolean, got %s", k, type(c[k])) end
    o[k] = c[k] or false
  end
  if c.legend ~= nil and type(c.legend) ~= "boolean" then fail(fname, "legend must be a boolean, got %s", type(c.legend)) end
  o.xlim, o.ylim = range_of(fname, c.xlim, "xlim", o.logx), range_of(fname, c.ylim, "ylim", o.logy)
  if type(c.series) ~= "table" then fail(fname, "series must be a list of series, got %s", type(c.series)) end
  if #c.series == 0 then fail(fname, "series is empty: nothing to plot") end
  o.series = {}
  local named, drawable = false, 0
  for i, s in ipairs(c.series) do
    local what = string.format("series %d", i)
    if type(s) ~= "table" then fail(fname, "%s must be a table {x = ..., y = ...}, got %s", what, type(s)) end
    for k in pairs(s) do
      if not SERIES_KEYS[k] then fail(fname, "%s: unknown field '%s'", what, tostring(k)) end
    end
    if s.name ~= nil then
      opt_string(fname, s.name, what .. " name")
      what = string.format('series %d ("%s")', i, s.name)
      named = true
    end
    if s.y == nil then fail(fname, "%s has no y values", what) end
    local y = numbers(fname, s.y, what .. " y")
    local x
    if s.x == nil then
      x = {}
      for k = 1, #y do x[k] = k end
    else
      x = numbers(fname, s.x, what .. " x")
    end
    if #x ~= #y then fail(fname, "%s has %d x values but %d y values", what, #x, #y) end
    if #y == 0 then fail(fname, "%s has no points", what) end
    local width = s.width == nil and 2 or s.width
    local marker = s.marker == nil and 0 or s.marker
    if type(width) ~= "number" or not (width >= 0 and width <= 50) then
      fail(fname, "%s width must be a number in [0, 50], got %s", what, tostring(width))
    end
    if type(marker) ~= "number" or not (marker >= 0 and marker <= 50) then
      fail(fname, "%s marker must be a radius in [0, 50], got %s", what, tostring(marker))
    end
    local dash = s.dash == nil and 0 or s.dash
    if type(dash) ~= "number" or not (dash >= 0 and dash <= 200) then
      fail(fname, "%s dash must be a length in [0, 200] pixels, got %s", what, tostring(dash))
    end
    if width == 0 and marker == 0 then fail(fname, "%s has width 0 and no marker: it would be invisible", what) end
    local px, py = {}, {}
    for k = 1, #y do
      local a, b = x[k], y[k]
      if o.logx then a = a > 0 and math.log(a, 10) or nil end
      if o.logy then b = b > 0 and math.log(b, 10) or nil end
      if a and b and a == a and b == b and math.abs(a) < INF and math.abs(b) < INF then
        px[k], py[k] = a, b
        drawable = drawable + 1
      end
    end
    o.series[i] = {
      name = s.name or ("series " .. i), x = px, y = py, n = #y, width = width, marker = marker, dash = dash,
      color = s.color and color_of(fname, s.color, what .. " color") or plot.PALETTE[(i - 1) % #plot.PALETTE + 1],
    }
  end
  if drawable == 0 then
    fail(fname, "no point to plot: every x or y is NaN or infinite%s", (o.logx or o.logy) and " (or <= 0 on a log axis)" or "")
  end
  if c.legend == nil then o.legend = named else o.legend = c.legend end
  return o
end

--- drawing ------------------------------------------------------------------------

local function text_size(s, scale) return core._plot_text_size(s, scale) end

-- text of the 7-unit capital height the font has, vertically centred on y
local function text_at(canvas, s, x, y, scale, color, align)
  local w = text_size(s, scale)
  if align == "right" then x = x - w elseif align == "center" then x = x - w / 2 end
  core._plot_text(canvas, s, x, y - 3.5 * scale, scale, false, color)
end

local function data_range(o, axis)
  local lo, hi = INF, -INF
  for _, s in ipairs(o.series) do
    for k = 1, s.n do
      local v = s[axis][k]
      if v and s[axis == "x" and "y" or "x"][k] then lo, hi = math.min(lo, v), math.max(hi, v) end
    end
  end
  return lo, hi
end

local function padded(lo, hi, frac, log)
  if hi == lo then
    local d = log and 0.5 or (lo == 0 and 1 or math.abs(lo) * 0.1)
    return lo - d, hi + d
  end
  local d = (hi - lo) * frac
  return lo - d, hi + d
end

-- Draws chart o into the canvas region (ox, oy, w, h).
local function draw_chart(fname, canvas, ox, oy, w, h, o)
  local xlo, xhi = data_range(o, "x")
  local ylo, yhi = data_range(o, "y")
  local markers = false -- room for a marker's disc at the ends
  for _, s in ipairs(o.series) do markers = markers or s.marker > 0 end
  if o.xlim then xlo, xhi = o.xlim[1], o.xlim[2] else xlo, xhi = padded(xlo, xhi, markers and 0.03 or 0, o.logx) end
  if o.ylim then ylo, yhi = o.ylim[1], o.ylim[2] else ylo, yhi = padded(ylo, yhi, 0.05, o.logy) end
  local xticks, yticks = plot.ticks(xlo, xhi, o.logx), plot.ticks(ylo, yhi, o.logy)

  local _, tick_h = text_size("0", TICK_SCALE)
  local label_h = 7 * LABEL_SCALE
  local ytick_w = 0
  for _, t in ipairs(yticks) do ytick_w = math.max(ytick_w, (text_size(t.label, TICK_SCALE))) end
  local last_xw = #xticks > 0 and text_size(xticks[#xticks].label, TICK_SCALE) or 0
  local top = PAD + (o.title and 7 * TITLE_SCALE + 2 * GAP or GAP)
  local left = PAD + (o.ylabel and label_h + GAP or 0) + ytick_w + GAP + TICK_LEN
  local bottom = PAD + (o.xlabel and label_h + GAP or 0) + tick_h * 0.6 + GAP + TICK_LEN
  local right = PAD + math.max(GAP, last_xw / 2)
  local x0, y0 = math.floor(ox + left), math.floor(oy + top)
  local x1, y1 = math.floor(ox + w - right), math.floor(oy + h - bottom)
  if x1 - x0 < 32 or y1 - y0 < 32 then
    fail(fname, "a %d x %d chart leaves no room to plot beside its labels", w, h)
  end
  local function X(v) return x0 + (v - xlo) / (xhi - xlo) * (x1 - x0) end
  local function Y(v) return y1 - (v - ylo) / (yhi - ylo) * (y1 - y0) end

  -- grid, frame, ticks, labels
  for _, t in ipairs(xticks) do
    local px = math.floor(X(t.value))
    core._plot_fill(canvas, px, y0, px + 1, y1, GRID)
    core._plot_fill(canvas, px, y1, px + 1, y1 + TICK_LEN, FRAME)
    text_at(canvas, t.label, px + 0.5, y1 + TICK_LEN + GAP + 3.5 * TICK_SCALE, TICK_SCALE, BLACK, "center")
  end
  for _, t in ipairs(yticks) do
    local py = math.floor(Y(t.value))
    core._plot_fill(canvas, x0, py, x1, py + 1, GRID)
    core._plot_fill(canvas, x0 - TICK_LEN, py, x0, py + 1, FRAME)
    text_at(canvas, t.label, x0 - TICK_LEN - GAP, py + 0.5, TICK_SCALE, BLACK, "right")
  end
  core._plot_fill(canvas, x0 - 1, y0 - 1, x1 + 1, y0, FRAME)
  core._plot_fill(canvas, x0 - 1, y1, x1 + 1, y1 + 1, FRAME)
  core._plot_fill(canvas, x0 - 1, y0, x0, y1, FRAME)
  core._plot_fill(canvas, x1, y0, x1 + 1, y1, FRAME)
  if o.title then text_at(canvas, o.title, (x0 + x1) / 2, oy + PAD + 3.5 * TITLE_SCALE, TITLE_SCALE, BLACK, "center") end
  if o.xlabel then text_at(canvas, o.xlabel, (x0 + x1) / 2, oy + h - PAD - 3.5 * LABEL_SCALE, LABEL_SCALE, BLACK, "center") end
  if o.ylabel then
    local lw = text_size(o.ylabel, LABEL_SCALE)
    core._plot_text(canvas, o.ylabel, ox + PAD, (y0 + y1) / 2 + lw / 2, LABEL_SCALE, true, BLACK)
  end

  -- the series, clipped to the frame
  local mapped = {}
  for i, s in ipairs(o.series) do
    local xs, ys = {}, {}
    for k = 1, s.n do
      if s.x[k] then xs[k], ys[k] = X(s.x[k]), Y(s.y[k]) else xs[k], ys[k] = 0 / 0, 0 / 0 end
    end
    mapped[i] = { xs, ys }
    core._plot_polyline(canvas, xs, ys, s.color, s.width, s.marker, s.dash, x0, y0, x1, y1)
  end

  -- the legend, in the corner with the fewest data points under it
  if o.legend then
    local row = 7 * LABEL_SCALE + 8
    local tw = 0
    for _, s in ipairs(o.series) do tw = math.max(tw, (text_size(s.name, LABEL_SCALE))) end
    local bw, bh = 8 + 24 + 6 + tw + 8, 6 + row * #o.series + 2
    if bw < x1 - x0 - 16 and bh < y1 - y0 - 16 then
      local corners = { { x1 - 8 - bw, y0 + 8 }, { x0 + 8, y0 + 8 }, { x1 - 8 - bw, y1 - 8 - bh }, { x0 + 8, y1 - 8 - bh } }
      local best, best_count = corners[1], INF
      for _, c in ipairs(corners) do
        local count = 0
        for _, m in ipairs(mapped) do
          local xs, ys = m[1], m[2]
          for k = 1, #xs do
            -- each point and three more along the segment to the next
            local nx, ny = xs[k + 1] or xs[k], ys[k + 1] or ys[k]
            for f = 0, 0.75, 0.25 do
              local px, py = xs[k] + f * (nx - xs[k]), ys[k] + f * (ny - ys[k])
              if px >= c[1] and px <= c[1] + bw and py >= c[2] and py <= c[2] + bh then count = count + 1 end
            end
          end
        end
        if count < best_count then best, best_count = c, count end
      end
      local lx, ly = math.floor(best[1]), math.floor(best[2])
      core._plot_fill(canvas, lx, ly, lx + bw, ly + bh, { 200, 200, 200 })
      core._plot_fill(canvas, lx + 1, ly + 1, lx + bw - 1, ly + bh - 1, WHITE)
      for i, s in ipairs(o.series) do
        local cy = ly + 6 + (i - 0.5) * row
        if s.width > 0 then
          local dash = s.dash > 0 and math.min(s.dash, 8) or 0
          core._plot_polyline(canvas, { lx + 8, lx + 32 }, { cy, cy }, s.color, math.max(s.width, 2), 0, dash, lx, ly, lx + bw, ly + bh)
        end
        if s.marker > 0 then
          core._plot_polyline(canvas, { lx + 20 }, { cy }, s.color, 0, s.marker, 0, lx, ly, lx + bw, ly + bh)
        end
        text_at(canvas, s.name, lx + 38, cy, LABEL_SCALE, BLACK)
      end
    end
  end
end

local function check_path(fname, path)
  if type(path) ~= "string" or path == "" then fail(fname, "path must be a non-empty string, got %s", tostring(path)) end
end

local function save(fname, canvas, path)
  local ok, err = core._image_save_png(canvas, path, 0, 255)
  if not ok then return nil, fname .. ": " .. tostring(err) end
  return true
end

--- plot.lines(opts) -> true, or nil, message: one chart as the PNG opts.path
-- (opts.width x opts.height, 640 x 400 by default); the chart options are
-- described at the top of this file.
function plot.lines(opts)
  local fname = "plot.lines"
  if type(opts) ~= "table" then fail(fname, "expected a table of options, got %s", type(opts)) end
  check_path(fname, opts.path)
  local o = check_chart(fname, opts, { path = true })
  local canvas = core.full({ 3, o.height, o.width }, 255)
  draw_chart(fname, canvas, 0, 0, o.width, o.height, o)
  return save(fname, canvas, opts.path)
end

--- plot.panels{path = ..., charts = {chart, ...}, cols = #charts, width = 560, height = 420}
-- -> true, or nil, message: several charts in one PNG, left to right, cols to
-- a row; width and height are each panel's (a chart's own width / height are
-- not allowed here).
function plot.panels(opts)
  local fname = "plot.panels"
  if type(opts) ~= "table" then fail(fname, "expected a table of options, got %s", type(opts)) end
  for k in pairs(opts) do
    if k ~= "path" and k ~= "charts" and k ~= "cols" and k ~= "width" and k ~= "height" then
      fail(fname, "unknown option '%s'", tostring(k))
    end
  end
  check_path(fname, opts.path)
  if type(opts.charts) ~= "table" or #opts.charts == 0 then fail(fname, "charts must be a non-empty list of charts") end
  local n = #opts.charts
  local cols = opts.cols or n
  if math.type(cols) ~= "integer" or cols < 1 then fail(fname, "cols must be an integer >= 1, got %s", tostring(cols)) end
  cols = math.min(cols, n)
  local w, h = size_of(fname, opts.width, "width", 560), size_of(fname, opts.height, "height", 420)
  local rows = (n + cols - 1) // cols
  if w * cols > 16384 or h * rows > 16384 then fail(fname, "the image would be %d x %d pixels (at most 16384 a side)", w * cols, h * rows) end
  local checked = {}
  for i, c in ipairs(opts.charts) do
    local ok, o = pcall(check_chart, fname, c)
    if not ok then error((tostring(o):gsub("^" .. fname .. ": ", fname .. ": chart " .. i .. ": ")), 0) end
    if c.width or c.height then fail(fname, "chart %d: width and height are the panels' (options of plot.panels)", i) end
    checked[i] = o
  end
  local canvas = core.full({ 3, h * rows, w * cols }, 255)
  for i, o in ipairs(checked) do
    draw_chart(fname, canvas, ((i - 1) % cols) * w, ((i - 1) // cols) * h, w, h, o)
  end
  return save(fname, canvas, opts.path)
end

--- plot.schedules(path, schedules [, opts]) -> true, or nil, message: what
-- sched:plot draws (alpha_bar, log-SNR and sigma on a log axis, against t, or
-- u = t / T when the schedules' Ts differ; transformed schedules dashed).
-- opts: names, width, height.
function plot.schedules(path, scheds, opts)
  local fname = "plot.schedules"
  opts = opts or {}
  if type(opts) ~= "table" then fail(fname, "opts must be a table, got %s", type(opts)) end
  for k in pairs(opts) do
    if k ~= "names" and k ~= "width" and k ~= "height" then fail(fname, "unknown option '%s'", tostring(k)) end
  end
  check_path(fname, path)
  if type(scheds) ~= "table" or #scheds == 0 then fail(fname, "expected a non-empty list of schedules") end
  if opts.names ~= nil and (type(opts.names) ~= "table" or #opts.names ~= #scheds) then
    fail(fname, "names must be a list of %d names, one per schedule", #scheds)
  end
  local same_T = true
  for _, s in ipairs(scheds) do
    if type(s) ~= "table" or not s._values then fail(fname, "expected schedules, got %s", type(s)) end
    if s.T ~= scheds[1].T then same_T = false end
  end
  local panels = {
    { key = "alpha_bar", title = "alpha_bar", logy = false },
    { key = "log_snr", title = "log-SNR", logy = false },
    { key = "sigma", title = "sigma = sqrt((1 - alpha_bar) / alpha_bar)", logy = true },
  }
  local charts = {}
  for p, panel in ipairs(panels) do
    local series = {}
    for i, s in ipairs(scheds) do
      local x = {}
      for t = 1, s.T do x[t] = same_T and t or t / s.T end
      -- a transformed schedule dashed: it often runs on top of the one it came from
      series[i] = { name = opts.names and opts.names[i] or s.kind, x = x, y = s._values[panel.key],
                    dash = #(s.transforms or {}) > 0 and 10 or 0 }
    end
    charts[p] = {
      title = panel.title, xlabel = same_T and "timestep t" or "u = t / T", ylabel = panel.key, logy = panel.logy,
      series = series, legend = p == 1,
    }
  end
  local ok, r, msg = pcall(plot.panels, { path = path, charts = charts, width = opts.width, height = opts.height })
  if not ok then error((tostring(r):gsub("^plot%.panels: ", fname .. ": ")), 0) end
  if not r then return nil, (tostring(msg):gsub("^plot%.panels: ", fname .. ": ")) end
  return true
end

--- plot.read_loss_log(csv_path) -> steps, losses (lists, by step) | nil, message
-- Reads a training log of "step,loss" lines (as D.train's `log` writes). A
-- step logged twice (a run resumed from an older checkpoint) keeps its last
-- value; other lines (a header) are ignored.
function plot.read_loss_log(csv_path)
  if type(csv_path) ~= "string" then fail("plot.read_loss_log", "csv_path must be a string, got %s", type(csv_path)) end
  local f, err = io.open(csv_path, "r")
  if not f then return nil, err end
  local by_step, last = {}, 0
  for line in f:lines() do
    local step, loss = line:match("^(%d+),([^,]+)$")
    step, loss = math.tointeger(tonumber(step)), tonumber(loss)
    if step and loss then
      by_step[step] = loss
      if step > last then last = step end
    end
  end
  f:close()
  local steps, losses = {}, {}
  for step = 1, last do
    if by_step[step] then steps[#steps + 1], losses[#losses + 1] = step, by_step[step] end
  end
  return steps, losses
end

--- plot.loss_curve(csv_path, png_path [, opts]) -> true | nil, message
-- Charts a training log: the raw loss in light grey and its moving average
-- over opts.window steps (50) in the palette's second colour, on a log axis.
function plot.loss_curve(csv_path, png_path, opts)
  local fname = "plot.loss_curve"
  opts = opts or {}
  local window = opts.window or 50
  if math.type(window) ~= "integer" or window < 1 then fail(fname, "window must be an integer >= 1, got %s", tostring(window)) end
  local steps, losses = plot.read_loss_log(csv_path)
  if not steps then return nil, losses end
  if #steps == 0 then fail(fname, "%s holds no 'step,loss' lines", csv_path) end
  local avg, sum, count = {}, 0, 0
  for i, loss in ipairs(losses) do
    -- a non-finite loss would poison every later mean: the mean skips it (the raw line shows the gap)
    if loss == loss and math.abs(loss) < math.huge then sum, count = sum + loss, count + 1 end
    local old = losses[i - window]
    if old and old == old and math.abs(old) < math.huge then sum, count = sum - old, count - 1 end
    avg[i] = count > 0 and sum / count or 0 / 0
  end
  return plot.lines{
    path = png_path, title = opts.title or "training loss", xlabel = "step", ylabel = "loss", logy = true,
    width = opts.width, height = opts.height,
    series = {
      { name = "loss", x = steps, y = losses, color = { 200, 200, 200 }, width = 1 },
      { name = string.format("mean of %d", window), x = steps, y = avg, color = plot.PALETTE[2] },
    },
  }
end

return plot
