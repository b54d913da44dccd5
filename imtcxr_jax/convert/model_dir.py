"""A converted checkpoint folder: our model's variables plus everything needed to use them.

Layout (written by `imtcxr convert from-ofa` and `imtcxr convert resnet`):

  DIR/model.json      the ModelConfig (as a training workdir's model.json)
  DIR/config.json     an experiment config (tokenizer, input size, decoding), as a training workdir's
  DIR/tokenizer.json  the tokenizer (an `ofa` reference to the user's BPE folder), when one was given
  DIR/convert.json    provenance: source file, architecture, stored fairseq config, source dtypes, the
                      BatchNorm `num_batches_tracked` counters and key order (what export needs to reproduce
                      the source file exactly)
  DIR/params/         orbax checkpoint of {dotted variable path: array}, every variable of the model
                      (parameters, BatchNorm statistics, frozen buffers), float32

Such a folder is accepted wherever a training workdir is (`imtcxr analyze / eval --checkpoint DIR`,
`imtcxr convert to-ofa DIR`, through `train.loop.load_trained_model`) and initialises training with
`--config.init_from=DIR` (`load_into_train_state`). A folder is written under a temporary name beside DIR
and renamed at the end: a failure leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from imtcxr_jax.models.config import ModelConfig

FORMAT = "imtcxr-converted"
FORMAT_VERSION = 1
INFO_FILE = "convert.json"
PARAMS_DIR = "params"
# ModelConfig fields that do not change shapes or inference math: a training run may choose them freely.
TRAINING_ONLY_FIELDS = frozenset(
    {"dropout", "attention_dropout", "activation_dropout", "encoder_drop_path_rate", "decoder_drop_path_rate"}
    | {"resnet_drop_path_rate", "dtype", "param_dtype"}
)


def is_converted_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / INFO_FILE).is_file() and (path / PARAMS_DIR).is_dir()


def variable_key(path: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in path)


def concrete_zeros_model(cfg: ModelConfig):
    """The model with every variable a numpy zeros array (no initialiser runs, nothing compiles; zeros pages
    are only touched when written), ready for `load_ofa_state_dict` to fill in place."""
    from imtcxr_jax.models.imtcxr import abstract_model

    graphdef, state = nnx.split(abstract_model(cfg))
    state = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), state)
    return nnx.merge(graphdef, state)


# --------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------


def write_model_dir(
    out: str | Path,
    model: Any,
    *,
    config: Any,
    tokenizer: Any | None,
    info: dict[str, Any],
    overwrite: bool = False,
) -> Path:
    """Write `model` (and its config, tokenizer, provenance `info`) as a converted folder at `out`, through a
    temporary folder beside it renamed at the end. An existing non-empty `out` is an error unless
    `overwrite`, in which case it is replaced only once the new folder is complete."""
    import orbax.checkpoint as ocp

    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty (choose another --out, or --overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (temporary / "model.json").write_text(json.dumps(model.cfg.to_dict(), indent=2) + "\n")
        from imtcxr_jax.train.experiment import config_to_json

        (temporary / "config.json").write_text(config_to_json(config) + "\n")
        if tokenizer is not None:
            tokenizer.save(temporary / "tokenizer.json")
        document = {"format": FORMAT, "format_version": FORMAT_VERSION, **info}
        (temporary / INFO_FILE).write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
        arrays = {variable_key(path): var[...] for path, var in nnx.to_flat_state(nnx.state(model))}
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(temporary / PARAMS_DIR, arrays)
        checkpointer.wait_until_finished()
        checkpointer.close()
        _replace_folder(temporary, out)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return out


def _replace_folder(new: Path, out: Path) -> None:
    if not out.exists():
        os.replace(new, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------


def read_info(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        info = json.loads((path / INFO_FILE).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path / INFO_FILE}: unreadable ({error})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ValueError(f"{path / INFO_FILE}: not an {FORMAT} file")
    if info.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path / INFO_FILE}: format_version {info.get('format_version')!r} is not supported "
            f"(expected {FORMAT_VERSION})"
        )
    return info


def read_model_config(path: str | Path) -> ModelConfig:
    path = Path(path)
    try:
        return ModelConfig.from_dict(json.loads((path / "model.json").read_text()))
    except (OSError, json.JSONDecodeError, ValueError, TypeError) as error:
        raise ValueError(f"{path / 'model.json'}: not a model config ({error})") from None


def restore_arrays(path: str | Path, targets: dict[str, Any]) -> dict[str, jax.Array]:
    """{key: array} from DIR/params onto `targets` ({key: ShapeDtypeStruct with sharding}). Missing,
    unexpected or mis-shaped keys are an error naming the folder and the keys."""
    import orbax.checkpoint as ocp

    folder = Path(path).absolute() / PARAMS_DIR
    checkpointer = ocp.StandardCheckpointer()
    try:
        try:
            stored = checkpointer.metadata(folder).item_metadata
        except Exception as error:
            raise ValueError(
                f"{folder}: not a readable checkpoint ({type(error).__name__}: {error})"
            ) from None
        missing = sorted(set(targets) - set(stored))
        unexpected = sorted(set(stored) - set(targets))
        if missing or unexpected:
            raise ValueError(
                f"{folder}: does not match the model; missing keys {missing[:10]} ({len(missing)}), "
                f"unexpected keys {unexpected[:10]} ({len(unexpected)})"
            )
        for key, target in targets.items():
            if tuple(stored[key].shape) != tuple(target.shape):
                raise ValueError(
                    f"{folder}: {key!r} has shape {tuple(stored[key].shape)}, expected {tuple(target.shape)}"
                )
        return checkpointer.restore(folder, targets)
    finally:
        checkpointer.close()


def _restore_states(
    path: Path, states: list[nnx.State], sharding_of: Callable[[Any], Any]
) -> list[nnx.State]:
    """The folder's arrays for every variable of `states` (together: all of the folder's variables)."""
    flats = [list(nnx.to_flat_state(state)) for state in states]
    targets = {
        variable_key(p): jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding_of(v))
        for flat in flats
        for p, v in flat
    }
    arrays = restore_arrays(path, targets)
    return [
        nnx.from_flat_state([(p, v.replace(value=arrays[variable_key(p)])) for p, v in flat])
        for flat in flats
    ]


def experiment_config(
    cfg: ModelConfig, *, model_size: str, tokenizer_kind: str, bpe_dir: str = "", image_size: int = 512
):
    """The config.json of a converted folder: what `analyze` / `eval` read (input size, lengths, beam) and
    what training from it starts with (the model, the tokenizer)."""
    import ml_collections

    from imtcxr_jax.data.pipeline import default_config

    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model_size = model_size
    c.model = ml_collections.ConfigDict(cfg.to_dict())
    c.tokenizer = ml_collections.ConfigDict(
        {"kind": tokenizer_kind, "vocab_size": cfg.vocab_size, "bpe_dir": bpe_dir}
    )
    c.dataset = ml_collections.ConfigDict({"source": "none", "train_dir": "", "eval_dir": ""})
    c.data = default_config()
    c.data.image_size = int(image_size)
    c.data.max_src_len = min(256, cfg.max_source_positions)
    c.data.max_tgt_len = min(201, cfg.max_target_positions)  # the demo's 200 tokens + EOS (spec §14.1)
    c.beam_size = 5
    c.init_from = ""
    return c


def load_converted_model(path: str | Path):
    """(model, config) of a converted folder, on one device."""
    from imtcxr_jax.models.imtcxr import abstract_model
    from imtcxr_jax.train.experiment import config_from_json

    path = Path(path)
    read_info(path)
    cfg = read_model_config(path)
    config = config_from_json((path / "config.json").read_text())
    graphdef, state = nnx.split(abstract_model(cfg))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    (state,) = _restore_states(path, [state], lambda _: device)
    return nnx.merge(graphdef, state), config


def load_converted(path: str | Path, *, bpe_dir: str | Path | None = None):
    """(model, tokenizer, config, step) from a converted folder, on one device; step is 0. The tokenizer
    is the folder's (its BPE folder overridable by `bpe_dir`), or the OFA tokenizer of `bpe_dir`."""
    from imtcxr_jax.text.tokenizer import OfaTokenizer, load_tokenizer

    path = Path(path)
    model, config = load_converted_model(path)
    if (path / "tokenizer.json").is_file():
        folder = bpe_dir or config.tokenizer.get("bpe_dir") or None
        tokenizer = load_tokenizer(path / "tokenizer.json", bpe_dir=folder)
    elif bpe_dir is not None:
        tokenizer = OfaTokenizer(bpe_dir)
    else:
        raise ValueError(
            f"{path}: has no tokenizer.json; give the OFA BPE folder (--bpe-dir) of the converted model"
        )
    if tokenizer.vocab_size != model.cfg.vocab_size:
        raise ValueError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} ids but the model {model.cfg.vocab_size} rows "
            "(encoder.embed_tokens); expected the same vocabulary"
        )
    return model, tokenizer, config, 0


