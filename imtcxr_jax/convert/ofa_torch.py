"""OFA / IMT-CXR fairseq checkpoints <-> our converted checkpoint folders (spec §1, §7, §8).

Import (`convert_from_ofa`): the file is read by `safe_pickle` (no torch, no code from the file runs). The
container of spec §8.1 holds the state dict under ``model`` and the resolved model options under
``cfg["model"]`` (an ``argparse.Namespace`` in OFA checkpoints, a dict or omegaconf config in others) or, in
old checkpoints, ``args``. The model configuration comes from those options, cross-checked against the
weights' shapes (layer counts, widths, heads, ResNet depth, table sizes: a mismatch names the option and the
weight); the flags that leave no trace in the weights (disable_entangle, attn_scale_factor, sync_bn's BN eps,
no_scale_embedding, normalize_before, activation_fn…) are read from the options, and options our model cannot
express (e.g. scale_attn off, an encoder-side entangled position, a cls token) are refused by name. Float16
and bfloat16 weights are upcast to float32. The state dict is then loaded strictly (`state_dict.py`):
missing, unexpected or mis-shaped keys are errors naming the file and the keys; recomputable buffers (bucket
tables, image_position_idx) are compared with our recomputation.

Export (`convert_to_ofa`): a converted folder or a training workdir -> the fairseq container (``args`` None,
``cfg`` with ``cfg["model"]`` a full resolved ``argparse.Namespace``, ``model`` the state dict of spec §7 with
the three tied names sharing one tensor and regenerated buffers, ``criterion``, ``optimizer_history``,
``task_state``, ``extra_state`` with ``train_iterator``) written with ``torch.save``, or the same tensors as a
safetensors file (config in its metadata). From a converted folder the source's container entries (all but
``model`` and ``last_optimizer_state``), dtypes, BatchNorm counters and key order are reproduced, so
fairseq -> ours -> fairseq is exact for every tensor. torch is needed only to write ``.pt`` files.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from imtcxr_jax.convert.safe_pickle import CheckpointError, load_checkpoint, plain_data
from imtcxr_jax.convert.state_dict import (
    TIED_EMBEDDING_KEYS,
    derived_buffers,
    export_ofa_state_dict,
    load_ofa_state_dict,
)
from imtcxr_jax.models.config import NAMED_CONFIGS, RESNET_BLOCKS, ModelConfig

OFA_ARCHITECTURES = ("ofa", "ofa_tiny", "ofa_medium", "ofa_base", "ofa_large", "ofa_huge")
SAFETENSORS_CONFIG_KEY = "fairseq_cfg"  # safetensors metadata entry holding the stored config as JSON

# Options our model hard-wires (spec §1.3/§1.4 with the IMT-CXR flags): (name, value required, default when
# the option is absent). Several of these change the math without leaving a trace in the weights.
_REQUIRED_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("encoder_normalize_before", True, True),
    ("decoder_normalize_before", True, True),
    ("layernorm_embedding", True, True),
    ("patch_layernorm_embedding", True, True),
    ("code_layernorm_embedding", True, True),
    ("add_type_embedding", True, True),
    ("scale_attn", True, False),
    ("scale_fc", True, False),
    ("scale_heads", True, False),
    ("scale_resids", False, False),
    ("share_all_embeddings", True, True),
    ("share_decoder_input_output_embed", True, True),
    ("no_scale_embedding", True, True),
    ("entangle_position_embedding", False, False),
    ("cls_token", False, False),
    ("interpolate_position", False, False),
    ("no_token_positional_embeddings", False, False),
    ("no_cross_attention", False, False),
    ("cross_self_attention", False, False),
    ("adaptive_input", False, False),
    ("adaptive_softmax_cutoff", None, None),
    ("encoder_prompt", False, False),
    ("decoder_prompt", False, False),
    ("adapter", False, False),
    ("activation_fn", "gelu", "gelu"),
)
# Our ModelConfig field <- the fairseq option (when present) for fields that are not cross-checked by shape.
_PLAIN_OPTIONS = {
    "attn_scale_factor": "attn_scale_factor",
    "disable_entangle": "disable_entangle",
    "dropout": "dropout",
    "attention_dropout": "attention_dropout",
    "encoder_drop_path_rate": "encoder_drop_path_rate",
    "decoder_drop_path_rate": "decoder_drop_path_rate",
    "resnet_drop_path_rate": "resnet_drop_path_rate",
}


@dataclass
class FairseqCheckpoint:
    """What was read from a checkpoint file (numpy arrays, plain data)."""

    path: Path
    state_dict: dict[str, np.ndarray]
    options: dict[str, Any] | None  # the resolved model options, or None when the file stores none
    options_source: str  # where they were found, for messages: "cfg['model']", "args" or ""
    container: dict[str, Any] = field(
        default_factory=dict
    )  # every entry but "model" / "last_optimizer_state"


# --------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as file:
        head = file.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def read_fairseq_checkpoint(path: str | Path) -> FairseqCheckpoint:
    """Read a fairseq checkpoint (or a bare state dict, or a safetensors file written by `convert_to_ofa`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    if _is_safetensors(path):
        return _read_safetensors(path)
    obj = plain_data(load_checkpoint(path))
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path}: holds a {type(obj).__name__}, expected a fairseq checkpoint (a dict with 'model')"
        )
    if isinstance(obj.get("model"), Mapping):
        state_dict, container = obj["model"], {k: v for k, v in obj.items() if k != "model"}
    elif obj and all(isinstance(v, np.ndarray) for v in obj.values()):
        state_dict, container = obj, {}
    else:
        raise CheckpointError(
            f"{path}: no 'model' entry (the state dict) among the top-level keys {sorted(map(str, obj))[:12]}"
        )
    for key, value in state_dict.items():
        if not isinstance(value, np.ndarray):
            raise CheckpointError(
                f"{path}: key {key!r} of 'model' is a {type(value).__name__}, expected a tensor"
            )
    container.pop("last_optimizer_state", None)
    options, source = _model_options(container, path)
    return FairseqCheckpoint(path, dict(state_dict), options, source, container)


