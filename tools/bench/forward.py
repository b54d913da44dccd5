"""Forward-pass benchmark on CPU: our JAX model under `nnx.jit` against the PyTorch reference, same weights.

Run from the repository root (a few minutes on 2 cores, most of it ofa_base):

    .venv/bin/python -m tools.bench.forward
    .venv/bin/python -m tools.bench.forward --sizes ofa_tiny --batch 2 --image-size 384 --repeats 5

For each size the parent process draws the reference's random weights (`randomize_`) and one batch (an
instruction of 12 tokens, a teacher-forced target of 20 tokens, random images) into a temporary .npz file.
Then each framework runs in its own fresh 'spawn' child process, so that one side's imports, threads and
allocations cannot pollute the other's numbers: the child loads the same file into its model, times the
forward pass and reports its memory and logits. The parent checks that the two logits agree, then prints
one JSON line per size on stdout (progress goes to stderr):

    jax_compile_s          trace + lower + XLA compile of the jitted forward (lower().compile())
    jax_forward_s          best wall time of `--repeats` jitted calls after one untimed warm-up call (the
                           best, not the median: on a shared machine it is the least disturbed by others)
    torch_forward_s        the same for the reference under torch.no_grad(), eval mode, threads = cores
    speedup                torch_forward_s / jax_forward_s (> 1: JAX is faster)
    *_peak_rss_mb          peak RSS growth over the child's RSS after importing and starting its framework:
                           building the model, loading the weights, (JAX) compiling, and the forward calls
    *_forward_peak_rss_mb  the same growth, peak taken only over the forward calls (warm-up and timed) after
                           freed heap is handed back to the OS: live weights, code and activations
    max_rel_err            max |jax - torch| / max |torch| over the logits (float32 on both sides)

The forward is `nnx.jit(..., graph_updates=False)`: with the default graph updates, nnx.jit also returns the
whole model state from every call (a copy of all weights per call: on ofa_base +0.7 GB of outputs and ~12%
more time), which a pure inference forward does not need; beam search's split/merge + jax.jit does not either.

`overrides` lists config changes needed at this image size: `micro` has a 8x8 image-position grid (128 px),
so at larger sizes its image_bucket_size grows to ceil(image_size / 16) on both sides.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for `python tools/bench/...`
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # inherited by the JAX child; this is a CPU benchmark

from tools.bench.common import (
    cpu_count,
    current_rss_mb,
    machine_info,
    peak_rss_mb,
    print_json_line,
    release_free_memory,
    reset_peak_rss,
    run_isolated,
    time_calls,
)

SRC_LEN = 12  # BOS + 10 instruction tokens + EOS
TGT_LEN = 20  # BOS + 19 target tokens (teacher forcing)
DEFAULT_SIZES = ("micro", "ofa_tiny", "ofa_base")
ALIASES_KEY = "__aliases__"  # npz entry: JSON {alias state-dict key: key holding the shared array}


# ---------------------------------------------------------------------------------------------------------
# Parent: weights and inputs
# ---------------------------------------------------------------------------------------------------------


def model_config(size: str, image_size: int) -> tuple[Any, dict[str, int]]:
    """The named config, with the image-position grid enlarged where `image_size` needs it."""
    from imtcxr_jax.models.config import get_model_config

    overrides = {}
    grid = math.ceil(image_size / 16)  # the ResNet trunk has stride 16
    if grid > get_model_config(size).image_bucket_size:
        overrides["image_bucket_size"] = grid
    return get_model_config(size, **overrides), overrides


def write_weights_and_inputs(path: Path, ref_cfg: Any, vocab_size: int, args: argparse.Namespace) -> None:
    """Random reference weights (tied aliases stored once) and one input batch, as one .npz file."""
    from tests.reference.ofa_torch import OFAReference, randomize_

    reference = OFAReference(ref_cfg)
    randomize_(reference, args.seed)
    arrays: dict[str, np.ndarray] = {}
    aliases: dict[str, str] = {}
    first_key: dict[tuple[int, tuple[int, ...]], str] = {}
    for key, tensor in reference.state_dict().items():
        identity = (tensor.data_ptr(), tuple(tensor.shape))
        if identity in first_key and tensor.numel():
            aliases[key] = first_key[identity]
        else:
            first_key[identity] = key
            arrays[key] = tensor.numpy()

    rng = np.random.default_rng(args.seed)
    batch = args.batch
    bos, eos = np.zeros((batch, 1), np.int64), np.full((batch, 1), 2, np.int64)
    arrays["input.src"] = np.concatenate([bos, rng.integers(4, vocab_size, (batch, SRC_LEN - 2)), eos], 1)
    arrays["input.prev"] = np.concatenate([bos, rng.integers(4, vocab_size, (batch, TGT_LEN - 1))], 1)
    arrays["input.images"] = rng.uniform(-1, 1, (batch, 3, args.image_size, args.image_size)).astype(
        np.float32
    )
    np.savez(path, **arrays, **{ALIASES_KEY: np.array(json.dumps(aliases))})


def read_weights_and_inputs(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(state dict with aliases restored as shared arrays, inputs) from `write_weights_and_inputs`."""
    with np.load(path) as npz:
        arrays = {key: npz[key] for key in npz.files}
    aliases = json.loads(str(arrays.pop(ALIASES_KEY)))
    inputs = {key.removeprefix("input."): arrays.pop(key) for key in list(arrays) if key.startswith("input.")}
    arrays.update({alias: arrays[source] for alias, source in aliases.items()})
    return arrays, inputs


