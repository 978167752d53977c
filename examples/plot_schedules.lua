-- plot_schedules.lua: draw five noise schedules side by side — alpha_bar,
-- log-SNR and sigma against the timestep — into one PNG, and print each
-- schedule's summary line (with its log-SNR sparkline).
--   lua5.4 examples/plot_schedules.lua [out.png]      (default docs/schedules.png)
local D = require "diffusion"

local path = arg and arg[1] or "docs/schedules.png"
local dir = path:match("^(.*)/[^/]*$")
if dir then os.execute('mkdir -p "' .. dir .. '"') end

local cosine = D.schedule.cosine{ T = 1000 }
local schedules = {
  D.schedule.linear{ T = 1000 },
  cosine,
  D.schedule.scaled_linear{ T = 1000 },
  cosine:rescale_zero_terminal_snr(), -- alpha_bar_T = 0: the last log-SNR is -inf, the last sigma inf
  cosine:shift(2),                    -- snr / 4 everywhere: the log-SNR curve moves down by 2 log 2
}
local names = { "linear", "cosine", "scaled_linear", "cosine, zero terminal SNR", "cosine, shift(2)" }

for i, s in ipairs(schedules) do print(string.format("%-26s %s", names[i], tostring(s))) end

local others = { table.unpack(schedules, 2) }
others[#others + 1] = { names = names } -- a last table of options
local ok, err = schedules[1]:plot(path, table.unpack(others))
if not ok then error(err) end
print("wrote " .. path)
