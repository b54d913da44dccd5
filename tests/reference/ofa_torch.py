"""Independent PyTorch reference of the OFA / IMT-CXR model, written from `shared/reference/ofa-imtcxr-spec.md`.

This module is the yardstick for the JAX model's numerics and the PyTorch side of the checkpoint converter.
It was written from the specification alone (no fairseq, OFA or torchvision code, and without looking at the
JAX model), in plain `torch.nn`, float32, inference semantics:

* the state dict carries exactly the OFA names and shapes of spec §7 (three tied aliases of one token matrix,
  the bucket buffers, the unused image-code tensors of §4.6), so an OFA/IMT-CXR checkpoint loads strictly;
* the numerics follow §3–§6: image tokens first, positions only as attention biases, per-layer relative
  tables, (2·hd)^-1/2 attention scale, NormFormer LNs, exact GELU, −inf masks, fp32 softmax;
* dropout and drop-path are not modelled (they are identities at inference, §6); BatchNorm behaves as
  `torch.nn.BatchNorm2d` does in train and eval mode.

Layout is batch-major throughout ((B, T, D) hidden states, (B, H, Tq, Tk) attention biases, NCHW images).

Public interface: `RefConfig`, `OFAReference` (`encode`, `decode`, `forward`, `resnet_features`),
`ofa_config`, `randomize_`, `count_unique_parameters`, and the table builders `token_bucket_table`,
`image_bucket_table`, `image_position_ids`, `image_position_index`.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

PAD_ID = 1  # spec §2: <pad>; also the embedding padding_idx
TOKEN_BUCKET_MAX_POSITION = 1024  # spec §3.6: make_token_bucket_position(256, max_position=1024)
CODE_FILL_POSITION_ID = 1024  # spec §4.6: image_position_idx is padded with copies of 1024


# ---------------------------------------------------------------------------------------------------------
# Configuration (spec §1)
# ---------------------------------------------------------------------------------------------------------


@dataclass
class RefConfig:
    """Model sizes and the math-changing flags (spec §1.2–§1.4).

    Flags that are always on for OFA / IMT-CXR checkpoints (scale_attn, scale_fc, scale_heads,
    add_type_embedding, patch/code layernorm embedding, layernorm_embedding, pre-norm, shared embeddings,
    embed_scale 1.0) are not options: the reference has exactly one structure.
    """

    embed_dim: int
    ffn_dim: int
    encoder_layers: int
    decoder_layers: int
    heads: int
    vocab_size: int = 59457
    resnet_layers: tuple[int, int, int] = (3, 4, 6)  # bottleneck blocks in layer1..layer3
    # Stem channels and planes of layer1 (planes = w, 2w, 4w; output channels 16w). The original is 64, which
    # gives the hard-wired 1024-channel input of image_proj.
    resnet_width: int = 64
    max_source_positions: int = 1024
    max_target_positions: int = 1024
    token_bucket_size: int = 256
    image_bucket_size: int = 42
    attn_scale_factor: float = 2.0
    code_image_size: int = 128
    # False reproduces the §4.1 quirk: the decoder adds raw embed_positions rows before layernorm_embedding.
    disable_entangle: bool = True
    bn_eps: float = 1e-5  # 1e-5 for BatchNorm2d / FrozenBN; 1e-3 if a checkpoint was trained with sync_bn
    frozen_bn: bool = False  # FrozenBatchNorm2d: affine + statistics as buffers, no num_batches_tracked

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.heads

    @property
    def resnet_out_channels(self) -> int:
        return 16 * self.resnet_width


# name -> (D, F, Le, Ld, H, blocks of layer1..3), spec §1.2
_ARCHITECTURES: dict[str, tuple[int, int, int, int, int, tuple[int, int, int]]] = {
    "ofa_tiny": (256, 1024, 4, 4, 4, (3, 4, 6)),  # resnet50
    "ofa_medium": (512, 2048, 4, 4, 8, (3, 4, 23)),  # resnet101
    "ofa_base": (768, 3072, 6, 6, 12, (3, 4, 23)),  # resnet101
    "ofa_large": (1024, 4096, 12, 12, 16, (3, 8, 36)),  # resnet152
    "ofa_huge": (1280, 5120, 24, 12, 16, (3, 8, 36)),  # resnet152; IMT-CXR
}


def ofa_config(name: str) -> RefConfig:
    """The named OFA architecture `name` (spec §1.2) with the shared defaults of §1.3 and IMT-CXR flags (§1.4)."""
    if name not in _ARCHITECTURES:
        raise ValueError(f"unknown OFA architecture {name!r}; expected one of {sorted(_ARCHITECTURES)}")
    d, f, le, ld, h, blocks = _ARCHITECTURES[name]
    return RefConfig(
        embed_dim=d, ffn_dim=f, encoder_layers=le, decoder_layers=ld, heads=h, resnet_layers=blocks
    )


# ---------------------------------------------------------------------------------------------------------
# Position tables (spec §3.2, §3.6, §4.6). Built with torch factory functions so that they follow the
# default device (a model built under `torch.device("meta")` allocates nothing).
# ---------------------------------------------------------------------------------------------------------


def token_bucket_table(bucket_size: int = 256, max_position: int = TOKEN_BUCKET_MAX_POSITION) -> torch.Tensor:
    """Text relative-position buckets, (max_position, max_position) int64, entry [i, j] for query i, key j.

    Spec §3.6: rel = i − j, mid = bucket_size // 2; |rel| ≤ mid → rel + (bucket_size − 1); otherwise
    sign(rel)·(mid + ceil(ln(|rel|/mid) / ln((max_position − 1)/mid) · (mid − 1))) + (bucket_size − 1).
    """
    mid = bucket_size // 2
    pos = torch.arange(max_position)
    rel = pos[:, None] - pos[None, :]
    magnitude = rel.abs()
    # The log branch is only selected where |rel| > mid; clamping keeps log() finite elsewhere. float64 is
    # used; the spec notes float32 and float64 give the same table for |rel| ≤ 1023. The logs come from
    # Python's math.log, one per distinct |rel|: torch.log's vectorised and scalar paths can differ by an ulp,
    # and which path an element takes depends on threading, so at |rel| = max_position - 1, where the ratio
    # is exactly 1 before the ceil, the bucket flipped between runs.
    logs = torch.tensor([math.log(max(m, mid) / mid) for m in range(max_position)], dtype=torch.float64)
    log_part = torch.ceil(logs[magnitude] / math.log((max_position - 1) / mid) * (mid - 1)).long()
    far = torch.sign(rel) * (mid + log_part)
    return torch.where(magnitude <= mid, rel, far) + (bucket_size - 1)


def image_bucket_table(bucket_size: int = 42) -> torch.Tensor:
    """Image relative-position buckets indexed by position ids, (bucket_size² + 1,)² int64 (spec §3.6).

    For query patch (ri, ci) and key patch (rj, cj), with ids r·n + c + 1 (n = bucket_size):
    bucket = (ri − rj + n − 1)·(2n − 1) + (ci − cj + n − 1). Row 0 / column 0 belong to the (unused) cls
    token: row 0 = N − 3, column 0 = N − 2, cell [0, 0] = N − 1 with N = (2n − 1)² + 3 buckets.
    """
    n = bucket_size
    span = 2 * n - 1
    num_buckets = span * span + 3
    idx = torch.arange(n * n)
    rows, cols = idx // n, idx % n
    rel = (rows[:, None] - rows[None, :] + n - 1) * span + (cols[:, None] - cols[None, :] + n - 1)
    table = torch.empty((n * n + 1, n * n + 1), dtype=torch.long)
    table[1:, 1:] = rel
    table[0, :] = num_buckets - 3
    table[:, 0] = num_buckets - 2
    table[0, 0] = num_buckets - 1
    return table


def image_position_ids(height: int, width: int, bucket_size: int = 42) -> torch.Tensor:
    """Position ids r·bucket_size + c + 1 of an (height, width) patch grid flattened row-major (spec §3.2)."""
    if height > bucket_size or width > bucket_size:
        raise ValueError(
            f"image grid {height}x{width} exceeds image_bucket_size {bucket_size} (inputs up to "
            f"{16 * bucket_size} px are supported)"
        )
    rows = torch.arange(height)[:, None]
    cols = torch.arange(width)[None, :]
    return (rows * bucket_size + cols + 1).reshape(-1)


def image_position_index(code_image_size: int, bucket_size: int, length: int) -> torch.Tensor:
    """Buffer `decoder.image_position_idx` (spec §4.6): 0 (BOS), the (code_image_size/8)² grid ids, then 1024s."""
    grid = image_position_ids(code_image_size // 8, code_image_size // 8, bucket_size)
    head = torch.cat([torch.zeros(1, dtype=torch.long), grid])
    if head.numel() > length:
        raise ValueError(f"image_position_idx of length {length} cannot hold {head.numel()} code positions")
    fill = torch.full((length - head.numel(),), CODE_FILL_POSITION_ID, dtype=torch.long)
    return torch.cat([head, fill])


# ---------------------------------------------------------------------------------------------------------
# Image backbone (spec §3.1, names §7.3)
# ---------------------------------------------------------------------------------------------------------


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed affine and statistics, all four stored as buffers (`--freeze-resnet`, §3.1)."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


def _norm(cfg: RefConfig, channels: int) -> nn.Module:
    if cfg.frozen_bn:
        return FrozenBatchNorm2d(channels, cfg.bn_eps)
    return nn.BatchNorm2d(channels, eps=cfg.bn_eps)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: 1×1 → 3×3 (carries the stride) → 1×1 (×4 channels), bias-free convs (§3.1)."""

    expansion = 4

    def __init__(self, cfg: RefConfig, in_channels: int, planes: int, stride: int, downsample: bool):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=1, bias=False)
        self.bn1 = _norm(cfg, planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = _norm(cfg, planes)
        self.conv3 = nn.Conv2d(planes, out_channels, kernel_size=1, bias=False)
        self.bn3 = _norm(cfg, out_channels)
        # Registered only on the first block of a stage so that the names are `layer{s}.0.downsample.{0,1}`.
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                _norm(cfg, out_channels),
            )
            if downsample
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + y)  # drop path is the identity at inference (rate 0 in IMT-CXR anyway)


