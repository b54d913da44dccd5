"""Model structure, configuration errors, KV-cache equivalence, BatchNorm modes and sharded creation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from imtcxr_jax.models.cli import cli_main, model_info
from imtcxr_jax.models.config import EXPECTED_PARAMETER_COUNTS, ModelConfig, get_model_config
from imtcxr_jax.models.imtcxr import IMTCXR, create_model
from imtcxr_jax.models.layers import Keys, dropout, layer_norm
from imtcxr_jax.models.resnet import BatchNorm, batch_norm_train, max_pool_3x3_stride_2
from imtcxr_jax.models.transformer import EncoderLayer, add_shared_bias
from imtcxr_jax.sharding import create_sharded, make_mesh


def _batch(cfg: ModelConfig, image_size: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    src = np.array([[0, 17, 5, 900, 33, 2], [0, 44, 2, 1, 1, 1]])  # second instruction padded
    images = rng.standard_normal((2, image_size, image_size, 3)).astype(np.float32)
    prev = np.concatenate([np.zeros((2, 1), int), rng.integers(4, cfg.vocab_size, (2, 7))], axis=1)
    return jnp.asarray(src), jnp.asarray(images), jnp.asarray(prev)


def test_named_sizes_have_the_spec_parameter_counts(capsys):
    for size, expected in EXPECTED_PARAMETER_COUNTS.items():
        assert model_info(size)["params"] == expected, size
    assert cli_main(["info", "--size", "ofa_tiny"]) == 0
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert '"params": 33488336' in last_line


def test_keys_draw_the_keys_of_nnx_rngs_and_build_the_same_parameters():
    cfg = get_model_config("micro")
    ours = Keys(
        params=np.int64(3), dropout=jax.random.key_data(jax.random.key(9))
    )  # a numpy seed, raw key data
    flax_rngs = nnx.Rngs(params=3, dropout=jax.random.key(9))
    for stream in ("params", "dropout", "params", "params", "dropout"):
        expected = getattr(flax_rngs, stream)()
        assert jnp.array_equal(jax.random.key_data(getattr(ours, stream)()), jax.random.key_data(expected))
    with pytest.raises(
        AttributeError, match=r"Keys has no stream 'dropuot'; it was made with \['dropout', 'params'\]"
    ):
        ours.dropuot()
    # A layer built from either draws the same parameters (the model draws every key the same way).
    layers = [EncoderLayer(cfg, 0.0, rngs=r(params=5)) for r in (Keys, nnx.Rngs)]
    leaves = [jax.tree.leaves(nnx.state(layer)) for layer in layers]
    assert len(leaves[0]) == len(leaves[1]) > 10
    for a, b in zip(*leaves, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Dropout draws its masks from the stream: the same from Keys as from nnx.Rngs.
    x = jnp.ones((4, 16))
    masks = [
        dropout(x, 0.5, deterministic=False, rngs=r(dropout=jax.random.key(2))) for r in (Keys, nnx.Rngs)
    ]
    np.testing.assert_array_equal(*masks)
    assert 0 < int(jnp.sum(masks[0] == 0)) < x.size


def test_every_parameter_names_its_logical_axes():
    model = create_model(get_model_config("micro"))
    for path, var in nnx.to_flat_state(nnx.state(model)):
        names = var.get_metadata().get("out_sharding")
        assert names is not None and len(names) == len(var.shape), path


@pytest.mark.parametrize(
    "change, message",
    [
        ({"embed_dim": 30}, "embed_dim: got 30 with heads=4"),
        ({"heads": 0}, "heads: got 0"),
        ({"resnet_blocks": (3, 4)}, "resnet_blocks"),
        ({"dtype": "float64"}, "dtype: got 'float64'"),
        ({"dropout": 1.5}, "dropout: got 1.5"),
        ({"resnet_norm": "group"}, "resnet_norm: got 'group'"),
    ],
)
def test_inconsistent_config_is_rejected(change, message):
    with pytest.raises(ValueError, match=message):
        get_model_config("ofa_tiny", **change)


def test_bad_inputs_name_the_argument():
    cfg = get_model_config("micro")
    model = create_model(cfg)
    src, images, prev = _batch(cfg)
    with pytest.raises(
        ValueError, match=r"images: got shape \(2, 64, 64\), expected \(batch, height, width, 3\)"
    ):
        model(src, images[..., 0], prev)
    with pytest.raises(ValueError, match=r"images: got shape \(2, 64, 64, 1\)"):
        model(src, images[..., :1], prev)
    with pytest.raises(
        ValueError, match=rf"src_tokens: got token id {cfg.vocab_size}, expected ids in \[0, "
    ):
        model(src.at[0, 1].set(cfg.vocab_size), images, prev)
    with pytest.raises(ValueError, match="prev_tokens: got token id -1"):
        model(src, images, prev.at[1, 2].set(-1))
    with pytest.raises(ValueError, match="patch grid"):
        model(src, jnp.zeros((2, 16 * 9, 16 * 9, 3)), prev)  # micro's position tables cover 8x8 patches


@pytest.mark.parametrize("size", ["micro", pytest.param("ofa_tiny", marks=pytest.mark.slow)])
def test_cached_decoding_equals_teacher_forcing(size):
    cfg = get_model_config(size)
    model = create_model(cfg, seed=3)
    # Jitted, as decoding runs: eagerly, each of the model's hundreds of operations compiles on its own.
    encode = nnx.jit(lambda m, src, images: m.encode(src, images))
    decode = nnx.jit(lambda m, prev, enc: m.decode(prev, enc))
    decode_step = nnx.jit(lambda m, tokens, cache: m.decode_step(tokens, cache))
    init_cache = nnx.jit(lambda m, enc: m.init_cache(enc, max_length=12))
    src, images, prev = _batch(cfg, image_size=48)
    enc = encode(model, src, images)
    full = decode(model, prev, enc)
    cache = init_cache(model, enc)
    steps = []
    for t in range(prev.shape[1]):
        logits, cache = decode_step(model, prev[:, t : t + 1], cache)
        steps.append(logits[:, 0])
    stepped = jnp.stack(steps, axis=1)
    scale = float(jnp.abs(full).max())
    assert float(jnp.abs(stepped - full).max()) <= 1e-5 * scale
    # A prefill of several tokens followed by single steps gives the same logits too.
    cache = init_cache(model, enc)
    head, cache = decode_step(model, prev[:, :5], cache)
    tail, cache = decode_step(model, prev[:, 5:], cache)
    assert float(jnp.abs(jnp.concatenate([head, tail], axis=1) - full).max()) <= 1e-5 * scale
    assert int(cache.index) == prev.shape[1]


def test_extra_instruction_padding_does_not_change_the_logits():
    """The pipeline pads instructions per task family (batch_by_family); that is exact only if padded key
    positions are masked everywhere, in the encoder and in the decoder's cross-attention."""
    cfg = get_model_config("micro")
    model = create_model(cfg, seed=5)
    src, images, prev = _batch(cfg, image_size=48)
    longer = jnp.pad(src, ((0, 0), (0, 10)), constant_values=1)  # PAD
    short, padded = model(src, images, prev), model(longer, images, prev)
    assert float(jnp.abs(padded - short).max()) <= 1e-5 * float(jnp.abs(short).max())


