#!/usr/bin/env bash
# Set-up + the main job on the embedded default: train phantom_tiny on phantom radiographs (resumes if the
# workdir exists; prints the held-out scores of the last step), then analyse one held-out phantom with the
# four-task workflow. WORKDIR and extra --config.KEY=VALUE arguments are optional.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
WORKDIR=${WORKDIR:-runs/phantom_tiny}
VENV=${VENV:-.venv}
"$VENV/bin/imtcxr" train --config configs/phantom_tiny.py --workdir "$WORKDIR" "$@"
# The first held-out phantom with a finding: what the workflow found beside what was drawn into it.
"$VENV/bin/python" tools/demo_analysis.py "$WORKDIR"
echo "training curve: $WORKDIR/training_curve.png"
