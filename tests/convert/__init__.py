"""Shared helpers of the converter tests: synthetic fairseq checkpoints built from the PyTorch reference.

`fairseq_checkpoint` builds the exact container of spec §8.1 around a reference model's state dict: ``args``
None, ``cfg`` (common / task / model / criterion / optimizer / lr_scheduler / generation / checkpoint …, with
the resolved model options as an ``argparse.Namespace`` as OFA stores them, or inside an omegaconf-like
``DictConfig``), ``model``, ``criterion``, ``optimizer_history``, ``task_state``, ``extra_state`` and
``last_optimizer_state``.

The omegaconf-like classes below are NOT omegaconf (the project never imports it): they are pickled under
omegaconf's module and class names with the state omegaconf 2.0 pickles (``_metadata`` / ``_parent`` /
``_content`` for containers, ``_metadata`` / ``_parent`` / ``_val`` for nodes; checked against a pickle written
by the real omegaconf 2.0.6, `data/omegaconf-2.0.6-cfg.pkl`). `fake_omegaconf_modules` registers the module
names for the duration of a `torch.save`, since pickle looks a class up by its module to write it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sys
import types
import typing
from typing import Any

import torch

from imtcxr_jax.models.config import ModelConfig
from tests.models.test_parity_torch import reference_config
from tests.reference.ofa_torch import OFAReference, randomize_


def reference_model(cfg: ModelConfig, seed: int = 0) -> OFAReference:
    torch.manual_seed(seed)
    reference = OFAReference(reference_config(cfg)).eval()
    randomize_(reference, seed)
    return reference


# ---------------------------------------------------------------------------------------------------------
# omegaconf look-alikes
# ---------------------------------------------------------------------------------------------------------


class _Metadata:
    def __init__(self, key: Any, ref_type: Any = typing.Any, container: bool = False):
        self.ref_type = ref_type
        self.object_type = dict if container else None
        self.optional = True
        self.key = key
        self.flags: dict[str, bool] = {}
        self.resolver_cache = collections.defaultdict(dict)
        if container:
            self.key_type = typing.Any
            self.element_type = typing.Any


class Metadata(_Metadata):
    pass


class ContainerMetadata(_Metadata):
    pass


class AnyNode:
    def __init__(self, value: Any, key: Any, parent: Any):
        self._metadata = Metadata(key)
        self._parent = parent
        self._val = value


class DictConfig:
    def __init__(self, content: dict[str, Any], key: Any = None, parent: Any = None):
        self._metadata = ContainerMetadata(key, dict if parent is None else typing.Any, container=True)
        self._parent = parent
        self._content = {
            k: DictConfig(v, k, self) if isinstance(v, dict) else AnyNode(v, k, self)
            for k, v in content.items()
        }


_OMEGA_MODULES = {
    "omegaconf.base": (Metadata, ContainerMetadata),
    "omegaconf.nodes": (AnyNode,),
    "omegaconf.dictconfig": (DictConfig,),
}
for _module, _classes in _OMEGA_MODULES.items():
    for _cls in _classes:
        _cls.__module__ = _module


@contextlib.contextmanager
def fake_omegaconf_modules():
    """Make pickle find the look-alikes under omegaconf's names (only while saving)."""
    added = []
    for name in ("omegaconf", *_OMEGA_MODULES):
        if name not in sys.modules:
            module = types.ModuleType(name)
            for cls in _OMEGA_MODULES.get(name, ()):
                setattr(module, cls.__name__, cls)
            sys.modules[name] = module
            added.append(name)
    try:
        yield
    finally:
        for name in added:
            del sys.modules[name]


def spec_model_options(cfg: ModelConfig, arch: str) -> dict[str, Any]:
    """The resolved options fairseq stores for an OFA model (spec §1.3 defaults, §1.4 IMT-CXR flags), written
    here from the spec (not from the converter) so that the reader is tested against an independent source."""
    d, f, h = cfg.embed_dim, cfg.ffn_dim, cfg.heads
    resnet = {(3, 4, 6): "resnet50", (3, 4, 23): "resnet101", (3, 8, 36): "resnet152"}
    options = {
        "arch": arch, "encoder_embed_dim": d, "encoder_ffn_embed_dim": f, "encoder_layers": cfg.encoder_layers,
        "encoder_attention_heads": h, "decoder_embed_dim": d, "decoder_ffn_embed_dim": f,
        "decoder_layers": cfg.decoder_layers, "decoder_attention_heads": h, "decoder_input_dim": d,
        "decoder_output_dim": d, "encoder_normalize_before": True, "decoder_normalize_before": True,
        "encoder_learned_pos": True, "decoder_learned_pos": True, "attention_dropout": 0.0,
        "relu_dropout": 0.0, "activation_dropout": 0.0, "dropout": 0.1, "max_source_positions":
        cfg.max_source_positions, "max_target_positions": cfg.max_target_positions,
        "adaptive_softmax_cutoff": None, "share_decoder_input_output_embed": True, "share_all_embeddings": True,
        "no_scale_embedding": True, "layernorm_embedding": True, "activation_fn": "gelu",
        "pooler_activation_fn": "tanh", "pooler_dropout": 0.0, "pooler_classifier": "mlp",
        "resnet_drop_path_rate": 0.0, "encoder_drop_path_rate": 0.1, "decoder_drop_path_rate": 0.1,
        "resnet_type": resnet.get(tuple(cfg.resnet_blocks)), "token_bucket_size": cfg.token_bucket_size,
        "image_bucket_size": cfg.image_bucket_size, "freeze_encoder_embedding": False,
        "freeze_decoder_embedding": False, "add_type_embedding": True, "attn_scale_factor": 2,
        "code_image_size": cfg.code_image_size, "patch_layernorm_embedding": True,
        "code_layernorm_embedding": True, "entangle_position_embedding": False,
        "disable_entangle": cfg.disable_entangle, "sync_bn": False, "scale_attn": True, "scale_fc": True,
        "scale_heads": True, "scale_resids": False, "orig_patch_image_size": 256, "cls_token": False,
        "adaptive_input": False, "no_cross_attention": False, "cross_self_attention": False,
        "no_token_positional_embeddings": False, "tie_adaptive_weights": False, "checkpoint_activations": False,
        "encoder_layerdrop": 0, "decoder_layerdrop": 0, "quant_noise_pq": 0, "encoder_prompt": False,
        "decoder_prompt": False,
    }  # fmt: skip
    if options["resnet_type"] is None:
        del options["resnet_type"]  # a test-sized trunk: sizes come from the weights
    return options


