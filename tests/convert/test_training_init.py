"""Training initialised from a converted folder (`config.init_from`), then exported back to fairseq."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from imtcxr_jax.convert.ofa_torch import convert_from_ofa, convert_to_ofa
from imtcxr_jax.convert.state_dict import export_ofa_state_dict
from imtcxr_jax.models.config import get_model_config
from imtcxr_jax.text.tokenizer import TrainedTokenizer
from imtcxr_jax.train.experiment import load_config
from imtcxr_jax.train.loop import load_trained_model, train
from tests.convert import fairseq_checkpoint, reference_model, save
from tests.models.test_parity_torch import reference_config
from tests.reference.ofa_torch import OFAReference

CONFIG = Path(__file__).parents[2] / "configs" / "micro.py"
TEXTS = [
    "no finding",
    "the heart is normal in size",
    "small left pleural effusion",
    "what disease does it have?",
]


@pytest.mark.slow
def test_training_starts_from_a_converted_folder_and_exports_back(tmp_path):
    tokenizer = TrainedTokenizer.train(TEXTS * 3, vocab_size=1400)
    tokenizer.save(tmp_path / "tokenizer.json")
    cfg = get_model_config("micro", vocab_size=tokenizer.vocab_size)
    reference = reference_model(cfg, seed=4)
    save(fairseq_checkpoint(reference.state_dict(), cfg), tmp_path / "ckpt.pt")
    convert_from_ofa(tmp_path / "ckpt.pt", tmp_path / "init", tokenizer_file=tmp_path / "tokenizer.json")

    overrides = [
        f"--config.init_from={tmp_path / 'init'}", "--config.total_steps=2", "--config.learning_rate=0.0",
        "--config.warmup_init_lr=0.0", "--config.schedule=constant", "--config.eval_every=0", "--config.checkpoint_every=2",
        "--config.log_every=1", "--config.dataset.train_examples=8", "--config.dataset.eval_examples=2",
    ]  # fmt: skip
    train(load_config(CONFIG, overrides), tmp_path / "work")
    model, trained_tokenizer, _, step = load_trained_model(tmp_path / "work")
    assert step == 2 and trained_tokenizer.vocab_size == tokenizer.vocab_size  # the folder's tokenizer
    exported = export_ofa_state_dict(model)
    expected = reference.state_dict()
    for key, value in expected.items():  # learning rate 0: the weights are the converted ones, exactly
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            np.testing.assert_array_equal(exported[key], value.numpy(), err_msg=key)

    # A training workdir exports to a fairseq checkpoint that the reference loads strictly.
    summary = convert_to_ofa(tmp_path / "work", tmp_path / "trained.pt")
    back = torch.load(tmp_path / "trained.pt", weights_only=False)
    assert summary["step"] == 2 and back["optimizer_history"][-1]["num_updates"] == 2
    assert back["cfg"]["model"].encoder_embed_dim == cfg.embed_dim and back["cfg"]["model"].disable_entangle
    assert "train_iterator" in back["extra_state"]
    OFAReference(reference_config(model.cfg)).load_state_dict(back["model"], strict=True)


def test_init_from_a_folder_of_another_architecture_is_named(tmp_path):
    from flax import nnx

    from imtcxr_jax.convert.model_dir import load_into_train_state
    from imtcxr_jax.models.imtcxr import abstract_model

    cfg = get_model_config("micro")
    save(fairseq_checkpoint(reference_model(cfg).state_dict(), cfg), tmp_path / "ckpt.pt")
    convert_from_ofa(tmp_path / "ckpt.pt", tmp_path / "init")
    other = cfg.replace(ffn_dim=128)
    _, params, rest = nnx.split(abstract_model(other), nnx.Param, ...)
    with pytest.raises(ValueError, match=r"init.*ffn_dim: 64 there, 128 in config\.model"):
        load_into_train_state(tmp_path / "init", other, params, rest)
    with pytest.raises(ValueError, match=r"is not a converted checkpoint folder"):
        load_into_train_state(tmp_path, cfg, params, rest)
