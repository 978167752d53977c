-- Busted output handler: busted's usual terminal output, then one plain last
-- line "N passed, M failed" that CI reads (errors count as failures).
return function(options)
  local busted = require "busted"
  local terminal = require "busted.outputHandlers.utfTerminal"(options)

  busted.subscribe({ "suite", "end" }, function()
    local passed = terminal.successesCount
    local failed = terminal.failuresCount + terminal.errorsCount
    io.write(string.format("\n%d passed, %d failed\n", passed, failed))
    io.flush()
    return nil, true
  end)

  return terminal
end
