"""Transformer pieces of OFA: position buckets, biased attention, and the pre-norm NormFormer layers.

Conventions (spec §5, §6): batch-major tensors (B, T, D); heads split channel c -> (c // hd, c % hd);
queries scaled by s = (attn_scale_factor * hd)^-1/2 after the bias; the additive attention bias (absolute +
relative positions) is added unscaled; masked logits are -inf; softmax in float32; a learned per-head scale
`c_attn` multiplies each head's output before out_proj.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from imtcxr_jax.models.config import ModelConfig
from imtcxr_jax.models.layers import Dense, LayerNorm, drop_path, dropout, gelu, make_param, ones_init

# ---------------------------------------------------------------------------------------------------------
# Position buckets (spec §3.6). Computed once in numpy (float32, as the original) and used as constants.
# ---------------------------------------------------------------------------------------------------------


# The original builds its text bucket buffer with the default max_position of 1024 whatever the configured
# maximum lengths are (spec §3.6: a (1024, 1024) buffer); the log spacing depends on it.
TOKEN_BUCKET_MAX_POSITION = 1024


@functools.lru_cache(maxsize=8)
def token_bucket_table(bucket_size: int, max_position: int = TOKEN_BUCKET_MAX_POSITION) -> np.ndarray:
    """(max_position, max_position) int32: relative-position bucket of query i and key j for text tokens.

    |i - j| <= mid (= bucket_size // 2) gets its own bucket; larger distances share log-spaced buckets.
    """
    rel = np.arange(max_position)[:, None] - np.arange(max_position)[None, :]
    mid = bucket_size // 2
    abs_rel = np.where(np.abs(rel) < mid, mid - 1, np.abs(rel)).astype(np.float32)
    log_ratio = np.log(abs_rel / np.float32(mid)) / np.float32(math.log((max_position - 1) / mid))
    log_pos = (np.ceil(log_ratio * np.float32(mid - 1)) + mid).astype(np.int64)
    bucket = np.where(np.abs(rel) <= mid, rel, log_pos * np.sign(rel))
    return (bucket + bucket_size - 1).astype(np.int32)


def image_grid_buckets(height: int, width: int, bucket_size: int) -> np.ndarray:
    """(h*w, h*w) int32: relative bucket (dr + bs - 1) * (2bs - 1) + (dc + bs - 1) of row-major patches."""
    rows, cols = np.divmod(np.arange(height * width), width)
    d_row = rows[:, None] - rows[None, :] + bucket_size - 1
    d_col = cols[:, None] - cols[None, :] + bucket_size - 1
    return (d_row * (2 * bucket_size - 1) + d_col).astype(np.int32)


def image_position_ids(height: int, width: int, bucket_size: int) -> np.ndarray:
    """(h*w,) int32 rows of the image position table: r * bucket_size + c + 1 (row 0 is for a cls token)."""
    rows, cols = np.divmod(np.arange(height * width), width)
    return (rows * bucket_size + cols + 1).astype(np.int32)


def image_bucket_table(bucket_size: int) -> np.ndarray:
    """The original's full (Gi, Gi) `image_rp_bucket` buffer, indexed by position id, with the cls specials."""
    n = (2 * bucket_size - 1) ** 2
    table = np.zeros((bucket_size**2 + 1, bucket_size**2 + 1), np.int64)
    table[1:, 1:] = image_grid_buckets(bucket_size, bucket_size, bucket_size)
    table[0, :] = n
    table[:, 0] = n + 1
    table[0, 0] = n + 2
    return table


# ---------------------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------------------


def split_heads(x: jax.Array, heads: int) -> jax.Array:
    """(..., D) -> (..., H, D / H), channel c belonging to head c // hd (head-major, as the original)."""
    return x.reshape(*x.shape[:-1], heads, x.shape[-1] // heads)


def heads_first(x: jax.Array) -> jax.Array:
    """(B, T, H, hd) -> (B, H, T, hd), the layout of the decoder cache (`DecoderCache`)."""
    return jnp.swapaxes(x, 1, 2)


def keys_last(x: jax.Array) -> jax.Array:
    """(B, S, H, hd) -> (B, H, hd, S), the layout of the decoder cache's encoder-side keys (`DecoderCache`)."""
    return jnp.transpose(x, (0, 2, 3, 1))


def attention_scaling(cfg: ModelConfig) -> float:
    """s = (hd * attn_scale_factor)^-1/2, used for content and position queries alike (spec §5)."""
    return (cfg.head_dim * cfg.attn_scale_factor) ** -0.5


@jax.custom_vjp
def add_shared_bias(logits: jax.Array, bias: jax.Array) -> jax.Array:
    """``logits`` (B, H, Tq, Tk) + ``bias`` (1, H, Tq, Tk), the same bias for every example.

    Only the backward pass differs from a plain ``+``: the bias' gradient, the sum over the batch, is taken as a
    product with a vector of ones. XLA CPU runs the plain reduction over the outer axis ~50x slower (22 vs
    0.4 ms for the (32, 4, 112, 112) logits of phantom_tiny's encoder, 5% of its whole train step).
    """
    return logits + bias


def _add_shared_bias_forward(logits: jax.Array, bias: jax.Array) -> tuple[jax.Array, None]:
    return logits + bias, None


def _add_shared_bias_backward(_, grad: jax.Array) -> tuple[jax.Array, jax.Array]:
    ones = jnp.ones((grad.shape[0],), grad.dtype)
    return grad, jnp.einsum("b...,b->...", grad, ones)[None]


add_shared_bias.defvjp(_add_shared_bias_forward, _add_shared_bias_backward)


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array,
    mask: jax.Array,
    *,
    dropout_rate: float = 0.0,
    deterministic: bool = True,
    rngs: nnx.Rngs | None = None,
    kv_heads_first: bool = False,
    keys_last: bool = False,
) -> jax.Array:
    """q (B, Tq, H, hd) already scaled, k/v (B, Tk, H, hd) or, with `kv_heads_first`, (B, H, Tk, hd) (the
    decoder cache), and with `keys_last` too, k (B, H, hd, Tk) (the decoder's cross-attention keys), bias
    (B|1, H, Tq, Tk) float, mask broadcastable to (B, H, Tq, Tk) with True = may not attend. Returns
    (B, Tq, H, hd)."""
    if keys_last and not kv_heads_first:
        raise ValueError("keys_last: only with kv_heads_first (the decoder cache's layouts)")
    kv = "bhkd" if kv_heads_first else "bkhd"
    logits = jnp.einsum(f"bqhd,{'bhdk' if keys_last else kv}->bhqk", q, k).astype(jnp.float32)
    if bias.shape[0] == 1:
        logits = add_shared_bias(logits, bias.astype(jnp.float32))
    else:
        logits = logits + bias.astype(jnp.float32)
    logits = jnp.where(mask, -jnp.inf, logits)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    probs = dropout(probs, dropout_rate, deterministic=deterministic, rngs=rngs)
    if kv_heads_first:
        # Decoding: computed head-major, then transposed (a small array). XLA CPU runs this dot ~10x slower
        # when it has to write the (B, Tq, H, hd) layout itself (4.8 vs 0.5 ms for one step's cross-attention
        # of ofa_tiny at batch 32 x beam 6). (In training it made no clear difference.)
        return jnp.swapaxes(jnp.einsum(f"bhqk,{kv}->bhqd", probs, v), 1, 2)
    return jnp.einsum(f"bhqk,{kv}->bqhd", probs, v)


class Attention(nnx.Module):
    """Multi-head attention with an external additive bias and the NormFormer per-head scale `c_attn`."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, dt, pdt = cfg.embed_dim, cfg.compute_dtype, cfg.parameter_dtype
        self.q_proj = Dense(d, d, ("embed", "heads"), dtype=dt, param_dtype=pdt, rngs=rngs)
        self.k_proj = Dense(d, d, ("embed", "heads"), dtype=dt, param_dtype=pdt, rngs=rngs)
        self.v_proj = Dense(d, d, ("embed", "heads"), dtype=dt, param_dtype=pdt, rngs=rngs)
        self.out_proj = Dense(d, d, ("heads", "embed"), dtype=dt, param_dtype=pdt, rngs=rngs)
        self.c_attn = make_param(rngs, ones_init, (cfg.heads,), ("heads",), pdt)
        self.heads = cfg.heads
        self.scaling = attention_scaling(cfg)
        self.attention_dropout = cfg.attention_dropout

    def project_query(self, x: jax.Array) -> jax.Array:
        return split_heads(self.q_proj(x) * self.scaling, self.heads)

    def project_key_value(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return split_heads(self.k_proj(x), self.heads), split_heads(self.v_proj(x), self.heads)

    def attend(
        self,
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        bias: jax.Array,
        mask: jax.Array,
        *,
        train: bool,
        rngs: nnx.Rngs | None,
        kv_heads_first: bool = False,
        keys_last: bool = False,
    ) -> jax.Array:
        """Attention over projected q/k/v (layouts as `dot_product_attention`), then the per-head scale and
        out_proj. Returns (B, Tq, D)."""
        o = dot_product_attention(
            q, k, v, bias, mask, dropout_rate=self.attention_dropout, deterministic=not train, rngs=rngs,
            kv_heads_first=kv_heads_first, keys_last=keys_last,
        )  # fmt: skip
        o = o * self.c_attn[...].astype(o.dtype)[:, None]
        return self.out_proj(o.reshape(*o.shape[:-2], -1))


# ---------------------------------------------------------------------------------------------------------
# Layers (spec §3.7, §4.4)
# ---------------------------------------------------------------------------------------------------------


class FeedForward(nnx.Module):
    """fc1 -> exact GELU -> (activation dropout) -> ffn_layernorm (NormFormer) -> fc2."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, f, dt, pdt = cfg.embed_dim, cfg.ffn_dim, cfg.compute_dtype, cfg.parameter_dtype
        self.fc1 = Dense(d, f, ("embed", "mlp"), dtype=dt, param_dtype=pdt, rngs=rngs)
        self.ffn_layernorm = LayerNorm(f, "mlp", dtype=dt, param_dtype=pdt, rngs=rngs)
        self.fc2 = Dense(f, d, ("mlp", "embed"), dtype=dt, param_dtype=pdt, rngs=rngs)
        self.activation_dropout = cfg.activation_dropout

    def __call__(self, x: jax.Array, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
        y = gelu(self.fc1(x))
        y = dropout(y, self.activation_dropout, deterministic=not train, rngs=rngs)
        return self.fc2(self.ffn_layernorm(y))


def _norm(cfg: ModelConfig, rngs: nnx.Rngs) -> LayerNorm:
    return LayerNorm(cfg.embed_dim, dtype=cfg.compute_dtype, param_dtype=cfg.parameter_dtype, rngs=rngs)


def _close_branch(
    layer: EncoderLayer | DecoderLayer, y: jax.Array, train: bool, rngs: nnx.Rngs | None
) -> jax.Array:
    """Dropout then drop-path on a residual branch's output, before it is added back."""
    y = dropout(y, layer.dropout, deterministic=not train, rngs=rngs)
    return drop_path(y, layer.drop_path_rate, deterministic=not train, rngs=rngs)


class EncoderLayer(nnx.Module):
    """Pre-norm self-attention + FFN, each branch closed by a NormFormer LayerNorm, dropout and drop-path."""

    def __init__(self, cfg: ModelConfig, drop_path_rate: float, *, rngs: nnx.Rngs):
        self.self_attn = Attention(cfg, rngs=rngs)
        self.self_attn_layer_norm = _norm(cfg, rngs)
        self.attn_ln = _norm(cfg, rngs)
        self.final_layer_norm = _norm(cfg, rngs)
        self.ffn = FeedForward(cfg, rngs=rngs)
        self.dropout, self.drop_path_rate = cfg.dropout, drop_path_rate

    def __call__(
        self, x: jax.Array, bias: jax.Array, mask: jax.Array, *, train: bool, rngs: nnx.Rngs | None
    ) -> jax.Array:
        y = self.self_attn_layer_norm(x)
        k, v = self.self_attn.project_key_value(y)
        y = self.self_attn.attend(self.self_attn.project_query(y), k, v, bias, mask, train=train, rngs=rngs)
        x = x + _close_branch(self, self.attn_ln(y), train, rngs)
        y = self.ffn(self.final_layer_norm(x), train=train, rngs=rngs)
        return x + _close_branch(self, y, train, rngs)


def _group_rows(x: jax.Array, group: int) -> jax.Array:
    """(B * g, T, ...) -> (B, g * T, ...): the g rows of a group become positions of one row."""
    return x.reshape(x.shape[0] // group, group * x.shape[1], *x.shape[2:])


class DecoderLayer(nnx.Module):
    """Pre-norm causal self-attention, cross-attention to the encoder, and FFN (NormFormer extras on each)."""

    def __init__(self, cfg: ModelConfig, drop_path_rate: float, *, rngs: nnx.Rngs):
        self.self_attn = Attention(cfg, rngs=rngs)
        self.self_attn_layer_norm = _norm(cfg, rngs)
        self.self_attn_ln = _norm(cfg, rngs)
        self.encoder_attn = Attention(cfg, rngs=rngs)
        self.encoder_attn_layer_norm = _norm(cfg, rngs)
        self.cross_attn_ln = _norm(cfg, rngs)
        self.final_layer_norm = _norm(cfg, rngs)
        self.ffn = FeedForward(cfg, rngs=rngs)
        self.dropout, self.drop_path_rate = cfg.dropout, drop_path_rate

    def __call__(
        self,
        x: jax.Array,
        *,
        self_kv: tuple[jax.Array, jax.Array] | None,
        self_bias: jax.Array,
        self_mask: jax.Array,
        cross_kv: tuple[jax.Array, jax.Array],
        cross_bias: jax.Array,
        cross_mask: jax.Array,
        cache_index: jax.Array | None = None,
        self_group: int = 1,
        cross_group: int = 1,
        train: bool,
        rngs: nnx.Rngs | None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """x (B, T, D). Without a cache (`self_kv` None) keys/values come from x itself (teacher forcing) and
        `cross_kv` is (B, S, H, hd). With one (decoding), every key/value array is head-major, the keys
        transposed (`DecoderCache`): this step's keys/values are written into `self_kv`, keys (B, H, hd, Tmax)
        and values (B, H, Tmax, hd), at `cache_index`, the queries attend over the whole cache (the mask
        hides the unwritten future), and `cross_kv` is keys (B, H, hd, S) and values (B, H, S, hd). Returns
        the new x and the self-attention keys/values (the updated cache).

        Groups (beam search): x holds g consecutive rows per row of the cache (the hypotheses of one
        sentence), whose queries attend to that row's keys together (the rows become query positions)
        instead of g tiled copies of the keys. cross_group g > 1: `cross_kv` has B / g rows. self_group
        g > 1 (one token per row, T = 1): `self_kv` holds Tmax * g positions of B / g rows, the g hypotheses'
        keys/values of position s at s * g + 0..g-1, and `self_mask` says which of them each hypothesis may
        attend to (`DecoderCache.ancestry`)."""
        cached = self_kv is not None
        rows, length = x.shape[:2]
        y = self.self_attn_layer_norm(x)
        k, v = self.self_attn.project_key_value(y)
        if cached:
            index = cache_index * self_group
            new_keys = keys_last(_group_rows(k, self_group)).astype(self_kv[0].dtype)
            new_values = heads_first(_group_rows(v, self_group)).astype(self_kv[1].dtype)
            k = jax.lax.dynamic_update_slice(self_kv[0], new_keys, (0, 0, 0, index))
            v = jax.lax.dynamic_update_slice(self_kv[1], new_values, (0, 0, index, 0))
        y = self.self_attn.attend(
            _group_rows(self.self_attn.project_query(y), self_group), k, v, self_bias, self_mask,
            train=train, rngs=rngs, kv_heads_first=cached, keys_last=cached,
        )  # fmt: skip
        x = x + _close_branch(self, self.self_attn_ln(y.reshape(rows, length, -1)), train, rngs)

        y = self.encoder_attn_layer_norm(x)
        y = self.encoder_attn.attend(
            _group_rows(self.encoder_attn.project_query(y), cross_group),
            *cross_kv,
            cross_bias,
            cross_mask,
            train=train,
            rngs=rngs,
            kv_heads_first=cached,
            keys_last=cached,
        )
        x = x + _close_branch(self, self.cross_attn_ln(y.reshape(rows, length, -1)), train, rngs)

        y = self.ffn(self.final_layer_norm(x), train=train, rngs=rngs)
        return x + _close_branch(self, y, train, rngs), (k, v)
