"""Checkpointer on its own: fall back past a corrupt or incomplete newest checkpoint, and restore a train state
saved from one mesh onto another mesh's shardings.

The training-loop side (SIGKILL / SIGTERM / non-finite losses) is in test_resume.py.
"""

import logging
import os
import shutil
import warnings
from pathlib import Path

import grain
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from imtcxr_jax.models.config import get_model_config
from imtcxr_jax.sharding import make_mesh
from imtcxr_jax.train.checkpoint import Checkpointer, abstract_like
from imtcxr_jax.train.optimizer import make_optimizer
from imtcxr_jax.train.partition import abstract_sharded_state, init_sharded_state
from tests.train.test_steps import OPTIMIZER

# ---------------------------------------------------------------------------------------------------------
# A corrupt or incomplete newest checkpoint
# ---------------------------------------------------------------------------------------------------------


def _state(step: int) -> dict:
    """A small train-state-like tree whose values depend on the step, sharded over the 8 devices. The matrix
    is large enough (256 KiB) to be stored in its own data file, not inline in orbax's index."""
    sharding = NamedSharding(make_mesh((8, 1, 1)), PartitionSpec("data"))
    rng = np.random.default_rng(step)
    return {
        "w": jax.device_put(rng.standard_normal((256, 256)).astype(np.float32), sharding),
        "b": jax.device_put(rng.standard_normal(64).astype(np.float32), sharding),
        "step": jax.numpy.asarray(step, jax.numpy.int32),
    }


def _iterator():
    return iter(grain.MapDataset.range(1000).to_iter_dataset())


def _save_steps(directory: Path, steps=(1, 2, 3)) -> None:
    """Checkpoints whose data iterator has consumed 10 x step elements."""
    checkpoints = Checkpointer(directory)
    data = _iterator()
    consumed = 0
    for step in steps:
        for _ in range(10 * step - consumed):
            next(data)
        consumed = 10 * step
        checkpoints.save(step, _state(step), data)
    checkpoints.close()


def _truncate_state_files(step_dir: Path) -> None:
    # What an interrupted copy or a full disk leaves: every file of the array store cut to half its length.
    for path in (step_dir / "state").rglob("*"):
        if path.is_file():
            os.truncate(path, path.stat().st_size // 2)


def _remove_state(step_dir: Path) -> None:
    # An incomplete step folder: the train state item is missing altogether.
    shutil.rmtree(step_dir / "state")


def _garble_array_data(step_dir: Path) -> None:
    # Bit rot in the array values: 16 bytes flipped in the middle of the largest file (the chunk of "w"). The
    # file keeps its length and orbax's index (which has checksums of its own) still points at it, so only a
    # checksum of the restored values can notice.
    path = max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0x5A for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))


def _garble_iterator_state(step_dir: Path) -> None:
    for path in (step_dir / "data").glob("process_*.json"):
        path.write_text('{"next_index": ')


@pytest.mark.parametrize(
    "corrupt", [_truncate_state_files, _remove_state, _garble_array_data, _garble_iterator_state]
)
def test_a_corrupt_newest_checkpoint_warns_naming_it_and_falls_back(tmp_path, corrupt):
    _save_steps(tmp_path)
    corrupt(tmp_path / "3")

    checkpoints = Checkpointer(tmp_path)
    data = _iterator()
    with pytest.warns(UserWarning, match=f"checkpoint {tmp_path / '3'} could not be restored"):
        state, step = checkpoints.restore(abstract_like(_state(0)), data)
    checkpoints.close()

    assert step == 2
    for key, expected in _state(2).items():
        np.testing.assert_array_equal(np.asarray(state[key]), np.asarray(expected), err_msg=key)
    assert next(data) == 20  # the iterator is at step 2's position too, not step 3's


def test_restore_without_any_readable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    # Training from scratch over a folder of unreadable checkpoints would silently discard the run (and
    # max_to_keep would then delete them); the caller has to decide.
    _save_steps(tmp_path, steps=(1, 2))
    for step in (1, 2):
        _remove_state(tmp_path / str(step))
    checkpoints = Checkpointer(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="no readable checkpoint") as error:
            checkpoints.restore(abstract_like(_state(0)), _iterator())
    checkpoints.close()
    assert str(tmp_path / "1") in str(error.value) and str(tmp_path / "2") in str(error.value)


