#!/usr/bin/env bash
# The newcomer's first command: install what is missing, build, create a
# kubelet-style log tree that a writer keeps appending to (and adds a pod to),
# and run loglet on it with stdout output. Ctrl-C stops it;
# DEMO_SECONDS=N stops it after N seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
bin=$(scripts/build.sh)

demo=$(mktemp -d "${TMPDIR:-/tmp}/loglet-demo.XXXXXX")
cat > "$demo/loglet.yaml" <<YAML
server:
  http_listen_address: 127.0.0.1
  http_listen_port: \${LOGLET_DEMO_PORT:-3101}
collection:
  paths: ["$demo/containers/*.log"]
  read_from: beginning
  positions_file: $demo/positions.yaml
output:
  stdout:
    format: \${LOGLET_DEMO_FORMAT:-text}
YAML

/usr/bin/python3 tests/tools/kubelet.py demo "$demo" "${DEMO_SECONDS:-0}" &
writer=$!
agent=""
cleanup() {
  kill "$writer" 2>/dev/null || true
  [ -n "$agent" ] && kill -TERM "$agent" 2>/dev/null && wait "$agent" 2>/dev/null || true
  rm -rf "$demo"
}
trap cleanup EXIT
trap 'exit 0' INT TERM
sleep 0.3
echo "demo: tailing $demo/containers/*.log (Ctrl-C to stop)" >&2
"$bin" -config "$demo/loglet.yaml" &
agent=$!
if [ "${DEMO_SECONDS:-0}" != 0 ]; then
  wait "$writer" || true
  sleep 1
  kill -TERM "$agent"
fi
wait "$agent"
agent=""
