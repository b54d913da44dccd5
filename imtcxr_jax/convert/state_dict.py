"""OFA state dict (spec §7 names, PyTorch layouts) <-> our model's variables (spec §8.2, §8.3).

Only numpy is needed: values may be torch tensors (anything with `.numpy()` after `.float()`), numpy arrays or
array-likes. Reading fairseq checkpoint files (pickles) is the job of the checkpoint converter; this module
only maps names and layouts, and is strict: a missing, unexpected or mis-shaped key is an error naming it
(the original loader silently re-initialises missing keys; a converter must not).

Name mapping, ours -> OFA:
  embed_tokens.embedding                   -> encoder.embed_tokens.weight (+ decoder.embed_tokens.weight,
                                              decoder.output_projection.weight: the same tied tensor)
  *.kernel of Dense (in, out)              -> *.weight (out, in)                 (transpose)
  *.kernel of Conv (kh, kw, in, out)       -> *.weight (out, in, kh, kw)
  LayerNorm / BatchNorm scale, bias        -> weight, bias; BatchNorm mean, var -> running_mean, running_var
  Embedding.embedding                      -> weight
  layers.{i}.ffn.{fc1, fc2, ffn_layernorm} -> layers.{i}.{fc1, fc2, ffn_layernorm}
  {token,image}_rel_pos_tables.{i}         -> {token,image}_rel_pos_table_list.{i}.weight
  downsample_conv / downsample_bn          -> downsample.0 / downsample.1
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from imtcxr_jax.models.config import ModelConfig
from imtcxr_jax.models.imtcxr import IMTCXR
from imtcxr_jax.models.transformer import image_bucket_table, token_bucket_table

TIED_EMBEDDING_KEYS = (
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
    "decoder.output_projection.weight",
)
_LEAF_NAMES = {"kernel": "weight", "embedding": "weight", "scale": "weight", "mean": "running_mean"}
_LEAF_NAMES |= {"var": "running_var", "bias": "bias", "c_attn": "c_attn"}
_RENAMED_MODULES = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
_TABLE_LISTS = {
    "token_rel_pos_tables": "token_rel_pos_table_list",
    "image_rel_pos_tables": "image_rel_pos_table_list",
}


def _is_derived_buffer(key: str) -> bool:
    """Bookkeeping and recomputable buffers: never loaded, regenerated on export (spec §8.2 step 3)."""
    last = key.rsplit(".", 1)[-1]
    return last in (
        "num_batches_tracked",
        "version",
        "token_rp_bucket",
        "image_rp_bucket",
        "image_position_idx",
    )


def ofa_name(path: tuple[Any, ...]) -> str:
    """Our variable path (e.g. ('encoder', 'layers', 0, 'ffn', 'fc1', 'kernel')) -> its OFA state-dict key."""
    if path == ("embed_tokens", "embedding"):
        return TIED_EMBEDDING_KEYS[0]
    parts: list[str] = []
    for i, part in enumerate(path):
        part = str(part)
        is_leaf = i == len(path) - 1
        if part in _TABLE_LISTS:
            parts.append(_TABLE_LISTS[part])
        elif part == "ffn":
            continue
        elif part in _RENAMED_MODULES:
            parts.append(_RENAMED_MODULES[part])
        elif is_leaf and part in _LEAF_NAMES:
            parts.append(_LEAF_NAMES[part])
        else:
            parts.append(part)
    if str(path[-2]) in _TABLE_LISTS:  # the table itself is the parameter: append torch's `.weight`
        parts.append("weight")
    return ".".join(parts)


def _to_torch_layout(path: tuple[Any, ...], value: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel" and value.ndim == 2:
        return value.T
    if path[-1] == "kernel" and value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    return value


def _from_torch_layout(path: tuple[Any, ...], value: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel" and value.ndim == 2:
        return value.T
    if path[-1] == "kernel" and value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    return value


def _as_numpy(key: str, value: Any) -> np.ndarray:
    if hasattr(
        value, "detach"
    ):  # a torch tensor: upcast half precision on the torch side (bf16 has no numpy)
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        value = value.numpy()
    array = np.asarray(value)
    if array.dtype.kind == "f":
        array = array.astype(np.float32)
    return array


def _flat_variables(model: IMTCXR) -> dict[tuple[Any, ...], Any]:
    """Every variable of the model (parameters, BatchNorm statistics, frozen buffers) by path."""
    return {tuple(path): var for path, var in nnx.to_flat_state(nnx.state(model))}


@dataclasses.dataclass
class ImportReport:
    loaded: int  # tensors written into the model
    skipped_buffers: list[str]  # derived buffers recognised and not loaded


def load_ofa_state_dict(
    model: IMTCXR, state_dict: Mapping[str, Any], *, source: str = "state dict"
) -> ImportReport:
    """Write an OFA state dict into `model` in place. Raises ValueError naming `source` and the offending keys
    on missing or unexpected keys, shape mismatches, or tied embeddings that differ."""
    arrays = {key: value for key, value in state_dict.items()}
    tied = [k for k in TIED_EMBEDDING_KEYS if k in arrays]
    if TIED_EMBEDDING_KEYS[0] not in arrays:
        raise ValueError(f"{source}: missing key {TIED_EMBEDDING_KEYS[0]!r} (the shared token embedding)")
    reference = _as_numpy(TIED_EMBEDDING_KEYS[0], arrays[TIED_EMBEDDING_KEYS[0]])
    for key in tied[1:]:
        if not np.array_equal(_as_numpy(key, arrays[key]), reference):
            raise ValueError(
                f"{source}: {key!r} differs from {TIED_EMBEDDING_KEYS[0]!r}; expected one tied matrix"
            )

    variables = _flat_variables(model)
    expected = {ofa_name(path): path for path in variables}
    missing = sorted(set(expected) - set(arrays))
    unexpected = sorted(
        k for k in arrays if k not in expected and k not in tied and not _is_derived_buffer(k)
    )
    if missing or unexpected:
        raise ValueError(
            f"{source}: does not match the model ({model.cfg.embed_dim=}, {model.cfg.encoder_layers=}, "
            f"{model.cfg.decoder_layers=}); missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''} "
            f"({len(missing)}), unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''} "
            f"({len(unexpected)})"
        )
    for key, path in expected.items():
        var = variables[path]
        value = _from_torch_layout(path, _as_numpy(key, arrays[key]))
        if value.shape != tuple(var.shape):
            torch_shape = _to_torch_layout(path, np.zeros(var.shape, np.int8)).shape
            raise ValueError(
                f"{source}: {key!r} has shape {tuple(arrays[key].shape)}, expected {torch_shape}"
            )
        var[...] = value.astype(var.dtype)
    skipped = sorted(k for k in arrays if _is_derived_buffer(k))
    return ImportReport(loaded=len(expected), skipped_buffers=skipped)


def derived_buffers(cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The transformer's recomputable buffers exactly as the original stores them (spec §7, §8.3)."""
    grid = cfg.code_image_size // 8
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    code_positions = rows * cfg.image_bucket_size + cols + 1
    length = cfg.max_target_positions + 2
    # 1 + 256 + 769 = 1026 rows for the real sizes; a test-sized table (micro) is simply cut to its length.
    fill = np.full(max(length - 1 - grid * grid, 0), 1024)
    image_table = image_bucket_table(cfg.image_bucket_size)
    return {
        "encoder.version": np.array([3.0], np.float32),
        "encoder.token_rp_bucket": token_bucket_table(cfg.token_bucket_size).astype(np.int64),
        "encoder.image_rp_bucket": image_table,
        "decoder.version": np.array([3.0], np.float32),
        "decoder.token_rp_bucket": token_bucket_table(cfg.token_bucket_size).astype(np.int64),
        "decoder.image_rp_bucket": image_table.copy(),
        "decoder.image_position_idx": np.concatenate([[0], code_positions, fill])[:length].astype(np.int64),
    }


def export_ofa_state_dict(model: IMTCXR, *, num_batches_tracked: int = 0) -> dict[str, np.ndarray]:
    """Our model -> an OFA state dict of numpy arrays (all three tied names, regenerated buffers)."""
    out: dict[str, np.ndarray] = {}
    for path, var in _flat_variables(model).items():
        out[ofa_name(path)] = np.ascontiguousarray(_to_torch_layout(path, np.asarray(var[...])))
        if path[-1] == "mean" and model.cfg.resnet_norm == "batch":
            out[ofa_name(path[:-1]) + ".num_batches_tracked"] = np.array(num_batches_tracked, np.int64)
    for key in TIED_EMBEDDING_KEYS[1:]:
        out[key] = out[TIED_EMBEDDING_KEYS[0]]
    out.update(derived_buffers(model.cfg))
    return out
