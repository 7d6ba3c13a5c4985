#!/usr/bin/env bash
# Prints the module graph of src/ and fails when it has a cycle.
#
# Two graphs: the top-level modules (an edge `a -> b` when a file of `a` names
# `crate::b`), and the files of every folder listed in MODULE_GRAPH_FILES
# (default `expr`; an edge when one file names `super::x` or `crate::<folder>::x`).
# Test code is left out: files named tests.rs and everything after a top-level
# `#[cfg(test)]`, since tests may reach across modules without shaping the code.
# Exit 0: no cycle; 1: a cycle (its members are printed by tsort); 2: bad usage.
set -euo pipefail
cd "$(dirname "$0")/.."
folders=${MODULE_GRAPH_FILES:-expr}

# The code of one file, without comments and without its tests, with each `use a::{b, c}`
# group spelt out as `a::b a::c` (one level of braces, which is all rustfmt leaves here).
code_of() {
  awk '/^#\[cfg\(test\)\]/ { exit } { sub(/\/\/.*/, ""); print }' "$1" |
    perl -0pe 's{((?:crate|super)(?:::\w+)*)::\{([^{}]*)\}}{join " ", map { "$1::$_" } split /\s*,\s*/, $2}ge'
}

# `from to` pairs for the top-level modules.
top_edges() {
  find src -name '*.rs' ! -name tests.rs ! -path '*/tests/*' | sort | while read -r file; do
    rel=${file#src/}
    from=${rel%%/*}
    from=${from%.rs}
    case $from in lib | main) continue ;; esac
    code_of "$file" | grep -oE 'crate::[a-z_][a-z0-9_]*' | sed 's/^crate:://' | sort -u |
      while read -r to; do
        [ "$to" != "$from" ] && echo "$from $to"
      done
  done | sort -u
}

# `from to` pairs for the files of one folder of src/.
file_edges() {
  local folder=$1
  find "src/$folder" -maxdepth 1 -name '*.rs' ! -name tests.rs ! -name mod.rs | sort | while read -r file; do
    from=$(basename "$file" .rs)
    code_of "$file" | grep -oE "(super|crate::$folder)::[a-z_][a-z0-9_]*" | sed -E 's/^.*:://' | sort -u |
      while read -r to; do
        [ "$to" != "$from" ] && [ -f "src/$folder/$to.rs" ] && echo "$from $to"
      done
  done | sort -u
}

status=0
# Prints a graph's edges and its cycles; returns 1 when there is one.
report() {
  local name=$1 edges=$2
  echo "== $name"
  echo "$edges" | awk 'NF { a[$1] = a[$1] " " $2 } END { for (k in a) print "  " k " ->" a[k] }' | sort
  local loops
  loops=$(echo "$edges" | tsort 2>&1 >/dev/null | sed -n 's/^tsort: //p' | grep -v 'input contains a loop' || true)
  if [ -n "$loops" ]; then
    echo "  CYCLE through: $(echo "$loops" | tr '\n' ' ')"
    return 1
  fi
  echo "  no cycle"
}

report "top-level modules" "$(top_edges)" || status=1
for folder in $folders; do
  [ -d "src/$folder" ] || { echo "no folder src/$folder" >&2; exit 2; }
  report "files of src/$folder" "$(file_edges "$folder")" || status=1
done
exit $status
