#!/usr/bin/env bash
# Set-up + the main job on the embedded default: train phantom_tiny on phantom radiographs (resumes if the
# workdir exists), then score held-out phantoms. WORKDIR and extra --config.KEY=VALUE arguments are optional.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
WORKDIR=${WORKDIR:-runs/phantom_tiny}
VENV=${VENV:-.venv}
"$VENV/bin/imtcxr" train --config configs/phantom_tiny.py --workdir "$WORKDIR" "$@"
"$VENV/bin/imtcxr" eval --checkpoint "$WORKDIR"
echo "training curve: $WORKDIR/training_curve.png"
