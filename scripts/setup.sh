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
  libsnappy-dev libpcre2-dev libjansson-dev libssl-dev
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
# node and npm for the archive tests' S3 emulator: Debian's nodejs and npm,
# unless a node (and its npm) is installed already (NodeSource's nodejs
# ships npm itself, and conflicts with Debian's npm package).
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)

# The S3 emulator of the archive tests: @20minutes/s3rver, pinned by
# tests/tools/s3rver/package-lock.json, from the npm registry.
install_s3rver() {
  local dir
  dir="$(cd "$(dirname "$0")/.." && pwd)/tests/tools/s3rver"
  [ -d "$dir/node_modules/@20minutes/s3rver" ] && return 0
  echo "setup: npm ci in $dir (@20minutes/s3rver for the archive tests)" >&2
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
}

if [ ${#missing[@]} -eq 0 ]; then
  install_s3rver
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
echo "setup: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
install_s3rver
