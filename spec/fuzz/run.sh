#!/bin/sh
# run.sh — runs the libFuzzer harnesses for `make fuzz` / `make fuzz-replay`.
#   sh spec/fuzz/run.sh fuzz   BUILD SECONDS harness...  fuzz each harness for SECONDS
#   sh spec/fuzz/run.sh replay BUILD 0 harness...        run each seed and regression file once
# Fuzzing starts from the seeds (spec/fuzz/corpus/<harness>/) plus what earlier
# runs found (BUILD/corpus/<harness>/, kept out of the repository). A crash,
# leak, timeout or failed property is written by libFuzzer straight into
# spec/fuzz/regressions/<harness>/, which spec/fuzz_replay_spec.lua replays
# through the Lua API in every `make test`. One line per harness: time,
# executions, result; the exit status is non-zero when anything was found.
mode=$1 build=$2 seconds=$3
shift 3
# fresh allocations filled with 0xbe, so a read of uninitialised memory (which
# found an abort in stb_image's JPEG decoder) behaves the same on every run
ASAN_OPTIONS="max_malloc_fill_size=16777216${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export ASAN_OPTIONS
status=0
for h in "$@"; do
  bin=$build/fuzz_$h
  seeds=spec/fuzz/corpus/$h
  regressions=spec/fuzz/regressions/$h
  log=$build/fuzz_$h.log
  mkdir -p "$regressions"
  start=$(date +%s)
  if [ "$mode" = fuzz ]; then
    mkdir -p "$build/corpus/$h"
    "$bin" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$regressions/" "$build/corpus/$h" "$seeds" >"$log" 2>&1
  else
    "$bin" -runs=0 -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$build/replay-$h-" "$seeds" "$regressions" >"$log" 2>&1
  fi
  rc=$?
  end=$(date +%s)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  if [ "$rc" -eq 0 ]; then
    result=clean
  else
    result="FOUND (exit $rc): see $log; the input is in $regressions/"
    [ "$mode" = fuzz ] || result="FAILED (exit $rc): see $log"
    status=1
  fi
  printf '%s %-12s %6ss %10s execs  %s\n' "$mode" "$h" $((end - start)) "${execs:-?}" "$result"
done
exit $status
