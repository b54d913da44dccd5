"""Decoding benchmark on CPU: the evidence workflow's four tasks, our jitted decoding against a PyTorch eager
peer on the same weights, and against the roofline measured in the same run.

Run from the repository root:

    .venv/bin/python -m tools.bench.decode --quick          # ~2 min: micro + ofa_tiny, small workload
    .venv/bin/python -m tools.bench.decode                  # micro, ofa_tiny, ofa_base; batch 1 and 32
    .venv/bin/python -m tools.bench.decode --sizes ofa_tiny --batches 32 --repeats 3

Workload (per image, the workflow's questions with random instructions of `--src-len` tokens):
  classification  `--labels` presence questions: P(yes) from one teacher-forced step (1 token each)
  localization    `--findings` boxes: beam search under the box constraint (4 bins + EOS)
  segmentation    3 polygons of `--points` points (2 * points bins + EOS)
  report          one free-text report, at most `--report-max-len` tokens, no-repeat-3-gram
Every decoded question uses beam `--beam` (6); constrained steps are normalised over the allowed tokens.
`batch` is the number of images run together; the questions of a task for all of them run in model calls of
at most `rows` = max(batch, `--rows`) questions (`--rows` 16: the workflow's default batch_size), a short
call padded to a power of two as the workflow does (at batch 1: 14 presence questions in one call of 16 rows,
2 boxes in one call of 2, 3 polygons in one call of 4, the report alone).

Sides, each in a fresh 'spawn' child process, loading the same random weights (`randomize_`):
  jax    the workflow's path: `encode_images` once per image, `encode(..., image_features=...)` per question
         batch, `first_token_log_probs`, the jitted `beam_search` (box / polygon projected onto the bins);
         compilation happens in an untimed warm-up run;
  torch  tests/reference/ofa_torch.py under no_grad with the eager beam search of tools/bench/torch_beam.py
         (KV-cached decoder step, full-vocabulary logits masked before the log-softmax); the reference's own
         `encode` per question batch (the trunk runs per question, as in the original demo). Timed with
         each of `--torch-threads` (default 1 and the core count), the best per task (`torch_threads`).
Both sides return every answer; the parent checks that the best hypotheses' tokens are identical and that
P(yes) agrees (reported as `identical_tokens`, `mismatched_answers`, `max_p_yes_diff`).

Roofline (measured in the JAX child): `peak_gflops` from a jitted 2048x2048 float32 matmul, `bandwidth_gbs`
the best of a jitted read-only reduction over 256 MiB and a numpy copy of 256 MiB. For the report's beam search (R = batch * beam rows, Tmax =
max_len + 1 cache positions, S encoder tokens, V vocabulary) the FLOPs of one decoder step are
L * (2R*(6D^2 + 2DF) + 4R*D*(Tmax + S)) + 2R*D*V, the bytes moved are the decoder weights read once plus the
KV caches read (self: R*Tmax*D*2 per layer, cross: B*S*D*2 per layer, float32). `flop_roofline_fraction` =
achieved FLOP/s over the peak, `memory_roofline_fraction` = achieved bytes/s over the bandwidth.

Output: one JSON line per (size, batch, side-by-side task), tasks "features" (JAX only: the trunk once per
image), "classification", "localization", "segmentation", "report", and "workflow" (all of them); best of
`--repeats` timed runs after the warm-up (the machine is shared: the best is the least disturbed run).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for `python tools/bench/...`
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from tools.bench.common import cpu_count, machine_info, matmul_peak_gflops, print_json_line, run_isolated

TASKS = ("classification", "localization", "segmentation", "report")
ANATOMY = 3
YES_NO = (5, 6)  # any two ids: random weights give them no meaning; P(yes) = p(5) / (p(5) + p(6))


@dataclasses.dataclass(frozen=True)
class Workload:
    size: str
    batch: int
    beam: int
    image_size: int
    src_len: int
    labels: int
    findings: int
    points: int
    report_max_len: int
    seed: int
    repeats: int
    rows: int = 16  # questions per model call (the workflow's batch_size)
    torch_threads: tuple[int, ...] = ()  # each thread count is timed; the best run per task counts

    def questions(self, task: str) -> int:
        per_image = {"classification": self.labels, "localization": self.findings}
        return self.batch * per_image.get(task, ANATOMY if task == "segmentation" else 1)


def inputs(work: Workload, vocab_size: int) -> dict[str, np.ndarray]:
    """Images (batch, H, W, 3) and per task the instructions (questions, src_len) and image index per row."""
    rng = np.random.default_rng(work.seed)
    out = {"images": rng.uniform(-1, 1, (work.batch, work.image_size, work.image_size, 3)).astype(np.float32)}
    for task in TASKS:
        count = work.questions(task)
        src = rng.integers(4, vocab_size, (count, work.src_len))
        src[:, 0], src[:, -1] = 0, 2
        out[f"{task}.src"] = src.astype(np.int32)
        out[f"{task}.image"] = np.arange(count) % work.batch
    return out


def chunks(count: int, size: int) -> list[np.ndarray]:
    """Row indices of each call, as the workflow batches: at most `size` questions per call, a short call
    padded (repeating its last row) to the next power of two (`workflow._bucket`)."""
    out = []
    for start in range(0, count, size):
        rows = np.arange(start, min(start + size, count))
        padded = min(1 << max(len(rows) - 1, 0).bit_length(), size)
        out.append(np.concatenate([rows, np.repeat(rows[-1:], padded - len(rows))]))
    return out


# ---------------------------------------------------------------------------------------------------------
# JAX child
# ---------------------------------------------------------------------------------------------------------


def jax_child(cfg: Any, weights_path: Path, work: Workload) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from imtcxr_jax.convert.state_dict import load_ofa_state_dict
    from imtcxr_jax.decoding import BoxConstraint, PolygonConstraint, beam_search
    from imtcxr_jax.decoding.beam_search import encode, encode_images, first_token_log_probs
    from imtcxr_jax.models.imtcxr import create_model
    from tools.bench.forward import read_weights_and_inputs

    model = create_model(cfg, seed=1)
    if weights_path is not None:
        weights, _ = read_weights_and_inputs(weights_path)
        load_ofa_state_dict(model, weights, source=str(weights_path))
        del weights
    graphdef, state = nnx.split(model)
    data = inputs(work, cfg.vocab_size)
    v = cfg.vocab_size
    decodings = {
        "localization": dict(
            constraint=BoxConstraint(vocab_size=v), max_len=4, no_repeat_ngram_size=0,
            normalize_over="allowed", project_allowed=True,
        ),
        "segmentation": dict(
            constraint=PolygonConstraint(vocab_size=v, num_points=work.points), max_len=2 * work.points,
            no_repeat_ngram_size=0, normalize_over="allowed", project_allowed=True,
        ),
        "report": dict(max_len=work.report_max_len, no_repeat_ngram_size=3),
    }  # fmt: skip
    yes_no = jnp.asarray(YES_NO)

    def run() -> tuple[dict[str, float], dict[str, Any]]:
        times: dict[str, float] = {}
        answers: dict[str, Any] = {}
        start = time.perf_counter()
        features = jax.block_until_ready(encode_images(graphdef, state, jnp.asarray(data["images"])))
        times["features"] = time.perf_counter() - start
        for task in TASKS:
            src_all, image_all = data[f"{task}.src"], data[f"{task}.image"]
            count = len(src_all)
            start = time.perf_counter()
            results, decode_s, steps = [], 0.0, 0
            for rows in chunks(count, work.rows):
                src = jnp.asarray(src_all[rows])
                feats = jnp.take(features, jnp.asarray(image_all[rows]), axis=0)
                if task == "classification":
                    lp = first_token_log_probs(graphdef, state, src, image_features=feats, ids=yes_no)
                    results.append(np.asarray(lp))
                    continue
                enc = encode(graphdef, state, src, image_features=feats)
                if task == "report":
                    jax.block_until_ready(enc)
                began = time.perf_counter()
                result = beam_search(
                    model, enc, beam_size=work.beam, split=(graphdef, state), **decodings[task]
                )
                tokens, lengths = np.asarray(result.tokens[:, 0]), np.asarray(result.lengths[:, 0])
                decode_s += time.perf_counter() - began
                steps += int(result.steps)
                results.append([row[:n].tolist() for row, n in zip(tokens, lengths, strict=True)])
            times[task] = time.perf_counter() - start
            answers[task] = _task_answers(task, results, count)
            if task == "report":
                times["report_decode"], times["report_steps"] = decode_s, steps
        return times, answers

    compile_start = time.perf_counter()
    run()  # warm-up: every compilation
    compile_s = time.perf_counter() - compile_start
    best: dict[str, float] = {}
    for _ in range(work.repeats):
        times, answers = run()
        for key, value in times.items():
            best[key] = value if key == "report_steps" else min(best.get(key, np.inf), value)
    device = jax.devices()[0]
    return {
        "times": best, "answers": answers, "warmup_s": compile_s, "device": str(device.device_kind),
        "backend": jax.default_backend(), **_roofline_measurements(),
    }  # fmt: skip


def _task_answers(task: str, results: list, count: int) -> list:
    """One side's answers to compare: P(yes) per presence question (from the [yes, no] log-probs), else the
    token lists, batches flattened and the padding rows dropped."""
    if task == "classification":
        lp = np.concatenate(results)[:count].astype(np.float64)
        return (1.0 / (1.0 + np.exp(lp[:, 1] - lp[:, 0]))).tolist()
    return [a for batch in results for a in batch][:count]


def _roofline_measurements() -> dict[str, float]:
    """Matmul peak (GFLOP/s) and memory bandwidth (GB/s) measured now, best of 5 jitted calls."""
    import jax
    import jax.numpy as jnp

    # Bandwidth: the best of a read-only pass (XLA reduction; a decode step mostly reads weights and caches)
    # and numpy's copy (read + write into an existing buffer; XLA's elementwise passes allocate their
    # output, and first-touch page faults make them look several times slower than the memory is).
    big = jnp.ones((64 * 2**20,), jnp.float32)  # 256 MiB
    total = jax.jit(jnp.sum)
    jax.block_until_ready(total(big))
    host, copy = np.ones(64 * 2**20, np.float32), np.empty(64 * 2**20, np.float32)
    bandwidth = []
    for _ in range(5):
        start = time.perf_counter()
        jax.block_until_ready(total(big))
        bandwidth.append(big.nbytes / (time.perf_counter() - start))
        start = time.perf_counter()
        np.copyto(copy, host)
        bandwidth.append(2 * host.nbytes / (time.perf_counter() - start))
    return {"peak_gflops": matmul_peak_gflops(), "bandwidth_gbs": max(bandwidth) / 1e9}


# ---------------------------------------------------------------------------------------------------------
# PyTorch child
# ---------------------------------------------------------------------------------------------------------


def torch_child(ref_cfg: Any, weights_path: Path, work: Workload) -> dict[str, Any]:
    import torch

    from tests.reference.ofa_torch import OFAReference
    from tools.bench import torch_beam
    from tools.bench.forward import read_weights_and_inputs

    weights, _ = read_weights_and_inputs(weights_path)
    reference = OFAReference(ref_cfg).eval()
    reference.load_state_dict({key: torch.from_numpy(value) for key, value in weights.items()})
    del weights
    data = inputs(work, ref_cfg.vocab_size)
    images_all = torch.from_numpy(data["images"].transpose(0, 3, 1, 2).copy())
    v = ref_cfg.vocab_size
    decodings = {
        "localization": dict(constraint=torch_beam.BinConstraint(v, 4, box=True), max_len=4),
        "segmentation": dict(
            constraint=torch_beam.BinConstraint(v, 2 * work.points, box=False), max_len=2 * work.points
        ),
        "report": dict(max_len=work.report_max_len, no_repeat_ngram_size=3),
    }

    @torch.no_grad()
    def run() -> tuple[dict[str, float], dict[str, Any]]:
        times: dict[str, float] = {}
        answers: dict[str, Any] = {}
        for task in TASKS:
            src_all, image_all = data[f"{task}.src"], data[f"{task}.image"]
            count = len(src_all)
            start = time.perf_counter()
            results, decode_s, steps = [], 0.0, 0
            for rows in chunks(count, work.rows):
                src = torch.from_numpy(src_all[rows]).long()
                enc = reference.encode(src, images_all[torch.from_numpy(image_all[rows])], None)
                if task == "classification":
                    logits = reference.decode(torch.zeros(len(rows), 1, dtype=torch.long), enc)[:, 0]
                    lp = torch.log_softmax(logits.float(), dim=-1)[:, list(YES_NO)]
                    results.append(lp.numpy())
                    continue
                began = time.perf_counter()
                finalised, run_steps = torch_beam.beam_search(
                    reference, enc, beam_size=work.beam, **decodings[task]
                )
                decode_s += time.perf_counter() - began
                steps += run_steps
                results.append([f[0][1] if f else [] for f in finalised])
            times[task] = time.perf_counter() - start
            answers[task] = _task_answers(task, results, count)
            if task == "report":
                times["report_decode"], times["report_steps"] = decode_s, steps
        return times, answers

    warmup_s = 0.0
    best: dict[str, float] = {}
    threads_of: dict[str, int] = {}
    for threads in work.torch_threads or (cpu_count(),):
        torch.set_num_threads(threads)
        warm_start = time.perf_counter()
        run()
        warmup_s = max(warmup_s, time.perf_counter() - warm_start)
        for _ in range(work.repeats):
            times, answers = run()
            for key, value in times.items():
                if key == "report_steps":
                    best[key] = value
                elif value < best.get(key, np.inf):
                    best[key], threads_of[key] = value, threads
    return {"times": best, "answers": answers, "warmup_s": warmup_s, "threads": threads_of}


# ---------------------------------------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------------------------------------


def step_cost(cfg: Any, rows: int, sentences: int, cache_len: int, source_len: int) -> tuple[float, float]:
    """(FLOPs, bytes) of one full-vocabulary decoder step (module docstring)."""
    d, f, layers, v = cfg.embed_dim, cfg.ffn_dim, cfg.decoder_layers, cfg.vocab_size
    flops = layers * (2 * rows * (6 * d * d + 2 * d * f) + 4 * rows * d * (cache_len + source_len))
    flops += 2 * rows * d * v
    weights = layers * (6 * d * d + 2 * d * f) + v * d
    caches = layers * (2 * rows * cache_len * d + 2 * sentences * source_len * d)
    return float(flops), float(4 * (weights + caches))


def report_roofline(cfg: Any, work: Workload, ours: dict[str, Any]) -> dict[str, Any]:
    """The report's beam search against the roofline measured in the JAX child (module docstring)."""
    grid = -(-work.image_size // 16)  # the trunk has stride 16
    steps = ours["times"]["report_steps"]
    calls = chunks(work.questions("report"), work.rows)
    sentences = len(calls[0])  # the first call's rows (all calls but the last have as many)
    flops, moved = step_cost(
        cfg, sentences * work.beam, sentences, work.report_max_len + 1, grid * grid + work.src_len
    )
    per_step = ours["times"]["report_decode"] / max(steps, 1)
    return {
        "report_max_len": work.report_max_len,
        "decode_steps": steps,
        "jax_decode_s": ours["times"]["report_decode"],
        "step_gflop": flops / 1e9,
        "step_mb": moved / 2**20,
        "jax_step_ms": 1e3 * per_step,
        "achieved_gflops": flops / per_step / 1e9 if len(calls) == 1 else None,
        "peak_gflops": ours["peak_gflops"],
        "bandwidth_gbs": ours["bandwidth_gbs"],
        "flop_roofline_fraction": flops / per_step / 1e9 / ours["peak_gflops"],
        "memory_roofline_fraction": moved / per_step / 1e9 / ours["bandwidth_gbs"],
    }


def compare(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for task in TASKS:
        a, b = ours["answers"][task], theirs["answers"][task]
        if task == "classification":
            diff = float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) if a else 0.0
            out[task] = {
                "identical_tokens": bool(diff < 1e-3),
                "max_p_yes_diff": diff,
                "mismatched_answers": 0,
            }
        else:
            mismatched = sum(x != y for x, y in zip(a, b, strict=True))
            out[task] = {"identical_tokens": mismatched == 0, "mismatched_answers": mismatched}
    return out


def bench_jax_only(work: Workload, dtype: str, machine: dict[str, Any]) -> None:
    """Our side alone, random weights from the model's own initialisers, on the default JAX backend (the
    GPU check): per task and for the whole workflow, seconds, tokens/s, images/s and ms per image."""
    from tools.bench.forward import model_config

    cfg, overrides = model_config(work.size, work.image_size)
    if dtype != "float32":
        cfg = cfg.replace(dtype=dtype)
    print(f"[decode] {work.size} batch {work.batch} {dtype}: JAX only ...", file=sys.stderr, flush=True)
    ours = jax_child(cfg, None, work)
    tj = ours["times"]
    common = {
        "bench": "decode_jax_only", "size": work.size, "dtype": dtype, "batch": work.batch, "beam": work.beam,
        "image_size": work.image_size, "overrides": overrides, "backend": ours["backend"],
        "device": ours["device"],
        "workload": {k: v for k, v in dataclasses.asdict(work).items() if k not in ("size", "batch", "beam")},
    }  # fmt: skip
    total_tokens = 0
    for task in ("features", *TASKS):
        if task == "features":
            tokens = 0
        elif task == "classification":
            tokens = work.questions(task)
        else:
            tokens = sum(len(a) for a in ours["answers"][task])
        total_tokens += tokens
        roofline = report_roofline(cfg, work, ours) if task == "report" else {}
        print_json_line(
            {**common, "task": task, "tokens": tokens, "jax_s": tj[task],
             "jax_tokens_per_s": tokens / tj[task], "jax_images_per_s": work.batch / tj[task], **roofline}
        )  # fmt: skip
    total = tj["features"] + sum(tj[t] for t in TASKS)
    print_json_line(
        {
            **common, "task": "workflow", "tokens": total_tokens, "jax_s": total,
            "ms_per_image": 1e3 * total / work.batch, "jax_images_per_s": work.batch / total,
            "jax_tokens_per_s": total_tokens / total, "report_decode_s": tj["report_decode"],
            "report_steps": tj["report_steps"], "jax_warmup_s": ours["warmup_s"],
            "peak_gflops": ours["peak_gflops"], "bandwidth_gbs": ours["bandwidth_gbs"], "machine": machine,
        }
    )  # fmt: skip


def bench(work: Workload, machine: dict[str, Any]) -> None:
    from tests.models.test_parity_torch import reference_config
    from tools.bench.forward import model_config, write_weights_and_inputs

    cfg, overrides = model_config(work.size, work.image_size)
    with tempfile.TemporaryDirectory(prefix="bench_decode_") as tmp:
        path = Path(tmp) / "weights.npz"
        args = argparse.Namespace(seed=work.seed, batch=1, image_size=16)
        write_weights_and_inputs(path, reference_config(cfg), cfg.vocab_size, args)
        print(f"[decode] {work.size} batch {work.batch}: JAX ...", file=sys.stderr, flush=True)
        ours = run_isolated(jax_child, cfg, path, work)
        print(f"[decode] {work.size} batch {work.batch}: PyTorch ...", file=sys.stderr, flush=True)
        theirs = run_isolated(torch_child, reference_config(cfg), path, work)
    checks = compare(ours, theirs)
    common = {
        "bench": "decode",
        "size": work.size,
        "batch": work.batch,
        "beam": work.beam,
        "image_size": work.image_size,
        "overrides": overrides,
        "workload": {k: v for k, v in dataclasses.asdict(work).items() if k not in ("size", "batch", "beam")},
    }
    tj, tt = ours["times"], theirs["times"]
    total_tokens = 0
    for task in TASKS:
        tokens = (
            sum(len(a) for a in ours["answers"][task]) if task != "classification" else work.questions(task)
        )
        total_tokens += tokens
        record = {
            **common,
            "task": task,
            "questions": work.questions(task),
            "tokens": tokens,
            "jax_s": tj[task],
            "torch_s": tt[task],
            "jax_tokens_per_s": tokens / tj[task],
            "torch_tokens_per_s": tokens / tt[task],
            "jax_images_per_s": work.batch / tj[task],
            "torch_images_per_s": work.batch / tt[task],
            "speedup": tt[task] / tj[task],
            "torch_threads": theirs["threads"][task],
            **checks[task],
        }
        if task == "report":
            record |= {
                "torch_decode_s": tt["report_decode"],
                "decode_speedup": tt["report_decode"] / tj["report_decode"],
                **report_roofline(cfg, work, ours),
            }
        print_json_line(record)
    workflow_j = tj["features"] + sum(tj[t] for t in TASKS)
    workflow_t = sum(tt[t] for t in TASKS)
    print_json_line(
        {
            **common,
            "task": "workflow",
            "tokens": total_tokens,
            "jax_s": workflow_j,
            "torch_s": workflow_t,
            "jax_features_s": tj["features"],
            "jax_tokens_per_s": total_tokens / workflow_j,
            "torch_tokens_per_s": total_tokens / workflow_t,
            "jax_images_per_s": work.batch / workflow_j,
            "torch_images_per_s": work.batch / workflow_t,
            "speedup": workflow_t / workflow_j,
            "identical_tokens": all(c["identical_tokens"] for c in checks.values()),
            "jax_warmup_s": ours["warmup_s"],
            "torch_warmup_s": theirs["warmup_s"],
            "machine": machine,
        }
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="~2 min: micro + ofa_tiny, a small workload")
    parser.add_argument("--sizes", nargs="+", default=None, help="default micro ofa_tiny ofa_base")
    parser.add_argument("--batches", nargs="+", type=int, default=None, help="default 1 32")
    parser.add_argument("--beam", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=None, help="default 256 (quick: 128)")
    parser.add_argument("--src-len", type=int, default=16, help="instruction tokens incl. BOS/EOS")
    parser.add_argument("--labels", type=int, default=None, help="presence questions per image (14)")
    parser.add_argument("--findings", type=int, default=None, help="boxes per image (2)")
    parser.add_argument("--points", type=int, default=None, help="points per polygon (30)")
    parser.add_argument("--report-max-len", type=int, default=None, help="report tokens (95; quick 16)")
    parser.add_argument(
        "--large-batch-report-max-len", type=int, default=32,
        help="report tokens for ofa_base at batch >= 32 (bounds the run; stated in the output)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=None, help="timed runs after the warm-up (2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", type=int, default=16, help="questions per model call, at least the batch")
    parser.add_argument(
        "--jax-only", action="store_true",
        help="no PyTorch peer: our side alone on the default JAX backend (e.g. a GPU), in this process",
    )  # fmt: skip
    parser.add_argument("--dtype", default="float32", help="compute dtype with --jax-only (e.g. bfloat16)")
    parser.add_argument(
        "--torch-threads", nargs="+", type=int, default=None,
        help="PyTorch thread counts to time, best per task (default: 1 and the cores, --quick: 1; on a loaded "
        "machine PyTorch's multi-threaded regions stall and one thread is faster)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "sizes": ["micro", "ofa_tiny"] if quick else ["micro", "ofa_tiny", "ofa_base"],
        "batches": [1, 8] if quick else [1, 32],
        "image_size": 128 if quick else 256,
        "labels": 4 if quick else 14,
        "findings": 1 if quick else 2,
        "points": 8 if quick else 30,
        "report_max_len": 16 if quick else 95,
        "repeats": 1 if quick else 2,
    }
    defaults["torch_threads"] = [1] if quick else sorted({1, cpu_count()})
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    for size in args.sizes:
        for batch in args.batches:
            report = args.report_max_len
            if size == "ofa_base" and batch >= 32:
                report = min(report, args.large_batch_report_max_len)
            work = Workload(
                size=size, batch=batch, beam=args.beam, image_size=args.image_size, src_len=args.src_len,
                labels=args.labels, findings=args.findings, points=args.points, report_max_len=report,
                seed=args.seed, repeats=args.repeats, torch_threads=tuple(args.torch_threads),
                rows=max(batch, args.rows),
            )  # fmt: skip
            if args.jax_only:
                bench_jax_only(work, args.dtype, machine_info())
            else:
                bench(work, machine_info())


if __name__ == "__main__":
    main()
