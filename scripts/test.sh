#!/usr/bin/env bash
# Lint, type-check and run the tests. `scripts/test.sh` runs the default suite (no `slow` tests);
# `scripts/test.sh --slow` runs only the slow ones (real Flower deployment, 10M-parameter HE ...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FLWR_HOME="${FLWR_HOME:-$(mktemp -d)}"
if [ "${1:-}" = "--slow" ]; then
  shift
  exec .venv/bin/python -m pytest -m slow "$@"
fi
.venv/bin/ruff check fedcore tests benchmarks examples
.venv/bin/mypy fedcore
exec .venv/bin/python -m pytest -m "not slow" "$@"