class ResNetTrunk(nn.Module):
    """Stem + layer1..layer3 of a torchvision-style ResNet; output (B, 16·width, ⌈H/16⌉, ⌈W/16⌉) (§3.1)."""

    def __init__(self, cfg: RefConfig):
        super().__init__()
        width = cfg.resnet_width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = _norm(cfg, width)
        channels = width
        for stage, (blocks, stride) in enumerate(zip(cfg.resnet_layers, (1, 2, 2), strict=True), start=1):
            planes = width * 2 ** (stage - 1)
            layer = nn.Sequential()
            for b in range(blocks):
                first = b == 0
                layer.append(Bottleneck(cfg, channels, planes, stride if first else 1, downsample=first))
                channels = planes * Bottleneck.expansion
            setattr(self, f"layer{stage}", layer)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(images)))
        # Max-pool padding acts as −∞ (torch pads max-pool implicitly with −∞), §6.
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        return self.layer3(self.layer2(self.layer1(x)))


# ---------------------------------------------------------------------------------------------------------
# Attention and layers (spec §3.7, §4.4, §5)
# ---------------------------------------------------------------------------------------------------------


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, D) → (B, H, T, hd) with channel c = head·hd + j (head-major, spec §5 step 2)."""
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)


class MultiheadAttention(nn.Module):
    """OFA attention (spec §5): scaled q after its bias, additive unscaled bias, −∞ masks, fp32 softmax,
    per-head output scale `c_attn` before out_proj."""

    def __init__(self, dim: int, heads: int, attn_scale_factor: float):
        super().__init__()
        self.heads = heads
        self.scaling = (dim // heads * attn_scale_factor) ** -0.5
        self.c_attn = nn.Parameter(torch.ones(heads))
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(
        self,
        query: torch.Tensor,
        key_value: torch.Tensor,
        bias: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        b, tq, d = query.shape
        tk = key_value.shape[1]
        q = _split_heads(self.q_proj(query) * self.scaling, self.heads)
        k = _split_heads(self.k_proj(key_value), self.heads)
        v = _split_heads(self.v_proj(key_value), self.heads)
        logits = q @ k.transpose(-1, -2) + bias  # bias: (B or 1, H, Tq, Tk), added after scaling
        if causal:
            future = torch.ones(tq, tk, dtype=torch.bool, device=logits.device).triu(1)
            logits = logits.masked_fill(future, float("-inf"))
        if key_padding_mask is not None:
            logits = logits.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        probs = torch.softmax(logits.float(), dim=-1).type_as(v)
        heads_out = (probs @ v) * self.c_attn[None, :, None, None]
        return self.out_proj(heads_out.transpose(1, 2).reshape(b, tq, d))


def _gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact erf GELU evaluated in fp32 (spec §6)."""
    return F.gelu(x.float()).type_as(x)