def _model_options(container: dict[str, Any], path: Path) -> tuple[dict[str, Any] | None, str]:
    cfg = container.get("cfg")
    if isinstance(cfg, Mapping) and cfg.get("model") is not None:
        model = cfg["model"]
        if isinstance(model, argparse.Namespace):
            return dict(vars(model)), "cfg['model']"
        if isinstance(model, Mapping):
            return dict(model), "cfg['model']"
        raise CheckpointError(f"{path}: cfg['model'] is a {type(model).__name__}, expected options")
    args = container.get("args")
    if isinstance(args, argparse.Namespace):
        return dict(vars(args)), "args"
    return None, ""


def _read_safetensors(path: Path) -> FairseqCheckpoint:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as file:
            metadata = file.metadata() or {}
            state_dict = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from None
    container: dict[str, Any] = {}
    if SAFETENSORS_CONFIG_KEY in metadata:
        try:
            container = from_json_data(json.loads(metadata[SAFETENSORS_CONFIG_KEY]))
        except (json.JSONDecodeError, TypeError, ValueError) as error:
            raise CheckpointError(
                f"{path}: metadata {SAFETENSORS_CONFIG_KEY!r} is not valid ({error})"
            ) from None
    options, source = _model_options(container, path)
    return FairseqCheckpoint(path, state_dict, options, source, container)


# --------------------------------------------------------------------------------------------------------
# The model configuration
# --------------------------------------------------------------------------------------------------------


def _layer_count(state_dict: Mapping[str, Any], prefix: str) -> int:
    indices = {int(k[len(prefix) :].split(".", 1)[0]) for k in state_dict if k.startswith(prefix)}
    if indices and indices != set(range(len(indices))):
        missing = sorted(set(range(max(indices) + 1)) - indices)
        raise CheckpointError(f"layers {prefix}{{i}}: indices {missing[:5]} are missing")
    return len(indices)


