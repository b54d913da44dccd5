"""Checkpoints with orbax: the whole train state (parameters, optimizer state, step, RNG, loss scale, BatchNorm
statistics) and the data iterator, saved asynchronously every `checkpoint_every` steps.

Restore is defensive: the latest complete step is tried first; if it cannot be read (a corrupt or truncated
file), a warning names it and the previous step is tried; if no step can be read, an error names them all.
orbax writes each step to a temporary folder and renames it only when complete, so a run killed in the middle
of a save never leaves a half step behind (the `<step>.orbax-checkpoint-tmp` folder is ignored, and removed
when that step is saved again).

orbax notices a truncated or missing file, but not flipped bytes inside an array's data: those restore as
wrong values. So each step also stores a fingerprint of every leaf of the state (the wrapping uint32 sum of
its bits: any change to one element changes it, and it does not depend on the mesh), checked after restoring.
Steps saved without fingerprints are restored unchecked.
"""

from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

# orbax splits the write of an array replicated over several devices between those replicas ("replica
# parallel"; its default everywhere but on GPUs). Each slice shape costs a small compiled program and a
# dispatch, which for small arrays cost far more than their write: the micro model on 8 CPU devices compiled
# 200 of them, 14 s, at its first save. Arrays whose slices would be smaller than this are written whole by
# one replica; large replicated arrays are still split.
MIN_REPLICA_SLICE_BYTES = 4 * 2**20


@functools.cache
def _configure_array_saving() -> None:
    """Register orbax's array handler with `MIN_REPLICA_SLICE_BYTES`, once per process (it is process-wide)."""
    # orbax's default array handler, with the threshold: it keeps an array-metadata store, whose class orbax
    # exports under a private path only.
    from orbax.checkpoint._src.metadata import array_metadata_store

    handler = ocp.type_handlers.ArrayHandler(
        array_metadata_store=array_metadata_store.Store(),
        min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES,
    )
    absl_log = logging.getLogger("absl")  # orbax warns that a handler is replaced, which is the intent here
    level = absl_log.level
    absl_log.setLevel(logging.ERROR)
    try:
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
    finally:
        absl_log.setLevel(level)


class Checkpointer:
    """Save and restore (train state, data iterator) pairs under `directory`/<step>/."""

    def __init__(self, directory: str | Path, *, max_to_keep: int = 3, asynchronous: bool = True):
        self.directory = Path(directory).absolute()
        _configure_array_saving()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=asynchronous, create=True
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_names=("state", "data", "fingerprints"),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
                "fingerprints": ocp.JsonCheckpointHandler(),
            },
        )

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, data_iterator: Any | None, *, force: bool = False) -> bool:
        """Start saving (returns at once when asynchronous). The data iterator's position is captured now."""
        items = {
            "state": ocp.args.StandardSave(state),
            "fingerprints": ocp.args.JsonSave(fingerprints(state)),
        }
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(
        self, abstract_state: Any, data_iterator: Any | None, *, step: int | None = None
    ) -> tuple[Any, int] | None:
        """Restore the newest readable step onto `abstract_state`'s shapes, dtypes and shardings (which may
        be a different mesh than the one saved from). The iterator is set to its saved position in place.
        Returns (state, step), or None when there is no checkpoint at all; raises RuntimeError when none of
        them can be read. With `step`, only that one (an error if it cannot be read)."""
        candidates = [step] if step is not None else list(reversed(self.steps()))
        failures = []
        for candidate in candidates:
            try:
                return self._restore(candidate, abstract_state, data_iterator), candidate
            except Exception as error:
                path = self.directory / str(candidate)
                reason = f"{type(error).__name__}: {str(error)[:300]}"
                failures.append(f"{path} ({reason})")
                if step is None:
                    warnings.warn(
                        f"checkpoint {path} could not be restored ({reason}); falling back to the previous one",
                        stacklevel=2,
                    )
        if failures:
            raise RuntimeError(
                "no readable checkpoint: " + "; ".join(failures) + ". Move the unreadable step folders away "
                "to start afresh."
            )
        return None

    def _restore(self, step: int, abstract_state: Any, data_iterator: Any | None) -> Any:
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        checked = (self.directory / str(step) / "fingerprints").exists()
        if checked:
            items["fingerprints"] = ocp.args.JsonRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        if checked:
            saved, found = restored["fingerprints"], fingerprints(restored["state"])
            wrong = [key for key in found if saved.get(key) != found[key]]
            if wrong or saved.keys() != found.keys():
                raise ValueError(
                    f"restored values do not match their saved fingerprints ({len(wrong)} leaves differ, "
                    f"e.g. {wrong[:3]})"
                )
        return restored["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a concrete tree, for restoring onto the same layout."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
    )


@jax.jit
def _leaf_fingerprints(leaves: list[jax.Array]) -> list[jax.Array]:
    def one(x):
        if x.dtype == jnp.bool_:
            x = x.astype(jnp.uint8)
        unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
        bits = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
        return jnp.sum(bits, dtype=jnp.uint32)  # wraps: exact, and the same in any summation order

    return [one(x) for x in leaves]


def fingerprints(tree: Any) -> dict[str, int]:
    """{leaf path: wrapping uint32 sum of its bits} of a tree of arrays (computed where they live)."""
    groups: dict[Any, list[tuple[str, Any]]] = {}  # one computation per set of devices the leaves live on
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        devices = frozenset(leaf.sharding.device_set) if isinstance(leaf, jax.Array) else None
        groups.setdefault(devices, []).append((jax.tree_util.keystr(path), leaf))
    out = {}
    for members in groups.values():
        values = jax.device_get(_leaf_fingerprints([leaf for _, leaf in members]))
        out.update({key: int(np.uint32(v)) for (key, _), v in zip(members, values, strict=True)})
    return out
