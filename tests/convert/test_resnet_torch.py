"""torchvision-named ImageNet ResNet weights -> the trunk (stages 1-3), with parity against the reference trunk."""

from __future__ import annotations

import collections
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from imtcxr_jax.convert.cli import cli_main
from imtcxr_jax.convert.resnet_torch import load_torchvision_resnet, read_resnet_state_dict
from imtcxr_jax.convert.safe_pickle import CheckpointError
from imtcxr_jax.models.config import get_model_config
from imtcxr_jax.models.resnet import ResNetTrunk
from tests.models.test_parity_torch import relative_error
from tests.reference.ofa_torch import RefConfig, randomize_
from tests.reference.ofa_torch import ResNetTrunk as TorchTrunk

RESNET50 = (3, 4, 6)


def torchvision_state_dict(blocks=RESNET50, layer4_blocks=3, seed=0) -> collections.OrderedDict:
    """A resnet state dict with torchvision's names: the reference trunk (stages 1-3, random weights) plus a
    layer4 and an fc head, which the truncated trunk does not use."""
    torch.manual_seed(seed)
    trunk = TorchTrunk(RefConfig(64, 128, 1, 1, 1, resnet_layers=blocks)).eval()
    wrapper = torch.nn.Module()
    wrapper.encoder = torch.nn.Module()
    wrapper.encoder.embed_images = trunk
    randomize_(wrapper, seed)  # the reference's own random draws, by role
    state = collections.OrderedDict(trunk.state_dict())
    for b in range(layer4_blocks):
        state[f"layer4.{b}.conv1.weight"] = torch.randn(512, 2048 if b else 1024, 1, 1)
        state[f"layer4.{b}.bn1.running_mean"] = torch.randn(512)
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 2048), torch.randn(1000)
    return state, trunk


def our_trunk(blocks=RESNET50) -> ResNetTrunk:
    cfg = get_model_config("micro", resnet_blocks=blocks, resnet_width=64)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: ResNetTrunk(cfg, rngs=nnx.Rngs(0))))
    return nnx.merge(graphdef, jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), state))


@nnx.jit
def _features(trunk, images):
    return trunk(images)


def test_a_torchvision_resnet50_fills_the_trunk_and_matches_the_reference(tmp_path):
    state, reference = torchvision_state_dict()
    torch.save(state, tmp_path / "resnet50.pth")
    trunk = our_trunk()
    report = load_torchvision_resnet(trunk, read_resnet_state_dict(tmp_path / "resnet50.pth"), source="r50")
    assert report.depth == "resnet50"
    assert {k.split(".")[0] for k in report.unused} == {"layer4", "fc"}
    images = np.random.default_rng(0).uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(images)).numpy().transpose(0, 2, 3, 1)
    features = _features(trunk, jnp.asarray(images.transpose(0, 2, 3, 1)))
    error = relative_error(features, expected)
    print(f"resnet50 trunk: relative error {error:.2e}")
    assert error <= 1e-5


def test_a_file_of_another_depth_or_width_is_named(tmp_path):
    state, _ = torchvision_state_dict()
    with pytest.raises(
        CheckpointError, match=r"r50: missing keys \['layer3\.10\.bn1\.bias'.*resnet50 \(3, 4, 6\)"
    ):
        load_torchvision_resnet(our_trunk((3, 4, 23)), state, source="r50")
    deeper = dict(state, **{"layer3.6.conv1.weight": torch.zeros(256, 1024, 1, 1)})
    with pytest.raises(CheckpointError, match=r"unexpected keys \['layer3\.6\.conv1\.weight'\]"):
        load_torchvision_resnet(our_trunk(), deeper, source="r50")
    narrow = dict(state, **{"conv1.weight": torch.zeros(32, 3, 7, 7)})
    with pytest.raises(CheckpointError, match=r"r50: 'conv1\.weight' has shape \(32, 3, 7, 7\)"):
        load_torchvision_resnet(our_trunk(), narrow, source="r50")
    whole = tmp_path / "whole.pth"
    torch.save(torch.nn.Conv2d(3, 3, 1), whole)  # a pickled module, not a state dict: refused by class
    with pytest.raises(CheckpointError, match=r"refused to load torch\.nn\.modules\.conv\.Conv2d"):
        read_resnet_state_dict(whole)


def test_the_cli_writes_a_folder_that_initialises_a_model(tmp_path, capsys):
    """resnet101 weights into an existing converted folder (--init) of matching trunk."""
    from imtcxr_jax.convert.model_dir import load_converted_model
    from tests.convert import fairseq_checkpoint, reference_model, save

    cfg = get_model_config("micro", resnet_blocks=RESNET50, resnet_width=64)
    save(fairseq_checkpoint(reference_model(cfg).state_dict(), cfg), tmp_path / "base.pt")
    assert cli_main(["from-ofa", str(tmp_path / "base.pt"), "--out", str(tmp_path / "base")]) == 0
    state, _ = torchvision_state_dict(seed=3)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "r50.pth")
    capsys.readouterr()
    code = cli_main(["resnet", str(tmp_path / "r50.pth"), "--init", str(tmp_path / "base"), "--out",
                     str(tmp_path / "init")])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["resnet_depth"] == "resnet50" and summary["unused"] == ["fc", "layer4"]
    model, _ = load_converted_model(tmp_path / "init")
    np.testing.assert_array_equal(
        np.asarray(model.encoder.embed_images.layer2[1].conv2.kernel[...]),
        state["layer2.1.conv2.weight"].numpy().transpose(2, 3, 1, 0),
    )
    base, _ = load_converted_model(tmp_path / "base")  # the transformer is the --init folder's
    np.testing.assert_array_equal(
        np.asarray(model.encoder.layers[0].ffn.fc1.kernel[...]),
        np.asarray(base.encoder.layers[0].ffn.fc1.kernel[...]),
    )
    assert cli_main(["resnet", str(tmp_path / "r50.pth"), "--model-size", "ofa_medium", "--out",
                     str(tmp_path / "bad")]) == 1  # fmt: skip
    assert "missing keys" in capsys.readouterr().err and not (tmp_path / "bad").exists()
