"""Training benchmark on CPU: our jitted train step against a PyTorch train step on the same weights and batch,
its FLOP rate against the machine's measured matmul peak, and the input pipeline against the step's appetite.

Run from the repository root (several minutes on 2 cores, most of it ofa_base):

    .venv/bin/python -m tools.bench.train
    .venv/bin/python -m tools.bench.train --sizes micro ofa_tiny --batch 8 --image-size 256 --repeats 5

Train step (one JSON line per size). The parent draws the reference's random weights and one batch (an
instruction of 12 tokens, a target of 20, random images) into a temporary .npz file (as tools/bench/forward.py);
each side then runs in its own fresh 'spawn' child process on those weights:

    jax     `train.steps.train_step` (token-mean cross-entropy, global-norm clipping, AdamW: the loop's step)
            under jax.jit with the state donated, BatchNorm in training mode; compiled before timing
    torch   tests/reference/ofa_torch.py in train mode: the same loss, clip_grad_norm_, torch.optim.AdamW with
            the same hyper-parameters, threads = cores

    step_s, examples_per_s     best of `--repeats` timed steps after one warm-up step
    step_gflop                 FLOPs of one step (forward, backward, optimizer) from XLA's cost analysis of
                               the compiled step; the same count is used for both sides (the same maths)
    peak_gflops                a jitted 2048x2048 float32 matmul, best of 5, measured in the JAX child
    mfu                        step_gflop / step_s / peak_gflops: the share of the matmul peak achieved
    first_loss_rel_diff        |loss_jax - loss_torch| / loss_torch of the first step (same weights and batch)

Input pipeline (one JSON line, `"bench": "input_pipeline"`): phantoms written at `--pipeline-source-size` px
(default: the canvas size), read and prepared for a `--pipeline-image-size` px canvas (512) by
`data.pipeline.ExampleMaker` in this process on one core (image decode, resize, training jitter, text and
token framing), over the four task families in turn. `examples_per_s_per_core` is compared with each size's
`examples_per_s` above: `cores_to_feed` = how many cores the pipeline needs to keep that train step busy. `examples_per_s_per_core_cached`: the same examples again from a second maker whose
image cache (`data.image_cache_mb`) a first pass filled, so only the jitter and the text remain;
`cache_speedup` is the ratio of the two.
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

from tools.bench.common import cpu_count, machine_info, matmul_peak_gflops, print_json_line, time_calls
from tools.bench.forward import read_weights_and_inputs, run_both_sides

DEFAULT_SIZES = ("micro", "ofa_tiny", "ofa_base")
LEARNING_RATE = 1e-4
CLIP_NORM = 1.0


def _batch(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Teacher forcing: prev = [BOS] + target[:-1] as drawn; target = prev shifted left, EOS last."""
    prev = inputs["prev"]
    target = np.concatenate([prev[:, 1:], np.full((len(prev), 1), 2, prev.dtype)], axis=1)
    return {
        "src": inputs["src"].astype(np.int32),
        "images": inputs["images"].transpose(0, 2, 3, 1).copy(),  # NCHW -> NHWC
        "prev": prev.astype(np.int32),
        "target": target.astype(np.int32),
        "task": np.zeros(len(prev), np.int32),
    }


def jax_child(cfg: Any, data_path: Path, repeats: int) -> dict[str, Any]:
    import functools

    import jax
    import ml_collections

    from imtcxr_jax.convert.state_dict import load_ofa_state_dict
    from imtcxr_jax.models.imtcxr import create_model
    from imtcxr_jax.train.optimizer import make_optimizer
    from imtcxr_jax.train.steps import create_train_state, train_step

    weights, inputs = read_weights_and_inputs(data_path)
    model = create_model(cfg, seed=1)
    load_ofa_state_dict(model, weights, source=str(data_path))
    del weights
    optimizer = make_optimizer(
        ml_collections.ConfigDict(
            dict(
                learning_rate=LEARNING_RATE, warmup_steps=0, warmup_init_lr=LEARNING_RATE, total_steps=10**6,
                end_learning_rate=LEARNING_RATE, schedule="constant", adam_b1=0.9, adam_b2=0.999,
                adam_eps=1e-8, weight_decay=0.01, clip_norm=CLIP_NORM,
            )
        )
    )  # fmt: skip
    graphdef, state = create_train_state(model, optimizer, seed=0)
    batch = {key: jax.numpy.asarray(value) for key, value in _batch(inputs).items()}
    step = jax.jit(functools.partial(train_step, graphdef=graphdef, optimizer=optimizer), donate_argnums=0)
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    losses = []
    holder = {"state": state}

    def one_step() -> None:
        holder["state"], metrics = compiled(holder["state"], batch)
        losses.append(float(metrics["loss"]))  # waits for the step

    times = time_calls(one_step, repeats=repeats, warmup=1)
    return {
        "step_s": min(times),
        "compile_s": compile_s,
        "step_flops": float(cost["flops"]),
        "first_loss": losses[0],
        "peak_gflops": matmul_peak_gflops(),
    }


