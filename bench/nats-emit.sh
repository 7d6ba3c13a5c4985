#!/usr/bin/env bash
# Emit throughput over NATS JetStream (issue 10's Speed targets), on loopback,
# against real release `sluice serve` processes and a real nats-server.
#
# Usage: bench/nats-emit.sh [EVENTS]      (default 20000 per emitter; needs curl, awk; builds release)
#        SCENARIOS="1x1 3x3" bench/nats-emit.sh   runs only those scenarios
#        SLUICE_BIN=/tmp/sluice-before bench/nats-emit.sh   measures that binary (no build),
#            so that a before and an after binary can be run alternately on a shared machine
#
# A scenario IxE starts a fresh nats-server (scripts/nats-test-server.sh) and I
# instances, then calls E webhooks at once (emitter k on instance k mod I), each
# running an automation that emits EVENTS events in a `repeat`; a listener that
# does nothing runs for every event, on whichever instance pulls it.
#   emit  = time until the last webhook call returned (a call returns once its
#           automation's emits are stored: the stream's message count is checked
#           right then), and the events stored per second over that time;
#   done  = time until every listener run finished (sluice_executions_total of
#           the listener, summed over the instances' /metrics).
# Scenario "embedded" is one instance without NATS, for reference.
# Limits are off through the workspace's secrets file. Every wait is bounded by
# NATS_BENCH_TIMEOUT (default 120 s) per scenario.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
TIMEOUT=${NATS_BENCH_TIMEOUT:-120}
SCENARIOS=${SCENARIOS:-"embedded 1x1 1x3 3x3"}
if [ -n "${SLUICE_BIN:-}" ]; then
  BIN=$SLUICE_BIN
else
  cargo build --release --quiet
  BIN=target/release/sluice
fi
WORK=$(mktemp -d)
NATS_PIDFILE=$WORK/nats.pid
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  bash scripts/nats-test-server.sh stop "$NATS_PIDFILE" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/automations/bench" "$WORK/secrets"
cat > "$WORK/automations/bench/emitter.yml" <<'YML'
slug: emitter
when: {endpoint: true}
do:
  - repeat:
      until: '{{body.n}}'
      do:
        - emit: {event: tick, payload: {i: '{{$index}}'}}
output: {emitted: '{{body.n}}'}
YML
cat > "$WORK/automations/bench/listener.yml" <<'YML'
slug: listener
when: {events: [tick]}
do: []
YML
# 20,000 iterations of a repeat with an emit is over the default instruction budget.
cat > "$WORK/secrets/bench.yml" <<'YML'
prismeai_ratelimit_disabled: true
sluice_max_instructions: 10000000
YML

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
rate() { awk -v n="$1" -v t="$2" 'BEGIN { printf "%.0f", n / t }'; }

start_nats() { # sets NATS_URL and MON (monitoring port)
  MON=$(port)
  NATS_URL=$(bash scripts/nats-test-server.sh start --jetstream --max-lifetime $((TIMEOUT + 60)) \
    --pidfile "$NATS_PIDFILE" -- -m "$MON" 2>/dev/null)
}

URLS=()
start_instance() { # start_instance ENV... -> appends to URLS and PIDS
  local p; p=$(port)
  env "$@" SLUICE_SECRETS="$WORK/secrets" RUST_LOG=warn \
    "$BIN" serve --workspaces "$WORK/automations" --listen "127.0.0.1:$p" 2>>"$WORK/serve.log" &
  PIDS+=($!)
  URLS+=("http://127.0.0.1:$p")
  for _ in $(seq 200); do curl -fs "http://127.0.0.1:$p/sys/healthcheck" >/dev/null && return; sleep 0.05; done
  echo "server did not start" >&2; tail "$WORK/serve.log" >&2; exit 1
}

stop_all() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  PIDS=(); URLS=()
  bash scripts/nats-test-server.sh stop "$NATS_PIDFILE" 2>/dev/null || true
}

listener_runs() {
  local total=0 u n
  for u in "${URLS[@]}"; do
    n=$(curl -fs --max-time 5 "$u/metrics" \
      | awk '/^sluice_executions_total\{workspace="bench",slug="listener"\}/ {print $2}')
    total=$((total + ${n:-0}))
  done
  echo "$total"
}

stored() { # messages in the event stream, from the nats-server monitoring endpoint
  curl -fs --max-time 5 "http://127.0.0.1:$MON/jsz?streams=true" \
    | python3 -c 'import json,sys; print(sum(s["state"]["messages"] for a in json.load(sys.stdin).get("account_details",[]) for s in a.get("stream_detail",[]) if s["name"]=="SLUICE_EVENTS"))'
}

scenario() { # scenario NAME INSTANCES EMITTERS NATS(0|1)
  local name=$1 inst=$2 emitters=$3 nats=$4 total=$(($3 * N)) i t0 last end code ok=1
  if [ "$nats" = 1 ]; then
    start_nats
    for ((i = 0; i < inst; i++)); do start_instance NATS_URL="$NATS_URL"; done
  else
    for ((i = 0; i < inst; i++)); do start_instance; done
  fi
  local -a callers=()
  t0=$(now)
  for ((i = 0; i < emitters; i++)); do
    ( r=$(curl -s -o "$WORK/out.$i" -w '%{http_code}' --max-time "$TIMEOUT" -X POST \
        -H 'content-type: application/json' -d "{\"n\": $N}" \
        "${URLS[$((i % inst))]}/v2/workspaces/bench/webhooks/emitter") || true
      echo "$r $(now)" > "$WORK/end.$i" ) &
    callers+=($!)
  done
  wait "${callers[@]}"
  last=$t0
  for ((i = 0; i < emitters; i++)); do
    read -r code end < "$WORK/end.$i"
    [ "$code" = 200 ] || { ok=0; echo "  emitter $i: HTTP $code $(head -c 300 "$WORK/out.$i")" >&2; }
    last=$(awk -v a="$last" -v b="$end" 'BEGIN { print (b > a) ? b : a }')
  done
  local emit_s; emit_s=$(secs "$t0" "$last")
  local check=""
  if [ "$nats" = 1 ]; then check=" (stored when the calls returned: $(stored) of $total)"; fi
  local runs=0 done_s="-"
  while :; do
    runs=$(listener_runs)
    if [ "$runs" -ge "$total" ]; then done_s=$(secs "$t0" "$(now)"); break; fi
    if [ "$(secs "$t0" "$(now)" | cut -d. -f1)" -ge "$TIMEOUT" ]; then break; fi
    sleep 0.1
  done
  if [ "$ok" = 1 ]; then
    echo "$name: $inst instance(s), $emitters emitter(s) x $N events: emit ${emit_s} s = $(rate "$total" "$emit_s") events/s$check; all $runs listener runs done ${done_s} s$([ "$done_s" = - ] || echo " = $(rate "$total" "$done_s") runs/s")"
  else
    echo "$name: failed (see above); $runs listener runs"
  fi
  stop_all
}

echo "$("$(bash scripts/nats-test-server.sh bin 2>/dev/null)" --version); $(nproc) cores; load $(cut -d" " -f1-3 /proc/loadavg); $BIN; HEAD $(git rev-parse --short HEAD)"
for s in $SCENARIOS; do
  case $s in
    embedded) scenario embedded 1 1 0 ;;
    *x*) scenario "$s" "${s%x*}" "${s#*x}" 1 ;;
    *) echo "unknown scenario $s" >&2; exit 2 ;;
  esac
done
