#!/usr/bin/env bash
# Creates (or reuses) the virtual environment and installs the project into it.
#   VENV=.venv        where the environment lives
#   WITH_TESTS=1      also install the test/reference requirements (PyTorch CPU, pytest, ...)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
requirements=(-r requirements.txt)
if [ "${WITH_TESTS:-0}" = "1" ]; then requirements+=(-r requirements-test.txt); fi
echo "setup: installing ${requirements[*]}"
"$VENV/bin/python" -m pip install --quiet "${requirements[@]}"
"$VENV/bin/python" -m pip install --quiet --no-deps -e .
echo "setup: ready ($("$VENV/bin/python" -c 'import jax, flax; print(f"jax {jax.__version__}, flax {flax.__version__}")'))"
