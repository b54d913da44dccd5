"""Parity with the independent PyTorch reference (tests/reference/ofa_torch.py, written from the spec).

Random-initialised reference -> OFA state dict -> our importer -> float32 outputs agree to 1e-5 relative
(max-abs error over max-abs value) on a batch with padded instructions and two different images.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from imtcxr_jax.convert.state_dict import export_ofa_state_dict, load_ofa_state_dict
from imtcxr_jax.models.config import ModelConfig, get_model_config
from imtcxr_jax.models.imtcxr import create_model
from tests.reference.ofa_torch import OFAReference, RefConfig, randomize_

RTOL = 1e-5


def reference_config(cfg: ModelConfig) -> RefConfig:
    shared = {f.name for f in dataclasses.fields(RefConfig)} & set(cfg.to_dict())
    return RefConfig(
        **{name: getattr(cfg, name) for name in shared},
        resnet_layers=tuple(cfg.resnet_blocks),
        frozen_bn=cfg.resnet_norm == "frozen",
    )


def relative_error(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def make_pair(cfg: ModelConfig, seed: int = 0):
    torch.manual_seed(seed)
    reference = OFAReference(reference_config(cfg)).eval()
    randomize_(reference, seed)
    ours = create_model(
        cfg, seed=seed + 100
    )  # different random weights: the import must overwrite all of them
    load_ofa_state_dict(ours, reference.state_dict(), source="reference")
    return reference, ours


def make_batch(cfg: ModelConfig, image_size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    high = cfg.vocab_size
    src = np.array([[0, *rng.integers(4, high, 9), 2], [0, *rng.integers(4, high, 4), 2, 1, 1, 1, 1, 1]])
    images = rng.uniform(-1, 1, (2, 3, image_size, image_size)).astype(np.float32)
    images[1] = np.flip(images[1], axis=1) * 0.5  # two clearly different images
    prev = np.array([[0, *rng.integers(4, high, 6)], [0, *rng.integers(4, high, 3), 1, 1, 1]])
    return src, images, prev


@pytest.mark.parametrize(
    "size, image_size", [("micro", 64), pytest.param("ofa_tiny", 96, marks=pytest.mark.slow)]
)
def test_logits_match_the_reference(size, image_size):
    cfg = get_model_config(size)
    reference, ours = make_pair(cfg)
    src, images, prev = make_batch(cfg, image_size)
    with torch.no_grad():
        ref_feats = reference.resnet_features(torch.from_numpy(images))
        ref_enc = reference.encode(
            torch.from_numpy(src), torch.from_numpy(images), torch.tensor([True, True])
        )
        ref_logits = reference.decode(torch.from_numpy(prev), ref_enc)

    # Jitted: run eagerly, each of the model's hundreds of operations would compile on its own.
    nhwc = jnp.asarray(images.transpose(0, 2, 3, 1))
    feats = nnx.jit(lambda m, x: m.encoder.embed_images(x))(ours, nhwc)
    assert relative_error(feats, ref_feats.numpy().transpose(0, 2, 3, 1)) <= RTOL
    enc = nnx.jit(lambda m, src, x: m.encode(src, x))(ours, jnp.asarray(src), nhwc)
    np.testing.assert_array_equal(np.asarray(enc.padding_mask), ref_enc["padding_mask"].numpy())
    assert relative_error(enc.position_embeddings, ref_enc["position_embeddings"]) <= RTOL
    assert relative_error(enc.hidden, ref_enc["encoder_out"]) <= RTOL
    logits = nnx.jit(lambda m, prev, enc: m.decode(prev, enc))(ours, jnp.asarray(prev), enc)
    assert relative_error(logits, ref_logits) <= RTOL

    # Cached one-token-at-a-time decoding reproduces the reference at every non-pad position.
    cache = ours.init_cache(enc, max_length=prev.shape[1])
    decode_step = nnx.jit(lambda m, tokens, cache: m.decode_step(tokens, cache))
    for t in range(prev.shape[1]):
        step_logits, cache = decode_step(ours, jnp.asarray(prev[:, t : t + 1]), cache)
        real = prev[:, t] != 1
        assert relative_error(np.asarray(step_logits[:, 0])[real], ref_logits[:, t].numpy()[real]) <= RTOL


def test_missing_images_and_entangled_positions_match_the_reference():
    cfg = get_model_config("micro", disable_entangle=False)
    reference, ours = make_pair(cfg, seed=1)
    src, images, prev = make_batch(cfg, 48, seed=1)
    mask = np.array([True, False])
    with torch.no_grad():
        ref_logits = reference(
            torch.from_numpy(src), torch.from_numpy(images), torch.from_numpy(mask), torch.from_numpy(prev)
        )
    logits = ours(
        jnp.asarray(src), jnp.asarray(images.transpose(0, 2, 3, 1)), jnp.asarray(prev), jnp.asarray(mask)
    )
    assert relative_error(logits, ref_logits) <= RTOL


def test_frozen_batchnorm_checkpoints_load_and_match():
    cfg = get_model_config("micro", resnet_norm="frozen", bn_eps=1e-3)
    reference, ours = make_pair(cfg, seed=2)
    src, images, prev = make_batch(cfg, 32, seed=2)
    with torch.no_grad():
        ref_logits = reference(torch.from_numpy(src), torch.from_numpy(images), None, torch.from_numpy(prev))
    logits = ours(jnp.asarray(src), jnp.asarray(images.transpose(0, 2, 3, 1)), jnp.asarray(prev))
    assert relative_error(logits, ref_logits) <= RTOL


@pytest.mark.parametrize("size", ["micro", "ofa_tiny"])
def test_export_reproduces_the_reference_state_dict_exactly(size):
    cfg = get_model_config(size)
    reference, ours = make_pair(cfg, seed=3)
    expected = reference.state_dict()
    exported = export_ofa_state_dict(ours, num_batches_tracked=0)
    assert sorted(exported) == sorted(expected)
    for key, tensor in expected.items():
        value = tensor.numpy()
        if key.endswith("num_batches_tracked"):
            continue  # bookkeeping, regenerated as 0
        assert exported[key].shape == value.shape, key
        assert exported[key].dtype == value.dtype, key
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_importer_names_bad_keys_and_shapes():
    cfg = get_model_config("micro")
    reference, ours = make_pair(cfg)
    state = dict(reference.state_dict())
    broken = dict(state)
    del broken["encoder.layers.1.fc2.bias"]
    with pytest.raises(ValueError, match=r"ckpt\.pt: .*missing keys \['encoder\.layers\.1\.fc2\.bias'\]"):
        load_ofa_state_dict(ours, broken, source="ckpt.pt")
    broken = dict(state, **{"encoder.extra.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"unexpected keys \['encoder\.extra\.weight'\]"):
        load_ofa_state_dict(ours, broken, source="ckpt.pt")
    broken = dict(state, **{"decoder.layers.0.fc1.weight": torch.zeros(5, 32)})
    with pytest.raises(
        ValueError, match=r"'decoder\.layers\.0\.fc1\.weight' has shape \(5, 32\), expected \(64, 32\)"
    ):
        load_ofa_state_dict(ours, broken, source="ckpt.pt")
    broken = dict(
        state, **{"decoder.output_projection.weight": torch.zeros_like(state["encoder.embed_tokens.weight"])}
    )
    with pytest.raises(ValueError, match=r"differs from 'encoder\.embed_tokens\.weight'"):
        load_ofa_state_dict(ours, broken, source="ckpt.pt")
    # Half-precision checkpoints (fairseq --fp16) are upcast on import.
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    load_ofa_state_dict(ours, half, source="fp16")
    np.testing.assert_array_equal(
        np.asarray(ours.encoder.pos_ln.scale[...]), state["encoder.pos_ln.weight"].half().float().numpy()
    )
