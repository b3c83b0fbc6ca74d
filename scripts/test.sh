#!/usr/bin/env bash
# Lint, type-check and run the tests. `scripts/test.sh` runs the default suite (no `slow` tests);
# `scripts/test.sh --slow` runs the slow ones CI runs (real Flower deployment, resume, faults ...);
# `scripts/test.sh --long` the slow ones CI leaves out (measurements, multi-seed accuracy, 10M-parameter HE).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FLWR_HOME="${FLWR_HOME:-$(mktemp -d)}"
case "${1:-}" in
  --slow) shift; exec .venv/bin/python -m pytest -m "slow and not long" "$@" ;;
  --long) shift; exec .venv/bin/python -m pytest -m long "$@" ;;
esac
.venv/bin/ruff check fedcore tests benchmarks examples
.venv/bin/mypy fedcore
exec .venv/bin/python -m pytest -m "not slow" "$@"
