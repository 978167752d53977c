-- Line charts (lua/diffusion/plot.lua over csrc/io/plot.c): the PNG's size
-- and the series colours in its pixels, gaps at NaN / inf points, ticks at
-- round numbers, several panels in one file, sched:plot, the drawing
-- primitives, and every rejected input with its message.
local D = require "diffusion"
local core = require "diffusion.core"
local plot = require "diffusion.plot"
local schedule = require "diffusion.schedule"
local H = require "helpers"

-- the image at path as rows of {r, g, b} lists: pixels[y][x]
local function load(path)
  local x = assert(D.image.load(path, { range = "[0,255]" }))
  return x, x:totable()
end

-- how many pixels have exactly colour c
local function count_colour(img, c)
  local n = 0
  local r, g, b = img[1], img[2], img[3]
  for y = 1, #r do
    local ry, gy, by = r[y], g[y], b[y]
    for x = 1, #ry do
      if ry[x] == c[1] and gy[x] == c[2] and by[x] == c[3] then n = n + 1 end
    end
  end
  return n
end

-- runs of consecutive columns holding colour c
local function column_runs(img, c)
  local has = {}
  local r, g, b = img[1], img[2], img[3]
  for y = 1, #r do
    for x = 1, #r[y] do
      if r[y][x] == c[1] and g[y][x] == c[2] and b[y][x] == c[3] then has[x] = true end
    end
  end
  local runs, inside = 0, false
  for x = 1, #r[1] do
    if has[x] and not inside then runs = runs + 1 end
    inside = has[x] or false
  end
  return runs
end

