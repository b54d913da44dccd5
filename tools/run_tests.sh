#!/usr/bin/env bash
# Set-up + the whole test suite (CPU, 8 fake devices per worker), in PYTEST_WORKERS (default 2) pytest-xdist
# processes, each test file on one worker. Extra arguments go to pytest (e.g. -m "not slow", -k name, -n 0).
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_TESTS=1 bash tools/setup.sh
exec "${VENV:-.venv}/bin/python" -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
