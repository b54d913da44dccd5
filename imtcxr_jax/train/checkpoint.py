"""Checkpoints with orbax: the whole train state (parameters, optimizer state, step, RNG, loss scale, BatchNorm
statistics) and the data iterator, saved asynchronously every `checkpoint_every` steps.

Restore is defensive: the latest complete step is tried first; if it cannot be read (a corrupt or truncated
file), a warning names it and the previous step is tried. orbax writes each step to a temporary folder and
renames it only when complete, so a run killed in the middle of a save never leaves a half step behind.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    """Save and restore (train state, data iterator) pairs under `directory`/<step>/."""

    def __init__(self, directory: str | Path, *, max_to_keep: int = 3, asynchronous: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=asynchronous, create=True
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_names=("state", "data"),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
            },
        )

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, data_iterator: Any | None, *, force: bool = False) -> bool:
        """Start saving (returns at once when asynchronous). The data iterator's position is captured now."""
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(
        self, abstract_state: Any, data_iterator: Any | None, *, step: int | None = None
    ) -> tuple[Any, int] | None:
        """Restore the newest readable step onto `abstract_state`'s shapes, dtypes and shardings (which may
        be a different mesh than the one saved from). The iterator is set to its saved position in place.
        Returns (state, step), or None when there is no checkpoint at all. With `step`, only that one."""
        candidates = [step] if step is not None else list(reversed(self.steps()))
        for candidate in candidates:
            items = {"state": ocp.args.StandardRestore(abstract_state)}
            if data_iterator is not None:
                items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
            try:
                restored = self.manager.restore(candidate, args=ocp.args.Composite(**items))
            except Exception as error:
                warnings.warn(
                    f"checkpoint {self.directory / str(candidate)} could not be restored ({type(error).__name__}: "
                    f"{str(error)[:300]}); falling back to the previous checkpoint",
                    stacklevel=2,
                )
                continue
            return restored["state"], candidate
        return None

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