describe("plot.lines", function()
  local dir
  before_each(function() dir = H.temp_dir() end)
  after_each(function() H.remove_tree(dir) end)

  it("writes a PNG of width x height whose pixels hold each series' colour", function()
    local path = dir .. "/chart.png"
    local x, y1, y2 = {}, {}, {}
    for i = 1, 100 do x[i], y1[i], y2[i] = i, math.sin(i / 10), math.cos(i / 10) end
    local ok = plot.lines { path = path, title = "waves", xlabel = "i", ylabel = "value", legend = false,
      series = { { name = "sin", x = x, y = y1 }, { name = "cos", x = D.tensor(x), y = D.tensor(y2) },
                 { name = "custom", x = { 1, 100 }, y = { 0.5, 0.5 }, color = { 10, 200, 30 } } } }
    assert.is_true(ok)
    local t, img = load(path)
    assert.are.same({ 3, 400, 640 }, t:shape())
    -- the lines (2 pixels wide) cover some pixels fully: the exact palette colours
    assert.is_true(count_colour(img, plot.PALETTE[1]) > 100)
    assert.is_true(count_colour(img, plot.PALETTE[2]) > 100)
    assert.is_true(count_colour(img, { 10, 200, 30 }) > 100)
    assert.are.equal(0, count_colour(img, plot.PALETTE[3])) -- a given colour replaces the palette's
    assert.are.same({ 255, 255, 255 }, { img[1][1][1], img[2][1][1], img[3][1][1] }) -- white background
    -- text and frame are dark
    assert.is_true(count_colour(img, { 20, 20, 20 }) > 50)
    assert.is_true(count_colour(img, { 90, 90, 90 }) > 500)
  end)

  it("honours width and height, logy, and replaces an existing file", function()
    local path = dir .. "/small.png"
    H.write_file(path, "old")
    assert.is_true(plot.lines { path = path, width = 300, height = 200, logy = true,
      series = { { y = { 1, 10, 100, 1000 } } } })
    local t, img = load(path)
    assert.are.same({ 3, 200, 300 }, t:shape())
    assert.is_true(count_colour(img, plot.PALETTE[1]) > 50)
  end)

  it("skips NaN and infinite points, breaking the line there", function()
    local path = dir .. "/gap.png"
    local c = plot.PALETTE[1]
    -- x = 0..1 and 3..4 drawn, the NaN at x = 2 breaks the line
    assert.is_true(plot.lines { path = path, legend = false, xlim = { 0, 4 }, ylim = { -1, 2 },
      series = { { x = { 0, 1, 2, 3, 4 }, y = { 0, 0, 0 / 0, 1, 1 } } } })
    local _, img = load(path)
    assert.are.equal(2, column_runs(img, c))
    -- the same with -inf (log-SNR at zero terminal SNR) and inf
    assert.is_true(plot.lines { path = path, legend = false, xlim = { 0, 4 }, ylim = { -1, 2 },
      series = { { x = { 0, 1, 2, 3, 4 }, y = { 0, 0, -math.huge, 1, 1 } } } })
    _, img = load(path)
    assert.are.equal(2, column_runs(img, c))
    -- on a log axis, y <= 0 is not drawable either
    assert.is_true(plot.lines { path = path, legend = false, logy = true, xlim = { 0, 4 },
      series = { { x = { 0, 1, 2, 3, 4 }, y = { 1, 1, 0, 10, 10 } } } })
    _, img = load(path)
    assert.are.equal(2, column_runs(img, c))
    -- without the gap: one run
    assert.is_true(plot.lines { path = path, legend = false, series = { { x = { 0, 1, 2, 3, 4 }, y = { 0, 0, 0, 1, 1 } } } })
    _, img = load(path)
    assert.are.equal(1, column_runs(img, c))
  end)

  it("draws markers, dashes and the legend in the series colours", function()
    local path = dir .. "/legend.png"
    assert.is_true(plot.lines { path = path, series = {
      { name = "dots", x = { 1, 2, 3 }, y = { 1, 2, 3 }, width = 0, marker = 4 },
      { name = "dashed", x = { 1, 3 }, y = { 3, 1 }, dash = 8 } } })
    local _, img = load(path)
    assert.is_true(count_colour(img, plot.PALETTE[1]) > 3 * 25) -- three discs of radius 4
    -- a dashed line from corner to corner covers its columns in several runs
    assert.is_true(count_colour(img, plot.PALETTE[2]) > 100)
  end)

  it("leaves nothing behind and returns nil, message when the file cannot be written", function()
    local path = dir .. "/no/such/dir/chart.png"
    local ok, err = plot.lines { path = path, series = { { y = { 1, 2 } } } }
    assert.is_nil(ok)
    H.assert_has(err, { "plot.lines: ", dir .. "/no/such/dir/chart.png" })
    assert.are.same({}, H.listdir(dir))
  end)

  it("rejects bad input with messages naming the problem", function()
    local p = dir .. "/x.png"
    local function lines(o) o.path = o.path or p; return plot.lines(o) end
    H.expect_error(function() plot.lines(5) end, "plot.lines: expected a table of options, got number")
    H.expect_error(function() plot.lines { series = { { y = { 1 } } } } end, "plot.lines: path must be a non-empty string, got nil")
    H.expect_error(function() lines { series = {} } end, "plot.lines: series is empty: nothing to plot")
    H.expect_error(function() lines {} end, "plot.lines: series must be a list of series, got nil")
    H.expect_error(function() lines { series = { { y = {} } } } end, "plot.lines: series 1 has no points")
    H.expect_error(function() lines { series = { { name = "a", x = { 1, 2, 3 }, y = { 1, 2 } } } } end,
      'plot.lines: series 1 ("a") has 3 x values but 2 y values')
    H.expect_error(function() lines { series = { { x = { 1 } } } } end, "plot.lines: series 1 has no y values")
    H.expect_error(function() lines { series = { { y = { 1, "2" } } } } end, "plot.lines: series 1 y[2] must be a number, got string")
    H.expect_error(function() lines { series = { { y = D.zeros(2, 2) } } } end,
      "plot.lines: series 1 y must be a list or a 1-d tensor, got a tensor of shape {2,2}")
    H.expect_error(function() lines { series = { { y = { 0 / 0, math.huge } } } } end,
      "plot.lines: no point to plot: every x or y is NaN or infinite")
    H.expect_error(function() lines { logy = true, series = { { y = { 0, -1 } } } } end,
      "plot.lines: no point to plot: every x or y is NaN or infinite (or <= 0 on a log axis)")
    H.expect_error(function() lines { series = { 3 } } end, "plot.lines: series 1 must be a table {x = ..., y = ...}, got number")
    H.expect_error(function() lines { series = { { y = { 1 }, colour = { 1, 2, 3 } } } } end,
      "plot.lines: series 1: unknown field 'colour'")
    H.expect_error(function() lines { series = { { y = { 1 }, color = { 1, 2, 300 } } } } end,
      "plot.lines: series 1 color component 3 must be a number in [0, 255], got 300")
    H.expect_error(function() lines { series = { { y = { 1 }, width = 0 } } } end,
      "plot.lines: series 1 has width 0 and no marker: it would be invisible")
    H.expect_error(function() lines { series = { { y = { 1 }, width = 0 / 0 } } } end, "plot.lines: series 1 width must be a number in [0, 50]")
    H.expect_error(function() lines { width = 10, series = { { y = { 1 } } } } end,
      "plot.lines: width must be an integer in [64, 8192], got 10")
    H.expect_error(function() lines { ylim = { 1, 0 }, series = { { y = { 1 } } } } end,
      "plot.lines: ylim must have finite lo < hi, got {1, 0}")
    H.expect_error(function() lines { ylim = { 0 / 0, 1 }, series = { { y = { 1 } } } } end, "plot.lines: ylim must have finite lo < hi")
    H.expect_error(function() lines { logy = true, ylim = { 0, 1 }, series = { { y = { 1 } } } } end,
      "plot.lines: ylim must be > 0 on a log axis")
    H.expect_error(function() lines { logy = 1, series = { { y = { 1 } } } } end, "plot.lines: logy must be a boolean, got number")
    H.expect_error(function() lines { titel = "x", series = { { y = { 1 } } } } end, "plot.lines: unknown option 'titel'")
    H.expect_error(function() lines { title = 5, series = { { y = { 1 } } } } end, "plot.lines: title must be a string, got number")
    assert.are.same({}, H.listdir(dir)) -- no file from a rejected call
  end)
end)

