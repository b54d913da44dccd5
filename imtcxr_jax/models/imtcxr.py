"""The IMT-CXR / OFA encoder-decoder (spec §3, §4), read top-down: outputs, encoder, decoder, model, factory.

Data flow:
  images (B, H, W, 3) --ResNet trunk--> (B, h, w, 16w) --proj + type row 1 + LN--> image tokens (B, P, D)
  src ids (B, L) --tied embedding + type row 0 + LN--> text tokens (B, L, D)
  [image ; text] --encoder layers (bias = absolute positions + per-layer relative tables)--> (B, S, D)
  prev ids (B, T) --tied embedding + LN--> decoder layers (causal self, cross) --> x @ E^T --> logits (B, T, V)

Positions never enter the residual stream: learned position tables are layer-normed, projected by dedicated
q/k linears and added to the attention logits as a bias shared by all layers, plus per-layer relative tables.
No loss and no search live here; the decoder exposes a teacher-forced forward and a cached one-step forward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from imtcxr_jax.models.config import ModelConfig
from imtcxr_jax.models.layers import Dense, Embedding, Keys, LayerNorm, dropout, make_param, normal_init
from imtcxr_jax.models.resnet import ResNetTrunk
from imtcxr_jax.models.transformer import (
    TOKEN_BUCKET_MAX_POSITION,
    DecoderLayer,
    EncoderLayer,
    attention_scaling,
    heads_first,
    image_grid_buckets,
    image_position_ids,
    keys_last,
    split_heads,
    token_bucket_table,
)

PAD_ID = 1


@struct.dataclass
class EncoderOutput:
    """What the decoder consumes (spec §3.8), batch-major."""

    hidden: jax.Array  # (B, S, D) after the final encoder LayerNorm
    padding_mask: jax.Array  # (B, S) bool, True = padded (no image / pad token)
    position_embeddings: (
        jax.Array
    )  # (B, S, D) layer-normed absolute position vectors (keys of the cross bias)


@struct.dataclass
class DecoderCache:
    """Everything one decoding step needs besides the parameters. Every array is batch-major (axis 0 = batch)
    so that rows can be selected or reordered with `gather`; `index` is the number of positions written.

    Beam layout (`init_cache(..., hypotheses=K)`, what beam search uses): the B rows are sentences, stepped
    as B * K hypothesis rows; each position of a row holds the K keys/values its hypotheses wrote there, and
    `ancestry` says which one belongs to each hypothesis' history. Reordering the beam then rewrites that
    small table (`reorder_hypotheses`) instead of copying the cache, and the K hypotheses read their
    sentence's keys together (as K query positions) instead of K copies of them.

    Keys and values are stored head-major, values (B, H, T, hd): a step's attention is then a dot batched
    over (B, H) that reads them in place. In the (B, T, H, hd) layout of the projections, XLA transposes the
    whole cache for every layer at every step (on a CPU ~10x the cost of the attention itself). Keys are
    stored transposed, (B, H, hd, T): the query-key product is then a plain matrix product per (B, H), which
    XLA CPU runs several times faster than the one that contracts both operands' last axes (0.49 vs 1.18 ms
    for one layer's cross-attention product of ofa_tiny at batch 32 x beam 6 measured alone; 2.0 vs 7.8 ms
    per layer and step for the self-attention product of its reports in beam layout, profiled)."""

    self_keys: tuple[jax.Array, ...]  # per layer (B, H, hd, Tmax); beam layout (B, H, hd, Tmax * K)
    self_values: tuple[jax.Array, ...]  # per layer (B, H, Tmax, hd); beam layout (B, H, Tmax * K, hd)
    cross_keys: tuple[jax.Array, ...]  # per layer (B, H, hd, S), projected once from the encoder output
    cross_values: tuple[jax.Array, ...]  # per layer (B, H, S, hd)
    cross_position_keys: jax.Array  # (B, H, hd, S) projected encoder position vectors
    encoder_padding_mask: jax.Array  # (B, S)
    index: jax.Array  # () int32
    # Beam layout only (`init_cache(..., hypotheses=K)`), else None: (B * K, Tmax) int32, for hypothesis k of
    # sentence b (row b * K + k) and each position s, the slot j whose keys/values at s (index s * K + j of
    # sentence b's cache row) belong to the hypothesis' history.
    ancestry: jax.Array | None = None

    @property
    def max_length(self) -> int:
        if self.ancestry is not None:
            return self.ancestry.shape[1]
        return self.self_values[0].shape[2]

    def gather(self, batch_indices: jax.Array) -> DecoderCache:
        """Reorder/select batch rows (e.g. surviving beams) of every per-example array. `batch_indices` must
        lie in [0, B): an index outside is clamped (mode "clip"; the default "fill" mode's bounds check
        doubles the cost of reordering the cache on a CPU). Not for the beam layout (`reorder_hypotheses`)."""
        if self.ancestry is not None:
            raise ValueError("gather: a beam-layout cache reorders its hypotheses with reorder_hypotheses")
        per_example = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "index"}

        def take(rows: jax.Array) -> jax.Array:
            return jnp.take(rows, batch_indices, axis=0, mode="clip")

        return self.replace(**jax.tree.map(take, per_example))

    def extend(self, max_length: int) -> DecoderCache:
        """The same cache with room for `max_length` positions (at least the current room), the new ones
        appended empty: a search can start with a short cache and move to a longer one only once its answers
        get that long (every step's attention reads the whole cache)."""
        added = max_length - self.max_length
        if added < 0:
            raise ValueError(
                f"extend: got max_length {max_length}, the cache already holds {self.max_length}"
            )
        slots = self.self_values[0].shape[2] // self.max_length  # K in beam layout, else 1

        def append(x: jax.Array, axis: int, count: int) -> jax.Array:
            return jnp.pad(x, [(0, count if a == axis else 0) for a in range(x.ndim)])

        return self.replace(
            self_keys=tuple(append(keys, 3, added * slots) for keys in self.self_keys),
            self_values=tuple(append(values, 2, added * slots) for values in self.self_values),
            ancestry=None if self.ancestry is None else append(self.ancestry, 1, added),
        )

    def reorder_hypotheses(self, parents: jax.Array) -> DecoderCache:
        """Beam layout: hypothesis row r continues the history of row parents[r] (B * K,), which must be a
        hypothesis of the same sentence. Only the ancestry table moves: every key and value stays where it
        was written, so beam search never copies the self-attention cache."""
        if self.ancestry is None:
            raise ValueError(
                "reorder_hypotheses: only for a beam-layout cache (init_cache(..., hypotheses=K))"
            )
        return self.replace(ancestry=jnp.take(self.ancestry, parents, axis=0, mode="clip"))


def _layer_rates(rate: float, layers: int) -> list[float]:
    """Per-layer drop-path rates linspace(0, rate, layers) (spec §1.4)."""
    return [float(r) for r in np.linspace(0.0, rate, layers)]


def _validate_tokens(name: str, tokens: jax.Array, vocab_size: int) -> None:
    if tokens.ndim != 2:
        raise ValueError(f"{name}: got shape {tuple(tokens.shape)}, expected (batch, length) token ids")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"{name}: got dtype {tokens.dtype}, expected integer token ids")
    if not isinstance(tokens, jax.core.Tracer) and tokens.size:
        # Concrete ids (eager calls, or constants closed over by a jit): check the range on the host, in numpy,
        # so that no traced value is created.
        values = np.asarray(tokens)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"{name}: got token id {bad}, expected ids in [0, {vocab_size})")