def test_restoring_an_explicit_corrupt_step_is_an_error(tmp_path):
    # With `step=`, the caller asked for that checkpoint: no silent substitute.
    _save_steps(tmp_path, steps=(1, 2))
    _garble_array_data(tmp_path / "2")
    checkpoints = Checkpointer(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match=str(tmp_path / "2")):
            checkpoints.restore(abstract_like(_state(0)), None, step=2)
    checkpoints.close()


def test_an_empty_folder_restores_nothing(tmp_path):
    checkpoints = Checkpointer(tmp_path)
    assert checkpoints.restore(abstract_like(_state(0)), _iterator()) is None
    checkpoints.close()


# ---------------------------------------------------------------------------------------------------------
# Restoring onto a different mesh
# ---------------------------------------------------------------------------------------------------------


def test_a_state_saved_on_one_device_restores_onto_a_2x2x2_mesh(tmp_path):
    cfg = get_model_config("micro")
    optimizer = make_optimizer(OPTIMIZER)
    one_device = make_mesh((1, 1, 1), jax.devices()[:1])
    _, state, _, _ = init_sharded_state(cfg, optimizer, one_device, seed=0)
    # Fill every leaf with distinct values (a fresh state's Adam moments are all zeros, which would not show
    # a moment restored into the wrong slot); integer leaves (step, counts, RNG key) get small integers.
    rng = np.random.default_rng(0)

    def distinct(leaf):
        if np.issubdtype(leaf.dtype, np.floating):
            values = rng.standard_normal(leaf.shape)
        else:
            values = rng.integers(0, 1000, leaf.shape)
        return jax.device_put(values.astype(leaf.dtype), leaf.sharding)

    state = jax.tree.map(distinct, state)
    saved = jax.tree.map(np.asarray, state)
    checkpoints = Checkpointer(tmp_path)
    checkpoints.save(7, state, None)
    checkpoints.close()

    mesh = make_mesh((2, 2, 2))
    abstract, shardings = abstract_sharded_state(cfg, optimizer, mesh, seed=0)
    checkpoints = Checkpointer(tmp_path)
    restored, step = checkpoints.restore(abstract, None)
    checkpoints.close()

    assert step == 7
    leaves, treedef = jax.tree.flatten(restored)
    assert treedef == jax.tree.structure(saved)
    for ours, expected, sharding in zip(
        leaves, jax.tree.leaves(saved), jax.tree.leaves(shardings), strict=True
    ):
        assert ours.sharding == sharding
        np.testing.assert_array_equal(np.asarray(ours), expected)
    # And it really is split: an FFN kernel is sharded (fsdp, tensor), so each device holds a quarter of it
    # (its Adam moments follow it: their shardings were checked leaf by leaf above).
    kernel = restored.params["encoder"]["layers"][0]["ffn"]["fc1"]["kernel"][...]
    assert kernel.sharding.spec == PartitionSpec("fsdp", "tensor")
    assert kernel.addressable_shards[0].data.shape == (kernel.shape[0] // 2, kernel.shape[1] // 2)


def test_small_replicated_arrays_are_saved_whole_not_sliced_per_replica(tmp_path, caplog):
    """orbax's replica-parallel saving would slice each replicated array across its 8 replicas, one compiled
    slice program per shape (200 for the micro train state, 14 s at its first save); below
    `MIN_REPLICA_SLICE_BYTES` a slice is not worth it, so the save compiles nothing and restores the same."""
    replicated = NamedSharding(make_mesh((8, 1, 1)), PartitionSpec())
    rng = np.random.default_rng(0)
    shapes = [(256, 256), (8, 40), (24,), (3, 16, 16)]  # each divisible by 8 along some axis
    state = {
        f"a{i}": jax.device_put(rng.standard_normal(s).astype(np.float32), replicated)
        for i, s in enumerate(shapes)
    }
    caplog.set_level(logging.DEBUG, logger="jax._src.dispatch")
    checkpoints = Checkpointer(tmp_path, asynchronous=False)
    checkpoints.save(1, state, None)
    compiled = [r.getMessage() for r in caplog.records if "jit(slice)" in r.getMessage()]
    assert compiled == []
    restored, step = checkpoints.restore(abstract_like(state), None)
    checkpoints.close()
    assert step == 1
    for key, value in state.items():
        np.testing.assert_array_equal(np.asarray(restored[key]), np.asarray(value))