def _infer_from_weights(sd: Mapping[str, np.ndarray], source: str) -> dict[str, Any]:
    """The sizes the weights determine (spec §7 shapes)."""

    def need(key: str, why: str) -> np.ndarray:
        if key not in sd:
            raise CheckpointError(f"{source}: key {key!r} is missing ({why})")
        return sd[key]

    embed = need("encoder.embed_tokens.weight", "the shared token embedding of an OFA model")
    if "encoder.embed_images.conv1.weight" not in sd:
        found = sorted(k for k in sd if k.startswith("encoder.embed_images."))[:3]
        why = f"the image backbone is not a ResNet (found {found})" if found else "no ResNet image backbone"
        raise CheckpointError(f"{source}: key 'encoder.embed_images.conv1.weight' is missing: {why}")
    try:
        blocks = tuple(_layer_count(sd, f"encoder.embed_images.layer{s}.") for s in (1, 2, 3))
        encoder_layers = _layer_count(sd, "encoder.layers.")
        decoder_layers = _layer_count(sd, "decoder.layers.")
    except CheckpointError as error:
        raise CheckpointError(f"{source}: {error}") from None
    if "encoder.embed_images.layer4.0.conv1.weight" in sd:
        raise CheckpointError(
            f"{source}: key 'encoder.embed_images.layer4.0.conv1.weight' is unexpected: OFA's trunk stops "
            "after layer3"
        )
    if encoder_layers == 0 or decoder_layers == 0:
        raise CheckpointError(f"{source}: no encoder.layers.* or decoder.layers.* keys: not an OFA model")
    heads = need(
        "encoder.layers.0.self_attn.c_attn", "per-head scales: the model was trained with scale_heads"
    )
    image_rows = need("encoder.embed_image_positions.weight", "image position table").shape[0]
    image_bucket = math.isqrt(max(image_rows - 1, 0))
    if image_bucket * image_bucket + 1 != image_rows:
        raise CheckpointError(
            f"{source}: 'encoder.embed_image_positions.weight' has {image_rows} rows, expected n*n + 1"
        )
    inferred = {
        "vocab_size": int(embed.shape[0]),
        "embed_dim": int(embed.shape[1]),
        "ffn_dim": int(need("encoder.layers.0.fc1.weight", "the first encoder FFN").shape[0]),
        "encoder_layers": encoder_layers,
        "decoder_layers": decoder_layers,
        "heads": int(heads.shape[0]),
        "resnet_blocks": blocks,
        "resnet_width": int(sd["encoder.embed_images.conv1.weight"].shape[0]),
        "resnet_norm": (
            "batch" if "encoder.embed_images.bn1.num_batches_tracked" in sd else "frozen"
        ),  # FrozenBN has no counter (spec §7.6)
        "max_source_positions": int(need("encoder.embed_positions.weight", "text positions").shape[0]) - 2,
        "max_target_positions": int(need("decoder.embed_positions.weight", "text positions").shape[0]) - 2,
        "token_bucket_size": (int(need("encoder.token_rel_pos_table_list.0.weight", "").shape[0]) + 1) // 2,
        "image_bucket_size": image_bucket,
    }
    if "decoder.image_position_idx" in sd:  # 0, the (code_image_size/8)^2 grid ids, then fill values 1024
        ids = np.asarray(sd["decoder.image_position_idx"])[1:]
        inferred["code_image_size"] = 8 * math.isqrt(int(np.sum(ids != 1024)))
    return inferred


