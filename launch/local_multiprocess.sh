#!/usr/bin/env bash
# One training run as several processes on this machine, each with its own fake CPU devices.
#
# This is the multi-host code path without a cluster: the processes join through jax.distributed (explicit
# --coordinator/--num-processes/--process-id flags), talk over gloo, each builds only its own share of every
# batch, process 0 alone writes the logs, and all of them take part in saving and restoring checkpoints.
# A run made this way gives the same losses as one process with all the devices (tests/train/test_multihost.py).
#
# Usage:
#   launch/local_multiprocess.sh --config configs/micro.py --workdir /tmp/micro_mh --config.mesh='(2,4,1)'
# Everything after the script name goes to `imtcxr train` unchanged, in every process.
#
# Variables (environment):
#   NUM_PROCESSES        processes to start (default 2)
#   DEVICES_PER_PROCESS  fake CPU devices in each (default 4); the run has NUM_PROCESSES x this many devices,
#                        so the config's mesh must multiply to that
#   PORT                 coordinator port on 127.0.0.1 (default: a free one)
#   PYTHON               interpreter (default: .venv/bin/python if it exists, else python3)
#   LOG_DIR              where processes 1..N-1 write process_<i>.log (default: a new temporary folder);
#                        process 0 prints to this terminal
set -euo pipefail

NUM_PROCESSES=${NUM_PROCESSES:-2}
DEVICES_PER_PROCESS=${DEVICES_PER_PROCESS:-4}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x $REPO/.venv/bin/python ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
# Ask the OS for a port nobody holds; there is a small window before process 0 binds it, acceptable here.
PORT=${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
LOG_DIR=${LOG_DIR:-$(mktemp -d -t imtcxr_multiprocess.XXXXXX)}
mkdir -p "$LOG_DIR"

# CPU only, and the device count per process (replacing any count already in XLA_FLAGS; other flags stay).
export JAX_PLATFORMS=cpu
XLA_FLAGS=$(sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g' <<<"${XLA_FLAGS:-}")
export XLA_FLAGS="$XLA_FLAGS --xla_force_host_platform_device_count=$DEVICES_PER_PROCESS"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # configs/ is imported as a package from the repo root
cd "$REPO"

pids=()
# If one process dies the others would wait for it at the next collective: stop them all.
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup INT TERM

run() {  # run PROCESS_ID: `imtcxr train` as that process
  "$PYTHON" -m imtcxr_jax.cli train --coordinator "127.0.0.1:$PORT" --num-processes "$NUM_PROCESSES" \
    --process-id "$1" "${@:2}"
}

echo "starting $NUM_PROCESSES processes x $DEVICES_PER_PROCESS CPU devices, coordinator 127.0.0.1:$PORT;" \
  "logs of processes 1..$((NUM_PROCESSES - 1)) in $LOG_DIR" >&2
for ((i = 1; i < NUM_PROCESSES; i++)); do
  run "$i" "$@" >"$LOG_DIR/process_$i.log" 2>&1 &
  pids+=($!)
done
run 0 "$@" &
pids+=($!)

# Wait for whichever finishes first, so that a failure stops the rest at once.
status=0
for _ in "${pids[@]}"; do
  if ! wait -n; then
    status=1
    cleanup
  fi
done
if ((status)); then
  echo "a process failed; see the output above and $LOG_DIR/process_*.log" >&2
fi
exit "$status"