class EncoderLayer(nn.Module):
    """Pre-norm encoder layer with NormFormer `attn_ln` and `ffn_layernorm` (spec §3.7)."""

    def __init__(self, cfg: RefConfig):
        super().__init__()
        d, f = cfg.embed_dim, cfg.ffn_dim
        self.self_attn = MultiheadAttention(d, cfg.heads, cfg.attn_scale_factor)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=1e-5)
        self.fc1 = nn.Linear(d, f)
        self.fc2 = nn.Linear(f, d)
        self.attn_ln = nn.LayerNorm(d, eps=1e-5)
        self.ffn_layernorm = nn.LayerNorm(f, eps=1e-5)
        self.final_layer_norm = nn.LayerNorm(d, eps=1e-5)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        y = self.self_attn_layer_norm(x)
        y = self.attn_ln(self.self_attn(y, y, bias, key_padding_mask=padding_mask))
        x = x + y
        y = self.ffn_layernorm(_gelu(self.fc1(self.final_layer_norm(x))))
        return x + self.fc2(y)


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer: self-attn (+`self_attn_ln`), cross-attn (+`cross_attn_ln`), NormFormer FFN (§4.4)."""

    def __init__(self, cfg: RefConfig):
        super().__init__()
        d, f = cfg.embed_dim, cfg.ffn_dim
        self.self_attn = MultiheadAttention(d, cfg.heads, cfg.attn_scale_factor)
        self.self_attn_ln = nn.LayerNorm(d, eps=1e-5)
        self.cross_attn_ln = nn.LayerNorm(d, eps=1e-5)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=1e-5)
        self.encoder_attn = MultiheadAttention(d, cfg.heads, cfg.attn_scale_factor)
        self.encoder_attn_layer_norm = nn.LayerNorm(d, eps=1e-5)
        self.ffn_layernorm = nn.LayerNorm(f, eps=1e-5)
        self.fc1 = nn.Linear(d, f)
        self.fc2 = nn.Linear(f, d)
        self.final_layer_norm = nn.LayerNorm(d, eps=1e-5)

    def forward(
        self,
        x: torch.Tensor,
        encoder_out: torch.Tensor,
        self_bias: torch.Tensor,
        cross_bias: torch.Tensor,
        self_padding_mask: torch.Tensor | None,
        encoder_padding_mask: torch.Tensor,
    ) -> torch.Tensor:
        y = self.self_attn_layer_norm(x)
        y = self.self_attn(y, y, self_bias, key_padding_mask=self_padding_mask, causal=True)
        x = x + self.self_attn_ln(y)
        y = self.encoder_attn_layer_norm(x)
        y = self.encoder_attn(y, encoder_out, cross_bias, key_padding_mask=encoder_padding_mask)
        x = x + self.cross_attn_ln(y)
        y = self.ffn_layernorm(_gelu(self.fc1(self.final_layer_norm(x))))
        return x + self.fc2(y)


def _position_bias(
    q_linear: nn.Linear,
    k_linear: nn.Linear,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    heads: int,
    scaling: float,
) -> torch.Tensor:
    """Absolute-position attention bias ⟨(E_q·Wq + bq)·s, E_k·Wk + bk⟩ per head, (B, H, Tq, Tk) (§3.5, §4.2)."""
    q = _split_heads(q_linear(q_pos) * scaling, heads)
    k = _split_heads(k_linear(k_pos), heads)
    return q @ k.transpose(-1, -2)


def _relative_bias(table: nn.Embedding, buckets: torch.Tensor) -> torch.Tensor:
    """Look up a (buckets, H) relative table at a (..., Tq, Tk) bucket grid → (..., H, Tq, Tk)."""
    return table(buckets).movedim(-1, -3)


# ---------------------------------------------------------------------------------------------------------
# Encoder (spec §3, names §7.1–§7.3)
# ---------------------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    """Image + text encoder: ResNet tokens before text tokens, positions only as attention biases (§3)."""

    def __init__(self, cfg: RefConfig, embed_tokens: nn.Embedding):
        super().__init__()
        d, h = cfg.embed_dim, cfg.heads
        self.cfg = cfg
        self.register_buffer("version", torch.tensor([3.0]))
        self.embed_tokens = embed_tokens
        self.layernorm_embedding = nn.LayerNorm(d, eps=1e-5)
        self.type_embedding = nn.Embedding(2, d)  # row 0 text, row 1 image
        self.embed_images = ResNetTrunk(cfg)
        self.image_proj = nn.Linear(cfg.resnet_out_channels, d)
        self.patch_layernorm_embedding = nn.LayerNorm(d, eps=1e-5)
        self.embed_positions = nn.Embedding(cfg.max_source_positions + 2, d)
        self.embed_image_positions = nn.Embedding(cfg.image_bucket_size**2 + 1, d)
        self.pos_ln = nn.LayerNorm(d, eps=1e-5)
        self.image_pos_ln = nn.LayerNorm(d, eps=1e-5)
        self.pos_q_linear = nn.Linear(d, d)
        self.pos_k_linear = nn.Linear(d, d)
        self.pos_scaling = (cfg.head_dim * cfg.attn_scale_factor) ** -0.5
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.layer_norm = nn.LayerNorm(d, eps=1e-5)
        num_text_buckets = 2 * cfg.token_bucket_size - 1
        num_image_buckets = (2 * cfg.image_bucket_size - 1) ** 2 + 3
        self.token_rel_pos_table_list = nn.ModuleList(
            nn.Embedding(num_text_buckets, h) for _ in range(cfg.encoder_layers)
        )
        self.image_rel_pos_table_list = nn.ModuleList(
            nn.Embedding(num_image_buckets, h) for _ in range(cfg.encoder_layers)
        )
        self.register_buffer("token_rp_bucket", token_bucket_table(cfg.token_bucket_size))
        self.register_buffer("image_rp_bucket", image_bucket_table(cfg.image_bucket_size))

    def embed(
        self, src_tokens: torch.Tensor, patch_images: torch.Tensor | None, patch_masks: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """Embedded sequence before the first layer (spec §3.2–§3.5; parity checkpoint (2) of §8.4).

        Returns "x" (B, S, D) with padded rows zeroed, "padding_mask" (B, S), "position_embeddings" (B, S, D)
        (layer-normed E) and "image_position_ids" (P,).
        """
        b, length = src_tokens.shape
        if length > min(self.cfg.max_source_positions + 2, self.token_rp_bucket.shape[0]):
            raise ValueError(f"source length {length} exceeds the position tables")
        type_rows = self.type_embedding.weight
        x = self.layernorm_embedding(self.embed_tokens(src_tokens) + type_rows[0])  # embed_scale = 1.0
        pad = src_tokens.eq(PAD_ID)
        # Text positions 0..L−1 from the BOS, pads included (§16.4).
        pos = self.pos_ln(self.embed_positions.weight[:length]).expand(b, length, -1)
        image_ids = src_tokens.new_zeros(0)
        if patch_images is not None:
            features = self.embed_images(patch_images)  # (B, C, h, w)
            grid_h, grid_w = features.shape[-2:]
            patches = features.flatten(2).transpose(1, 2)  # row-major: p = r·w + c
            image_x = self.patch_layernorm_embedding(self.image_proj(patches) + type_rows[1])
            image_ids = image_position_ids(grid_h, grid_w, self.cfg.image_bucket_size).to(src_tokens.device)
            image_pos = self.image_pos_ln(self.embed_image_positions(image_ids)).expand(b, len(image_ids), -1)
            if patch_masks is None:
                patch_masks = torch.ones(b, dtype=torch.bool, device=src_tokens.device)
            # A sample without an image has all its image positions padded (§3.4).
            image_pad = (~patch_masks.bool())[:, None].expand(b, len(image_ids))
            x = torch.cat([image_x, x], dim=1)
            pad = torch.cat([image_pad, pad], dim=1)
            pos = torch.cat([image_pos, pos], dim=1)
        x = x * (1 - pad[..., None].type_as(x))  # padded rows zeroed before the first layer (§3.4)
        return {"x": x, "padding_mask": pad, "position_embeddings": pos, "image_position_ids": image_ids}

    def abs_pos_bias(self, position_embeddings: torch.Tensor) -> torch.Tensor:
        """A_abs (B, H, S, S), shared by all encoder layers (spec §3.5; parity checkpoint (3) of §8.4)."""
        e = position_embeddings
        return _position_bias(self.pos_q_linear, self.pos_k_linear, e, e, self.cfg.heads, self.pos_scaling)

    def forward(
        self, src_tokens: torch.Tensor, patch_images: torch.Tensor | None, patch_masks: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        emb = self.embed(src_tokens, patch_images, patch_masks)
        x, pad, pos = emb["x"], emb["padding_mask"], emb["position_embeddings"]
        image_ids = emb["image_position_ids"]
        num_patches, length = len(image_ids), src_tokens.shape[1]
        abs_bias = self.abs_pos_bias(pos)
        # Text buckets count from the first text token, independent of the image tokens (§3.6).
        text_buckets = self.token_rp_bucket[:length, :length]
        image_buckets = self.image_rp_bucket[image_ids[:, None], image_ids[None, :]]
        for idx, layer in enumerate(self.layers):
            bias = abs_bias.clone()
            bias[:, :, num_patches:, num_patches:] += _relative_bias(
                self.token_rel_pos_table_list[idx], text_buckets
            )
            if num_patches:
                bias[:, :, :num_patches, :num_patches] += _relative_bias(
                    self.image_rel_pos_table_list[idx], image_buckets
                )
            x = layer(x, bias, pad)
        return {"encoder_out": self.layer_norm(x), "padding_mask": pad, "position_embeddings": pos}


# ---------------------------------------------------------------------------------------------------------
# Decoder (spec §4, names §7.4–§7.5)
# ---------------------------------------------------------------------------------------------------------


class Decoder(nn.Module):
    """Causal text decoder with self/cross position biases and tied output projection (§4)."""

    def __init__(self, cfg: RefConfig, embed_tokens: nn.Embedding):
        super().__init__()
        d, h = cfg.embed_dim, cfg.heads
        self.cfg = cfg
        self.register_buffer("version", torch.tensor([3.0]))
        self.embed_tokens = embed_tokens
        self.layernorm_embedding = nn.LayerNorm(d, eps=1e-5)
        self.embed_positions = nn.Embedding(cfg.max_target_positions + 2, d)
        self.embed_image_positions = nn.Embedding(cfg.image_bucket_size**2 + 1, d)  # image-code path only
        self.pos_ln = nn.LayerNorm(d, eps=1e-5)
        self.image_pos_ln = nn.LayerNorm(d, eps=1e-5)  # image-code path only
        self.self_pos_q_linear = nn.Linear(d, d)
        self.self_pos_k_linear = nn.Linear(d, d)
        self.cross_pos_q_linear = nn.Linear(d, d)
        self.cross_pos_k_linear = nn.Linear(d, d)
        self.pos_scaling = (cfg.head_dim * cfg.attn_scale_factor) ** -0.5
        self.code_layernorm_embedding = nn.LayerNorm(d, eps=1e-5)  # image-code path only
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.layer_norm = nn.LayerNorm(d, eps=1e-5)
        self.output_projection = nn.Linear(d, cfg.vocab_size, bias=False)
        self.output_projection.weight = embed_tokens.weight  # tied (§1.3 share_all_embeddings)
        num_text_buckets = 2 * cfg.token_bucket_size - 1
        num_image_buckets = (2 * cfg.image_bucket_size - 1) ** 2 + 3
        self.token_rel_pos_table_list = nn.ModuleList(
            nn.Embedding(num_text_buckets, h) for _ in range(cfg.decoder_layers)
        )
        self.image_rel_pos_table_list = nn.ModuleList(  # image-code path only
            nn.Embedding(num_image_buckets, h) for _ in range(cfg.decoder_layers)
        )
        self.register_buffer("token_rp_bucket", token_bucket_table(cfg.token_bucket_size))
        self.register_buffer("image_rp_bucket", image_bucket_table(cfg.image_bucket_size))
        self.register_buffer(
            "image_position_idx",
            image_position_index(cfg.code_image_size, cfg.image_bucket_size, cfg.max_target_positions + 2),
        )

    def forward(self, prev_output_tokens: torch.Tensor, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        t = prev_output_tokens.shape[1]
        if t > min(self.cfg.max_target_positions + 2, self.token_rp_bucket.shape[0]):
            raise ValueError(f"target length {t} exceeds the position tables")
        raw_pos = self.embed_positions.weight[:t]  # positions 0..T−1 from the BOS
        x = self.embed_tokens(prev_output_tokens)  # embed_scale = 1.0, no type embedding
        if not self.cfg.disable_entangle:
            x = x + raw_pos  # §4.1 quirk: raw (not layer-normed) rows, before layernorm_embedding
        x = self.layernorm_embedding(x)
        pos = self.pos_ln(raw_pos)[None]  # (1, T, D): identical for every sample
        heads, s = self.cfg.heads, self.pos_scaling
        self_abs = _position_bias(self.self_pos_q_linear, self.self_pos_k_linear, pos, pos, heads, s)
        # Cross bias keys are the encoder's already layer-normed position embeddings (§4.2, §16.3).
        cross_bias = _position_bias(
            self.cross_pos_q_linear, self.cross_pos_k_linear, pos, enc["position_embeddings"], heads, s
        )
        self_pad = prev_output_tokens.eq(PAD_ID)
        self_pad = self_pad if bool(self_pad.any()) else None
        buckets = self.token_rp_bucket[:t, :t]
        for idx, layer in enumerate(self.layers):
            self_bias = self_abs + _relative_bias(self.token_rel_pos_table_list[idx], buckets)
            x = layer(x, enc["encoder_out"], self_bias, cross_bias, self_pad, enc["padding_mask"])
        return self.output_projection(self.layer_norm(x))  # logits = x · E_tokᵀ, no bias, no scaling


# ---------------------------------------------------------------------------------------------------------
# Whole model
# ---------------------------------------------------------------------------------------------------------


class OFAReference(nn.Module):
    """OFA encoder–decoder with one tied token matrix; state-dict names as in OFA checkpoints (spec §7)."""

    def __init__(self, cfg: RefConfig):
        super().__init__()
        if cfg.embed_dim % cfg.heads:
            raise ValueError(f"embed_dim {cfg.embed_dim} is not divisible by heads {cfg.heads}")
        self.cfg = cfg
        embed_tokens = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=PAD_ID)
        self.encoder = Encoder(cfg, embed_tokens)
        self.decoder = Decoder(cfg, embed_tokens)

    def resnet_features(self, patch_images: torch.Tensor) -> torch.Tensor:
        """Backbone output (B, 16·width, ⌈H/16⌉, ⌈W/16⌉) (parity checkpoint (1) of §8.4)."""
        return self.encoder.embed_images(patch_images)

    def encode(
        self, src_tokens: torch.Tensor, patch_images: torch.Tensor | None, patch_masks: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """Encoder pass: "encoder_out" (B, S, D) after encoder.layer_norm, "padding_mask" (B, S) True = pad,
        "position_embeddings" (B, S, D) = E of §3.5 (layer-normed). S = P + L, image tokens first."""
        return self.encoder(src_tokens, patch_images, patch_masks)

    def decode(self, prev_output_tokens: torch.Tensor, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        """Teacher-forced causal decoder pass → logits (B, T, V)."""
        return self.decoder(prev_output_tokens, enc)

    def forward(
        self,
        src_tokens: torch.Tensor,
        patch_images: torch.Tensor | None,
        patch_masks: torch.Tensor | None,
        prev_output_tokens: torch.Tensor,
    ) -> torch.Tensor:
        return self.decode(prev_output_tokens, self.encode(src_tokens, patch_images, patch_masks))


# ---------------------------------------------------------------------------------------------------------
# Helpers for tests and converters
# ---------------------------------------------------------------------------------------------------------


def count_unique_parameters(model: nn.Module) -> int:
    """Number of scalars in distinct parameter tensors (tied matrix once; buffers such as BN statistics
    excluded), the convention of the spec's parameter counts (§1.2)."""
    unique = {id(p): p for p in model.parameters()}
    return sum(p.numel() for p in unique.values())


