#!/usr/bin/env bash
# Instructions per run of the trivial automation and of a 2000-iteration repeat, counted by
# callgrind (independent of the machine's load): (Ir at N runs - Ir at 0 runs) / N.
# Only the runs are counted (--toggle-collect), not start-up or the clock's calibration.
# Usage: bench/ircount.sh   (needs valgrind; builds the ircount example in release)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is required (apt-get install valgrind)" >&2; exit 2; }
cargo build --release --quiet --example ircount
bin=target/release/examples/ircount
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# glibc's malloc consolidates its free lists on some runs and not others (the heap's layout
# differs with ASLR and hash seeds), which moves a run by ~700 Ir: keep the least of three.
once() { N=$2 SLUG=$1 valgrind --tool=callgrind --toggle-collect='ircount::runs' --callgrind-out-file="$out" "$bin" 2>&1 | grep -o 'Collected : [0-9]*' | awk '{print $3}'; }
count() { for _ in 1 2 3; do once "$@"; done | sort -n | head -1; }
for pair in hello:2000 named:2000 loop:20; do
  slug=${pair%%:*} n=${pair##*:}
  base=$(count "$slug" 0) total=$(count "$slug" "$n")
  echo "$slug: $(( (total - base) / n )) Ir per run"
done
