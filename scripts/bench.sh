#!/usr/bin/env bash
# Runs every benchmark and prints its figures (nothing here passes or fails on
# speed). Corpora go to /dev/shm: on these machines disk reads are slow and the
# page cache is reclaimed quickly, so a disk corpus would measure the disk.
#   scripts/bench.sh [MB, default 1024]
# LOGLET_BUILD=dir benchmarks that build directory instead of build/: it is
# brought up to date with `cmake --build` (from whatever source tree it was
# configured for, so an older checkout's build dir benchmarks that checkout),
# or configured from this tree first (RelWithDebInfo) when it has no
# CMakeCache.txt yet.
set -euo pipefail
cd "$(dirname "$0")/.."
mb=${1:-1024}
scripts/setup.sh bench
if [[ -n "${LOGLET_BUILD:-}" ]]; then
  build=$LOGLET_BUILD
  if [[ ! -f "$build/CMakeCache.txt" ]]; then
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  fi
  cmake --build "$build" -j"$(nproc)" >/dev/null
else
  scripts/build.sh release >/dev/null
  build=build
fi
export LOGLET_BUILD=$build
echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)," \
  "$(gcc --version | head -1); $(uptime | sed 's/.*load/load/')"
echo "== build: $build"
echo "== parser alone"
"$build"/tests/bench_parser
echo "== pipeline stages alone"
"$build"/tests/bench_pipeline
echo "== collector + parser into a null output"
"$build"/tests/bench_collector "$mb" 100
for filler in x random; do
  echo "== end to end: files -> loglet -> counting receiver on 127.0.0.1, filler $filler"
  /usr/bin/python3 tests/bench/bench_e2e.py --mb "$mb" --files 100 --filler "$filler"
done
echo "== end to end with the README's example pipeline (JSON lines), and the same lines without it"
/usr/bin/python3 tests/bench/bench_e2e.py --mb "$mb" --files 100 --json --pipeline tests/bench/example_pipeline.yaml
/usr/bin/python3 tests/bench/bench_e2e.py --mb "$mb" --files 100 --json
for filler in x random; do
  echo "== catch-up of a 50 MB rotated file, gzip-compressed vs plain, filler $filler"
  /usr/bin/python3 tests/bench/bench_gz_catchup.py --mb 50 --filler "$filler"
done
echo "== live tail: Loki shipping at 10k lines/s with 0 and 50 followers of the logs API"
/usr/bin/python3 tests/bench/bench_livetail.py --followers 50 --rate 10000 --seconds 10
echo "== the archive output (file:// on tmpfs): archive only, Loki only, both; gzip level 6 and 1"
/usr/bin/python3 tests/bench/bench_archive.py --mb "$((mb / 2))" --filler random
/usr/bin/python3 tests/bench/bench_archive.py --mb "$((mb / 2))" --filler random --modes archive --gzip-level 1
echo "== end to end at 2,000 files (peak RSS)"
/usr/bin/python3 tests/bench/bench_e2e.py --mb "$mb" --files 2000 --filler random
echo "== latency: write -> acknowledgement at 10k lines/s over 100 files"
/usr/bin/python3 tests/bench/bench_latency.py --rate 10000 --files 100 --seconds 20 --runs 3
echo "== idle 2,000 files, and start with their positions file"
/usr/bin/python3 tests/bench/bench_idle.py --files 2000 --seconds 30 --runs 3
echo "== scaling table (files, streams, line sizes)"
/usr/bin/python3 tests/bench/bench_scaling.py --mb 256 --runs 3
