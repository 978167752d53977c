--- diffusion.progress: a one-line progress display for long loops.
--
--   local bar = D.progress{total = 1000, label = "train"}
--   for step = 1, 1000 do ...; bar:update(step, {loss = l}, batch_size) end
--   bar:finish()
--
-- Prints "label  step/total  loss 0.1234  512 img/s  ETA 1m05s" on one line
-- (opts.unit names what `items` counts, "img" by default),
-- rewritten at most every `interval` seconds (0.5), to io.stderr by default.
-- Numbers given in `stats` are averaged since the last printed line.
local core = require "diffusion.core"

local Progress = {}
Progress.__index = Progress

local function duration(s)
  if s ~= s or s == math.huge then return "?" end
  s = math.floor(s + 0.5)
  if s >= 3600 then return string.format("%dh%02dm", s // 3600, (s % 3600) // 60) end
  if s >= 60 then return string.format("%dm%02ds", s // 60, s % 60) end
  return string.format("%ds", s)
end

--- bar:update(step [, stats [, items]]): stats is a table of numbers
-- (averaged until printed); items counts images (or samples) for the rate.
function Progress:update(step, stats, items)
  self.step = step
  self.items = self.items + (items or 0)
  for name, value in pairs(stats or {}) do
    if not self.sums[name] then self.order[#self.order + 1] = name end
    self.sums[name] = (self.sums[name] or 0) + value
    self.counts[name] = (self.counts[name] or 0) + 1
  end
  local now = core.clock()
  if now - self.last_print >= self.interval or step == self.total then
    self:print(now)
  end
end

function Progress:print(now)
  now = now or core.clock()
  self.last_print = now
  local elapsed = now - self.start
  local parts = { self.label ~= "" and self.label or nil }
  parts[#parts + 1] = self.total and string.format("%d/%d", self.step or 0, self.total) or tostring(self.step or 0)
  table.sort(self.order)
  for _, name in ipairs(self.order) do
    if self.counts[name] > 0 then
      parts[#parts + 1] = string.format("%s %.4g", name, self.sums[name] / self.counts[name])
      self.sums[name], self.counts[name] = 0, 0
    end
  end
  if self.items > 0 and elapsed > 0 then parts[#parts + 1] = string.format("%.0f %s/s", self.items / elapsed, self.unit) end
  if self.total and self.step and self.step > 0 then
    parts[#parts + 1] = "ETA " .. duration(elapsed / self.step * (self.total - self.step))
  end
  parts[#parts + 1] = "elapsed " .. duration(elapsed)
  local line = table.concat(parts, "  ")
  local pad = #self.line > #line and string.rep(" ", #self.line - #line) or ""
  self.out:write("\r", line, pad)
  self.out:flush()
  self.line = line
end

--- bar:finish(): prints the last line and a newline; returns the seconds taken
function Progress:finish()
  if self.step then self:print() end
  self.out:write("\n")
  self.out:flush()
  return core.clock() - self.start
end

return function(opts)
  opts = opts or {}
  if opts.total ~= nil and (math.type(opts.total) ~= "integer" or opts.total < 0) then
    error("progress: total must be a non-negative integer, got " .. tostring(opts.total), 2)
  end
  return setmetatable({
    total = opts.total, label = opts.label or "", interval = opts.interval or 0.5, unit = opts.unit or "img",
    out = opts.out or io.stderr, start = core.clock(), last_print = -math.huge,
    items = 0, sums = {}, counts = {}, order = {}, line = "",
  }, Progress)
end