def _validate_images(images: jax.Array) -> None:
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images: got shape {tuple(images.shape)}, expected (batch, height, width, 3)")


# ---------------------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------------------


class Encoder(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, dt, pdt = cfg.embed_dim, cfg.compute_dtype, cfg.parameter_dtype
        self.cfg = cfg
        self.embed_images = ResNetTrunk(cfg, rngs=rngs)
        self.image_proj = Dense(
            cfg.image_feature_dim, d, ("conv_out", "embed"), dtype=dt, param_dtype=pdt, rngs=rngs
        )
        self.type_embedding = Embedding(2, d, (None, "embed"), dtype=dt, param_dtype=pdt, rngs=rngs)
        self.layernorm_embedding = LayerNorm(d, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.patch_layernorm_embedding = LayerNorm(d, dtype=dt, param_dtype=pdt, rngs=rngs)
        rows = cfg.max_source_positions + 2
        self.embed_positions = Embedding(
            rows, d, ("positions", "embed"), dtype=dt, param_dtype=pdt, rngs=rngs
        )
        self.embed_image_positions = Embedding(
            cfg.image_positions, d, ("positions", "embed"), dtype=dt, param_dtype=pdt, rngs=rngs
        )
        self.pos_ln = LayerNorm(d, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.image_pos_ln = LayerNorm(d, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.pos_q_linear = Dense(d, d, ("embed", "heads"), dtype=dt, param_dtype=pdt, rngs=rngs)
        self.pos_k_linear = Dense(d, d, ("embed", "heads"), dtype=dt, param_dtype=pdt, rngs=rngs)
        rates = _layer_rates(cfg.encoder_drop_path_rate, cfg.encoder_layers)
        self.layers = nnx.List([EncoderLayer(cfg, r, rngs=rngs) for r in rates])
        self.layer_norm = LayerNorm(d, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.token_rel_pos_tables = nnx.List(
            [_rel_table(cfg, cfg.text_buckets, rngs) for _ in range(cfg.encoder_layers)]
        )
        self.image_rel_pos_tables = nnx.List(
            [_rel_table(cfg, cfg.image_buckets, rngs) for _ in range(cfg.encoder_layers)]
        )

    def __call__(
        self,
        src_tokens: jax.Array,
        images: jax.Array | None,
        image_mask: jax.Array,
        embed_tokens: Embedding,
        *,
        train: bool = False,
        rngs: nnx.Rngs | None = None,
        image_features: jax.Array | None = None,
    ) -> EncoderOutput:
        """`image_features` (B, h, w, C): the trunk's output for `images`, computed before (then `images` is
        not used): an image's features serve every question about it."""
        cfg = self.cfg
        batch, length = src_tokens.shape
        if length > cfg.max_source_positions:
            raise ValueError(
                f"src_tokens: got length {length}, expected at most max_source_positions={cfg.max_source_positions}"
            )

        # Image tokens (spec §3.2): row-major grid -> proj -> + type row 1 -> patch LN -> dropout.
        features = (
            self.embed_images(images, train=train, rngs=rngs) if image_features is None else image_features
        )
        _, grid_h, grid_w, channels = features.shape
        if grid_h > cfg.image_bucket_size or grid_w > cfg.image_bucket_size:
            raise ValueError(
                f"images: got a {grid_h}x{grid_w} patch grid, expected at most "
                f"{cfg.image_bucket_size}x{cfg.image_bucket_size} (image side <= {16 * cfg.image_bucket_size} px)"
            )
        num_patches = grid_h * grid_w
        image_x = self.image_proj(features.reshape(batch, num_patches, channels))
        image_x = self.patch_layernorm_embedding(image_x + self.type_embedding(jnp.array(1)))
        # Text tokens (spec §3.3): tied embedding (embed_scale 1) + type row 0 -> LN.
        text_x = self.layernorm_embedding(embed_tokens(src_tokens) + self.type_embedding(jnp.array(0)))
        x = jnp.concatenate([image_x, text_x], axis=1)
        x = dropout(x, cfg.dropout, deterministic=not train, rngs=rngs)

        # Padding (spec §3.4): a whole image is padded when its sample has no image; pad tokens are padded.
        image_pad = jnp.broadcast_to(~image_mask.astype(bool)[:, None], (batch, num_patches))
        padding_mask = jnp.concatenate([image_pad, src_tokens == PAD_ID], axis=1)
        x = x * (1 - padding_mask[..., None].astype(x.dtype))

        # Absolute positions (spec §3.5), identical for every example of the batch.
        image_pos = self.image_pos_ln(
            self.embed_image_positions(jnp.asarray(image_position_ids(grid_h, grid_w, cfg.image_bucket_size)))
        )
        text_pos = self.pos_ln(self.embed_positions(jnp.arange(length)))
        positions = jnp.concatenate([image_pos, text_pos], axis=0)  # (S, D)
        q = split_heads(self.pos_q_linear(positions) * attention_scaling(cfg), cfg.heads)
        k = split_heads(self.pos_k_linear(positions), cfg.heads)
        abs_bias = jnp.einsum("qhd,khd->hqk", q, k)[None]  # (1, H, S, S)

        image_buckets = jnp.asarray(image_grid_buckets(grid_h, grid_w, cfg.image_bucket_size))
        text_buckets = jnp.asarray(token_bucket_table(cfg.token_bucket_size)[:length, :length])
        key_mask = padding_mask[:, None, None, :]  # (B, 1, 1, S)
        for layer, text_table, image_table in zip(
            self.layers, self.token_rel_pos_tables, self.image_rel_pos_tables, strict=True
        ):
            # Relative terms only on the image x image and text x text blocks (spec §3.6).
            rel = _block_diagonal(
                jnp.take(image_table[...], image_buckets, axis=0),
                jnp.take(text_table[...], text_buckets, axis=0),
            )
            x = layer(x, abs_bias + rel[None].astype(abs_bias.dtype), key_mask, train=train, rngs=rngs)
        x = self.layer_norm(x)
        return EncoderOutput(
            hidden=x,
            padding_mask=padding_mask,
            position_embeddings=jnp.broadcast_to(positions[None], (batch, *positions.shape)),
        )


def _rel_table(cfg: ModelConfig, buckets: int, rngs: nnx.Rngs) -> nnx.Param:
    """A per-layer relative-position table (buckets, heads)."""
    return make_param(rngs, normal_init, (buckets, cfg.heads), ("rel_buckets", "heads"), cfg.parameter_dtype)


def _block_diagonal(image_rel: jax.Array, text_rel: jax.Array) -> jax.Array:
    """(P, P, H) and (L, L, H) relative terms -> (H, P + L, P + L) with zeros in the cross-modal blocks."""
    p, l_ = image_rel.shape[0], text_rel.shape[0]
    top = jnp.concatenate([image_rel, jnp.zeros((p, l_, image_rel.shape[-1]), image_rel.dtype)], axis=1)
    bottom = jnp.concatenate([jnp.zeros((l_, p, text_rel.shape[-1]), text_rel.dtype), text_rel], axis=1)
    return jnp.transpose(jnp.concatenate([top, bottom], axis=0), (2, 0, 1))


# ---------------------------------------------------------------------------------------------------------
# Decoder
# ---------------------------------------------------------------------------------------------------------


class Decoder(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, dt, pdt = cfg.embed_dim, cfg.compute_dtype, cfg.parameter_dtype
        self.cfg = cfg
        self.layernorm_embedding = LayerNorm(d, dtype=dt, param_dtype=pdt, rngs=rngs)
        rows = cfg.max_target_positions + 2
        self.embed_positions = Embedding(
            rows, d, ("positions", "embed"), dtype=dt, param_dtype=pdt, rngs=rngs
        )
        self.pos_ln = LayerNorm(d, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.self_pos_q_linear = Dense(d, d, ("embed", "heads"), dtype=dt, param_dtype=pdt, rngs=rngs)
        self.self_pos_k_linear = Dense(d, d, ("embed", "heads"), dtype=dt, param_dtype=pdt, rngs=rngs)
        self.cross_pos_q_linear = Dense(d, d, ("embed", "heads"), dtype=dt, param_dtype=pdt, rngs=rngs)
        self.cross_pos_k_linear = Dense(d, d, ("embed", "heads"), dtype=dt, param_dtype=pdt, rngs=rngs)
        rates = _layer_rates(cfg.decoder_drop_path_rate, cfg.decoder_layers)
        self.layers = nnx.List([DecoderLayer(cfg, r, rngs=rngs) for r in rates])
        self.layer_norm = LayerNorm(d, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.token_rel_pos_tables = nnx.List(
            [_rel_table(cfg, cfg.text_buckets, rngs) for _ in range(cfg.decoder_layers)]
        )
        # The image-code path (spec §4.6) is never used for chest X-rays, but its tensors are part of every
        # OFA checkpoint; they are kept so that import -> export is lossless.
        self.embed_image_positions = Embedding(
            cfg.image_positions, d, ("positions", "embed"), dtype=dt, param_dtype=pdt, rngs=rngs
        )
        self.image_pos_ln = LayerNorm(d, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.code_layernorm_embedding = LayerNorm(d, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.image_rel_pos_tables = nnx.List(
            [_rel_table(cfg, cfg.image_buckets, rngs) for _ in range(cfg.decoder_layers)]
        )

    def _embed(
        self, tokens: jax.Array, positions: jax.Array, embed_tokens: Embedding, train: bool, rngs
    ) -> jax.Array:
        x = embed_tokens(tokens)
        if not self.cfg.disable_entangle:  # spec §4.1 quirk: raw (not layer-normed) position rows
            x = x + self.embed_positions(positions)
        x = self.layernorm_embedding(x)
        return dropout(x, self.cfg.dropout, deterministic=not train, rngs=rngs)

    def _position_queries(self, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Scaled self and cross position queries (T, H, hd) for decoder positions `positions`."""
        pos = self.pos_ln(self.embed_positions(positions))
        scale, heads = attention_scaling(self.cfg), self.cfg.heads
        return (
            split_heads(self.self_pos_q_linear(pos) * scale, heads),
            split_heads(self.cross_pos_q_linear(pos) * scale, heads),
        )

    def _self_position_keys(self, length: int) -> jax.Array:
        positions = self.pos_ln(self.embed_positions(jnp.arange(length)))
        return split_heads(self.self_pos_k_linear(positions), self.cfg.heads)

    def _cross_position_keys(self, enc: EncoderOutput) -> jax.Array:
        return split_heads(self.cross_pos_k_linear(enc.position_embeddings), self.cfg.heads)  # (B, S, H, hd)

    def _relative_bias(self, table: nnx.Param, query_positions: jax.Array, key_length: int) -> jax.Array:
        # Only the rows and columns positions can reach (queries < max_target_positions, checked; keys <
        # key_length), sliced in numpy: the whole (1024, 1024) table would be a 4 MB constant in every program.
        rows_needed = min(self.cfg.max_target_positions, TOKEN_BUCKET_MAX_POSITION)
        needed = token_bucket_table(self.cfg.token_bucket_size)[:rows_needed, :key_length]
        rows = jnp.take(jnp.asarray(needed), query_positions, axis=0)  # (Tq, Tk)
        return jnp.transpose(jnp.take(table[...], rows, axis=0), (2, 0, 1))  # (H, Tq, Tk)

    def _check_length(self, length: int) -> None:
        if length > self.cfg.max_target_positions:
            raise ValueError(
                f"decoder length: got {length}, expected at most max_target_positions={self.cfg.max_target_positions}"
            )

    def __call__(
        self,
        prev_tokens: jax.Array,
        enc: EncoderOutput,
        embed_tokens: Embedding,
        *,
        train: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """Teacher-forced forward: prev_tokens (B, T) starting with BOS -> final hidden states (B, T, D)."""
        length = prev_tokens.shape[1]
        self._check_length(length)
        positions = jnp.arange(length)
        x = self._embed(prev_tokens, positions, embed_tokens, train, rngs)
        self_q, cross_q = self._position_queries(positions)
        self_abs = jnp.einsum("qhd,khd->hqk", self_q, self._self_position_keys(length))[None]
        cross_bias = jnp.einsum("qhd,bkhd->bhqk", cross_q, self._cross_position_keys(enc))
        causal = jnp.arange(length)[None, :] > jnp.arange(length)[:, None]
        self_mask = causal[None, None] | (prev_tokens == PAD_ID)[:, None, None, :]
        cross_mask = enc.padding_mask[:, None, None, :]
        for layer, table in zip(self.layers, self.token_rel_pos_tables, strict=True):
            self_bias = self_abs + self._relative_bias(table, positions, length)[None].astype(self_abs.dtype)
            cross_kv = layer.encoder_attn.project_key_value(enc.hidden)
            x, _ = layer(
                x, self_kv=None, self_bias=self_bias, self_mask=self_mask, cross_kv=cross_kv,
                cross_bias=cross_bias, cross_mask=cross_mask, train=train, rngs=rngs,
            )  # fmt: skip
        return self.layer_norm(x)

    def init_cache(self, enc: EncoderOutput, max_length: int, hypotheses: int | None = None) -> DecoderCache:
        """Project the encoder output once for every layer and allocate empty self-attention caches.

        hypotheses K: the beam layout, for K hypotheses per sentence (rows b * K + k of the tokens stepped):
        the self-attention cache keeps one row per sentence, K keys/values per position, and each
        hypothesis' `ancestry` says which of them are its history."""
        self._check_length(max_length)
        batch = enc.hidden.shape[0]
        cfg, dt = self.cfg, self.cfg.compute_dtype
        slots = 1 if hypotheses is None else hypotheses
        empty_keys = jnp.zeros((batch, cfg.heads, cfg.head_dim, max_length * slots), dt)
        empty_values = jnp.zeros((batch, cfg.heads, max_length * slots, cfg.head_dim), dt)
        cross = [layer.encoder_attn.project_key_value(enc.hidden) for layer in self.layers]
        return DecoderCache(
            self_keys=tuple(empty_keys for _ in self.layers),
            self_values=tuple(empty_values for _ in self.layers),
            cross_keys=tuple(keys_last(k) for k, _ in cross),
            cross_values=tuple(heads_first(v) for _, v in cross),
            cross_position_keys=keys_last(self._cross_position_keys(enc)),
            encoder_padding_mask=enc.padding_mask,
            index=jnp.zeros((), jnp.int32),
            ancestry=None if hypotheses is None else jnp.zeros((batch * slots, max_length), jnp.int32),
        )

    def step(
        self, tokens: jax.Array, cache: DecoderCache, embed_tokens: Embedding
    ) -> tuple[jax.Array, DecoderCache]:
        """Cached forward of the next tokens (B, t) at positions index..index+t-1 -> hidden (B, t, D), cache.
        Equivalent to the teacher-forced forward read at those positions (spec §4.5).

        The cross-attention fields of the cache (`cross_keys`, `cross_values`, `cross_position_keys`,
        `encoder_padding_mask`) may hold B / g rows, one per group of g consecutive rows of `tokens` (a
        sentence's beam hypotheses): they are then shared by the group instead of tiled g times. In the beam
        layout (`init_cache(..., hypotheses=g)`) the self-attention cache is grouped the same way and t = 1."""
        length = tokens.shape[1]
        group = tokens.shape[0] // cache.cross_keys[0].shape[0]
        positions = cache.index + jnp.arange(length)
        max_length = cache.max_length
        x = self._embed(tokens, positions, embed_tokens, False, None)
        self_q, cross_q = self._position_queries(positions)
        # The position keys depend on positions only: projected here, once for every row (cheap: Tmax x D).
        self_abs = jnp.einsum("qhd,khd->hqk", self_q, self._self_position_keys(max_length))[None]
        # The queries broadcast over the batch: a product batched over (B, H) reads the keys in place, where
        # XLA CPU transposes all of them for one batched over H alone (0.37 vs 1.07 ms for ofa_tiny at batch 32).
        heads_q = jnp.swapaxes(cross_q, 0, 1)  # (H, Tq, hd)
        batch_q = jnp.broadcast_to(heads_q, (cache.cross_position_keys.shape[0], *heads_q.shape))
        cross_bias = jnp.einsum("bhqd,bhdk->bhqk", batch_q, cache.cross_position_keys)
        if group > 1:  # the g rows of a group are query positions of one cross-attention row
            cross_bias = jnp.tile(cross_bias, (1, 1, group, 1))
        if cache.ancestry is None:
            self_group, ancestry = 1, None
            self_mask = (jnp.arange(max_length)[None, :] > positions[:, None])[None, None]
        else:
            if length != 1:
                raise ValueError(f"tokens: a beam-layout cache steps one token per row, got {length}")
            self_group = group
            # This step writes every hypothesis' keys at its own slot of the position.
            ancestry = cache.ancestry.at[:, cache.index].set(jnp.arange(tokens.shape[0]) % group)
            self_mask = _hypothesis_mask(ancestry, cache.index, group)
        cross_mask = cache.encoder_padding_mask[:, None, None, :]
        new_keys, new_values = [], []
        for i, (layer, table) in enumerate(zip(self.layers, self.token_rel_pos_tables, strict=True)):
            self_bias = self_abs + self._relative_bias(table, positions, max_length)[None].astype(
                self_abs.dtype
            )
            if self_group > 1:  # the same bias for the g keys of a position
                self_bias = jnp.repeat(self_bias, self_group, axis=-1)
            x, (k, v) = layer(
                x, self_kv=(cache.self_keys[i], cache.self_values[i]), self_bias=self_bias, self_mask=self_mask,
                cross_kv=(cache.cross_keys[i], cache.cross_values[i]), cross_bias=cross_bias,
                cross_mask=cross_mask, cache_index=cache.index, self_group=self_group, cross_group=group,
                train=False, rngs=None,
            )  # fmt: skip
            new_keys.append(k)
            new_values.append(v)
        cache = cache.replace(
            self_keys=tuple(new_keys),
            self_values=tuple(new_values),
            index=cache.index + length,
            ancestry=ancestry,
        )
        return self.layer_norm(x), cache


def _hypothesis_mask(ancestry: jax.Array, index: jax.Array, group: int) -> jax.Array:
    """Self-attention mask (B, 1, g, Tmax * g) of a beam-layout step at position `index` (True = may not
    attend): hypothesis k of a sentence sees, at each written position s <= index, the one key its ancestry
    names among the g written there."""
    rows, max_length = ancestry.shape
    visible = (ancestry[:, :, None] == jnp.arange(group)) & (jnp.arange(max_length) <= index)[None, :, None]
    return ~visible.reshape(rows // group, 1, group, max_length * group)


# ---------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------


class IMTCXR(nnx.Module):
    """Instruction + image -> answer tokens. One tied (V, D) embedding serves encoder input, decoder input and
    the output projection (spec §4.4)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed_tokens = Embedding(
            cfg.vocab_size, cfg.embed_dim, ("vocab", "embed"), dtype=cfg.compute_dtype,
            param_dtype=cfg.parameter_dtype, rngs=rngs,
        )  # fmt: skip
        self.encoder = Encoder(cfg, rngs=rngs)
        self.decoder = Decoder(cfg, rngs=rngs)

    def encode_images(
        self, images: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        """The ResNet trunk's features (B, ceil(H/16), ceil(W/16), 16 * resnet_width) of images (B, H, W, 3)
        normalised to [-1, 1]: what `encode(..., image_features=...)` takes instead of the images, so that
        an image's trunk runs once however many questions are asked about it (DESIGN.md decision 8)."""
        _validate_images(images)
        return self.encoder.embed_images(images, train=train, rngs=rngs)

    def encode(
        self,
        src_tokens: jax.Array,
        images: jax.Array | None = None,
        image_mask: jax.Array | None = None,
        *,
        image_features: jax.Array | None = None,
        train: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> EncoderOutput:
        """src_tokens (B, L) int, right-padded with PAD; images (B, H, W, 3) normalised to [-1, 1];
        image_mask (B,) bool, False = the sample has no image (default: all present).

        Exactly one of `images` and `image_features` is given; image_features = `encode_images(images)`
        (computed once, e.g. gathered per question) gives the same output as the images themselves. In
        training mode the trunk's BatchNorm statistics update only when it runs here (images given)."""
        _validate_tokens("src_tokens", src_tokens, self.cfg.vocab_size)
        if (images is None) == (image_features is None):
            raise ValueError("encode: give exactly one of images and image_features")
        if images is not None:
            _validate_images(images)
            batch = images.shape[0]
        else:
            if image_features.ndim != 4 or image_features.shape[-1] != self.cfg.image_feature_dim:
                raise ValueError(
                    f"image_features: got shape {tuple(image_features.shape)}, expected (batch, h, w, "
                    f"{self.cfg.image_feature_dim}) from encode_images"
                )
            batch = image_features.shape[0]
        if batch != src_tokens.shape[0]:
            name = "images" if images is not None else "image_features"
            raise ValueError(
                f"{name}: got batch {batch}, expected the batch of src_tokens ({src_tokens.shape[0]})"
            )
        if image_mask is None:
            image_mask = jnp.ones((batch,), bool)
        elif image_mask.shape != (batch,):
            raise ValueError(f"image_mask: got shape {tuple(image_mask.shape)}, expected ({batch},)")
        return self.encoder(
            src_tokens, images, image_mask, self.embed_tokens, train=train, rngs=rngs,
            image_features=image_features,
        )  # fmt: skip

    def decode(
        self, prev_tokens: jax.Array, enc: EncoderOutput, *, train: bool = False, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        """Teacher-forced logits (B, T, V) in float32 for prev_tokens (B, T) = [BOS] + target."""
        _validate_tokens("prev_tokens", prev_tokens, self.cfg.vocab_size)
        hidden = self.decoder(prev_tokens, enc, self.embed_tokens, train=train, rngs=rngs)
        return self.embed_tokens.attend(hidden).astype(jnp.float32)

    def __call__(
        self,
        src_tokens: jax.Array,
        images: jax.Array,
        prev_tokens: jax.Array,
        image_mask: jax.Array | None = None,
        *,
        train: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        enc = self.encode(src_tokens, images, image_mask, train=train, rngs=rngs)
        return self.decode(prev_tokens, enc, train=train, rngs=rngs)

    def init_cache(self, enc: EncoderOutput, max_length: int, hypotheses: int | None = None) -> DecoderCache:
        return self.decoder.init_cache(enc, max_length, hypotheses)

    def decode_step(
        self, tokens: jax.Array, cache: DecoderCache, *, output_rows: jax.Array | None = None
    ) -> tuple[jax.Array, DecoderCache]:
        """Logits (B, t, V) float32 of the next `t` tokens given the cache (inference only).

        output_rows (C, D): rows of the tied output projection (`output_rows(ids)`); the logits are then
        (B, t, C), those of the C chosen tokens only (equal to the full logits' columns `ids`), for a step
        whose next token can only be one of them (a constrained search)."""
        hidden, cache = self.decoder.step(tokens, cache, self.embed_tokens)
        if output_rows is None:
            return self.embed_tokens.attend(hidden).astype(jnp.float32), cache
        dt = self.embed_tokens.dtype
        return jnp.dot(hidden.astype(dt), output_rows.astype(dt).T).astype(jnp.float32), cache

    def output_rows(self, ids: jax.Array) -> jax.Array:
        """(C, D) rows `ids` of the tied output projection, for `decode_step(..., output_rows=...)`."""
        return jnp.take(self.embed_tokens.embedding[...], ids, axis=0)


# ---------------------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------------------


def create_model(cfg: ModelConfig, seed: int = 0) -> IMTCXR:
    """A randomly initialised model (N(0, 0.02) weights, as the original's BERT-style init)."""
    return IMTCXR(cfg, rngs=Keys(params=seed))


def abstract_model(cfg: ModelConfig) -> IMTCXR:
    """The model with ShapeDtypeStructs instead of arrays: shapes and logical axes, nothing allocated."""
    return nnx.eval_shape(lambda: IMTCXR(cfg, rngs=Keys(params=0)))


def count_parameters(model: IMTCXR) -> int:
    """Unique trainable parameters (the tied embedding once; BatchNorm statistics are not parameters)."""
    return int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))
