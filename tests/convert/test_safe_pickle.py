"""The checkpoint reader: torch's two file formats into numpy without torch, and nothing outside the allowlist."""

from __future__ import annotations

import argparse
import collections
import io
import os
import pickle
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch

from imtcxr_jax.convert.safe_pickle import (
    CheckpointError,
    LazyTensor,
    RestrictedUnpickler,
    UnsafeCheckpointError,
    _StorageRef,
    load_checkpoint,
    plain_data,
)
from tests.convert import DictConfig, save

DATA = Path(__file__).parent / "data"


def _tensors() -> dict[str, torch.Tensor]:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 7
    return collections.OrderedDict(
        f32=base,
        f16=base.half(),
        bf16=base.to(torch.bfloat16),
        transposed=base.t(),  # a non-contiguous view
        sliced=base[1:3, 2:],  # a view with an offset into a shared storage
        i64=torch.arange(5),
        i32=torch.arange(3, dtype=torch.int32),
        u8=torch.tensor([0, 255], dtype=torch.uint8),
        flag=torch.tensor([True, False]),
        scalar=torch.tensor(7),
        empty=torch.zeros(0, 3),
        parameter=torch.nn.Parameter(torch.ones(2)),
    )


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_both_torch_formats_read_into_numpy_exactly(tmp_path, zip_format):
    tensors = _tensors()
    payload = {
        "model": tensors,
        "args": argparse.Namespace(arch="ofa_tiny", lr=[1e-5]),
        "blob": b"\x00\xffbytes",
        "numbers": (1, 2.5, None, "text"),
        "np": np.float32(2.5),
        "array": np.arange(4, dtype=np.int16),
        "counts": collections.defaultdict(list, {"a": [1]}),
    }
    path = tmp_path / "ckpt.pt"
    torch.save(payload, path, _use_new_zipfile_serialization=zip_format)
    loaded = load_checkpoint(path)
    for key, tensor in tensors.items():
        got = loaded["model"][key]
        expected = tensor.detach()
        assert got.shape == tuple(expected.shape), key
        if expected.dtype == torch.bfloat16:
            assert got.dtype == ml_dtypes.bfloat16
            expected_bits = expected.view(torch.int16).numpy()
            np.testing.assert_array_equal(got.view(np.int16), expected_bits)
        else:
            assert got.dtype == expected.numpy().dtype, key
            np.testing.assert_array_equal(got, expected.numpy(), err_msg=key)
    assert isinstance(loaded["model"], collections.OrderedDict)
    assert vars(loaded["args"]) == {"arch": "ofa_tiny", "lr": [1e-5]}
    assert loaded["blob"] == b"\x00\xffbytes" and loaded["numbers"] == (1, 2.5, None, "text")
    assert loaded["np"] == np.float32(2.5) and loaded["array"].tolist() == [0, 1, 2, 3]
    assert loaded["counts"] == {"a": [1]}


class _RunsAShellCommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_pickle_that_would_run_a_shell_command_is_refused_and_nothing_runs(tmp_path, zip_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save(
        {"model": {"w": torch.ones(2)}, "x": _RunsAShellCommand(marker)},
        path,
        _use_new_zipfile_serialization=zip_format,
    )
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pt: refused to load posix\.system") as info:
        load_checkpoint(path)
    assert "nothing was imported or run" in str(info.value)
    assert not marker.exists()
    # A plain pickle (not even a torch file) is refused the same way, before anything runs.
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_RunsAShellCommand(marker), protocol=2))
    with pytest.raises(UnsafeCheckpointError, match=r"refused to load posix\.system"):
        load_checkpoint(raw)
    assert not marker.exists()


def test_a_class_from_an_unknown_module_is_refused_without_importing_it(tmp_path):
    path = tmp_path / "module.pt"
    path.write_bytes(b"\x80\x02cevil_payload_module\nrun\n)R.")  # GLOBAL evil_payload_module.run, call it
    with pytest.raises(UnsafeCheckpointError, match=r"refused to load evil_payload_module\.run"):
        load_checkpoint(path)
    assert "evil_payload_module" not in sys.modules
    # Whole pickled modules (torch.save(model)) are refused by class name too.
    whole = tmp_path / "whole_model.pt"
    torch.save(torch.nn.Linear(2, 2), whole)
    with pytest.raises(UnsafeCheckpointError, match=r"refused to load torch\.nn\.modules\.linear\.Linear"):
        load_checkpoint(whole)


def test_omegaconf_configs_become_plain_data_without_omegaconf(tmp_path):
    assert "omegaconf" not in sys.modules
    # A pickle written by the real omegaconf 2.0.6 (with fairseq's Namespace-in-config hack).
    data = (DATA / "omegaconf-2.0.6-cfg.pkl").read_bytes()
    loaded = plain_data(RestrictedUnpickler(io.BytesIO(data), "omegaconf-2.0.6-cfg.pkl").load())
    assert loaded == {
        "cfg": {
            "common": {"fp16": True, "seed": 7, "lst": [1, "a", None]},
            "model": argparse.Namespace(arch="ofa_tiny", encoder_embed_dim=256),
            "task": {"_name": "refcoco", "bpe_dir": "${common.seed}"},
            "missing": "???",
        }
    }
    # The look-alike used by the synthetic checkpoints reads back the same way.
    cfg = {"common": {"fp16": False}, "model": argparse.Namespace(arch="ofa_huge"), "task": {"_name": "x"}}
    save({"cfg": DictConfig(cfg)}, tmp_path / "omega.pt")
    assert plain_data(load_checkpoint(tmp_path / "omega.pt")) == {"cfg": cfg}
    assert "omegaconf" not in sys.modules


def test_not_a_checkpoint_and_truncated_files_are_named(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a checkpoint\n")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.ones(1000)}}, good)
    data = good.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    legacy = tmp_path / "legacy.pt"
    torch.save({"model": {"w": torch.ones(1000)}}, legacy, _use_new_zipfile_serialization=False)
    cut_legacy = tmp_path / "cut_legacy.pt"
    cut_legacy.write_bytes(legacy.read_bytes()[:-100])
    for path in (text, empty, cut, cut_legacy, tmp_path / "absent.pt"):
        with pytest.raises(CheckpointError, match=rf"^{path}: "):
            load_checkpoint(path)


def test_a_view_reaching_outside_its_storage_is_an_error_not_a_read():
    storage = np.zeros(4, np.float32)
    tensor = LazyTensor(_StorageRef("0", np.dtype(np.float32), 4), 2, (3,), (1,))
    with pytest.raises(CheckpointError, match="reaches element 4, but its storage '0' has 4 elements"):
        tensor.to_numpy(storage, "ckpt.pt: 'w'")
