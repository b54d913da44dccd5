#!/usr/bin/env bash
# GPU checks for imtcxr-jax, run from anywhere inside the repository:
#
#   tools/gpu_check.sh                 # on a machine with an NVIDIA GPU
#   tools/gpu_check.sh --dry-run       # anywhere, on the CPU: micro model, tiny workload
#   tools/gpu_check.sh --fetch-wheels  # here, before: wheels of what a bare GPU image lacks -> .whl/
#
# What it does (each step's output goes under $OUT, default ./gpu_check_out; a step that fails is recorded
# and the next one still runs; the exit status is non-zero if any step failed or was cut by the budget):
#   1. packages: where the python lacks this project's pure-Python or small dependencies (grain,
#      ml-collections, pydicom, ...), the wheels carried in .whl/ (made by --fetch-wheels on a machine with
#      the package index, for Python 3.12: WHEEL_PYTHON below) are installed into a temporary folder put on
#      PYTHONPATH; the repository itself goes on PYTHONPATH too, so nothing needs installing into the python.
#   2. environment: nvidia-smi, python, jax/jaxlib/flax versions, the devices JAX sees  -> env.txt
#      jax[cuda12] when JAX does not see a GPU: installed with pip for the jax version already there, from
#      $WHEELHOUSE (offline: pip install --no-index --find-links) if set, else from the package index.
#      Without network and without a wheelhouse it stops with a message saying so (exit 2).
#   3. ofa_huge (random weights): the full four-task workflow (14 presence questions, 2 boxes, 3 polygons of
#      30 points, a 95-token report, beam 6, 512 px) at batch 1 -> latency per image, and at batch 64 ->
#      images/s; float32 (default matmul precision)                              -> decode_ofa_huge.jsonl
#      (one JSON line per task and one "workflow" line per run, see tools/bench/decode.py --jax-only)
#   4. GPU-relevant tests (decoding parity with the eager reference, cached decoding = teacher forcing,
#      image-feature reuse, projected constrained search, the workflow), with float32 matmuls at
#      "highest" precision (GPUs otherwise use TF32 for float32 matmuls, which parity tolerances are not
#      written for)                                                                    -> tests.txt
#   5. the same workflow benchmark in bfloat16                                       -> decode_ofa_huge.jsonl
# Steps 3-5 share a time budget (--budget SECONDS from the start, default 540: a lent machine's call is
# limited); a step runs under `timeout` for what is left, and one with under a minute left is skipped.
#
# Options: --dry-run, --fetch-wheels, --out DIR, --size NAME (default ofa_huge), --skip-tests, --skip-bench,
# --budget SECONDS. PYTHON=... picks the interpreter (default .venv/bin/python if there, else python3).
set -uo pipefail

DRY_RUN=0
FETCH_WHEELS=0
SIZE=ofa_huge
RUN_TESTS=1
RUN_BENCH=1
BUDGET=540
OUT_DIR="${OUT:-gpu_check_out}"
WHEEL_PYTHON=3.12  # the python of the lent GPU machines' image
# What that image lacks of requirements.txt (and grain's own needs), and optax, orbax-checkpoint and flax at
# the versions the dry run passed with under the image's jax (0.11.2; the pinned flax 0.12.8 does not import
# under it). tensorflow-datasets is left out: only `imtcxr data build` needs it. The image's jax, numpy,
# pillow, tokenizers and torch are used as they are.
GPU_WHEELS=(grain==0.2.18 array-record==0.8.6 portpicker==1.6.0 ml-collections==1.1.0 tensorboardX==2.6.5
            pydicom==3.0.2 importlib_resources==7.1.0 optax==0.2.8 orbax-checkpoint==0.12.8 flax==0.12.12)
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --fetch-wheels) FETCH_WHEELS=1 ;;
    --out) OUT_DIR="$2"; shift ;;
    --size) SIZE="$2"; shift ;;
    --skip-tests) RUN_TESTS=0 ;;
    --skip-bench) RUN_BENCH=0 ;;
    --budget) BUDGET="$2"; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done
STARTED=$SECONDS

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1

if [ "$FETCH_WHEELS" = 1 ]; then
  PLATFORMS=()
  for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
             manylinux2014_x86_64 manylinux1_x86_64; do PLATFORMS+=(--platform "$tag"); done
  rm -rf .whl && mkdir -p .whl
  python3 -m pip download --no-deps --only-binary=:all: --python-version "$WHEEL_PYTHON" --implementation cp \
    "${PLATFORMS[@]}" -d .whl "${GPU_WHEELS[@]}" || exit 1
  echo "gpu_check: $(ls .whl | wc -l) wheels ($(du -sh .whl | cut -f1)) in .whl/ (ignored by git): carry .whl" >&2
  exit 0
