"""fairseq OFA / IMT-CXR checkpoints <-> converted folders: exact round trips, parity with the PyTorch reference
(logits and beam search), stored flags, and bad input named by file and key with nothing half-written."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from imtcxr_jax.convert.cli import cli_main
from imtcxr_jax.convert.ofa_torch import convert_from_ofa, convert_to_ofa
from imtcxr_jax.convert.safe_pickle import CheckpointError
from imtcxr_jax.models.config import ModelConfig, get_model_config
from imtcxr_jax.train.loop import load_trained_model
from tests.convert import fairseq_checkpoint, reference_model, save
from tests.models.test_parity_torch import make_batch, relative_error

RTOL = 1e-5
BPE_DIR = Path(__file__).parents[3] / "shared" / "data" / "ofa-bpe"
# A middle-sized model between ofa_tiny and ofa_medium: ofa_medium's width, heads and ResNet-101 trunk, two
# layers per stack and a smaller vocabulary (so that the test stays in seconds).
MIDDLE = ModelConfig(512, 2048, 2, 2, 8, vocab_size=8192, resnet_blocks=(3, 4, 23))


@nnx.jit
def _logits(model, src, images, prev):
    return model(src, images, prev)


def _bits(tensor: torch.Tensor) -> np.ndarray:
    array = tensor.detach().contiguous()
    if array.is_floating_point():
        array = array.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[array.element_size()])
    return array.numpy()


def _no_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize(
    "style, half, zip_format",
    [("namespace", False, True), ("omegaconf", True, True), ("args", True, False)],
    ids=["cfg-namespace-fp32", "omegaconf-fp16", "legacy-args-fp16"],
)
def test_fairseq_to_ours_to_fairseq_is_bit_exact_for_every_tensor(tmp_path, style, half, zip_format):
    cfg = get_model_config("micro")
    source = fairseq_checkpoint(
        reference_model(cfg).state_dict(), cfg, arch="ofa_huge", style=style, half=half, counter=123
    )
    path = tmp_path / "imtcxr.pt"
    save(source, path, _use_new_zipfile_serialization=zip_format)
    info = convert_from_ofa(path, tmp_path / "ours")
    assert info["source_dtype"] == ("float16" if half else "float32")
    assert json.loads((tmp_path / "ours" / "model.json").read_text())["dropout"] == 0.1  # read from cfg

    convert_to_ofa(tmp_path / "ours", tmp_path / "back.pt")
    back = torch.load(tmp_path / "back.pt", weights_only=False)
    assert list(back["model"]) == list(source["model"])  # same keys, same order
    for key, tensor in source["model"].items():
        assert back["model"][key].dtype == tensor.dtype, key
        np.testing.assert_array_equal(_bits(back["model"][key]), _bits(tensor), err_msg=key)
    tied = [
        back["model"][k].data_ptr()
        for k in ("encoder.embed_tokens.weight", "decoder.output_projection.weight")
    ]
    assert tied[0] == tied[1]  # one tensor under the three tied names, as fairseq saves it
    # The container: every entry but the optimizer state comes back (spec §8.3).
    assert "last_optimizer_state" not in back
    assert back["optimizer_history"] == source["optimizer_history"]
    assert back["extra_state"]["train_iterator"] == source["extra_state"]["train_iterator"]
    assert torch.equal(back["extra_state"]["best"], source["extra_state"]["best"])
    if style == "args":
        assert back["cfg"] is None and back["args"].arch == "ofa_huge"
    else:
        assert back["args"] is None
        assert back["cfg"]["task"]["_name"] == "dr_joint_task"
        model = back["cfg"]["model"]
        assert isinstance(model, argparse.Namespace) and model.arch == "ofa_huge" and model.disable_entangle
        assert model.user_dir == "../../"  # options we do not know are kept

    # The same tensors as safetensors, and back in through the reader.
    convert_to_ofa(tmp_path / "ours", tmp_path / "back.safetensors", safetensors=True)
    from safetensors.numpy import load_file

    tensors = load_file(str(tmp_path / "back.safetensors"))
    assert sorted(tensors) == sorted(source["model"])
    for key, tensor in source["model"].items():
        np.testing.assert_array_equal(tensors[key].view(_bits(tensor).dtype), _bits(tensor), err_msg=key)
    convert_from_ofa(tmp_path / "back.safetensors", tmp_path / "again")
    convert_to_ofa(tmp_path / "again", tmp_path / "again.pt")
    again = torch.load(tmp_path / "again.pt", weights_only=False)
    for key, tensor in source["model"].items():
        np.testing.assert_array_equal(_bits(again["model"][key]), _bits(tensor), err_msg=key)
    assert _no_leftovers(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("size", ["ofa_tiny", "middle"])
def test_converted_random_weights_give_the_reference_logits(tmp_path, size):
    cfg = MIDDLE if size == "middle" else get_model_config(size)
    reference = reference_model(cfg, seed=5)
    save(fairseq_checkpoint(reference.state_dict(), cfg, arch="ofa_tiny"), tmp_path / "ckpt.pt")
    assert cli_main(["from-ofa", str(tmp_path / "ckpt.pt"), "--out", str(tmp_path / "ours")]) == 0
    if size == "ofa_tiny":  # the single loader, with the OFA tokenizer given at load time
        ours, tokenizer, _, step = load_trained_model(tmp_path / "ours", bpe_dir=BPE_DIR)
        assert tokenizer.vocab_size == cfg.vocab_size and step == 0
    else:
        ours = _model_only(tmp_path / "ours")
    src, images, prev = make_batch(cfg, 64, seed=5)
    with torch.no_grad():
        expected = reference(
            torch.from_numpy(src),
            torch.from_numpy(images),
            torch.tensor([True, True]),
            torch.from_numpy(prev),
        )
    logits = _logits(ours, jnp.asarray(src), jnp.asarray(images.transpose(0, 2, 3, 1)), jnp.asarray(prev))
    error = relative_error(logits, expected)
    print(f"{size}: relative error of float32 logits {error:.2e}")
    assert error <= RTOL


def _model_only(folder: Path):
    from imtcxr_jax.convert.model_dir import load_converted_model

    return load_converted_model(folder)[0]


def test_beam_search_on_converted_weights_gives_the_reference_tokens(tmp_path):
    from imtcxr_jax.decoding import beam_search
    from tests.decoding import encode, random_inputs
    from tests.decoding.test_beam_search import assert_same, reference_search

    cfg = get_model_config("micro")
    reference = reference_model(cfg, seed=9)
    save(fairseq_checkpoint(reference.state_dict(), cfg), tmp_path / "ckpt.pt")
    convert_from_ofa(tmp_path / "ckpt.pt", tmp_path / "ours")
    model = _model_only(tmp_path / "ours")
    src, images = random_inputs(cfg.vocab_size, 2, seed=9)
    options = dict(
        beam_size=3, max_len=8, min_len=1, no_repeat_ngram_size=3, length_penalty=1.0, unk_penalty=0.0
    )
    result = beam_search(model, encode(model, src, images), **options)
    with torch.no_grad():
        enc = reference.encode(
            torch.from_numpy(src).long(), torch.from_numpy(images.transpose(0, 3, 1, 2)), None
        )
    for sentence in range(2):
        rows = {name: value[sentence : sentence + 1] for name, value in enc.items()}

        def next_lprobs(prefixes, rows=rows):
            with torch.no_grad():
                tiled = {name: v.expand(len(prefixes), *v.shape[1:]) for name, v in rows.items()}
                logits = reference.decode(torch.tensor(prefixes), tiled)[:, -1].float()
                return torch.log_softmax(logits, dim=-1).numpy()

        assert_same(result, sentence, reference_search(next_lprobs, **options), options["beam_size"])


def test_invisible_flags_come_from_the_stored_config(tmp_path):
    """disable_entangle leaves no trace in the weights: False in cfg['model'] gives the entangled decoder."""
    cfg = get_model_config("micro", disable_entangle=False)
    reference = reference_model(cfg, seed=2)
    save(fairseq_checkpoint(reference.state_dict(), cfg), tmp_path / "ckpt.pt")
    convert_from_ofa(tmp_path / "ckpt.pt", tmp_path / "ours")
    model = _model_only(tmp_path / "ours")
    assert model.cfg.disable_entangle is False
    src, images, prev = make_batch(cfg, 32, seed=2)
    with torch.no_grad():
        expected = reference(torch.from_numpy(src), torch.from_numpy(images), None, torch.from_numpy(prev))
    logits = _logits(model, jnp.asarray(src), jnp.asarray(images.transpose(0, 2, 3, 1)), jnp.asarray(prev))
    assert relative_error(logits, expected) <= RTOL

    # A bare state dict stores no options: the spec's defaults are assumed and said so; --set overrides.
    torch.save(reference.state_dict(), tmp_path / "bare.pt")
    info = convert_from_ofa(tmp_path / "bare.pt", tmp_path / "bare")
    assert info["assumed"] and "disable_entangle False" in info["assumed"][0]
    assert cli_main(["from-ofa", str(tmp_path / "bare.pt"), "--out", str(tmp_path / "set"),
                     "--set", "disable_entangle=true"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "set" / "model.json").read_text())["disable_entangle"] is True


def _bad_checkpoints(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, pattern its error must match)."""
    cfg = get_model_config("micro")
    state = reference_model(cfg).state_dict()
    out: dict[str, tuple[Path, str]] = {}

    def write(name, container, pattern):
        path = tmp_path / f"{name}.pt"
        save(container, path)
        out[name] = (path, pattern)

    bart = {k: v for k, v in state.items() if not k.startswith("encoder.embed_images")}
    container = fairseq_checkpoint(bart, cfg)
    container["cfg"]["model"] = argparse.Namespace(arch="bart_large", encoder_embed_dim=32)
    write("bart", container, r"cfg\['model'\]\.arch is 'bart_large', not an OFA architecture")
    vit = dict(bart, **{"encoder.embed_images.patch_embed.proj.weight": torch.zeros(32, 3, 16, 16)})
    container = fairseq_checkpoint(vit, cfg)
    del container["cfg"]["model"].arch
    write(
        "vit",
        container,
        r"'encoder\.embed_images\.conv1\.weight' is missing: the image backbone is not a ResNet",
    )
    container = fairseq_checkpoint(state, cfg)
    container["cfg"]["model"].encoder_layers = 3
    write("layers", container, r"encoder_layers is 3 but the weights have 2 \(encoder\.layers\.\*\)")
    container = fairseq_checkpoint(state, cfg)
    container["model"]["decoder.layers.0.fc1.weight"] = torch.zeros(5, 32)
    write("shape", container, r"'decoder\.layers\.0\.fc1\.weight' has shape \(5, 32\), expected \(64, 32\)")
    container = fairseq_checkpoint(state, cfg)
    del container["model"]["encoder.layers.1.fc2.bias"]
    write("missing", container, r"missing keys \['encoder\.layers\.1\.fc2\.bias'\]")
    container = fairseq_checkpoint(state, cfg)
    container["cfg"]["model"].scale_attn = False
    write("flag", container, r"cfg\['model'\]\.scale_attn is False; this model supports only True")
    container = fairseq_checkpoint(state, cfg)
    container["cfg"]["model"].no_scale_embedding = False
    write("embed_scale", container, r"no_scale_embedding is False")
    (tmp_path / "text.pt").write_text("not a checkpoint at all\n")
    out["text"] = (tmp_path / "text.pt", "not a PyTorch checkpoint")
    data = out["shape"][0].read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 3])
    out["truncated"] = (tmp_path / "truncated.pt", "not a readable PyTorch checkpoint")
    return out


