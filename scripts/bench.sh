#!/usr/bin/env bash
# Runs every benchmark and prints its figures (nothing here passes or fails on
# speed). Corpora go to /dev/shm: on these machines disk reads are slow and the
# page cache is reclaimed quickly, so a disk corpus would measure the disk.
#   scripts/bench.sh [MB, default 1024]
set -euo pipefail
cd "$(dirname "$0")/.."
mb=${1:-1024}
scripts/setup.sh
scripts/build.sh release >/dev/null
echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(gcc --version | head -1)"
echo "== parser alone"
build/tests/bench_parser
echo "== collector + parser into a null output"
build/tests/bench_collector "$mb" 100
echo "== end to end: files -> loglet -> counting receiver on 127.0.0.1"
/usr/bin/python3 tests/bench/bench_e2e.py --mb "$mb" --files 100