fi

mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY="$(command -v python3 || command -v python)"; fi
if [ -z "$PY" ]; then echo "gpu_check: no python found (PYTHON, .venv/bin/python or python3)" >&2; exit 1; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
FAILED=()
log() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$OUT_DIR/log.txt" >&2; }
# Runs "$@" under timeout for the budget's rest; returns 124 without running when under a minute is left.
budgeted() {
  local left=$((BUDGET - (SECONDS - STARTED)))
  if [ "$left" -lt 60 ]; then log "skipped (budget: ${left} s left): $*"; return 124; fi
  timeout "$left" "$@"
}

# ---- 1. packages the python lacks: the carried wheels ----------------------------------------------------
IMPORTS="import flax, optax, grain, ml_collections, tokenizers, PIL, pydicom, tqdm, tensorboardX, importlib_resources"
if ! "$PY" -c "$IMPORTS" > /dev/null 2>&1; then
  if ls .whl/*.whl > /dev/null 2>&1; then
    SITE="$(mktemp -d /tmp/imtcxr_site.XXXX)"
    log "installing the carried wheels (.whl/) into $SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl \
      > "$OUT_DIR/wheels.txt" 2>&1 || FAILED+=("wheels")
    export PYTHONPATH="$PYTHONPATH:$SITE"  # ahead of the python's own site-packages
  fi
  if ! "$PY" -c "$IMPORTS" > "$OUT_DIR/imports.txt" 2>&1; then
    log "$PY lacks packages ($(tail -n 1 "$OUT_DIR/imports.txt")): run tools/gpu_check.sh --fetch-wheels" \
        "on a machine with the package index and carry .whl/"
    exit 2
  fi
fi

# ---- 2. environment and jax[cuda12] ---------------------------------------------------------------------
if [ "$DRY_RUN" = 1 ]; then
  export JAX_PLATFORMS=cpu
  log "dry run: CPU, micro model, tiny workload; jax[cuda12] is not installed"
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
  "$PY" -c "import sys, jax, jaxlib; print('python', sys.version.split()[0]); print('jax', jax.__version__, 'jaxlib', jaxlib.__version__); import flax, optax, orbax.checkpoint as oc; print('flax', flax.__version__, 'optax', optax.__version__, 'orbax-checkpoint', oc.__version__, flax.__file__); print('backend', jax.default_backend()); print('devices', jax.devices())"
} > "$OUT_DIR/env.txt" 2>&1 || FAILED+=("env")
log "environment written to $OUT_DIR/env.txt"

# ---- 3-5. the workflow benchmark (float32), the tests, the benchmark in bfloat16 --------------------------
if [ "$DRY_RUN" = 1 ]; then
  SIZE=micro
  BENCH=(--batches 1 2 --image-size 64 --labels 2 --findings 1 --points 4 --report-max-len 8 --repeats 1)
  TESTS=(tests/decoding/test_reuse_and_projection.py -k "projection_needs or reused_image")
else
  BENCH=(--batches 1 64 --image-size 512 --labels 14 --findings 2 --points 30 --report-max-len 95
         --large-batch-report-max-len 95 --repeats 2)
  TESTS=(tests/decoding tests/test_workflow.py "tests/models/test_model.py::test_cached_decoding_equals_teacher_forcing")
fi
bench() {  # one dtype; JSON lines are appended as each batch size finishes, so a cut run keeps the first
  log "benchmark: $SIZE $1 ${BENCH[*]}"
  budgeted "$PY" -m tools.bench.decode --jax-only --dtype "$1" --sizes "$SIZE" --beam 6 "${BENCH[@]}" \
    >> "$OUT_DIR/decode_$SIZE.jsonl" 2>> "$OUT_DIR/log.txt" || FAILED+=("bench-$1")
}
if [ "$RUN_BENCH" = 1 ]; then bench float32; fi
if [ "$RUN_TESTS" = 1 ]; then
  log "tests: ${TESTS[*]}"
  budgeted env JAX_DEFAULT_MATMUL_PRECISION=highest "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}" \
    > "$OUT_DIR/tests.txt" 2>&1 || FAILED+=("tests")
  tail -n 3 "$OUT_DIR/tests.txt" | tee -a "$OUT_DIR/log.txt" >&2
fi
if [ "$RUN_BENCH" = 1 ]; then
  if [ "$DRY_RUN" = 0 ]; then bench bfloat16; fi
fi
if [ -s "$OUT_DIR/decode_$SIZE.jsonl" ]; then
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
  log "failed or cut steps: ${FAILED[*]} (results so far are in $OUT_DIR; ${SECONDS} s in all)"
  exit 1
fi
log "done in ${SECONDS} s; results in $OUT_DIR"