def _option_value(options: Mapping[str, Any], name: str) -> Any:
    value = options.get(name)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def resolve_model_config(
    ckpt: FairseqCheckpoint, overrides: Mapping[str, Any] | None = None
) -> tuple[ModelConfig, dict[str, Any]]:
    """(ModelConfig, notes) of a checkpoint: sizes from the weights, cross-checked with the stored options;
    flags invisible in the weights from the options. `overrides` (ModelConfig fields) win over both."""
    source = str(ckpt.path)
    sd = ckpt.state_dict
    notes: dict[str, Any] = {"assumed": []}
    options = ckpt.options
    where = ckpt.options_source
    arch = (options.get("arch") or options.get("_name")) if options is not None else None
    if arch is not None and arch not in OFA_ARCHITECTURES:  # before the weights: the clearest message
        raise CheckpointError(
            f"{source}: {where}.arch is {arch!r}, not an OFA architecture (expected one of "
            f"{list(OFA_ARCHITECTURES)}); this converter reads OFA / IMT-CXR checkpoints only"
        )
    inferred = _infer_from_weights(sd, source)
    values = dict(inferred)
    if options is None:
        notes["assumed"].append(
            "the file stores no model options (cfg['model'] or args): sizes come from the weights, the "
            "invisible flags from spec §1.3 (disable_entangle False, attn_scale_factor 2, BatchNorm eps 1e-5)"
        )
        values["disable_entangle"] = False
        notes["arch"] = None
    else:
        notes["arch"] = arch
        for name, required, default in _REQUIRED_OPTIONS:
            value = _option_value(options, name) if name in options else default
            if value != required and not (required is False and value is None):
                raise CheckpointError(
                    f"{source}: {where}.{name} is {value!r}; this model supports only {required!r} "
                    "(the OFA / IMT-CXR setting)"
                )
        d = inferred["embed_dim"]
        checks = {
            "encoder_embed_dim": ("embed_dim", "encoder.embed_tokens.weight"),
            "decoder_embed_dim": ("embed_dim", "encoder.embed_tokens.weight"),
            "encoder_ffn_embed_dim": ("ffn_dim", "encoder.layers.0.fc1.weight"),
            "decoder_ffn_embed_dim": ("ffn_dim", "encoder.layers.0.fc1.weight"),
            "encoder_layers": ("encoder_layers", "encoder.layers.*"),
            "decoder_layers": ("decoder_layers", "decoder.layers.*"),
            "encoder_attention_heads": ("heads", "encoder.layers.0.self_attn.c_attn"),
            "decoder_attention_heads": ("heads", "encoder.layers.0.self_attn.c_attn"),
            "max_source_positions": ("max_source_positions", "encoder.embed_positions.weight"),
            "max_target_positions": ("max_target_positions", "decoder.embed_positions.weight"),
            "token_bucket_size": ("token_bucket_size", "encoder.token_rel_pos_table_list.0.weight"),
            "image_bucket_size": ("image_bucket_size", "encoder.embed_image_positions.weight"),
            "code_image_size": ("code_image_size", "decoder.image_position_idx"),
            "decoder_input_dim": ("embed_dim", "encoder.embed_tokens.weight"),
            "decoder_output_dim": ("embed_dim", "encoder.embed_tokens.weight"),
        }
        named = NAMED_CONFIGS.get(arch) if arch else None
        for option, (ours, key) in checks.items():
            if ours not in inferred:
                continue
            if options.get(option) is None:  # absent: what the named architecture function would set
                sized = ours in ("embed_dim", "ffn_dim", "encoder_layers", "decoder_layers", "heads")
                if named is not None and sized and getattr(named, ours) != inferred[ours]:
                    raise CheckpointError(
                        f"{source}: {where}.arch {arch!r} has {ours} {getattr(named, ours)} but the weights "
                        f"have {inferred[ours]} ({key})"
                    )
                continue
            if int(options[option]) != inferred[ours]:
                raise CheckpointError(
                    f"{source}: {where}.{option} is {options[option]!r} but the weights have "
                    f"{inferred[ours]} ({key}); the stored config and the weights disagree"
                )
        if "code_image_size" not in inferred and options.get("code_image_size") is not None:
            values["code_image_size"] = int(options["code_image_size"])
        resnet_type = options.get("resnet_type")
        if resnet_type is not None:
            expected = RESNET_BLOCKS.get(resnet_type)
            if expected is None:
                raise CheckpointError(
                    f"{source}: {where}.resnet_type is {resnet_type!r}; expected one of {sorted(RESNET_BLOCKS)}"
                )
            if tuple(expected) != inferred["resnet_blocks"]:
                raise CheckpointError(
                    f"{source}: {where}.resnet_type is {resnet_type!r} {tuple(expected)} but the weights "
                    f"have {inferred['resnet_blocks']} blocks (encoder.embed_images.layer1..3)"
                )
        if d % inferred["heads"]:
            raise CheckpointError(f"{source}: width {d} is not divisible by {inferred['heads']} heads")
        for ours, option in _PLAIN_OPTIONS.items():
            if options.get(option) is not None:
                values[ours] = _option_value(options, option)
        for option in ("activation_dropout", "relu_dropout"):
            if options.get(option) is not None:
                values["activation_dropout"] = float(options[option])
                break
        if "disable_entangle" not in options:
            values["disable_entangle"] = False
            notes["assumed"].append(f"{where} has no disable_entangle: False assumed (spec §1.3)")
        sync_bn = _option_value(options, "sync_bn")
        values["bn_eps"] = float(options.get("imtcxr_bn_eps") or (1e-3 if sync_bn else 1e-5))
        frozen = bool(_option_value(options, "freeze_resnet"))
        if frozen != (inferred["resnet_norm"] == "frozen"):
            raise CheckpointError(
                f"{source}: {where}.freeze_resnet is {frozen} but the weights "
                f"{'lack' if frozen is False else 'have'} BatchNorm num_batches_tracked counters"
            )
    for name in ("dropout", "attention_dropout", "activation_dropout"):
        if name in values:
            values[name] = float(values[name])
    values.update(overrides or {})
    try:
        cfg = ModelConfig.from_dict(values)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{source}: {error}") from None
    notes["named_size"] = named_size_of(cfg)
    return cfg, notes


def named_size_of(cfg: ModelConfig) -> str | None:
    """The named size whose shapes and math `cfg` has (training-only fields ignored), or None."""
    from imtcxr_jax.convert.model_dir import TRAINING_ONLY_FIELDS

    for name, named in NAMED_CONFIGS.items():
        a, b = cfg.to_dict(), named.to_dict()
        if all(a[k] == b[k] for k in a if k not in TRAINING_ONLY_FIELDS and k != "disable_entangle"):
            return name
    return None


# --------------------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------------------


