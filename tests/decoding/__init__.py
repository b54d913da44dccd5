"""Shared helpers of the decoding tests: fast random models, random inputs, a jitted encoder.

`random_model` fills an abstract model with numpy draws instead of running the model's initialisers (those
compile once per shape, ~9 s per configuration on 2 cores) and chooses scales so that logits are O(1), as the
torch reference's `randomize_` does: with the models' own N(0, 0.02) init the next-token distribution is nearly
uniform and beam search would be deciding between near-ties. The EOS logit is raised on average
(and varies with the hidden state), so that answers end at many different steps and every finalisation path of
the search runs (`EOS_BIAS`); it is a change of weights, not of the model's code.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from imtcxr_jax.models.config import get_model_config
from imtcxr_jax.models.imtcxr import IMTCXR, EncoderOutput, abstract_model

EOS_ID = 2


def _draw(path: tuple, shape: tuple[int, ...], rng: np.random.Generator, embed_dim: int) -> np.ndarray:
    names = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
    name = names[-2] if names[-1] == "value" else names[-1]  # the Variable's name, not its `.value`
    normal = rng.standard_normal(shape)
    if name in ("scale", "c_attn"):
        return 1.0 + 0.1 * normal
    if name == "mean":
        return 0.1 * normal
    if name == "var":
        return rng.uniform(0.5, 1.5, shape)
    if name == "kernel" and len(shape) == 2:  # (in, out): keep activations O(1)
        return normal / np.sqrt(shape[0])
    if name == "kernel":  # HWIO convolution, He init for the ReLU trunk
        return normal * np.sqrt(2.0 / np.prod(shape[:3]))
    if names[0] == "embed_tokens":  # also the output projection: O(1) logits
        return normal / np.sqrt(embed_dim)
    return 0.02 * normal  # biases, position and relative tables


# EOS logit offsets that make answers end anywhere between the first step and max_len ~ 12 (tuned by hand:
# the larger the vocabulary, the higher the best competing logit).
EOS_BIAS = {"micro": 1.0, "ofa_tiny": 4.0}


def random_model(size: str, seed: int = 0, vocab_size: int | None = None) -> IMTCXR:
    """A `size` model ("micro" or "ofa_tiny") with random weights, built without compiling initialisers; one
    object per distinct configuration and seed (a vocab_size equal to the default is the default)."""
    if vocab_size == get_model_config(size).vocab_size:
        vocab_size = None
    return _random_model(size, seed, vocab_size)


@functools.cache
def _random_model(size: str, seed: int, vocab_size: int | None) -> IMTCXR:
    cfg = get_model_config(size) if vocab_size is None else get_model_config(size, vocab_size=vocab_size)
    graphdef, abstract = nnx.split(abstract_model(cfg))
    rng = np.random.default_rng(seed)
    state = jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.asarray(_draw(path, leaf.shape, rng, cfg.embed_dim), leaf.dtype), abstract
    )
    model = nnx.merge(graphdef, state)
    # EOS nudge: logit_EOS = E_eos . (scale * normed + bias) = EOS_BIAS + N(0, ~1) with E_eos = u, bias = b*u.
    direction = rng.standard_normal(cfg.embed_dim)
    direction /= np.linalg.norm(direction)
    table = np.array(model.embed_tokens.embedding[...])
    table[EOS_ID] = direction
    model.embed_tokens.embedding[...] = jnp.asarray(table)
    model.decoder.layer_norm.bias[...] = jnp.asarray(EOS_BIAS[size] * direction, jnp.float32)
    return model


def random_inputs(
    vocab_size: int, batch: int, seed: int, image_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """src (B, 16) = [BOS] + 1..8 random ids + [EOS], right-padded with PAD (16: decode_batch's length bucket,
    so that it compiles nothing new); images (B, H, W, 3) in [-1, 1]."""
    rng = np.random.default_rng(seed)
    src = np.ones((batch, 16), np.int32)
    for row in range(batch):
        words = rng.integers(4, vocab_size, rng.integers(1, 9))
        src[row, : len(words) + 2] = [0, *words, 2]
    images = rng.uniform(-1, 1, (batch, image_size, image_size, 3)).astype(np.float32)
    return src, images


@functools.partial(jax.jit, static_argnums=0)
def _encode(graphdef, state, src, images) -> EncoderOutput:
    return nnx.merge(graphdef, state).encode(src, images)


def encode(model: IMTCXR, src: np.ndarray, images: np.ndarray) -> EncoderOutput:
    graphdef, state = nnx.split(model)
    return _encode(graphdef, state, jnp.asarray(src), jnp.asarray(images))
