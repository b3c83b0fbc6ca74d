#!/usr/bin/env bash
# Run the main job: the four-hospital medical example, every site simulated on this machine.
# Extra arguments go to `fedcore run`, e.g. scripts/run.sh --job fedavg --rounds 5
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fedcore run examples/medical "$@"
