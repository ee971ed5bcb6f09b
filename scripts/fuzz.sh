#!/usr/bin/env bash
# Builds every libFuzzer harness in tests/fuzz with clang + ASan + UBSan and
# runs each for a bounded time (default 30 s, `scripts/fuzz.sh 600` for a
# long run). Seeds come from tests/fuzz/corpus/<name>/; what the fuzzer adds
# goes to a temporary copy, so the repository is not touched. A crash, leak
# or sanitizer report fails the run and leaves the reproducer in build-fuzz/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
CC=clang cmake -S . -B build-fuzz -DLOGLET_FUZZ=ON -DLOGLET_WERROR=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build-fuzz -j"$(nproc)" >/dev/null
failed=0
for harness in build-fuzz/tests/fuzz_*; do
  name=$(basename "$harness")
  seeds=tests/fuzz/corpus/${name#fuzz_}
  work=$(mktemp -d)
  [ -d "$seeds" ] && cp -r "$seeds"/. "$work"/
  if "$harness" -max_total_time="$seconds" -max_len=300000 -timeout=10 -rss_limit_mb=2048 \
       -artifact_prefix=build-fuzz/"$name"- -print_final_stats=1 "$work" >build-fuzz/"$name".log 2>&1; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' build-fuzz/"$name".log | grep -o '[0-9]*$' || echo "?")
    echo "fuzz: $name ok ($runs runs in ${seconds}s)"
  else
    echo "fuzz: $name FAILED — see build-fuzz/$name.log:" >&2
    tail -40 build-fuzz/"$name".log >&2
    failed=1
  fi
  rm -rf "$work"
done
exit $failed
