#!/usr/bin/env bash
# Instructions per run of the trivial automation and of a 2000-iteration repeat, counted by
# callgrind (independent of the machine's load): (Ir at N runs - Ir at 0 runs) / N.
# Usage: bench/ircount.sh   (needs valgrind; builds the ircount example in release)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is required (apt-get install valgrind)" >&2; exit 2; }
cargo build --release --quiet --example ircount
bin=target/release/examples/ircount
out=$(mktemp)
trap 'rm -f "$out"' EXIT
count() { N=$2 SLUG=$1 valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" 2>&1 | grep -o 'Collected : [0-9]*' | awk '{print $3}'; }
for pair in hello:2000 loop:20; do
  slug=${pair%%:*} n=${pair##*:}
  base=$(count "$slug" 0) total=$(count "$slug" "$n")
  echo "$slug: $(( (total - base) / n )) Ir per run"
done
