#!/bin/sh
# Runs the agent under `perf record`, for use as bench_e2e.py's LOGLET_BIN:
#   LOGLET_BIN=tests/bench/perf_record.sh /usr/bin/python3 tests/bench/bench_e2e.py --mb 512 --filler random
#   perf report -i /tmp/loglet-perf.data --children --sort sym --stdio -g none | head -60
# The benchmark's CPU and RSS figures are then perf's own, not the agent's:
# take those from a run without it. PERF_CALL_GRAPH (default dwarf: the
# release build keeps no frame pointers) and PERF_OUT override the defaults;
# REAL_BIN is the agent (default: build/loglet beside this script's tree).
here=$(cd "$(dirname "$0")/../.." && pwd)
exec perf record -F 1999 --call-graph "${PERF_CALL_GRAPH:-dwarf,16384}" -o "${PERF_OUT:-/tmp/loglet-perf.data}" \
  -- "${REAL_BIN:-${LOGLET_BUILD:-$here/build}/loglet}" "$@"