def test_bad_checkpoints_are_named_and_nothing_is_half_written(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    outputs = tmp_path / "out"
    outputs.mkdir()
    for name, (path, pattern) in _bad_checkpoints(inputs).items():
        with pytest.raises(CheckpointError, match=pattern) as info:
            convert_from_ofa(path, outputs / name)
        assert str(info.value).startswith(f"{path}: "), name
        assert not (outputs / name).exists(), name
        assert cli_main(["from-ofa", str(path), "--out", str(outputs / name)]) == 1
        assert str(path) in capsys.readouterr().err
    assert list(outputs.iterdir()) == []  # no temporary folder left behind

    # --overwrite replaces a folder only once the new one is complete: a failure keeps the old one.
    cfg = get_model_config("micro")
    save(fairseq_checkpoint(reference_model(cfg).state_dict(), cfg), inputs / "good.pt")
    convert_from_ofa(inputs / "good.pt", outputs / "kept")
    before = sorted(p.name for p in (outputs / "kept").iterdir())
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        convert_from_ofa(inputs / "good.pt", outputs / "kept")
    with pytest.raises(CheckpointError):
        convert_from_ofa(inputs / "shape.pt", outputs / "kept", overwrite=True)
    assert sorted(p.name for p in (outputs / "kept").iterdir()) == before
    assert _no_leftovers(outputs) == []


def test_the_ofa_tokenizer_must_fit_the_embedding(tmp_path):
    cfg = get_model_config("micro")
    save(fairseq_checkpoint(reference_model(cfg).state_dict(), cfg), tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match=r"has 1536 rows but the tokenizer has 59457 ids"):
        convert_from_ofa(tmp_path / "ckpt.pt", tmp_path / "ours", bpe_dir=BPE_DIR)
    assert not (tmp_path / "ours").exists()
