#!/usr/bin/env bash
# Load test of `sluice serve` on loopback (issue 5's speed targets), with wrk.
# Usage: bench/http-load.sh            (needs wrk, curl, python3; builds release)
# Prints: idle RSS, c16 throughput and RSS under load, sequential latency,
# and the default-limits run (completed requests and throttled executed events).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)" >&2; exit 2; }
cargo build --release --quiet
BIN=target/release/sluice
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
mkdir -p "$WORK/automations/bench"
cat > "$WORK/automations/bench/hello.yml" <<'YML'
slug: hello
when: {endpoint: true}
do: []
output: {message: hello}
YML
cp -r automations/demo "$WORK/automations/demo"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss() { awk '/VmRSS/ {printf "%.1f MB", $2/1024}' "/proc/$1/status"; }
start() { # start ENV... -> sets PID and URL
  local p; p=$(port)
  env "$@" SLUICE_SECRETS="$WORK/secrets" RUST_LOG=warn "$BIN" serve --workspaces "$WORK/automations" --listen "127.0.0.1:$p" &
  PID=$!
  URL="http://127.0.0.1:$p"
  for _ in $(seq 100); do curl -fs "$URL/sys/healthcheck" >/dev/null && return; sleep 0.05; done
  echo "server did not start" >&2; exit 1
}

echo "== limits disabled"
start RATE_LIMIT_DISABLED=true
sleep 1
echo "idle RSS: $(rss $PID)"
wrk -t2 -c16 -d3s "$URL/v2/workspaces/bench/webhooks/hello" >/dev/null   # warm-up
( sleep 5; echo "RSS under c16 load: $(rss $PID)" ) &
echo "-- wrk -t2 -c16 -d10s"
wrk -t2 -c16 -d10s "$URL/v2/workspaces/bench/webhooks/hello" | grep -E "Requests/sec|Latency"
wait %2 2>/dev/null || true
echo "-- wrk -t1 -c1 -d5s --latency (sequential)"
wrk -t1 -c1 -d5s --latency "$URL/v2/workspaces/bench/webhooks/hello" | grep -E "50%|90%|99%|Requests/sec"
kill $PID; wait $PID 2>/dev/null || true

echo "== default limits (100/s, burst 400): c16 for 10 s"
start SLUICE_ADMIN_TOKEN=bench
curl -sN -H "Authorization: Bearer bench" "$URL/v2/workspaces/bench/events" > "$WORK/sse.txt" &
SSE=$!
sleep 0.3
wrk -t2 -c16 -d10s "$URL/v2/workspaces/bench/webhooks/hello" | grep -E "requests in"
sleep 0.5
kill $SSE 2>/dev/null || true
kill $PID; wait $PID 2>/dev/null || true
python3 - "$WORK/sse.txt" <<'PY'
import json, sys
events = []
for block in open(sys.argv[1]).read().split("\n\n"):
    data = [l[5:].strip() for l in block.splitlines() if l.startswith("data:")]
    if data:
        e = json.loads(data[0])
        if e.get("type") == "runtime.automations.executed":
            events.append(e["payload"])
events.sort(key=lambda p: p["startedAt"])
after = events[400:]
throttled = [p for p in after if p.get("throttled", 0) >= 1]
print(f"executed events: {len(events)}; after the burst: {len(after)}, with throttled: {len(throttled)}")
PY
