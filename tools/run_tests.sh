#!/usr/bin/env bash
# Set-up + the whole test suite (CPU, 8 fake devices). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_TESTS=1 bash tools/setup.sh
exec "${VENV:-.venv}/bin/python" -m pytest "$@"
