#!/usr/bin/env bash
# Installs the Debian packages that building and testing loglet need, and
# only those that are missing. Safe to run again; quiet when nothing is missing.
#   scripts/setup.sh          what building and testing need
#   scripts/setup.sh bench    also what the benchmarks' profiling and syscall
#                             counts need (perf, strace);
#                             no test needs it
set -euo pipefail

PACKAGES=(
  # build
  build-essential cmake pkg-config
  libyaml-dev libcurl4-openssl-dev zlib1g-dev libprotobuf-c-dev protobuf-c-compiler
  libsnappy-dev libpcre2-dev libjansson-dev
  # tests: unit (cmocka), integration (Debian's python3 + snappy for the Loki
  # test receiver), sanitizers and fuzzers (clang + its runtime)
  libcmocka-dev python3 python3-snappy clang libclang-rt-14-dev
  # tests of the deployment files and the metrics endpoint
  yamllint prometheus
  # the status page, loaded in a real headless browser
  chromium
)
if [ "${1:-}" = bench ]; then
  # perf record / report for tests/bench/perf_record.sh; strace -c for bench_idle.py
  PACKAGES+=(linux-perf strace)
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
echo "setup: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
