#!/usr/bin/env bash
# The whole test suite: unit, integration and tool self-tests, first on the
# optimised -Werror build, then again under AddressSanitizer + UBSan with
# LeakSanitizer on. Exits non-zero when anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

jobs=$(nproc)
echo "== build (release, -Werror)"
scripts/build.sh release >/dev/null
# In CI (root, CI=true) the container image is also built and run with
# podman (tests/integration/test_deployments.py installs podman for it);
# elsewhere that test skips unless LOGLET_IMAGE_TEST=1.
image_test=${LOGLET_IMAGE_TEST:-0}
[ "${CI:-}" = true ] && [ "$(id -u)" -eq 0 ] && image_test=${LOGLET_IMAGE_TEST:-1}
echo "== tests (release)"
(cd build && LOGLET_IMAGE_TEST=$image_test ctest --output-on-failure -j"$jobs")

echo "== build (ASan+UBSan)"
scripts/build.sh sanitize >/dev/null
echo "== tests (ASan+UBSan, LeakSanitizer)"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
(cd build-sanitize && LOGLET_IMAGE_TEST=0 ctest --output-on-failure -j"$jobs")

echo "== soak under faults (short form, ASan+UBSan binary)"
LOGLET_BIN=build-sanitize/loglet /usr/bin/python3 tests/soak/soak.py --duration "${LOGLET_SOAK_SECONDS:-150}"

echo "== fuzzing (${LOGLET_FUZZ_SECONDS:-10} s per harness, clang + ASan + UBSan)"
scripts/fuzz.sh "${LOGLET_FUZZ_SECONDS:-10}"

# Every stage above exits on failure (set -e), so reaching here means all passed.
echo "suite: 4 passed, 0 failed (release tests, sanitizer tests, soak, fuzzing)"