def _dtype_name(array: np.ndarray) -> str:
    return "bfloat16" if array.dtype == ml_dtypes.bfloat16 else array.dtype.name


def convert_from_ofa(
    path: str | Path,
    out: str | Path,
    *,
    bpe_dir: str | Path | None = None,
    tokenizer_file: str | Path | None = None,
    image_size: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Convert a fairseq checkpoint file into a converted folder `out`; returns the provenance written to
    `out/convert.json` (source, arch, named size, assumptions, skipped buffers, counts)."""
    from imtcxr_jax.convert.model_dir import concrete_zeros_model, experiment_config, write_model_dir
    from imtcxr_jax.text.tokenizer import OfaTokenizer, load_tokenizer

    path = Path(path)
    ckpt = read_fairseq_checkpoint(path)
    cfg, notes = resolve_model_config(ckpt, overrides)
    tokenizer = None
    if bpe_dir is not None:
        tokenizer = OfaTokenizer(bpe_dir)
    elif tokenizer_file is not None:
        tokenizer = load_tokenizer(tokenizer_file)
    if tokenizer is not None and tokenizer.vocab_size != cfg.vocab_size:
        raise CheckpointError(
            f"{path}: 'encoder.embed_tokens.weight' has {cfg.vocab_size} rows but the tokenizer has "
            f"{tokenizer.vocab_size} ids; expected the vocabulary the model was trained with"
        )
    model = concrete_zeros_model(cfg)
    try:
        report = load_ofa_state_dict(model, ckpt.state_dict, source=str(path))
    except ValueError as error:  # missing / unexpected / mis-shaped keys, already naming the file and keys
        raise CheckpointError(str(error)) from None
    _check_derived_buffers(ckpt.state_dict, cfg, str(path))

    floats = [
        (k, _dtype_name(v))
        for k, v in ckpt.state_dict.items()
        if v.dtype.kind == "f" or v.dtype == ml_dtypes.bfloat16
    ]
    dominant = collections.Counter(name for _, name in floats).most_common(1)[0][0] if floats else "float32"
    counters = {k: int(v) for k, v in ckpt.state_dict.items() if k.endswith(".num_batches_tracked")}
    task = (
        ckpt.container.get("cfg", {}).get("task") if isinstance(ckpt.container.get("cfg"), Mapping) else None
    )
    if image_size is None:
        stored = task.get("patch_image_size") if isinstance(task, Mapping) else None
        image_size = int(stored) if stored else 512
    model_size = notes["named_size"] or "custom"
    info = {
        "source": str(path.absolute()),
        "source_bytes": path.stat().st_size,
        "arch": notes["arch"],
        "named_size": notes["named_size"],
        "options_source": ckpt.options_source,
        "assumed": notes["assumed"],
        "tensors_loaded": report.loaded,
        "buffers_recomputed": report.skipped_buffers,
        "source_dtype": dominant,
        "dtype_exceptions": {k: name for k, name in floats if name != dominant},
        "num_batches_tracked": counters,
        "key_order": list(ckpt.state_dict),
        "source_container": to_json_data(ckpt.container),
    }
    kind = "ofa" if bpe_dir is not None else ("trained" if tokenizer is not None else "ofa")
    config = experiment_config(
        cfg,
        model_size=model_size,
        tokenizer_kind=getattr(tokenizer, "backend", kind),
        bpe_dir=str(Path(bpe_dir).absolute()) if bpe_dir is not None else "",
        image_size=image_size,
    )
    write_model_dir(out, model, config=config, tokenizer=tokenizer, info=info, overwrite=overwrite)
    return info


def _check_derived_buffers(sd: Mapping[str, np.ndarray], cfg: ModelConfig, source: str) -> None:
    """The stored bucket tables / position index must be what we recompute (otherwise the checkpoint's
    settings differ from the ones read, and the attention biases would silently differ)."""
    for key, expected in derived_buffers(cfg).items():
        if key not in sd or key.endswith(".version"):
            continue
        stored = np.asarray(sd[key])
        if stored.shape != expected.shape or not np.array_equal(stored, expected):
            raise CheckpointError(
                f"{source}: buffer {key!r} (shape {stored.shape}) differs from the table recomputed for "
                f"token_bucket_size={cfg.token_bucket_size}, image_bucket_size={cfg.image_bucket_size}, "
                f"code_image_size={cfg.code_image_size} (shape {expected.shape})"
            )


# --------------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------------


def _resnet_type(blocks: tuple[int, ...]) -> str | None:
    return next((name for name, b in RESNET_BLOCKS.items() if tuple(b) == tuple(blocks)), None)


def fairseq_model_options(cfg: ModelConfig, arch: str | None = None) -> dict[str, Any]:
    """The fully resolved fairseq model options of `cfg` (spec §1.3 defaults, IMT-CXR flags), as OFA stores
    them in ``cfg["model"]``. Sizes fairseq cannot express (a custom ResNet) are kept as ``imtcxr_*`` keys."""
    d, f, h = cfg.embed_dim, cfg.ffn_dim, cfg.heads
    options = {
        "arch": arch or named_size_of(cfg) or "ofa_large",
        "encoder_embed_dim": d, "encoder_ffn_embed_dim": f, "encoder_layers": cfg.encoder_layers,
        "encoder_attention_heads": h, "decoder_embed_dim": d, "decoder_ffn_embed_dim": f,
        "decoder_layers": cfg.decoder_layers, "decoder_attention_heads": h, "decoder_input_dim": d,
        "decoder_output_dim": d, "encoder_normalize_before": True, "decoder_normalize_before": True,
        "encoder_learned_pos": True, "decoder_learned_pos": True, "dropout": cfg.dropout,
        "attention_dropout": cfg.attention_dropout, "activation_dropout": cfg.activation_dropout,
        "relu_dropout": cfg.activation_dropout, "max_source_positions": cfg.max_source_positions,
        "max_target_positions": cfg.max_target_positions, "adaptive_softmax_cutoff": None,
        "adaptive_softmax_dropout": 0, "share_decoder_input_output_embed": True, "share_all_embeddings": True,
        "no_scale_embedding": True, "layernorm_embedding": True, "activation_fn": "gelu",
        "pooler_activation_fn": "tanh", "pooler_dropout": 0.0, "pooler_classifier": "mlp",
        "resnet_drop_path_rate": cfg.resnet_drop_path_rate, "encoder_drop_path_rate": cfg.encoder_drop_path_rate,
        "decoder_drop_path_rate": cfg.decoder_drop_path_rate, "resnet_type": _resnet_type(cfg.resnet_blocks),
        "token_bucket_size": cfg.token_bucket_size, "image_bucket_size": cfg.image_bucket_size,
        "freeze_encoder_embedding": False, "freeze_decoder_embedding": False, "add_type_embedding": True,
        "attn_scale_factor": cfg.attn_scale_factor, "code_image_size": cfg.code_image_size,
        "patch_layernorm_embedding": True, "code_layernorm_embedding": True,
        "entangle_position_embedding": False, "disable_entangle": cfg.disable_entangle,
        "sync_bn": cfg.bn_eps == 1e-3, "scale_attn": True, "scale_fc": True, "scale_heads": True,
        "scale_resids": False, "orig_patch_image_size": 256, "freeze_resnet": cfg.resnet_norm == "frozen",
        "interpolate_position": False, "cls_token": False, "adaptive_input": False,
        "no_cross_attention": False, "cross_self_attention": False, "no_token_positional_embeddings": False,
        "tie_adaptive_weights": False, "checkpoint_activations": False, "offload_activations": False,
        "encoder_layerdrop": 0, "decoder_layerdrop": 0, "quant_noise_pq": 0, "quant_noise_pq_block_size": 8,
        "quant_noise_scalar": 0, "encoder_prompt": False, "decoder_prompt": False,
    }  # fmt: skip
    if options["resnet_type"] is None or cfg.resnet_width != 64:
        options["imtcxr_resnet_blocks"] = list(cfg.resnet_blocks)
        options["imtcxr_resnet_width"] = cfg.resnet_width
    if cfg.bn_eps not in (1e-5, 1e-3):
        options["imtcxr_bn_eps"] = cfg.bn_eps
    return options


def default_container(cfg: ModelConfig, *, step: int, image_size: int, fp16: bool) -> dict[str, Any]:
    """A fairseq container around `cfg` for a model trained here (no source checkpoint to copy from)."""
    return {
        "args": None,
        "cfg": {
            "_name": None,
            "common": {"fp16": fp16, "seed": 1, "cpu": False, "log_format": "simple"},
            "task": {
                "_name": "refcoco", "data": "", "bpe_dir": "utils/BPE", "num_bins": 1000,
                "code_dict_size": 8192, "patch_image_size": image_size, "max_image_size": image_size,
                "imagenet_default_mean_and_std": False, "max_source_positions": cfg.max_source_positions,
                "max_target_positions": cfg.max_target_positions,
            },
            "model": argparse.Namespace(**fairseq_model_options(cfg)),
            "criterion": {"_name": "adjust_label_smoothed_cross_entropy", "label_smoothing": 0.0},
            "generation": {"beam": 5, "max_len_a": 0, "max_len_b": 200, "min_len": 1,
                           "no_repeat_ngram_size": 3},
            "bpe": {"_name": "gpt2"},
        },
        "criterion": None,
        "optimizer_history": [
            {
                "criterion_name": "AdjustLabelSmoothedCrossEntropyCriterion",
                "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": None},
                "num_updates": int(step),
            }
        ],
        "task_state": {},
        "extra_state": {
            "metrics": {},
            "previous_training_time": 0.0,
            "epoch": 1,
            "train_iterator": {"version": 2, "epoch": 1, "iterations_in_epoch": 0, "shuffle": True},
        },
    }  # fmt: skip


def convert_to_ofa(
    source: str | Path,
    out: str | Path,
    *,
    safetensors: bool = False,
    dtype: str | None = None,
    bpe_dir: str | Path | None = None,
) -> dict[str, Any]:
    """A converted folder or a training workdir (latest step) -> a fairseq checkpoint (or safetensors) file
    at `out`, written to a temporary file beside it and renamed at the end. Returns a summary."""
    from imtcxr_jax.convert.model_dir import is_converted_dir, load_converted_model, read_info

    source = Path(source)
    if is_converted_dir(source):
        info = read_info(source)
        model, config = load_converted_model(source)
        step = 0
        container = from_json_data(info.get("source_container") or {})
    else:
        from imtcxr_jax.train.loop import load_trained_model

        model, _, config, step = load_trained_model(source, bpe_dir=bpe_dir)
        info, container = {}, {}
    dtype = dtype or info.get("source_dtype") or "float32"
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"--dtype: got {dtype!r}, expected float32, float16 or bfloat16")
    if not container:
        container = default_container(
            model.cfg, step=step, image_size=int(config.data.image_size), fp16=dtype == "float16"
        )
    _set_model_options(container, model.cfg)

    state = export_ofa_state_dict(model)
    for key, value in (info.get("num_batches_tracked") or {}).items():
        if key in state:
            state[key] = np.array(value, np.int64)
    exceptions = info.get("dtype_exceptions") or {}
    for key, value in state.items():
        if value.dtype.kind == "f":
            state[key] = _cast(value, exceptions.get(key, dtype))
    order = [k for k in info.get("key_order") or [] if k in state]
    state = {k: state[k] for k in order + [k for k in state if k not in set(order)]}

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(handle)
    try:
        if safetensors:
            _write_safetensors(Path(temporary), state, container)
        else:
            _write_torch(Path(temporary), state, container)
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return {"out": str(out), "tensors": len(state), "dtype": dtype, "step": step, "arch": _arch(container)}


def _arch(container: Mapping[str, Any]) -> str | None:
    cfg = container.get("cfg")
    model = cfg.get("model") if isinstance(cfg, Mapping) else container.get("args")
    return (
        getattr(model, "arch", None) if isinstance(model, argparse.Namespace) else (model or {}).get("arch")
    )


def _set_model_options(container: dict[str, Any], cfg: ModelConfig) -> None:
    """Write our (possibly changed) model options over the container's stored ones, keeping its others."""
    cfg_entry = container.get("cfg")
    if isinstance(cfg_entry, dict):
        stored = cfg_entry.get("model")
        old = vars(stored) if isinstance(stored, argparse.Namespace) else dict(stored or {})
        new = {**old, **fairseq_model_options(cfg, old.get("arch"))}
        cfg_entry["model"] = argparse.Namespace(**new) if not isinstance(stored, dict) else new
    elif isinstance(container.get("args"), argparse.Namespace):
        old = vars(container["args"])
        container["args"] = argparse.Namespace(**{**old, **fairseq_model_options(cfg, old.get("arch"))})
    else:
        container["cfg"] = {"model": argparse.Namespace(**fairseq_model_options(cfg))}
    container.setdefault("args", None)
    container.setdefault(
        "optimizer_history", default_container(cfg, step=0, image_size=512, fp16=False)["optimizer_history"]
    )
    extra = container.setdefault("extra_state", {})
    extra.setdefault("train_iterator", {"version": 2, "epoch": 1, "iterations_in_epoch": 0, "shuffle": True})


def _cast(value: np.ndarray, dtype: str) -> np.ndarray:
    target = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    return np.array(value.astype(target), order="C")


def _write_torch(path: Path, state: dict[str, np.ndarray], container: dict[str, Any]) -> None:
    try:
        import torch
    except ImportError:
        raise RuntimeError(
            "writing a .pt checkpoint needs PyTorch (pip install torch); or write --safetensors"
        ) from None

    def tensor(value: np.ndarray):
        if value.dtype == ml_dtypes.bfloat16:
            return torch.from_numpy(value.view(np.int16).copy()).view(torch.bfloat16)
        return torch.from_numpy(np.array(value, copy=True))

    model = collections.OrderedDict()
    tied = tensor(state[TIED_EMBEDDING_KEYS[0]])
    for key, value in state.items():
        model[key] = tied if key in TIED_EMBEDDING_KEYS else tensor(value)  # one shared tensor, as fairseq

    def tensors_in(node: Any) -> Any:  # numpy arrays in the copied container entries go back as tensors
        if isinstance(node, np.ndarray):
            return tensor(node)
        if isinstance(node, dict):
            return type(node)((k, tensors_in(v)) for k, v in node.items())
        if isinstance(node, list | tuple):
            return type(node)(tensors_in(v) for v in node)
        if isinstance(node, argparse.Namespace):
            return argparse.Namespace(**{k: tensors_in(v) for k, v in vars(node).items()})
        return node

    document = {key: tensors_in(value) for key, value in container.items()}
    document["model"] = model
    order = ["args", "cfg", "model", "criterion", "optimizer_history", "task_state", "extra_state"]
    document = {k: document[k] for k in order if k in document} | {
        k: v for k, v in document.items() if k not in order
    }
    torch.save(document, path)


def _write_safetensors(path: Path, state: dict[str, np.ndarray], container: dict[str, Any]) -> None:
    from safetensors.numpy import save_file

    if any(v.dtype == ml_dtypes.bfloat16 for v in state.values()):
        raise ValueError(
            "--safetensors: bfloat16 is not supported by the numpy writer; use float32 or float16"
        )
    metadata = {"format": "pt", SAFETENSORS_CONFIG_KEY: json.dumps(to_json_data(container))}
    save_file({k: np.array(v, order="C") for k, v in state.items()}, str(path), metadata=metadata)


# --------------------------------------------------------------------------------------------------------
# The stored container as JSON (convert.json, safetensors metadata)
# --------------------------------------------------------------------------------------------------------


def to_json_data(node: Any) -> Any:
    """Plain data of a checkpoint container as JSON-able values; `from_json_data` inverts it (namespaces,
    tuples, bytes, arrays and non-string keys are tagged)."""
    if node is None or isinstance(node, bool | str):
        return node
    if isinstance(node, int | np.integer):
        return int(node)
    if isinstance(node, float | np.floating):
        value = float(node)
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(node, np.bool_):
        return bool(node)
    if isinstance(node, argparse.Namespace):
        return {"__namespace__": to_json_data(vars(node))}
    if isinstance(node, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in node):
            return {k: to_json_data(v) for k, v in node.items()}
        return {"__items__": [[to_json_data(k), to_json_data(v)] for k, v in node.items()]}
    if isinstance(node, tuple):
        return {"__tuple__": [to_json_data(v) for v in node]}
    if isinstance(node, list | set | frozenset):
        return [to_json_data(v) for v in node]
    if isinstance(node, bytes | bytearray):
        return {"__bytes__": bytes(node).decode("latin-1")}
    if isinstance(node, np.ndarray):
        name = _dtype_name(node)
        values = node.astype(np.float32) if name == "bfloat16" else node
        return {"__ndarray__": values.tolist(), "dtype": name, "shape": list(node.shape)}
    return {"__repr__": repr(node)}


def from_json_data(node: Any) -> Any:
    if isinstance(node, list):
        return [from_json_data(v) for v in node]
    if not isinstance(node, dict):
        return node
    if "__namespace__" in node:
        return argparse.Namespace(**from_json_data(node["__namespace__"]))
    if "__items__" in node:
        return {from_json_data(k): from_json_data(v) for k, v in node["__items__"]}
    if "__tuple__" in node:
        return tuple(from_json_data(v) for v in node["__tuple__"])
    if "__bytes__" in node:
        return node["__bytes__"].encode("latin-1")
    if "__float__" in node:
        return float(node["__float__"])
    if "__ndarray__" in node:
        target = ml_dtypes.bfloat16 if node["dtype"] == "bfloat16" else np.dtype(node["dtype"])
        return (
            np.array(node["__ndarray__"], np.float32 if node["dtype"] == "bfloat16" else target)
            .astype(target)
            .reshape(node["shape"])
        )
    if "__repr__" in node:
        return node["__repr__"]
    return {k: from_json_data(v) for k, v in node.items()}