def torch_child(ref_cfg: Any, data_path: Path, repeats: int) -> dict[str, Any]:
    import torch

    from tests.reference.ofa_torch import OFAReference

    torch.set_num_threads(cpu_count())
    weights, inputs = read_weights_and_inputs(data_path)
    reference = OFAReference(ref_cfg).train()
    reference.load_state_dict({key: torch.from_numpy(value) for key, value in weights.items()})
    del weights
    batch = {key: torch.from_numpy(value) for key, value in _batch(inputs).items()}
    images = batch["images"].permute(0, 3, 1, 2).contiguous()
    image_mask = torch.ones(len(images), dtype=torch.bool)
    optimizer = torch.optim.AdamW(
        reference.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01
    )
    losses = []

    def one_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        logits = reference(batch["src"].long(), images, image_mask, batch["prev"].long())
        target = batch["target"].long()
        loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=1
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), CLIP_NORM)
        optimizer.step()
        losses.append(float(loss))

    times = time_calls(one_step, repeats=repeats, warmup=1)
    return {"step_s": min(times), "first_loss": losses[0]}


def bench_size(size: str, args: argparse.Namespace, machine: dict[str, Any]) -> dict[str, Any]:
    """One JSON record: both train steps on the same weights and batch, each in a fresh child process."""
    _, overrides, ours, theirs = run_both_sides("train", size, args, jax_child, torch_child)
    gflop = ours["step_flops"] / 1e9
    return {
        "bench": "train_step",
        "size": size,
        "image_size": args.image_size,
        "batch": args.batch,
        "overrides": overrides,
        "jax_compile_s": ours["compile_s"],
        "jax_step_s": ours["step_s"],
        "torch_step_s": theirs["step_s"],
        "speedup": theirs["step_s"] / ours["step_s"],
        "jax_examples_per_s": args.batch / ours["step_s"],
        "torch_examples_per_s": args.batch / theirs["step_s"],
        "step_gflop": gflop,
        "peak_gflops": ours["peak_gflops"],
        "jax_mfu": gflop / ours["step_s"] / ours["peak_gflops"],
        "torch_mfu": gflop / theirs["step_s"] / ours["peak_gflops"],
        "first_loss_rel_diff": abs(ours["first_loss"] - theirs["first_loss"]) / abs(theirs["first_loss"]),
        "machine": machine,
    }


def bench_pipeline(args: argparse.Namespace, machine: dict[str, Any]) -> dict[str, Any]:
    """ExampleMaker throughput on one core at `--pipeline-image-size`, the four families in turn."""
    from imtcxr_jax.data import pipeline
    from imtcxr_jax.data.cli import cli_main as data_cli
    from imtcxr_jax.data.sources import enumerate_examples, load_records

    size = args.pipeline_image_size
    source_size = args.pipeline_source_size or size
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        print(
            f"[train] input pipeline: {args.pipeline_images} phantoms of {source_size} px ...",
            file=sys.stderr,
        )
        data_cli(["phantom", "--n", str(args.pipeline_images), "--size", str(source_size), "--out", tmp])
        records, _ = load_records(Path(tmp))
        tokenizer = pipeline.build_tokenizer(records, vocab_size=2048)
        config = pipeline.PipelineConfig(image_size=size, max_tgt_len=256)
        maker = pipeline.ExampleMaker(records, tmp, tokenizer, config, augment_images=True)
        refs = [
            ref
            for family in pipeline.TASK_FAMILIES
            for ref in enumerate_examples(records, family)[: args.pipeline_images]
        ]
        rng = np.random.default_rng(0)
        maker(refs[0], rng)  # imports and caches outside the timing
        seconds = _time_examples(maker, refs, rng)
        # The same examples with every image already read and resized (`data.image_cache_mb`, a later epoch).
        cached_config = dataclasses.replace(
            config, image_cache_mb=1 + 4 * size * size * len(records) // 2**20
        )
        cached = pipeline.ExampleMaker(records, tmp, tokenizer, cached_config, augment_images=True)
        _time_examples(cached, refs, rng)  # the first epoch fills the cache
        cached_seconds = _time_examples(cached, refs, rng)
    return {
        "bench": "input_pipeline",
        "image_size": size,
        "source_image_size": source_size,
        "examples": len(refs),
        "examples_per_s_per_core": len(refs) / seconds,
        "examples_per_s_per_core_cached": len(refs) / cached_seconds,
        "cache_speedup": seconds / cached_seconds,
        "machine": machine,
    }


def _time_examples(maker: Any, refs: list[Any], rng: np.random.Generator) -> float:
    start = time.perf_counter()
    for ref in refs:
        maker(ref, rng)
    return time.perf_counter() - start


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="named model configs")
    parser.add_argument("--image-size", type=int, default=256, help="train-step image side in pixels")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--seed", type=int, default=0, help="weights and inputs")
    parser.add_argument("--pipeline-image-size", type=int, default=512)
    parser.add_argument("--pipeline-images", type=int, default=24, help="phantoms (and examples per family)")
    parser.add_argument(
        "--pipeline-source-size", type=int, default=0, help="phantoms' side (0: --pipeline-image-size)"
    )
    args = parser.parse_args(argv)
    if min(args.image_size, args.batch, args.repeats, args.pipeline_images) < 1:
        parser.error("--image-size, --batch, --repeats and --pipeline-images must be positive")
    if args.pipeline_source_size < 0:
        parser.error("--pipeline-source-size must be 0 (the canvas size) or a positive number of pixels")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    machine = machine_info()
    steps = [bench_size(size, args, machine) for size in args.sizes]
    feed = bench_pipeline(args, machine)
    for record in steps:
        record["pipeline_cores_to_feed"] = record["jax_examples_per_s"] / feed["examples_per_s_per_core"]
        print_json_line(record)
    print_json_line(feed)


if __name__ == "__main__":
    main()
