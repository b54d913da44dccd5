"""The training loop: workdir -> data + tokenizer -> sharded state -> steps, logs, checkpoints, evaluations.

The workdir holds everything needed to use its checkpoints elsewhere:
  config.json · tokenizer.json · model.json (the resolved ModelConfig) · checkpoints/<step>/ · metrics.jsonl ·
  tensorboard/ · training_curve.png · data/ (generated phantoms, when the dataset is "phantom")
Manifest folders and built TFDS datasets (config.dataset.source "manifest" / "tfds") stay where they are; the
config names them, so `imtcxr eval --checkpoint W` finds the held-out data while they are at the same path.
Started again on the same workdir, training resumes from the newest readable checkpoint, with the data
iterator, RNG and optimizer exactly where they were; steps after the checkpoint are re-run and logged again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from tqdm import tqdm

from imtcxr_jax.data.pipeline import build_tokenizer, make_eval_examples, make_train_dataset
from imtcxr_jax.data.sources import Record, load_records
from imtcxr_jax.models.config import ModelConfig
from imtcxr_jax.models.layers import Keys
from imtcxr_jax.sharding import make_mesh
from imtcxr_jax.tasks.common import TASK_FAMILIES, parse_families
from imtcxr_jax.text.tokenizer import OfaTokenizer, Tokenizer, load_tokenizer
from imtcxr_jax.train.checkpoint import Checkpointer
from imtcxr_jax.train.distributed import any_process, is_primary, primary_first
from imtcxr_jax.train.experiment import config_to_json
from imtcxr_jax.train.logging_utils import MetricsWriter, plot_training_curve
from imtcxr_jax.train.optimizer import make_optimizer
from imtcxr_jax.train.partition import batch_sharding, compile_ahead, init_sharded_state, jit_train_step

log = logging.getLogger(__name__)
logging.getLogger("absl").setLevel(logging.WARNING)  # orbax reports every file it writes at INFO
EVAL_SEED_OFFSET = 1_000_000  # held-out phantoms use seeds far from the training ones


class NonFiniteLossError(FloatingPointError):
    pass


# ---------------------------------------------------------------------------------------------------------
# Workdir set-up: data, tokenizer, model config
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TfdsSplits:
    """Splits of datasets built by `imtcxr data build` under ``data_dir``, as (name, split) pairs, in order."""

    data_dir: Path
    splits: tuple[tuple[str, str], ...]


DataSource = Path | TfdsSplits  # a folder in the manifest format, or splits of built datasets
HELD_OUT_SPLITS = ("validation", "test")  # a tfds dataset's held-out split: the first of these that was built


def _tfds_entries(ds: ml_collections.ConfigDict) -> list[tuple[str, str]]:
    """config.dataset.datasets ("name[:split],...") -> [(name, training split)]; ValueError naming the key."""
    from imtcxr_jax.data.tfds import BUILDERS

    entries = []
    for item in (part.strip() for part in str(ds.datasets).split(",")):
        if not item:
            continue
        name, _, split = item.partition(":")
        name, split = name.strip(), split.strip() or "train"
        if name not in BUILDERS:
            raise ValueError(
                f"config.dataset.datasets: unknown dataset {name!r}; expected builder names from: "
                f"{', '.join(BUILDERS)}"
            )
        if (name, split) in entries:
            raise ValueError(f"config.dataset.datasets: {name}:{split} is listed twice")
        entries.append((name, split))
    if not entries:
        raise ValueError(
            "config.dataset.datasets: empty; with source 'tfds' list the built datasets to train on, "
            "e.g. --config.dataset.datasets=mimic_cxr,vindr_cxr,chexmask"
        )
    return entries


def tfds_splits(config: ml_collections.ConfigDict, *, held_out: bool = False) -> TfdsSplits:
    """The training splits of config.dataset.datasets under config.dataset.data_dir, or (``held_out``) each
    dataset's held-out split: validation where it was built, else test, never one it trains on (a dataset
    with neither is left out, with a warning). ValueError naming the key when a dataset or split is missing."""
    from imtcxr_jax.data.tfds import dataset_dir

    ds = config.dataset
    if not ds.data_dir:
        raise ValueError(
            "config.dataset.data_dir: required with source 'tfds' (the --out folder of `imtcxr data build`)"
        )
    data_dir = Path(ds.data_dir)
    if not data_dir.is_dir():
        raise ValueError(
            f"config.dataset.data_dir: {data_dir} is not a directory (run `imtcxr data build` first)"
        )
    entries = _tfds_entries(ds)
    splits: list[tuple[str, str]] = []
    for name in dict.fromkeys(name for name, _ in entries):
        try:
            folder = dataset_dir(data_dir, name)
        except FileNotFoundError as error:
            raise ValueError(f"config.dataset.datasets: {error}") from None
        built = sorted(p.name[len("records-") : -len(".jsonl")] for p in folder.glob("records-*.jsonl"))
        trained = [split for entry, split in entries if entry == name]
        if not held_out:
            for split in trained:
                if split not in built:
                    raise ValueError(
                        f"config.dataset.datasets: {folder} has no split {split!r} (built: {built})"
                    )
                splits.append((name, split))
            continue
        choice = next((s for s in HELD_OUT_SPLITS if s in built and s not in trained), None)
        if choice is None:
            log.warning(
                "%s: no validation or test split apart from %s; none of it is held out", folder, trained
            )
        else:
            splits.append((name, choice))
    return TfdsSplits(data_dir, tuple(splits))


def held_out_data(config: ml_collections.ConfigDict, workdir: str | Path) -> DataSource:
    """Where a workdir's held-out examples are, creating nothing: its phantoms (``W/data/eval``), the manifest
    eval_dir, or the held-out splits of its built datasets (`tfds_splits`)."""
    ds = config.dataset
    if ds.source == "tfds":
        return tfds_splits(config, held_out=True)
    if ds.source == "manifest":
        return Path(ds.eval_dir)
    return Path(workdir) / "data" / "eval"


def prepare_data(config: ml_collections.ConfigDict, workdir: Path) -> tuple[DataSource, DataSource]:
    """The (train, eval) data: folders in the manifest format (phantoms are generated once into the
    workdir), or for source "tfds" the `TfdsSplits` to train on and to hold out. `load_data` reads either."""
    ds = config.dataset
    if ds.source == "tfds":
        return tfds_splits(config), tfds_splits(config, held_out=True)
    if ds.source == "manifest":
        for name in ("train_dir", "eval_dir"):
            if not ds[name] or not (Path(ds[name]) / "manifest.jsonl").is_file():
                raise ValueError(f"config.dataset.{name}: {ds[name]!r} has no manifest.jsonl")
        return Path(ds.train_dir), Path(ds.eval_dir)
    if ds.source != "phantom":
        raise ValueError(
            f"config.dataset.source: got {ds.source!r}, expected 'phantom', 'manifest' or 'tfds'"
        )
    if not isinstance(ds.phantom_workers, int) or ds.phantom_workers < 0:
        raise ValueError(
            f"config.dataset.phantom_workers: got {ds.phantom_workers!r}, expected a number of processes >= 0 "
            "(0: one per CPU core)"
        )
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
                "--max-shift",
                str(ds.phantom_max_shift),
                "--min-zoom",
                str(ds.phantom_min_zoom),
            ]
            if ds.phantom_finding_weights:
                args += ["--finding-weights", ds.phantom_finding_weights]
            args += ["--workers", str(ds.phantom_workers or os.cpu_count() or 1), "--out", str(folder)]
            # In a process of its own: its worker processes are forked, and forking this one, whose JAX
            # runtime has threads running, could deadlock a child on a lock held by a thread it lacks.
            command = [sys.executable, "-m", "imtcxr_jax.data.cli", *args]
            if subprocess.run(command, check=False).returncode != 0:
                raise RuntimeError(f"phantom generation into {folder} failed: {shlex.join(command)}")
        folders.append(folder)
    return folders[0], folders[1]


def load_data(source: DataSource) -> tuple[list[Record], Any]:
    """(records, images) of a `prepare_data` source: images is the folder, or a `data.tfds.TfdsImages` (what
    `make_train_dataset` / `make_eval_examples` take). Rejected rows are logged, not fatal."""
    if isinstance(source, TfdsSplits):
        from imtcxr_jax.data.tfds import TfdsImages, read_records

        records: list[Record] = []
        for name, split in source.splits:
            part, rejected = read_records(source.data_dir, name, split)
            if rejected.counts:
                log.warning("%s %s: %s", name, split, rejected.summary())
            records += part
        return records, TfdsImages(source.data_dir)
    records, rejected = load_records(source)
    if rejected.counts:
        log.warning("data %s: %s", source, rejected.summary())
    return records, source


def check_families(config: ml_collections.ConfigDict, records: list[Record], source: DataSource) -> None:
    """Built datasets annotate only some task families (`DatasetRecord.families`): a family with a mixture
    weight > 0 that none of them annotates is an error naming the weight to zero."""
    if not isinstance(source, TfdsSplits):
        return
    annotated = {family for record in records for family in getattr(record, "families", TASK_FAMILIES)}
    for family in TASK_FAMILIES:
        if config.data.weights.get(family, 0) > 0 and family not in annotated:
            names = ", ".join(dict.fromkeys(name for name, _ in source.splits))
            raise ValueError(
                f"config.data.weights.{family}: {config.data.weights[family]}, but none of the datasets "
                f"({names}) annotates {family} (theirs: {sorted(annotated)}); add one that does or set "
                f"--config.data.weights.{family}=0"
            )


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


def config_train_step(config: ml_collections.ConfigDict, graphdef, optimizer, shardings, mesh: Mesh) -> Any:
    """`jit_train_step` with the run config's accumulation and loss options (the loop's step; tools that time
    a run's step build it here too, so that they run the same program)."""
    return jit_train_step(
        graphdef, optimizer, shardings, mesh,
        accumulation_steps=config.accumulation_steps, label_smoothing=config.label_smoothing,
        bin_sigma=config.bin_sigma, first_token_weight=config.first_token_weight,
        first_tokens=config.first_tokens,
        first_token_families=parse_families(config.first_token_families, "config.first_token_families"),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------


def train(config: ml_collections.ConfigDict, workdir: str | Path, *, evaluate_fn=None) -> dict[str, Any]:
    """Train until config.total_steps (resuming from the workdir's checkpoints) and return the metrics logged
    at the step reached (else just that step), with its held-out scores ("eval/...") if it was evaluated."""
    if config.nan_policy not in ("error", "skip"):
        raise ValueError(f"config.nan_policy: got {config.nan_policy!r}, expected 'error' or 'skip'")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if is_primary():  # the workdir is shared by all processes of a multi-host run; one writes
        (workdir / "config.json").write_text(config_to_json(config))

    # Process 0 generates the phantoms and trains the tokenizer while the others wait; they then find both.
    with primary_first("workdir set-up"):
        train_source, eval_source = prepare_data(config, workdir)
        train_records, train_images = load_data(train_source)
        check_families(config, train_records, train_source)
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
    step_fn = config_train_step(config, graphdef, optimizer, shardings, mesh)

    dataset = make_train_dataset(
        train_records, train_images, tokenizer, config.data, seed=config.seed,
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

    if start < config.total_steps:  # a finished run started again has nothing to compile
        started = time.perf_counter()
        shapes = compile_ahead(step_fn, state, dataset.batch_shapes(), mesh, jax.process_count())
        seconds = time.perf_counter() - started
        log.info("compiled the train step for %d batch shapes in %.0f s", shapes, seconds)

    eval_set = None
    if evaluate_fn is not None and config.eval_every > 0:
        eval_records, eval_images = load_data(eval_source)
        eval_set = make_eval_examples(eval_records, eval_images, tokenizer, config.data)

    stop = _StopFlag()
    writer = MetricsWriter(workdir)
    sharding = batch_sharding(mesh)
    last: dict[str, Any] = {}
    evaluated: dict[str, Any] = {}  # the latest held-out scores, returned with `last` if of its step
    # Per-family loss sums and target tokens since the last log line: one family may not be in the logged step.
    family_totals = np.zeros((2, len(TASK_FAMILIES)))
    done = start
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
            if finite:  # a skipped step is counted in skipped_steps, not averaged in
                tokens = np.asarray(metrics["task_tokens"], np.float64)
                family_totals += (np.asarray(metrics["task_loss"], np.float64) * tokens, tokens)
            if done % config.log_every == 0 or done == config.total_steps:
                last = _scalars(done, metrics, state, time.perf_counter() - t0, family_totals)
                family_totals[:] = 0
                writer.write(last)
                progress.set_postfix(loss=f"{loss:.3f}")
            # Every eval_every steps and at the last (eval_set exists only with evaluate_fn and eval_every > 0).
            if eval_set is not None and (done % config.eval_every == 0 or done == config.total_steps):
                scores = evaluate_fn(graphdef, state, eval_set, tokenizer, config)
                if scores:
                    evaluated = {"step": done, **{f"eval/{k}": v for k, v in scores.items()}}
                    writer.write(evaluated)
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
    result = last if last.get("step") == done else {"step": done}  # a restarted finished run: its step
    if evaluated.get("step") == done:
        result = {**result, **evaluated}
    return result


def _abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Per-host numpy batches -> global arrays sharded over the data axes."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def _scalars(step: int, metrics, state, seconds: float, family_totals: np.ndarray) -> dict[str, Any]:
    """The log line of `step`: its loss, gradient norm and tokens, and per family the token-mean loss over the
    steps since the previous log line (``family_totals``: loss sums and tokens per family)."""
    out = {
        "step": step,
        "loss": float(metrics["loss"]),
        "grad_norm": float(metrics["grad_norm"]),
        "tokens": int(metrics["tokens"]),
        "skipped_steps": int(state.skipped_steps),
        "step_seconds": round(seconds, 4),
    }
    for family, total, tokens in zip(TASK_FAMILIES, *family_totals, strict=True):
        if tokens:
            out[f"loss/{family}"] = float(total / tokens)
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
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: IMTCXR(cfg, rngs=Keys(params=0))))
    return nnx.merge(graphdef, state.params, state.model_state), tokenizer, config, step
