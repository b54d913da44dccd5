"""Small building blocks with PyTorch-compatible numerics and logical axis names on every parameter.

Why our own instead of `nnx.Linear` / `nnx.LayerNorm`: the original's conventions differ from Flax's
defaults in ways that are easy to get wrong (LayerNorm eps 1e-5 with a two-pass variance, exact GELU,
explicit symmetric conv padding, torch BatchNorm momentum), and every parameter must carry the logical axis
names that `imtcxr_jax.sharding` maps to mesh axes. Parameters are created unsharded (`eager_sharding=False`):
sharded creation happens by jitting the constructor with `out_shardings` computed from those names.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Initializer = Callable[[jax.Array, Sequence[int], jnp.dtype], jax.Array]


class Keys:
    """The keys of `nnx.Rngs(**streams)`, drawn with a Python counter per stream: what the model's
    constructors (``rngs.params()``) and its dropout (``rngs.dropout()``) take instead of an `nnx.Rngs`.

    ``Keys(params=seed).params()`` gives exactly the keys of ``nnx.Rngs(params=seed).params()``, one after
    another (``fold_in(key(seed), n)`` for n = 0, 1, ...). Why not `nnx.Rngs` itself: it keeps its counter in
    a Variable, and under tracing (`nnx.eval_shape`, a jitted initialiser or train step) each update of a
    traced counter makes flax build, and throw away, an error message whose cost grows with the trace so far.
    The model draws one key per parameter, so that was quadratic: ~2 minutes for ofa_huge's abstract shapes,
    against a few seconds with a Python counter.
    """

    def __init__(self, **streams: int | jax.Array):
        # As nnx.Rngs takes them: a seed, a typed key, or raw uint32 key data.
        self._keys = {name: _as_key(value) for name, value in streams.items()}
        self._drawn = dict.fromkeys(streams, 0)

    def __getattr__(self, stream: str) -> Callable[[], jax.Array]:
        if stream.startswith("_") or stream not in self._keys:
            raise AttributeError(f"Keys has no stream {stream!r}; it was made with {sorted(self._keys)}")
        return lambda: self._draw(stream)

    def _draw(self, stream: str) -> jax.Array:
        key = jax.random.fold_in(self._keys[stream], self._drawn[stream])
        self._drawn[stream] += 1
        return key


def _as_key(value: int | jax.Array) -> jax.Array:
    if isinstance(value, jax.Array):
        return jax.random.wrap_key_data(value) if value.dtype == jnp.uint32 else value
    return jax.random.key(int(value))


# Default initialisers (spec §3.6: the original re-initialises everything with a BERT-style N(0, 0.02)).
normal_init: Initializer = nnx.initializers.normal(0.02)
zeros_init: Initializer = nnx.initializers.zeros
ones_init: Initializer = nnx.initializers.ones


def make_param(
    rngs: nnx.Rngs, init: Initializer, shape: Sequence[int], axes: Sequence[str | None], dtype: jnp.dtype
) -> nnx.Param:
    """A parameter whose metadata names its logical axes (one per dimension)."""
    if len(axes) != len(shape):
        raise ValueError(f"make_param: axes {tuple(axes)} do not match shape {tuple(shape)}")
    return nnx.Param(init(rngs.params(), tuple(shape), dtype), out_sharding=tuple(axes), eager_sharding=False)


class Dense(nnx.Module):
    """y = x @ kernel + bias, kernel (in, out) = transpose of the torch Linear weight."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        axes: tuple[str | None, str | None],
        *,
        use_bias: bool = True,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.kernel = make_param(rngs, normal_init, (in_features, out_features), axes, param_dtype)
        self.bias = make_param(rngs, zeros_init, (out_features,), axes[1:], param_dtype) if use_bias else None
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class LayerNorm(nnx.Module):
    """torch/fairseq LayerNorm: biased two-pass variance, eps 1e-5, statistics in float32 (spec §6)."""

    def __init__(
        self,
        features: int,
        axis_name: str | None = "norm",
        *,
        eps: float = 1e-5,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.scale = make_param(rngs, ones_init, (features,), (axis_name,), param_dtype)
        self.bias = make_param(rngs, zeros_init, (features,), (axis_name,), param_dtype)
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        f32 = jnp.float32
        y = layer_norm(x.astype(f32), self.scale[...].astype(f32), self.bias[...].astype(f32), self.eps)
        return y.astype(self.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """(x - mean) * rsqrt(var + eps) * scale + bias over the last axis of x (..., D); scale, bias (D,); float32.

    The forward pass is the plain formula. The backward pass is its closed form, and the input's gradient is
    materialised behind an optimisation barrier: under autodiff XLA CPU fused the gradient of the residual
    stream through several layers' norms into one elementwise loop and duplicated that loop into each of its
    consumers (the transposed copy for a weight gradient among them), so every consumer recomputed the chain.
    """
    return _layer_norm_forward(x, scale, bias, eps)[0]


def _layer_norm_forward(x, scale, bias, eps):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    inv_std = jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True) + eps)
    normalised = centred * inv_std
    return normalised * scale + bias, (normalised, inv_std, scale)


def _layer_norm_backward(eps, residuals, grad_y):
    del eps
    normalised, inv_std, scale = residuals
    rows = tuple(range(grad_y.ndim - 1))
    grad_scale = jnp.sum(grad_y * normalised, axis=rows)
    grad_bias = jnp.sum(grad_y, axis=rows)
    grad_normalised = grad_y * scale
    grad_x = inv_std * (
        grad_normalised
        - jnp.mean(grad_normalised, axis=-1, keepdims=True)
        - normalised * jnp.mean(grad_normalised * normalised, axis=-1, keepdims=True)
    )
    return jax.lax.optimization_barrier(grad_x), grad_scale, grad_bias


layer_norm.defvjp(_layer_norm_forward, _layer_norm_backward)


class Embedding(nnx.Module):
    """A (rows, features) lookup table; `attend` multiplies by its transpose (the tied output projection)."""

    def __init__(
        self,
        rows: int,
        features: int,
        axes: tuple[str | None, str | None],
        *,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.embedding = make_param(rngs, normal_init, (rows, features), axes, param_dtype)
        self.dtype = dtype

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        return jnp.dot(x.astype(self.dtype), self.embedding[...].astype(self.dtype).T)


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU evaluated in float32, as fairseq does (Flax's default is the tanh approximation)."""
    return jax.nn.gelu(x.astype(jnp.float32), approximate=False).astype(x.dtype)


def dropout(x: jax.Array, rate: float, *, deterministic: bool, rngs: nnx.Rngs | None) -> jax.Array:
    """Inverted dropout; a no-op when deterministic or rate == 0."""
    if deterministic or rate == 0.0:
        return x
    if rngs is None:
        raise ValueError("dropout: rngs is None, expected an nnx.Rngs with a 'dropout' stream when training")
    keep = jax.random.bernoulli(rngs.dropout(), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def drop_path(x: jax.Array, rate: float, *, deterministic: bool, rngs: nnx.Rngs | None) -> jax.Array:
    """Stochastic depth: drops the whole residual branch per example (batch axis 0), rescaling the rest."""
    if deterministic or rate == 0.0:
        return x
    if rngs is None:
        raise ValueError(
            "drop_path: rngs is None, expected an nnx.Rngs with a 'dropout' stream when training"
        )
    keep = jax.random.bernoulli(rngs.dropout(), 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))