# ---------------------------------------------------------------------------------------------------------
# Children: one per (framework, size), each in a fresh process
# ---------------------------------------------------------------------------------------------------------


def _measure(setup: Any, repeats: int, baseline_mb: float) -> dict[str, Any]:
    """Time `forward` (returned by `setup()`), then report times, memory and the forward's output."""
    forward = setup()
    setup_peak_mb = peak_rss_mb()
    release_free_memory()
    reset_ok = reset_peak_rss()
    times = time_calls(forward, repeats=repeats, warmup=1)
    forward_peak_mb = peak_rss_mb()
    return {
        "forward_s": min(times),
        "peak_rss_mb": max(setup_peak_mb, forward_peak_mb) - baseline_mb,
        "forward_peak_rss_mb": forward_peak_mb - baseline_mb if reset_ok else None,
        "logits": np.asarray(forward(), np.float32),
    }


def jax_child(cfg: Any, data_path: Path, repeats: int) -> dict[str, Any]:
    """Our model under nnx.jit: compile time, steady-state forward time, memory, logits."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from imtcxr_jax.convert.state_dict import load_ofa_state_dict
    from imtcxr_jax.models.imtcxr import count_parameters, create_model

    jnp.zeros(()).block_until_ready()  # start the CPU backend before the baseline
    baseline_mb = current_rss_mb()
    result: dict[str, Any] = {}

    def setup() -> Any:
        weights, inputs = read_weights_and_inputs(data_path)
        model = create_model(cfg, seed=1)
        load_ofa_state_dict(model, weights, source=str(data_path))
        del weights
        result["params"] = count_parameters(model)
        args = (
            jnp.asarray(inputs["src"], jnp.int32),
            jnp.asarray(inputs["images"].transpose(0, 2, 3, 1)),  # NCHW -> NHWC
            jnp.asarray(inputs["prev"], jnp.int32),
        )
        forward = nnx.jit(lambda model, src, images, prev: model(src, images, prev), graph_updates=False)
        start = time.perf_counter()
        forward.lower(model, *args).compile()  # the following calls hit the compilation cache
        result["compile_s"] = time.perf_counter() - start
        return lambda: jax.block_until_ready(forward(model, *args))

    measured = _measure(setup, repeats, baseline_mb)  # fills `result` through setup()
    return {**result, **measured}


def torch_child(ref_cfg: Any, data_path: Path, repeats: int) -> dict[str, Any]:
    """The PyTorch reference (eval, no_grad, one thread per core): forward time, memory, logits."""
    import torch

    from tests.reference.ofa_torch import OFAReference

    torch.set_num_threads(cpu_count())
    torch.zeros(1).add_(1)  # start the runtime before the baseline
    baseline_mb = current_rss_mb()

    def setup() -> Any:
        weights, inputs = read_weights_and_inputs(data_path)
        reference = OFAReference(ref_cfg).eval()
        reference.load_state_dict({key: torch.from_numpy(value) for key, value in weights.items()})
        del weights
        src, images, prev = (torch.from_numpy(inputs[key]) for key in ("src", "images", "prev"))
        image_mask = torch.ones(src.shape[0], dtype=torch.bool)

        @torch.no_grad()
        def forward() -> torch.Tensor:
            return reference(src, images, image_mask, prev)

        return forward

    return _measure(setup, repeats, baseline_mb)


# ---------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------


def run_both_sides(
    bench: str, size: str, args: argparse.Namespace, jax_fn: Any, torch_fn: Any
) -> tuple[Any, dict[str, int], dict[str, Any], dict[str, Any]]:
    """Draw `size`'s random reference weights and one batch into a temporary file, then run
    `jax_fn(cfg, path, args.repeats)` and `torch_fn(reference cfg, path, args.repeats)` each in a fresh child
    process. Returns (our config, its overrides, our result, theirs)."""
    from tests.models.test_parity_torch import reference_config

    cfg, overrides = model_config(size, args.image_size)
    with tempfile.TemporaryDirectory(prefix=f"bench_{bench}_") as tmp:
        data_path = Path(tmp) / "weights_and_inputs.npz"
        write_weights_and_inputs(data_path, reference_config(cfg), cfg.vocab_size, args)
        print(f"[{bench}] {size}: JAX ...", file=sys.stderr, flush=True)
        ours = run_isolated(jax_fn, cfg, data_path, args.repeats)
        print(f"[{bench}] {size}: PyTorch ...", file=sys.stderr, flush=True)
        theirs = run_isolated(torch_fn, reference_config(cfg), data_path, args.repeats)
    return cfg, overrides, ours, theirs


def bench_size(size: str, args: argparse.Namespace, machine: dict[str, Any]) -> dict[str, Any]:
    """One JSON record: both frameworks on the same weights and inputs, each in a fresh child process."""
    from tests.models.test_parity_torch import relative_error

    _, overrides, ours, theirs = run_both_sides("forward", size, args, jax_child, torch_child)
    return {
        "bench": "forward",
        "size": size,
        "image_size": args.image_size,
        "batch": args.batch,
        "src_len": SRC_LEN,
        "tgt_len": TGT_LEN,
        "params_m": ours["params"] / 1e6,
        "overrides": overrides,
        "jax_compile_s": ours["compile_s"],
        "jax_forward_s": ours["forward_s"],
        "torch_forward_s": theirs["forward_s"],
        "speedup": theirs["forward_s"] / ours["forward_s"],
        "jax_peak_rss_mb": ours["peak_rss_mb"],
        "torch_peak_rss_mb": theirs["peak_rss_mb"],
        "jax_forward_peak_rss_mb": ours["forward_peak_rss_mb"],
        "torch_forward_peak_rss_mb": theirs["forward_peak_rss_mb"],
        "max_rel_err": relative_error(ours["logits"], theirs["logits"]),
        "machine": machine,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="named model configs")
    parser.add_argument("--image-size", type=int, default=512, help="square image side in pixels")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after one warm-up call")
    parser.add_argument("--seed", type=int, default=0, help="weights and inputs")
    args = parser.parse_args(argv)
    if min(args.image_size, args.batch, args.repeats) < 1:
        parser.error("--image-size, --batch and --repeats must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    for size in args.sizes:
        print_json_line(bench_size(size, args, machine_info()))


if __name__ == "__main__":
    main()