def test_cache_gather_reorders_examples():
    cfg = get_model_config("micro")
    model = create_model(cfg)
    src, images, prev = _batch(cfg)
    cache = model.init_cache(model.encode(src, images), max_length=8)
    _, cache = model.decode_step(prev[:, :3], cache)
    swapped = cache.gather(jnp.array([1, 0]))
    np.testing.assert_array_equal(swapped.self_keys[0][0], cache.self_keys[0][1])
    np.testing.assert_array_equal(swapped.encoder_padding_mask[1], cache.encoder_padding_mask[0])
    assert int(swapped.index) == 3


def test_beam_layout_steps_equal_tiled_caches_gathered_by_parent():
    """The beam layout (one cache row per sentence, an ancestry table per hypothesis) against the plain cache
    tiled K times per sentence and gathered by the same random parents after every step."""
    cfg = get_model_config("micro")
    model = create_model(cfg, seed=4)
    src, images, _ = _batch(cfg, image_size=48)
    sentences, k, steps = src.shape[0], 3, 7
    enc = model.encode(src, images)
    step = nnx.jit(lambda m, tokens, cache: m.decode_step(tokens, cache))
    beam = model.init_cache(enc, max_length=4, hypotheses=k)  # extended to 8 positions after 4 steps
    tiled = model.init_cache(enc, max_length=8).gather(jnp.repeat(jnp.arange(sentences), k))
    rng = np.random.default_rng(0)
    for t in range(steps):
        if t == 4:
            beam = beam.extend(8)
        tokens = jnp.asarray(rng.integers(4, cfg.vocab_size, (sentences * k, 1)), jnp.int32)
        beam_logits, beam = step(model, tokens, beam)
        tiled_logits, tiled = step(model, tokens, tiled)
        scale = float(jnp.abs(tiled_logits).max())
        assert float(jnp.abs(beam_logits - tiled_logits).max()) <= 1e-5 * scale, t
        # Each hypothesis continues a random one of its sentence's (repeats and all).
        first_row = np.arange(sentences)[:, None] * k
        parents = jnp.asarray((rng.integers(0, k, (sentences, k)) + first_row).reshape(-1))
        beam, tiled = beam.reorder_hypotheses(parents), tiled.gather(parents)
    assert beam.self_keys[0].shape == (sentences, cfg.heads, cfg.head_dim, 8 * k)
    assert beam.ancestry.shape == (sentences * k, 8) and int(beam.index) == steps
    with pytest.raises(ValueError, match="reorder_hypotheses"):
        beam.gather(parents)
    with pytest.raises(ValueError, match="beam-layout"):
        tiled.reorder_hypotheses(parents)
    with pytest.raises(ValueError, match="one token per row"):
        model.decode_step(jnp.zeros((sentences * k, 2), jnp.int32), beam)
    with pytest.raises(ValueError, match="already holds 8"):
        beam.extend(6)


