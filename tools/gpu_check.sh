#!/usr/bin/env bash
# GPU checks for imtcxr-jax, run from anywhere inside the repository:
#
#   tools/gpu_check.sh              # on a machine with an NVIDIA GPU
#   tools/gpu_check.sh --dry-run    # anywhere, on the CPU: micro model, tiny workload, nothing installed
#
# What it does (each step's output goes under $OUT, default ./gpu_check_out; a step that fails is recorded
# and the next one still runs; the exit status is non-zero if any step failed):
#   1. environment: nvidia-smi, python, jax/jaxlib versions, the devices JAX sees  -> env.txt
#   2. jax[cuda12] when JAX does not see a GPU: installed with pip for the jax version already in the venv,
#      from $WHEELHOUSE (offline: pip install --no-index --find-links) if set, else from the package index.
#      Without network and without a wheelhouse it stops with a message saying so (exit 2).
#   3. GPU-relevant tests (decoding parity with the eager reference, cached decoding = teacher forcing,
#      image-feature reuse, projected constrained search, the workflow), with float32 matmuls at
#      "highest" precision (GPUs otherwise use TF32 for float32 matmuls, which parity tolerances are not
#      written for)                                                                    -> tests.txt
#   4. ofa_huge (random weights): the full four-task workflow (14 presence questions, 2 boxes, 3 polygons of
#      30 points, a 95-token report, beam 6, 512 px) at batch 1 -> latency per image, and at batch 64 ->
#      images/s; float32 (default matmul precision) and bfloat16                 -> decode_ofa_huge.jsonl
#      (one JSON line per task and one "workflow" line per run, see tools/bench/decode.py --jax-only)
#
# Options: --dry-run, --out DIR, --size NAME (default ofa_huge), --skip-tests, --skip-bench.
set -uo pipefail

DRY_RUN=0
SIZE=ofa_huge
RUN_TESTS=1
RUN_BENCH=1
OUT_DIR="${OUT:-gpu_check_out}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --out) OUT_DIR="$2"; shift ;;
    --size) SIZE="$2"; shift ;;
    --skip-tests) RUN_TESTS=0 ;;
    --skip-bench) RUN_BENCH=0 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY="$(command -v python3 || command -v python)"; fi
if [ -z "$PY" ]; then echo "gpu_check: no python found (expected .venv/bin/python or python3)" >&2; exit 1; fi
FAILED=()
log() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$OUT_DIR/log.txt" >&2; }

# ---- 1-2. environment and jax[cuda12] -------------------------------------------------------------------
if [ "$DRY_RUN" = 1 ]; then
  export JAX_PLATFORMS=cpu
  log "dry run: CPU, micro model, tiny workload; nothing is installed"
else
  if ! command -v nvidia-smi > /dev/null 2>&1; then
    log "no nvidia-smi: this does not look like a machine with an NVIDIA GPU (use --dry-run to test the script)"
    exit 2
  fi
  if ! "$PY" -c "import jax, sys; sys.exit(0 if jax.default_backend() == 'gpu' else 1)" > /dev/null 2>&1; then
    JAX_VERSION="$("$PY" -c 'import importlib.metadata as m; print(m.version("jax"))' 2> /dev/null)"
    SPEC="jax[cuda12]${JAX_VERSION:+==$JAX_VERSION}"
    log "JAX sees no GPU; installing $SPEC"
    if [ -n "${WHEELHOUSE:-}" ]; then
      "$PY" -m pip install --no-index --find-links "$WHEELHOUSE" "$SPEC" > "$OUT_DIR/pip.txt" 2>&1
    else
      "$PY" -m pip install "$SPEC" > "$OUT_DIR/pip.txt" 2>&1
    fi
    if [ $? -ne 0 ]; then
      log "could not install $SPEC (see $OUT_DIR/pip.txt). Without network, put the wheels of $SPEC and its" \
          "CUDA dependencies (pip download '$SPEC' -d DIR on a connected machine) in a folder and rerun with" \
          "WHEELHOUSE=DIR"
      exit 2
    fi
    if ! "$PY" -c "import jax, sys; sys.exit(0 if jax.default_backend() == 'gpu' else 1)" >> "$OUT_DIR/pip.txt" 2>&1; then
      log "$SPEC is installed but JAX still sees no GPU (driver too old for CUDA 12? see $OUT_DIR/pip.txt)"
      exit 2
    fi
  fi
  export JAX_PLATFORMS=cuda
  export XLA_PYTHON_CLIENT_PREALLOCATE=false  # other processes (pytest workers) share the GPU
fi
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse HEAD 2> /dev/null || echo unknown)"
  command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi
  "$PY" -c "import sys, jax, jaxlib; print('python', sys.version.split()[0]); print('jax', jax.__version__, 'jaxlib', jaxlib.__version__); print('backend', jax.default_backend()); print('devices', jax.devices())"
} > "$OUT_DIR/env.txt" 2>&1 || FAILED+=("env")
log "environment written to $OUT_DIR/env.txt"

# ---- 3. tests -------------------------------------------------------------------------------------------
if [ "$RUN_TESTS" = 1 ]; then
  if [ "$DRY_RUN" = 1 ]; then
    TESTS=(tests/decoding/test_reuse_and_projection.py -k "projection_needs or reused_image")
  else
    TESTS=(tests/decoding tests/test_workflow.py "tests/models/test_model.py::test_cached_decoding_equals_teacher_forcing")
  fi
  log "tests: ${TESTS[*]}"
  JAX_DEFAULT_MATMUL_PRECISION=highest "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}" \
    > "$OUT_DIR/tests.txt" 2>&1 || FAILED+=("tests")
  tail -n 3 "$OUT_DIR/tests.txt" | tee -a "$OUT_DIR/log.txt" >&2
fi

# ---- 4. ofa_huge workflow latency (batch 1) and throughput (batch 64) -----------------------------------
if [ "$RUN_BENCH" = 1 ]; then
  if [ "$DRY_RUN" = 1 ]; then
    SIZE=micro
    BENCH=(--batches 1 2 --image-size 64 --labels 2 --findings 1 --points 4 --report-max-len 8 --repeats 1)
    DTYPES=(float32)
  else
    BENCH=(--batches 1 64 --image-size 512 --labels 14 --findings 2 --points 30 --report-max-len 95
           --large-batch-report-max-len 95 --repeats 3)
    DTYPES=(float32 bfloat16)
  fi
  for DTYPE in "${DTYPES[@]}"; do
    log "benchmark: $SIZE $DTYPE ${BENCH[*]}"
    "$PY" -m tools.bench.decode --jax-only --dtype "$DTYPE" --sizes "$SIZE" --beam 6 "${BENCH[@]}" \
      >> "$OUT_DIR/decode_$SIZE.jsonl" 2>> "$OUT_DIR/log.txt" || FAILED+=("bench-$DTYPE")
  done
  "$PY" - "$OUT_DIR/decode_$SIZE.jsonl" > "$OUT_DIR/summary.txt" <<'PYEOF' || FAILED+=("summary")
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("task") == "workflow":
        print(f"{r['size']} {r['dtype']} batch {r['batch']}: {r['ms_per_image']:.1f} ms/image, "
              f"{r['jax_images_per_s']:.2f} images/s ({r['backend']} {r['device']})")
PYEOF
  cat "$OUT_DIR/summary.txt" >&2
fi

if [ ${#FAILED[@]} -gt 0 ]; then
  log "failed steps: ${FAILED[*]} (results so far are in $OUT_DIR)"
  exit 1
fi
log "done; results in $OUT_DIR"
