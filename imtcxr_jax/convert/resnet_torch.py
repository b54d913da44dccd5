"""ImageNet ResNet weights (torchvision names) -> the model's image trunk (stem and stages 1-3, spec §3.1).

A torchvision ``resnet50/101/152`` state dict names its tensors exactly as OFA's trunk does without the
``encoder.embed_images.`` prefix (``conv1.weight``, ``bn1.running_mean``, ``layer3.5.downsample.0.weight``…);
``layer4.*`` and ``fc.*`` have no counterpart in the truncated trunk and are reported as unused. The file is
read by `safe_pickle` (a plain ``torch.save(model.state_dict())``; a pickled whole model is refused) or as
safetensors; a state dict nested under ``state_dict`` / ``model`` and a ``module.`` prefix are accepted.
The file's depth must match the model's (a resnet50 file cannot fill a resnet152 trunk): a missing, extra
or mis-shaped tensor is an error naming the file and the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from imtcxr_jax.convert.safe_pickle import CheckpointError, load_checkpoint
from imtcxr_jax.convert.state_dict import _as_numpy, _from_torch_layout, ofa_name
from imtcxr_jax.models.config import RESNET_BLOCKS

_PREFIX = "encoder.embed_images."


@dataclass
class ResNetImport:
    loaded: int  # tensors written into the trunk
    unused: list[str]  # keys of the file beyond the trunk (layer4.*, fc.*); BatchNorm counters are ignored
    depth: str | None  # resnet50 / resnet101 / resnet152 by the file's block counts


def read_resnet_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The state dict of a torchvision-style ResNet file (.pth / .pt via the safe reader, or .safetensors)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            obj: Any = load_file(str(path))
        except Exception as error:
            raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from None
    else:
        obj = load_checkpoint(path)
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: expected a state dict of ResNet tensors, got {type(obj).__name__}")
    state = {}
    for key, value in obj.items():
        if not isinstance(value, np.ndarray):
            raise CheckpointError(f"{path}: key {key!r} is a {type(value).__name__}, expected a tensor")
        state[key.removeprefix("module.")] = value
    return state


def _depth(state: Mapping[str, Any]) -> tuple[tuple[int, ...], str | None]:
    counts = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{s}.")}) for s in (1, 2, 3, 4))
    name = next((n for n, b in RESNET_BLOCKS.items() if tuple(b) == counts[:3]), None)
    return counts, name


def load_torchvision_resnet(
    trunk: nnx.Module, state: Mapping[str, Any], *, source: str = "state dict"
) -> ResNetImport:
    """Write a torchvision-named ResNet state dict into `trunk` (the model's `encoder.embed_images`) in place."""
    counts, depth = _depth(state)
    variables = {tuple(p): v for p, v in nnx.to_flat_state(nnx.state(trunk))}
    expected = {
        ofa_name(("encoder", "embed_images", *path)).removeprefix(_PREFIX): path for path in variables
    }
    missing = sorted(set(expected) - set(state))
    if missing:
        have = f"{depth} {counts[:3]}" if depth else f"blocks {counts[:3]}"
        raise CheckpointError(
            f"{source}: missing keys {missing[:8]} ({len(missing)}); the file's stages 1-3 have {have}, the "
            f"model's trunk needs {tuple(len(getattr(trunk, f'layer{s}')) for s in (1, 2, 3))} blocks"
        )
    extra = sorted(k for k in state if k not in expected and not k.endswith("num_batches_tracked"))
    trunk_extra = [k for k in extra if k.split(".")[0] in ("conv1", "bn1", "layer1", "layer2", "layer3")]
    unused = [k for k in extra if k not in trunk_extra]
    if trunk_extra:
        raise CheckpointError(
            f"{source}: unexpected keys {trunk_extra[:8]} ({len(trunk_extra)}) in stages 1-3: the file is "
            f"{depth or 'a ResNet'} {counts[:3]}, deeper than the model's trunk"
        )
    for key, path in expected.items():
        var = variables[path]
        value = _from_torch_layout(path, _as_numpy(key, state[key]))
        if value.shape != tuple(var.shape):
            raise CheckpointError(
                f"{source}: {key!r} has shape {tuple(np.shape(state[key]))}, which does not fit the trunk's "
                f"{tuple(var.shape)} ({'HWIO' if value.ndim == 4 else 'channels'}); expected a ResNet with "
                f"{trunk.conv1.kernel.shape[-1]} stem channels"
            )
        var[...] = value.astype(var.dtype)
    return ResNetImport(loaded=len(expected), unused=unused, depth=depth)