def test_batchnorm_matches_torch_in_train_and_eval_mode():
    cfg = get_model_config("micro")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 6, 8)).astype(np.float32) * 2 + 0.5
    ours = BatchNorm(8, cfg=cfg, rngs=nnx.Rngs(0))
    theirs = torch.nn.BatchNorm2d(8, eps=cfg.bn_eps)
    weight, bias = rng.normal(1, 0.2, 8).astype(np.float32), rng.normal(0, 0.2, 8).astype(np.float32)
    mean, var = rng.normal(0, 1, 8).astype(np.float32), rng.uniform(0.5, 2, 8).astype(np.float32)
    ours.scale[...], ours.bias[...], ours.mean[...], ours.var[...] = weight, bias, mean, var
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(weight))
        theirs.bias.copy_(torch.from_numpy(bias))
        theirs.running_mean.copy_(torch.from_numpy(mean))
        theirs.running_var.copy_(torch.from_numpy(var))
    to_torch = torch.from_numpy(x.transpose(0, 3, 1, 2))
    # Eval mode: running statistics, whatever the batch.
    theirs.eval()
    expected = theirs(to_torch).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(x), train=False)), expected, rtol=1e-5, atol=1e-5)
    # Train mode: batch statistics, running statistics updated with momentum 0.1 and the unbiased variance.
    theirs.train()
    expected = theirs(to_torch).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(x), train=True)), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ours.mean[...]), theirs.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ours.var[...]), theirs.running_var.numpy(), rtol=1e-5, atol=1e-6)


def test_batchnorm_train_gradient_matches_torch_and_the_plain_formula():
    # The closed-form backward pass (channel sums as products with ones) against torch's autograd of
    # BatchNorm2d in train mode, and, with cotangents on mean and var too, against JAX's autodiff of the
    # plain formula.
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5, 6, 8)).astype(np.float32) * 2 + 0.5
    weight, bias = rng.normal(1, 0.2, 8).astype(np.float32), rng.normal(0, 0.2, 8).astype(np.float32)
    grad_y = rng.standard_normal(x.shape).astype(np.float32)
    eps = 1e-5
    flat = jnp.asarray(x.reshape(-1, 8))
    ys, backward = jax.vjp(
        lambda a, s, b: batch_norm_train(a, s, b, eps), flat, jnp.asarray(weight), jnp.asarray(bias)
    )
    zeros = jnp.zeros((8,), jnp.float32)
    grad_x, grad_scale, grad_bias = backward((jnp.asarray(grad_y.reshape(-1, 8)), zeros, zeros))

    to_torch = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))  # noqa: E731
    tx, tw, tb = (
        to_torch(x).requires_grad_(),
        torch.from_numpy(weight).requires_grad_(),
        torch.from_numpy(bias),
    )
    tb.requires_grad_()
    ty = torch.nn.functional.batch_norm(tx, None, None, tw, tb, training=True, eps=eps)
    ty.backward(to_torch(grad_y))
    np.testing.assert_allclose(
        np.asarray(ys[0]).reshape(x.shape), ty.detach().numpy().transpose(0, 2, 3, 1), atol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(grad_x).reshape(x.shape), tx.grad.numpy().transpose(0, 2, 3, 1), atol=1e-5
    )
    np.testing.assert_allclose(np.asarray(grad_scale), tw.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(grad_bias), tb.grad.numpy(), rtol=1e-5, atol=1e-5)

    def plain(a, s, b):
        mean = jnp.mean(a, axis=0)
        var = jnp.mean(jnp.square(a - mean), axis=0)
        return (a - mean) * jax.lax.rsqrt(var + eps) * s + b, mean, var

    cotangents = (
        jnp.asarray(grad_y.reshape(-1, 8)),
        jnp.asarray(rng.normal(size=8), jnp.float32),
        jnp.asarray(rng.normal(size=8), jnp.float32),
    )
    expected = jax.vjp(plain, flat, jnp.asarray(weight), jnp.asarray(bias))[1](cotangents)
    for got, want in zip(backward(cotangents), expected, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)


