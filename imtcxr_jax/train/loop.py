"""The training loop: workdir -> data + tokenizer -> sharded state -> steps, logs, checkpoints, evaluations.

The workdir holds everything needed to use its checkpoints elsewhere:
  config.json · tokenizer.json · model.json (the resolved ModelConfig) · checkpoints/<step>/ · metrics.jsonl ·
  tensorboard/ · training_curve.png · data/ (generated phantoms, when the dataset is "phantom")
Started again on the same workdir, training resumes from the newest readable checkpoint, with the data
iterator, RNG and optimizer exactly where they were; steps after the checkpoint are re-run and logged again.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from tqdm import tqdm

from imtcxr_jax.data.pipeline import build_tokenizer, make_eval_examples, make_train_dataset
from imtcxr_jax.data.sources import load_records
from imtcxr_jax.models.config import ModelConfig
from imtcxr_jax.sharding import make_mesh
from imtcxr_jax.text.tokenizer import OfaTokenizer, Tokenizer, load_tokenizer
from imtcxr_jax.train.checkpoint import Checkpointer
from imtcxr_jax.train.distributed import any_process, is_primary, primary_first
from imtcxr_jax.train.experiment import config_to_json
from imtcxr_jax.train.logging_utils import MetricsWriter, plot_training_curve
from imtcxr_jax.train.optimizer import make_optimizer
from imtcxr_jax.train.partition import batch_sharding, init_sharded_state, jit_train_step
from imtcxr_jax.train.steps import TASK_FAMILIES

log = logging.getLogger(__name__)
logging.getLogger("absl").setLevel(logging.WARNING)  # orbax reports every file it writes at INFO
EVAL_SEED_OFFSET = 1_000_000  # held-out phantoms use seeds far from the training ones


class NonFiniteLossError(FloatingPointError):
    pass


# ---------------------------------------------------------------------------------------------------------
# Workdir set-up: data, tokenizer, model config
# ---------------------------------------------------------------------------------------------------------


def prepare_data(config: ml_collections.ConfigDict, workdir: Path) -> tuple[Path, Path]:
    """Folders (train, eval) in the manifest format; phantoms are generated once into the workdir."""
    ds = config.dataset
    if ds.source == "manifest":
        for name in ("train_dir", "eval_dir"):
            if not ds[name] or not (Path(ds[name]) / "manifest.jsonl").is_file():
                raise ValueError(f"config.dataset.{name}: {ds[name]!r} has no manifest.jsonl")
        return Path(ds.train_dir), Path(ds.eval_dir)
    if ds.source != "phantom":
        raise ValueError(f"config.dataset.source: got {ds.source!r}, expected 'phantom' or 'manifest'")
    from imtcxr_jax.data.cli import cli_main as data_cli

    folders = []
    for split, count, seed in (("train", ds.train_examples, 0), ("eval", ds.eval_examples, EVAL_SEED_OFFSET)):
        folder = workdir / "data" / split
        if not (folder / "manifest.jsonl").is_file():
            log.info("generating %d %s phantoms into %s", count, split, folder)
            args = [
                "phantom",
                "--n",
                str(count),
                "--seed",
                str(config.seed + seed),
                "--size",
                str(ds.phantom_size),
            ]
            if data_cli([*args, "--out", str(folder)]) != 0:
                raise RuntimeError(f"phantom generation into {folder} failed")
        folders.append(folder)
    return folders[0], folders[1]


def prepare_tokenizer(config: ml_collections.ConfigDict, workdir: Path, records) -> Tokenizer:
    """The workdir's tokenizer if it has one (a resumed run must keep its ids), else a new one, saved."""
    path = workdir / "tokenizer.json"
    if path.exists():
        return load_tokenizer(path, bpe_dir=config.tokenizer.bpe_dir or None)
    if config.get("init_from") and (Path(config.init_from) / "tokenizer.json").is_file():
        # Training from a converted checkpoint: its ids are the rows of its embedding.
        tokenizer = load_tokenizer(
            Path(config.init_from) / "tokenizer.json", bpe_dir=config.tokenizer.bpe_dir or None
        )
        tokenizer.save(path)
        return tokenizer
    if config.tokenizer.kind == "ofa":
        tokenizer = OfaTokenizer(config.tokenizer.bpe_dir)
    elif config.tokenizer.kind == "trained":
        tokenizer = build_tokenizer(records, config.tokenizer.vocab_size)
    else:
        raise ValueError(f"config.tokenizer.kind: got {config.tokenizer.kind!r}, expected 'trained' or 'ofa'")
    tokenizer.save(path)
    return tokenizer