def _draw(module: nn.Module, attr: str, tensor: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random values for one tensor, chosen by its role so that activations stay O(1) and no tensor is
    trivial (no all-ones scales, no zero biases)."""
    shape = tensor.shape

    def normal(mean: float, std: float) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * std + mean

    if isinstance(module, nn.LayerNorm | nn.BatchNorm2d | FrozenBatchNorm2d):
        if attr == "weight":
            return normal(1.0, 0.1)
        if attr == "bias":
            return normal(0.0, 0.02)
        if attr == "running_mean":
            return normal(0.0, 0.1)
        if attr == "running_var":
            return torch.rand(shape, generator=gen) + 0.5  # U(0.5, 1.5)
    if attr == "c_attn":
        return normal(1.0, 0.1)
    if attr == "bias":
        return normal(0.0, 0.02)
    if isinstance(module, nn.Conv2d):
        fan_in = shape[1] * shape[2] * shape[3]
        return normal(0.0, math.sqrt(2.0 / fan_in))  # He: the trunk is a ReLU network
    if isinstance(module, nn.Linear):
        return normal(0.0, shape[1] ** -0.5)
    if isinstance(module, nn.Embedding):
        if module.padding_idx == PAD_ID:
            # The tied token matrix is also the output projection (fan-in D): keep logits O(1).
            return normal(0.0, shape[1] ** -0.5)
        return normal(0.0, 0.02)  # type, position and relative-position tables
    raise TypeError(f"randomize_: no rule for {type(module).__name__}.{attr} of shape {tuple(shape)}")


def randomize_(model: OFAReference, seed: int) -> None:
    """Fill every parameter and float buffer (except the bookkeeping `version`) with random values.

    Each tensor gets its own generator seeded from (seed, first state-dict name), so values are deterministic
    and do not depend on the order in which tensors are visited. Integer buffers (bucket tables,
    num_batches_tracked) are left as they are. Values are drawn on the CPU in float32, then copied.
    """
    seen: set[int] = set()
    with torch.no_grad():
        for module_name, module in model.named_modules():
            tensors = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
            for attr, tensor in tensors:
                if id(tensor) in seen or not tensor.is_floating_point() or attr == "version":
                    continue
                seen.add(id(tensor))
                name = f"{module_name}.{attr}" if module_name else attr
                gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**62)
                tensor.copy_(_draw(module, attr, tensor, gen))