def test_layer_norm_gradient_matches_torch_and_the_plain_formula():
    # The closed-form backward pass (its input gradient behind an optimisation barrier) against torch's
    # autograd of layer_norm and JAX's autodiff of the formula, over a (batch, tokens, features) input whose
    # rows have very different means and scales.
    rng = np.random.default_rng(2)
    x = (
        rng.standard_normal((3, 7, 16)) * rng.uniform(0.1, 5, (3, 7, 1)) + rng.normal(0, 3, (3, 7, 1))
    ).astype(np.float32)
    weight, bias = rng.normal(1, 0.3, 16).astype(np.float32), rng.normal(0, 0.3, 16).astype(np.float32)
    grad_y = rng.standard_normal(x.shape).astype(np.float32)
    eps = 1e-5
    args = (jnp.asarray(x), jnp.asarray(weight), jnp.asarray(bias))
    y, backward = jax.vjp(lambda a, s, b: layer_norm(a, s, b, eps), *args)
    grads = backward(jnp.asarray(grad_y))

    tx, tw, tb = (torch.from_numpy(a).requires_grad_() for a in (x, weight, bias))
    ty = torch.nn.functional.layer_norm(tx, (16,), tw, tb, eps=eps)
    ty.backward(torch.from_numpy(grad_y))
    np.testing.assert_allclose(np.asarray(y), ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, (tx.grad, tw.grad, tb.grad), strict=True):
        np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=1e-4, atol=1e-5)

    def plain(a, s, b):
        mean = jnp.mean(a, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(a - mean), axis=-1, keepdims=True)
        return (a - mean) * jax.lax.rsqrt(var + eps) * s + b

    expected = jax.vjp(plain, *args)[1](jnp.asarray(grad_y))
    for got, want in zip(jax.jit(backward)(jnp.asarray(grad_y)), expected, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)


def test_frozen_batchnorm_has_no_trainable_parameters_and_ignores_train_mode():
    cfg = get_model_config("micro", resnet_norm="frozen")
    model = create_model(cfg)
    trunk_params = nnx.to_flat_state(nnx.state(model.encoder.embed_images, nnx.Param))
    assert trunk_params and all(path[-1] == "kernel" for path, _ in trunk_params)  # convolutions only
    src, images, prev = _batch(cfg)
    before = model(src, images, prev)
    after = model(src, images, prev, train=True, rngs=nnx.Rngs(dropout=0))  # no dropout configured
    np.testing.assert_allclose(np.asarray(before), np.asarray(after), rtol=1e-6, atol=1e-6)


def test_sharded_creation_gives_the_same_model_and_logits():
    cfg = get_model_config("micro")
    mesh = make_mesh((2, 2, 2))
    sharded, plan = create_sharded(lambda: IMTCXR(cfg, rngs=nnx.Rngs(0)), mesh)
    reference = create_model(cfg, seed=0)
    assert sharded.encoder.layers[0].ffn.fc1.kernel[...].sharding.spec == jax.sharding.PartitionSpec(
        "fsdp", "tensor"
    )
    assert sharded.embed_tokens.embedding[...].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert plan.replicated_instead == []
    src, images, prev = _batch(cfg)
    forward = nnx.jit(lambda model, src, images, prev: model(src, images, prev))  # one compilation each
    np.testing.assert_allclose(
        np.asarray(forward(sharded, src, images, prev)),
        np.asarray(forward(reference, src, images, prev)),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("size", [16, 15])
def test_stem_max_pool_equals_reduce_window_with_its_gradient_after_relu(size):
    rng = np.random.default_rng(size)
    z = jnp.asarray(rng.standard_normal((3, size, size + 3, 5)), jnp.float32)

    def reference(x):
        return jax.lax.reduce_window(
            x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
        )

    np.testing.assert_array_equal(max_pool_3x3_stride_2(z), reference(z))
    weights = jnp.asarray(rng.standard_normal(reference(z).shape), jnp.float32)
    ours, theirs = (
        jax.grad(lambda z, pool=pool: jnp.sum(pool(jax.nn.relu(z)) * weights))(z)
        for pool in (max_pool_3x3_stride_2, reference)
    )
    np.testing.assert_array_equal(ours, theirs)


def test_shared_bias_gradient_is_the_batch_sum():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.standard_normal((5, 2, 3, 4)), jnp.float32)
    bias = jnp.asarray(rng.standard_normal((1, 2, 3, 4)), jnp.float32)
    weights = jnp.asarray(rng.standard_normal((5, 2, 3, 4)), jnp.float32)
    ours = jax.grad(lambda a, b: jnp.sum(jnp.sin(add_shared_bias(a, b)) * weights), argnums=(0, 1))
    plain = jax.grad(lambda a, b: jnp.sum(jnp.sin(a + b) * weights), argnums=(0, 1))
    np.testing.assert_array_equal(add_shared_bias(logits, bias), logits + bias)
    for got, expected in zip(ours(logits, bias), plain(logits, bias), strict=True):
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
