"""Placing the train state and batches on a mesh: shardings for every leaf, and the jitted sharded step.

Parameters follow the logical axis rules of `imtcxr_jax.sharding`; the Adam moments follow their parameters;
everything else in the state (step, RNG, counters, loss scale, optimizer step counts) is replicated. Batches
are split over the data-parallel axes (data x fsdp) along their first dimension.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from imtcxr_jax.models.config import ModelConfig
from imtcxr_jax.models.imtcxr import IMTCXR
from imtcxr_jax.models.layers import Keys
from imtcxr_jax.sharding import DEFAULT_RULES, create_sharded, plan_shardings
from imtcxr_jax.tasks.common import check_families
from imtcxr_jax.train.steps import TrainState, create_train_state, train_step

BATCH_AXES = ("data", "fsdp")


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def state_shardings(
    state: TrainState, model_shardings: nnx.State, optimizer: optax.GradientTransformation, mesh: Mesh
) -> TrainState:
    """A TrainState-shaped tree of NamedShardings."""
    replicated = NamedSharding(mesh, PartitionSpec())
    param_shardings = nnx.filter_state(model_shardings, nnx.Param)
    other_shardings = nnx.filter_state(model_shardings, nnx.Not(nnx.Param))
    opt_shardings = optax.tree_map_params(
        optimizer,
        lambda _, sharding: sharding,
        state.opt_state,
        param_shardings,
        transform_non_params=lambda _: replicated,
    )
    return TrainState(
        step=replicated,
        params=param_shardings,
        model_state=other_shardings,
        opt_state=opt_shardings,
        rng=replicated,
        skipped_steps=replicated,
        loss_scale=jax.tree.map(lambda _: replicated, state.loss_scale),
    )


def init_sharded_state(
    cfg: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh, seed: int, rules=DEFAULT_RULES
) -> tuple[nnx.GraphDef, TrainState, TrainState, list[str]]:
    """Build the model on its shards and the train state around it. Returns (graphdef, state, state shardings,
    dimensions the rules could not shard)."""
    model, plan = create_sharded(lambda: IMTCXR(cfg, rngs=Keys(params=seed)), mesh, rules)
    graphdef, state = create_train_state(model, optimizer, seed, float16=cfg.dtype == "float16")
    shardings = state_shardings(state, plan.shardings, optimizer, mesh)
    return graphdef, jax.device_put(state, shardings), shardings, plan.replicated_instead


def abstract_sharded_state(
    cfg: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh, seed: int = 0, rules=DEFAULT_RULES
) -> tuple[TrainState, TrainState]:
    """ShapeDtypeStructs and shardings of the full train state, nothing allocated (for memory estimates and
    restoring checkpoints onto another mesh)."""
    abstract = nnx.eval_shape(lambda: IMTCXR(cfg, rngs=Keys(params=seed)))
    plan = plan_shardings(abstract, mesh, rules)
    state = jax.eval_shape(
        lambda: create_train_state(
            IMTCXR(cfg, rngs=Keys(params=seed)), optimizer, seed, float16=cfg.dtype == "float16"
        )[1]
    )
    shardings = state_shardings(state, plan.shardings, optimizer, mesh)
    with_shardings = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings
    )
    return with_shardings, shardings


def jit_train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    shardings: TrainState,
    mesh: Mesh,
    *,
    accumulation_steps: int = 1,
    label_smoothing: float = 0.0,
    bin_sigma: float = 0.0,
    first_token_weight: float = 1.0,
    first_tokens: int = 1,
    first_token_families: tuple[str, ...] = (),
) -> Any:
    """train_step jitted with explicit in/out shardings; the old state's buffers are donated. Raises ValueError
    naming the config key for a loss option out of range."""
    for key, value, valid, expected in (
        ("label_smoothing", label_smoothing, 0.0 <= label_smoothing < 1.0, "in [0, 1)"),
        ("bin_sigma", bin_sigma, bin_sigma >= 0.0, ">= 0 (0: off)"),
        ("first_token_weight", first_token_weight, first_token_weight >= 0.0, ">= 0 (1: the original)"),
        ("first_tokens", first_tokens, first_tokens >= 1, ">= 1"),
    ):
        if not valid:
            raise ValueError(f"config.{key}: got {value!r}, expected a number {expected}")
    check_families(first_token_families, "config.first_token_families")
    step = functools.partial(
        train_step,
        graphdef=graphdef,
        optimizer=optimizer,
        accumulation_steps=accumulation_steps,
        label_smoothing=label_smoothing,
        bin_sigma=bin_sigma,
        first_token_weight=first_token_weight,
        first_tokens=first_tokens,
        first_token_families=tuple(first_token_families),
    )
    return jax.jit(
        step,
        in_shardings=(shardings, batch_sharding(mesh)),
        out_shardings=(shardings, None),
        donate_argnums=0,
    )


def compile_ahead(
    step_fn: Any,
    state: TrainState,
    batch_shapes: Mapping[str, Mapping[str, tuple[tuple[int, ...], np.dtype]]],
    mesh: Mesh,
    process_count: int = 1,
) -> int:
    """Compile `step_fn` (from `jit_train_step`) for every batch shape of the stream, in parallel threads;
    returns the number of distinct shapes compiled.

    ``batch_shapes`` holds per-host shapes (`TrainDataset.batch_shapes`); the global batch is
    ``process_count`` of them. ``jax.jit`` keeps the executables, so the first step of each shape finds its
    executable compiled. Why: with one family per batch the stream has up to four shapes, and a shape that
    cannot compile (say, the longest family's step out of accelerator memory) fails before the first step,
    not after hours of training; the log then says what compilation cost, apart from the steps. Threads
    overlap the part of XLA's compilation that is single-threaded (on 2 cores little: 4 shapes of the main
    job took 141 s, against ~150 s compiled one after another as their first batches arrived).
    """
    sharding = batch_sharding(mesh)

    def compile_one(shapes: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> None:
        batch = {
            key: jax.ShapeDtypeStruct((shape[0] * process_count, *shape[1:]), dtype, sharding=sharding)
            for key, (shape, dtype) in shapes.items()
        }
        step_fn.lower(state, batch).compile()

    # Families padded to the same lengths share one executable: compile each distinct shape once.
    distinct = list({tuple(sorted(shapes.items())): shapes for shapes in batch_shapes.values()}.values())
    with ThreadPoolExecutor(max(1, min(len(distinct), os.cpu_count() or 1))) as pool:
        list(pool.map(compile_one, distinct))
    return len(distinct)