def resolve_mesh_shape(shape: tuple[int, ...], device_count: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) with at most one -1 standing for the remaining devices."""
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or shape.count(-1) > 1 or any(n == 0 or n < -1 for n in shape):
        raise ValueError(
            f"config.mesh: got {shape}, expected three sizes (data, fsdp, tensor), at most one -1"
        )
    known = int(np.prod([n for n in shape if n != -1]))
    if device_count % known:
        raise ValueError(f"config.mesh: {shape} does not divide the {device_count} devices")
    return tuple(device_count // known if n == -1 else n for n in shape)


def model_config(config: ml_collections.ConfigDict, tokenizer: Tokenizer) -> ModelConfig:
    return ModelConfig.from_dict({**config.model.to_dict(), "vocab_size": tokenizer.vocab_size})


# ---------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------


def train(config: ml_collections.ConfigDict, workdir: str | Path, *, evaluate_fn=None) -> dict[str, Any]:
    """Train until config.total_steps (resuming from the workdir's checkpoints) and return the last metrics."""
    if config.nan_policy not in ("error", "skip"):
        raise ValueError(f"config.nan_policy: got {config.nan_policy!r}, expected 'error' or 'skip'")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if is_primary():  # the workdir is shared by all processes of a multi-host run; one writes
        (workdir / "config.json").write_text(config_to_json(config))

    # Process 0 generates the phantoms and trains the tokenizer while the others wait; they then find both.
    with primary_first("workdir set-up"):
        train_dir, eval_dir = prepare_data(config, workdir)
        train_records, rejected = load_records(train_dir)
        if rejected.counts:
            log.warning("training data %s: %s", train_dir, rejected.summary())
        tokenizer = prepare_tokenizer(config, workdir, train_records)
    cfg = model_config(config, tokenizer)
    if is_primary():
        (workdir / "model.json").write_text(json.dumps(cfg.to_dict(), indent=2))

    mesh = make_mesh(resolve_mesh_shape(config.mesh, jax.device_count()))
    data_ways = mesh.shape["data"] * mesh.shape["fsdp"]
    if config.data.batch_size % (data_ways * config.accumulation_steps):
        raise ValueError(
            f"config.data.batch_size: {config.data.batch_size} is not divisible by data x fsdp ({data_ways}) x "
            f"accumulation_steps ({config.accumulation_steps})"
        )
    optimizer = make_optimizer(config)
    graphdef, state, shardings, replicated = init_sharded_state(cfg, optimizer, mesh, config.seed)
    for note in replicated:
        log.info("sharding: %s", note)
    step_fn = jit_train_step(
        graphdef, optimizer, shardings, mesh,
        accumulation_steps=config.accumulation_steps, label_smoothing=config.label_smoothing,
    )  # fmt: skip

    dataset = make_train_dataset(
        train_records, train_dir, tokenizer, config.data, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )  # fmt: skip
    data_iter = iter(dataset)
    checkpoints = Checkpointer(workdir / "checkpoints", max_to_keep=config.keep_checkpoints)
    restored = checkpoints.restore(_abstract(state), data_iter)
    start = 0
    if restored is not None:
        state, start = restored
        log.info("resumed from step %d of %s", start, workdir / "checkpoints")
    elif config.get("init_from"):  # a fresh run initialised from a converted checkpoint; optimizer fresh
        from imtcxr_jax.convert.model_dir import load_into_train_state

        params, model_state = load_into_train_state(config.init_from, cfg, state.params, state.model_state)
        state = state.replace(params=params, model_state=model_state)
        log.info("initialised the model from %s", config.init_from)

    eval_set = None
    if evaluate_fn is not None and config.eval_every > 0:
        eval_records, _ = load_records(eval_dir)
        eval_set = make_eval_examples(eval_records, eval_dir, tokenizer, config.data)

    stop = _StopFlag()
    writer = MetricsWriter(workdir)
    sharding = batch_sharding(mesh)
    last: dict[str, Any] = {}
    progress = tqdm(
        range(start, config.total_steps),
        initial=start,
        total=config.total_steps,
        desc="train",
        disable=not is_primary(),
    )
    try:
        for step in progress:
            batch = _global_batch(next(data_iter), sharding)
            t0 = time.perf_counter()
            state, metrics = step_fn(state, batch)
            loss, finite = float(metrics["loss"]), bool(metrics["finite"])
            if not finite and config.nan_policy == "error":
                raise NonFiniteLossError(
                    f"step {step + 1}: loss is {loss}; stopping before any checkpoint of it is written "
                    "(set --config.nan_policy=skip to skip such steps)"
                )
            done = step + 1
            if done % config.log_every == 0 or done == config.total_steps:
                last = _scalars(done, metrics, state, time.perf_counter() - t0, config)
                writer.write(last)
                progress.set_postfix(loss=f"{loss:.3f}")
            if evaluate_fn is not None and eval_set is not None and done % config.eval_every == 0:
                scores = evaluate_fn(graphdef, state, eval_set, tokenizer, config)
                if scores:
                    writer.write({"step": done, **{f"eval/{k}": v for k, v in scores.items()}})
            stopping = any_process(stop.requested)  # all processes stop (and save together) at one step
            if done % config.checkpoint_every == 0 or done == config.total_steps or stopping:
                checkpoints.save(done, state, data_iter, force=True)
            if stopping:
                log.warning("SIGTERM: saved step %d, exiting", done)
                break
    finally:
        checkpoints.close()
        writer.close()
        stop.restore()
        plot_training_curve(workdir / "metrics.jsonl", workdir / "training_curve.png")
    return last


def _abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Per-host numpy batches -> global arrays sharded over the data axes."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def _scalars(step: int, metrics, state, seconds: float, config) -> dict[str, Any]:
    out = {
        "step": step,
        "loss": float(metrics["loss"]),
        "grad_norm": float(metrics["grad_norm"]),
        "tokens": int(metrics["tokens"]),
        "skipped_steps": int(state.skipped_steps),
        "step_seconds": round(seconds, 4),
    }
    for family, value, tokens in zip(
        TASK_FAMILIES, metrics["task_loss"], metrics["task_tokens"], strict=True
    ):
        if int(tokens):
            out[f"loss/{family}"] = float(value)
    if "loss_scale" in metrics:
        out["loss_scale"] = float(metrics["loss_scale"])
    return out


class _StopFlag:
    """SIGTERM sets a flag; the loop saves at the end of the current step and exits cleanly."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


# ---------------------------------------------------------------------------------------------------------
# Using a workdir's checkpoints elsewhere
# ---------------------------------------------------------------------------------------------------------


def load_trained_model(workdir: str | Path, step: int | None = None, *, bpe_dir: str | Path | None = None):
    """(model, tokenizer, config, step) from a training workdir (its newest readable checkpoint, or `step`)
    or from a converted checkpoint folder (`imtcxr convert`, step 0), restored on one device for inference.
    `bpe_dir` overrides the OFA BPE folder recorded in the tokenizer description."""
    from flax import nnx

    from imtcxr_jax.convert.model_dir import is_converted_dir, load_converted
    from imtcxr_jax.models.imtcxr import IMTCXR
    from imtcxr_jax.train.experiment import config_from_json
    from imtcxr_jax.train.partition import abstract_sharded_state

    workdir = Path(workdir)
    if is_converted_dir(workdir):
        if step not in (None, 0):
            raise ValueError(f"{workdir}: a converted checkpoint has only step 0, not {step}")
        return load_converted(workdir, bpe_dir=bpe_dir)
    for name in ("config.json", "model.json", "tokenizer.json"):
        if not (workdir / name).is_file():
            raise ValueError(
                f"{workdir}: missing {name}; expected a training workdir (imtcxr train --workdir) or a "
                "converted checkpoint (imtcxr convert)"
            )
    config = config_from_json((workdir / "config.json").read_text())
    tokenizer = load_tokenizer(
        workdir / "tokenizer.json", bpe_dir=bpe_dir or config.tokenizer.bpe_dir or None
    )
    cfg = ModelConfig.from_dict(json.loads((workdir / "model.json").read_text()))
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    abstract, _ = abstract_sharded_state(cfg, make_optimizer(config), mesh, config.seed)
    checkpoints = Checkpointer(workdir / "checkpoints", asynchronous=False)
    try:
        if step is not None and step not in checkpoints.steps():
            raise ValueError(f"{workdir}: no checkpoint of step {step} (have {checkpoints.steps()})")
        restored = checkpoints.restore(abstract, None, step=step)
    finally:
        checkpoints.close()
    if restored is None:
        raise ValueError(f"{workdir / 'checkpoints'}: no readable checkpoint")
    state, step = restored
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: IMTCXR(cfg, rngs=nnx.Rngs(0))))
    return nnx.merge(graphdef, state.params, state.model_state), tokenizer, config, step