describe("plot.ticks", function()
  local function labels(ticks)
    local out = {}
    for i, t in ipairs(ticks) do out[i] = t.label end
    return out
  end

  it("puts ticks at 1, 2 or 5 times a power of ten", function()
    assert.are.same({ "0", "0.2", "0.4", "0.6", "0.8", "1.0" }, labels(plot.ticks(0, 1)))
    assert.are.same({ "-20", "-15", "-10", "-5", "0", "5", "10" }, labels(plot.ticks(-21.3, 10.1)))
    assert.are.same({ "200", "400", "600", "800", "1000" }, labels(plot.ticks(1, 1000)))
    local t = plot.ticks(1, 1000)
    assert.are.equal(200, t[1].value)
  end)

  it("on a log axis: whole decades, or 1-2-5 within about a decade", function()
    local t = plot.ticks(-2, 3, true)
    assert.are.same({ "0.01", "0.1", "1", "10", "100", "1000" }, labels(t))
    assert.are.equal(-2, t[1].value)
    assert.are.same({ "1e-8", "1e-6", "1e-4", "0.01", "1" }, labels(plot.ticks(-8.5, 0.2, true))) -- every second decade
    local mid = plot.ticks(math.log(1.5, 10), math.log(60, 10), true)
    assert.are.same({ "2", "5", "10", "20", "50" }, labels(mid))
    H.assert_close(mid[2].value, math.log(5, 10), 1e-12)
    H.expect_error(function() plot.ticks(1, 1) end, "plot.ticks: expected finite lo < hi, got 1 and 1")
  end)
end)

