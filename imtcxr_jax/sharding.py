"""Device mesh and logical axis rules: the one place where model axes meet mesh axes.

Model code names the axes of every parameter (`embed`, `heads`, `mlp`, `vocab`, `conv_out`, ...). The rules
below map each name to a mesh axis of the (data, fsdp, tensor) mesh, or to None (replicated). Parameters are
created already sharded: the model is first built abstractly (shapes only), its shardings are derived from
the names, and the constructor is jitted with those `out_shardings`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (None = replicated). Data, not code: a config may pass its own table.
DEFAULT_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("positions", None),
    ("rel_buckets", None),
    ("norm", None),
    ("conv_h", None),
    ("conv_w", None),
    ("conv_in", None),
    ("conv_out", None),
)


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh; raises ValueError naming the shape when it does not cover the devices."""
    devices = list(jax.devices() if devices is None else devices)
    if len(shape) != 3 or any(int(n) < 1 for n in shape):
        raise ValueError(f"mesh shape: got {tuple(shape)}, expected three positive sizes for {MESH_AXES}")
    if int(np.prod(shape)) != len(devices):
        raise ValueError(
            f"mesh shape: got {tuple(shape)} ({int(np.prod(shape))} devices), expected {len(devices)}"
        )
    auto = (jax.sharding.AxisType.Auto,) * 3
    return jax.make_mesh(tuple(int(n) for n in shape), MESH_AXES, axis_types=auto, devices=devices)


@dataclasses.dataclass
class ShardingPlan:
    """Per-variable shardings plus the dimensions that could not be split as the rules asked."""

    shardings: nnx.State
    replicated_instead: list[str]  # "path: axis 'vocab' (59457) not divisible by tensor=2"


def logical_to_spec(
    names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules=DEFAULT_RULES
) -> tuple[PartitionSpec, list[str]]:
    """PartitionSpec for a variable with logical axis `names`; a dimension whose size the mesh axes do not
    divide stays replicated and is reported (sharding must never change what is computed)."""
    table = dict(rules)
    spec, notes, used = [], [], set()
    for name, size in zip(names, shape, strict=True):
        target = table.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a not in used)  # a mesh axis may shard only one dimension
        ways = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
        if axes and size % ways:
            notes.append(f"axis {name!r} ({size}) not divisible by {'x'.join(axes)}={ways}")
            axes = ()
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec), notes


def plan_shardings(abstract_module: nnx.Module, mesh: Mesh, rules=DEFAULT_RULES) -> ShardingPlan:
    """NamedShardings for every variable of an (abstract) module, from its logical axis metadata."""
    state = nnx.state(abstract_module)
    notes: list[str] = []

    def one(path, var):
        names = var.get_metadata().get("out_sharding") or (None,) * len(var.shape)
        spec, why = logical_to_spec(names, var.shape, mesh, rules)
        notes.extend(f"{'.'.join(map(str, path))}: {w}" for w in why)
        return var.replace(NamedSharding(mesh, spec))

    shardings = nnx.map_state(one, state)
    return ShardingPlan(shardings=shardings, replicated_instead=notes)


def create_sharded(constructor, mesh: Mesh, rules=DEFAULT_RULES) -> tuple[nnx.Module, ShardingPlan]:
    """Build `constructor()` (which returns an nnx.Module) with every variable created on its shards."""
    abstract = nnx.eval_shape(constructor)
    plan = plan_shardings(abstract, mesh, rules)

    def init_state() -> nnx.State:
        return nnx.state(constructor())

    state = jax.jit(init_state, out_shardings=plan.shardings)()
    return nnx.merge(nnx.graphdef(abstract), state), plan