# ---------------------------------------------------------------------------------------------------------
# The fairseq container (spec §8.1)
# ---------------------------------------------------------------------------------------------------------


def fairseq_checkpoint(
    state_dict: dict[str, torch.Tensor],
    cfg: ModelConfig,
    *,
    arch: str = "ofa_huge",
    style: str = "namespace",
    half: bool = False,
    counter: int = 0,
    image_size: int = 64,
) -> dict[str, Any]:
    """The torch.save-able container of a fairseq checkpoint around `state_dict`. style: "namespace"
    (cfg["model"] an argparse.Namespace, as OFA), "omegaconf" (cfg a DictConfig look-alike holding the
    Namespace), "args" (old checkpoints: everything in `args`, cfg None)."""
    model = collections.OrderedDict()
    tied = None
    for key, value in state_dict.items():
        value = value.detach().clone()
        if half and value.is_floating_point():
            value = value.half()
        if key.endswith("num_batches_tracked"):
            value = torch.tensor(counter, dtype=torch.long)
        if key.endswith("embed_tokens.weight") or key.endswith("output_projection.weight"):
            tied = value if tied is None else tied
            value = tied  # the three tied names share one tensor, as in fairseq's state_dict()
        model[key] = value
    options = argparse.Namespace(**spec_model_options(cfg, arch), data="", bpe="gpt2", user_dir="../../")
    cfg_dict = {
        "_name": None,
        "common": {"fp16": half, "seed": 7, "log_format": "simple", "cpu": False, "fp16_init_scale": 128},
        "common_eval": {"path": None, "quiet": False},
        "distributed_training": {"distributed_world_size": 8, "ddp_backend": "c10d"},
        "dataset": {"batch_size": 2, "num_workers": 0},
        "optimization": {"max_epoch": 50, "lr": [1e-05], "update_freq": [10], "clip_norm": 5.0},
        "checkpoint": {"save_dir": "checkpoints", "restore_file": "ofa_huge.pt", "reset_optimizer": True},
        "model": options,
        "task": {
            "_name": "dr_joint_task", "data": "report_classification/train.tsv", "bpe_dir": "utils/BPE",
            "num_bins": 1000, "patch_image_size": image_size, "max_image_size": image_size,
            "max_src_length": 256, "max_tgt_length": 128, "code_dict_size": 8192,
        },
        "criterion": {"_name": "adjust_label_smoothed_cross_entropy", "label_smoothing": 0.0},
        "optimizer": {"_name": "adam", "adam_betas": "(0.9,0.999)", "adam_eps": 1e-08, "weight_decay": 0.01},
        "lr_scheduler": {"_name": "polynomial_decay", "warmup_ratio": 0.01, "total_num_update": 5000},
        "generation": {"beam": 5, "max_len_b": 200, "min_len": 1, "no_repeat_ngram_size": 3},
        "bpe": None,
        "tokenizer": None,
    }  # fmt: skip
    container: dict[str, Any] = {
        "args": None,
        "cfg": cfg_dict,
        "model": model,
        "criterion": collections.OrderedDict(),
        "optimizer_history": [
            {
                "criterion_name": "AdjustLabelSmoothedCrossEntropyCriterion",
                "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": None},
                "num_updates": 4321,
            }
        ],
        "task_state": {},
        "extra_state": {
            "metrics": {"train": collections.OrderedDict(loss={"val": 1.25, "sum": 2.5, "count": 2})},
            "previous_training_time": 3600.5,
            "train_iterator": {"epoch": 3, "iterations_in_epoch": 17, "shuffle": True, "version": 2},
            "best": torch.tensor([0.5]),
        },
        "last_optimizer_state": {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-5}]},
    }
    if style == "omegaconf":
        container["cfg"] = DictConfig(cfg_dict)
    elif style == "args":
        container["args"] = argparse.Namespace(**vars(options), task="dr_joint_task")
        container["cfg"] = None
    return container


def save(container: dict[str, Any], path, **kwargs) -> None:
    with fake_omegaconf_modules():
        torch.save(container, path, **kwargs)