describe("plot.panels and sched:plot", function()
  local dir
  before_each(function() dir = H.temp_dir() end)
  after_each(function() H.remove_tree(dir) end)

  it("tiles the charts, cols to a row, each panel width x height", function()
    local path = dir .. "/panels.png"
    local chart = { series = { { y = { 1, 2, 3 } } } }
    assert.is_true(plot.panels { path = path, charts = { chart, chart, chart }, cols = 2, width = 200, height = 150 })
    local t = load(path)
    assert.are.same({ 3, 300, 400 }, t:shape())
    H.expect_error(function() plot.panels { path = path, charts = {} } end, "plot.panels: charts must be a non-empty list of charts")
    H.expect_error(function() plot.panels { path = path, charts = { { series = {} } } } end,
      "plot.panels: chart 1: series is empty: nothing to plot")
    H.expect_error(function() plot.panels { path = path, charts = { { width = 100, series = chart.series } } } end,
      "plot.panels: chart 1: width and height are the panels' (options of plot.panels)")
    H.expect_error(function() plot.panels { path = path, charts = { chart }, cols = 0 } end, "plot.panels: cols must be an integer >= 1, got 0")
  end)

  it("sched:plot draws alpha_bar, log-SNR and sigma of several schedules side by side", function()
    local path = dir .. "/sched.png"
    local cosine = schedule.cosine { T = 100 }
    local z = cosine:rescale_zero_terminal_snr() -- its -inf log-SNR and inf sigma are skipped
    assert.is_true(cosine:plot(path, schedule.linear { T = 100 }, z))
    local t, img = load(path)
    assert.are.same({ 3, 420, 3 * 560 }, t:shape())
    for i = 1, 3 do assert.is_true(count_colour(img, plot.PALETTE[i]) > 300, "colour " .. i) end
    -- different Ts: plotted against u = t / T; names and panel size from the options
    assert.is_true(cosine:plot(path, cosine:truncate(1, 50), { names = { "full", "half" }, width = 300, height = 240 }))
    t = load(path)
    assert.are.same({ 3, 240, 900 }, t:shape())
    H.expect_error(function() cosine:plot(path, 5) end, "plot: argument 2 must be a schedule (or a last table of options), got number")
    H.expect_error(function() cosine:plot(path, { names = { "a", "b" } }) end,
      "plot.schedules: names must be a list of 1 names, one per schedule")
    H.expect_error(function() cosine:plot(nil) end, "plot.schedules: path must be a non-empty string, got nil")
    local ok, err = cosine:plot(dir .. "/missing/s.png")
    assert.is_nil(ok)
    H.assert_has(err, "plot.schedules: ")
  end)
end)

describe("drawing primitives", function()
  it("fill, polyline and text change only the canvas pixels they cover", function()
    local canvas = D.full({ 3, 20, 30 }, 255)
    core._plot_fill(canvas, 2, 3, 5, 4, { 0, 0, 0 }) -- a 3 x 1 black bar
    local v = canvas:totable()
    assert.are.equal(0, v[1][4][3])
    assert.are.equal(0, v[1][4][5])
    assert.are.equal(255, v[1][4][6])
    assert.are.equal(255, v[1][5][3])
    -- half a pixel covered: half the colour
    core._plot_fill(canvas, 10, 10, 10.5, 11, { 0, 0, 0 })
    H.assert_close(canvas[1][11][11], 127.5, 1e-4)
    -- clipping: nothing outside the clip rectangle
    local c2 = D.full({ 3, 20, 30 }, 255)
    core._plot_polyline(c2, { 0, 30 }, { 10, 10 }, { 0, 0, 0 }, 4, 0, 0, 10, 0, 20, 20)
    v = c2:totable()
    assert.are.equal(0, v[2][11][15]) -- on the line, inside
    assert.are.equal(255, v[2][11][25]) -- on the line, outside the clip
    local w, h = core._plot_text_size("ab\ncd", 2)
    assert.are.equal(24 * 2, h) -- two lines of 12 units
    assert.is_true(w > 0)
    local c3 = D.full({ 3, 30, 60 }, 255)
    core._plot_text(c3, "Hi é", 2, 2, 1.5, false, { 0, 0, 0 }) -- non-ASCII drawn as '?'
    assert.is_true(c3:min():item() < 10)
  end)

  it("rejects a bad canvas, colour or scale", function()
    H.expect_error(function() core._plot_fill(D.zeros(2, 2), 0, 0, 1, 1, { 0, 0, 0 }) end,
      "plot.fill_rect: the canvas must be a (3, H, W) tensor, got shape {2,2}")
    H.expect_error(function() core._plot_fill(D.zeros(3, 4, 4):transpose(2, 3), 0, 0, 1, 1, { 0, 0, 0 }) end,
      "plot.fill_rect: the canvas must be contiguous")
    H.expect_error(function() core._plot_fill(D.zeros(3, 4, 4), 0, 0, 1, 1, { 300, 0, 0 }) end,
      "plot.fill_rect: colour component 1 must be in [0, 255], got 300")
    H.expect_error(function() core._plot_fill(D.zeros(3, 4, 4), 0, 0 / 0, 1, 1, { 0, 0, 0 }) end,
      "plot.fill_rect: the corners must be finite")
    H.expect_error(function() core._plot_text(D.zeros(3, 4, 4), "a", 0, 0, 0, false, { 0, 0, 0 }) end,
      "plot.text: scale must be in (0, 100], got 0")
    H.expect_error(function() core._plot_polyline(D.zeros(3, 4, 4), { 1, 2 }, { 1 }, { 0, 0, 0 }, 1, 0, 0, 0, 0, 4, 4) end,
      "plot.polyline: 2 x values but 1 y values")
    H.expect_error(function() core._plot_polyline(D.zeros(3, 4, 4), { 1 }, { 1 }, { 0, 0, 0 }, -1, 0, 0, 0, 0, 4, 4) end,
      "plot.polyline: the line width, marker radius and dash length must be in [0, 1000]")
    H.expect_error(function() core._plot_polyline(D.zeros(3, 4, 4):requires_grad_(), { 1 }, { 1 }, { 0, 0, 0 }, 1, 0, 0, 0, 0, 4, 4) end,
      "plot.polyline: the canvas must not require grad")
  end)
end)