def check_same_architecture(stored: ModelConfig, wanted: ModelConfig, where: str) -> None:
    """Every shape- or math-changing field equal; an error naming the first fields that differ."""
    a, b = stored.to_dict(), wanted.to_dict()
    differ = [name for name in a if name not in TRAINING_ONLY_FIELDS and a[name] != b[name]]
    if differ:
        details = ", ".join(f"{name}: {a[name]!r} there, {b[name]!r} in config.model" for name in differ[:6])
        raise ValueError(f"{where}: the model does not match the training config ({details})")


def load_into_train_state(path: str | Path, cfg: ModelConfig, params: nnx.State, model_state: nnx.State):
    """(params, model_state) of a converted folder, placed like the given (sharded) ones: for
    `config.init_from`. The folder's model must have `cfg`'s architecture (dropout rates may differ)."""
    path = Path(path)
    if not is_converted_dir(path):
        raise ValueError(
            f"config.init_from: {path} is not a converted checkpoint folder (expected {INFO_FILE} and "
            f"{PARAMS_DIR}/, written by `imtcxr convert`)"
        )
    read_info(path)
    check_same_architecture(read_model_config(path), cfg, f"config.init_from {path}")
    sharding = lambda var: var.get_value().sharding  # noqa: E731
    params, model_state = _restore_states(path, [params, model_state], sharding)
    return params, model_state