describe("plot.loss_curve", function()
  local dir
  before_each(function() dir = H.temp_dir() end)
  after_each(function() H.remove_tree(dir) end)

  local function write(path, text)
    local f = assert(io.open(path, "w"))
    f:write(text)
    f:close()
  end

  it("reads a training log, keeping the last value of a step logged twice", function()
    local csv = dir .. "/loss.csv"
    write(csv, "step,loss\n1,0.9\n2,0.8\n3,0.7\n2,0.5\n3,0.4\n4,0.3\n")
    local steps, losses = plot.read_loss_log(csv)
    assert.are.same({ 1, 2, 3, 4 }, steps)
    assert.are.same({ 0.9, 0.5, 0.4, 0.3 }, losses)
    local none, err = plot.read_loss_log(dir .. "/missing.csv")
    assert.is_nil(none)
    assert.is_truthy(err:find("missing.csv", 1, true))
  end)

  it("draws the raw loss and its moving average", function()
    local csv, png = dir .. "/loss.csv", dir .. "/loss.png"
    local lines = {}
    for step = 1, 300 do lines[step] = string.format("%d,%g", step, 1 / step + 0.05 * (step % 7)) end
    write(csv, table.concat(lines, "\n") .. "\n")
    assert.is_true(plot.loss_curve(csv, png, { window = 20 }))
    local t, img = load(png)
    assert.are.same({ 3, 400, 640 }, t:shape())
    assert.is_true(count_colour(img, { 200, 200, 200 }) > 100)
    assert.is_true(count_colour(img, plot.PALETTE[2]) > 100)
  end)

  it("says what is wrong with its input", function()
    local csv = dir .. "/empty.csv"
    write(csv, "step,loss\n")
    H.expect_error(function() plot.loss_curve(csv, dir .. "/x.png") end, "plot.loss_curve: " .. csv .. " holds no 'step,loss' lines")
    H.expect_error(function() plot.loss_curve(csv, dir .. "/x.png", { window = 0 }) end, "plot.loss_curve: window must be an integer >= 1")
    H.expect_error(function() plot.read_loss_log(42) end, "plot.read_loss_log: csv_path must be a string")
    local none, err = plot.loss_curve(dir .. "/missing.csv", dir .. "/x.png")
    assert.is_nil(none)
    assert.is_truthy(err:find("missing.csv", 1, true))
  end)
end)
