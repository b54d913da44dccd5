"""The image trunk: a torchvision-style ResNet v1.5 cut after its third stage (spec §3.1), NHWC.

stem: conv 7x7/2 (pad 3) -> BN -> ReLU -> max-pool 3x3/2 (pad 1, -inf)
layer1..layer3: Bottleneck blocks with planes w, 2w, 4w (w = 64 in every real variant), strides 1, 2, 2,
the stride on the 3x3 conv; output 16w channels at stride 16 (1024 channels, 32x32 for a 512 px image).

Padding is explicit and symmetric everywhere: Flax's "SAME" pads stride-2 convs asymmetrically, which would
not match the original.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from imtcxr_jax.models.config import ModelConfig
from imtcxr_jax.models.layers import drop_path, make_param, ones_init, zeros_init


def max_pool_3x3_stride_2(x: jax.Array) -> jax.Array:
    """3x3 max-pool, stride 2, padding 1 with -inf: (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), C).

    The maximum of the window's nine strided views, the same values as ``lax.reduce_window``. Why not that:
    its gradient (select-and-scatter) takes XLA CPU ~4x longer (84 vs 20-30 ms at phantom_tiny's batch).
    Where a window holds tied maxima the gradient is shared among them instead of going to one; after the
    stem's ReLU the only ties are zeros, whose gradient the ReLU stops either way, so training is unchanged.
    """
    height, width = x.shape[1], x.shape[2]
    out_h, out_w = (height - 1) // 2 + 1, (width - 1) // 2 + 1
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    views = [
        padded[:, dy : dy + 2 * out_h - 1 : 2, dx : dx + 2 * out_w - 1 : 2, :]
        for dy in range(3)
        for dx in range(3)
    ]
    return functools.reduce(jnp.maximum, views)


def _channel_sum(x: jax.Array) -> jax.Array:
    """The sum of (M, C) over M as a product with ones. Inside the train step XLA CPU fuses a plain reduction
    over the outer axis with its producer into a slow loop (7-21 ms per BatchNorm in a profile of
    phantom_tiny's step); with this BatchNorm the classification step went from ~700 to ~450 ms."""
    return jnp.ones((x.shape[0],), x.dtype) @ x


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(
    x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """BatchNorm on batch statistics: x (M, C) float32 -> (y (M, C), mean (C,), biased var (C,)).

    The same function as the autodiff of `(x - mean) * rsqrt(var + eps) * scale + bias`; only the channel sums
    of the forward and backward passes are written as products with ones (`_channel_sum`). The backward pass
    is the closed form of BatchNorm's gradient, plus the (usually zero) cotangents of mean and var.
    """
    return _batch_norm_train_forward(x, scale, bias, eps)[0]


def _batch_norm_train_forward(x, scale, bias, eps):
    count = x.shape[0]
    mean = _channel_sum(x) / count
    centred = x - mean
    var = _channel_sum(jnp.square(centred)) / count
    inv_std = jax.lax.rsqrt(var + eps)
    normalised = centred * inv_std
    return (normalised * scale + bias, mean, var), (normalised, inv_std, scale, centred)


def _batch_norm_train_backward(eps, residuals, cotangents):
    del eps
    normalised, inv_std, scale, centred = residuals
    grad_y, grad_mean, grad_var = cotangents
    count = normalised.shape[0]
    grad_bias = _channel_sum(grad_y)
    grad_scale = _channel_sum(grad_y * normalised)
    grad_x = (scale * inv_std / count) * (count * grad_y - grad_bias - normalised * grad_scale)
    grad_x = grad_x + grad_mean / count + grad_var * (2.0 / count) * centred
    return grad_x, grad_scale, grad_bias


batch_norm_train.defvjp(_batch_norm_train_forward, _batch_norm_train_backward)


class Buffer(nnx.Variable):
    """A fixed, non-trainable tensor (FrozenBatchNorm's affine and statistics)."""


class Conv(nnx.Module):
    """Bias-free 2-D convolution with symmetric explicit padding; kernel (kh, kw, in, out)."""

    def __init__(self, in_ch: int, out_ch: int, size: int, stride: int, *, cfg: ModelConfig, rngs: nnx.Rngs):
        # He-normal (fan-out) as torchvision initialises ResNet convs; matters only when training from scratch.
        init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
        axes = ("conv_h", "conv_w", "conv_in", "conv_out")
        self.kernel = make_param(rngs, init, (size, size, in_ch, out_ch), axes, cfg.parameter_dtype)
        self.stride = stride
        self.padding = size // 2
        self.dtype = cfg.compute_dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.kernel.shape[:2] == (1, 1):
            # A 1x1 convolution is a matrix product over channels. Written as one, its kernel gradient is a
            # plain matrix product too, where XLA CPU's convolution gradient first transposes the activations.
            strided = x[:, :: self.stride, :: self.stride].astype(self.dtype)
            return strided @ self.kernel[0, 0].astype(self.dtype)
        return jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            self.kernel[...].astype(self.dtype),
            window_strides=(self.stride, self.stride),
            padding=((self.padding, self.padding), (self.padding, self.padding)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )


class BatchNorm(nnx.Module):
    """torch BatchNorm2d semantics: batch statistics when training (running averages updated with momentum 0.1
    and the unbiased variance), running statistics otherwise. With `frozen` every tensor is a fixed Buffer
    (FrozenBatchNorm2d) and the batch statistics are never used."""

    def __init__(self, channels: int, *, cfg: ModelConfig, rngs: nnx.Rngs):
        self.frozen = cfg.resnet_norm == "frozen"
        self.eps = cfg.bn_eps
        self.momentum = 0.1
        self.dtype = cfg.compute_dtype
        axes = ("conv_out",)
        pdt = cfg.parameter_dtype
        if self.frozen:
            self.scale = Buffer(jnp.ones((channels,), pdt), out_sharding=axes, eager_sharding=False)
            self.bias = Buffer(jnp.zeros((channels,), pdt), out_sharding=axes, eager_sharding=False)
        else:
            self.scale = make_param(rngs, ones_init, (channels,), axes, pdt)
            self.bias = make_param(rngs, zeros_init, (channels,), axes, pdt)
        stat = Buffer if self.frozen else nnx.BatchStat
        self.mean = stat(jnp.zeros((channels,), jnp.float32), out_sharding=axes, eager_sharding=False)
        self.var = stat(jnp.ones((channels,), jnp.float32), out_sharding=axes, eager_sharding=False)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x32 = x.astype(jnp.float32)
        scale, bias = self.scale[...].astype(jnp.float32), self.bias[...].astype(jnp.float32)
        if train and not self.frozen:
            channels = x.shape[-1]
            y, mean, var = batch_norm_train(x32.reshape(-1, channels), scale, bias, self.eps)
            mean, var = jax.lax.stop_gradient((mean, var))  # the running averages are not differentiated
            n = y.shape[0]
            unbiased = var * (n / max(n - 1, 1))
            self.mean[...] = (1 - self.momentum) * self.mean[...] + self.momentum * mean
            self.var[...] = (1 - self.momentum) * self.var[...] + self.momentum * unbiased
            return y.reshape(x.shape).astype(self.dtype)
        y = (x32 - self.mean[...]) * jax.lax.rsqrt(self.var[...] + self.eps)
        return (y * scale + bias).astype(self.dtype)


class Bottleneck(nnx.Module):
    """1x1 -> 3x3 (stride) -> 1x1 (x4 channels), shortcut through a strided 1x1 conv + BN when shapes change."""

    def __init__(
        self, in_ch: int, planes: int, stride: int, drop_path_rate: float, *, cfg: ModelConfig, rngs: nnx.Rngs
    ):
        out_ch = 4 * planes
        self.conv1 = Conv(in_ch, planes, 1, 1, cfg=cfg, rngs=rngs)
        self.bn1 = BatchNorm(planes, cfg=cfg, rngs=rngs)
        self.conv2 = Conv(planes, planes, 3, stride, cfg=cfg, rngs=rngs)
        self.bn2 = BatchNorm(planes, cfg=cfg, rngs=rngs)
        self.conv3 = Conv(planes, out_ch, 1, 1, cfg=cfg, rngs=rngs)
        self.bn3 = BatchNorm(out_ch, cfg=cfg, rngs=rngs)
        if stride != 1 or in_ch != out_ch:
            self.downsample_conv = Conv(in_ch, out_ch, 1, stride, cfg=cfg, rngs=rngs)
            self.downsample_bn = BatchNorm(out_ch, cfg=cfg, rngs=rngs)
        else:
            self.downsample_conv = self.downsample_bn = None
        self.drop_path_rate = drop_path_rate

    def __call__(self, x: jax.Array, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
        y = jax.nn.relu(self.bn1(self.conv1(x), train=train))
        y = jax.nn.relu(self.bn2(self.conv2(y), train=train))
        y = self.bn3(self.conv3(y), train=train)
        shortcut = (
            x if self.downsample_conv is None else self.downsample_bn(self.downsample_conv(x), train=train)
        )
        y = drop_path(y, self.drop_path_rate, deterministic=not train, rngs=rngs)
        return jax.nn.relu(shortcut + y)


class ResNetTrunk(nnx.Module):
    """Stem + layer1..layer3. Input (B, H, W, 3) normalised pixels; output (B, ceil(H/16), ceil(W/16), 16w)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        width = cfg.resnet_width
        self.conv1 = Conv(3, width, 7, 2, cfg=cfg, rngs=rngs)
        self.bn1 = BatchNorm(width, cfg=cfg, rngs=rngs)
        stages = []
        in_ch = width
        for stage, (blocks, stride) in enumerate(zip(cfg.resnet_blocks, (1, 2, 2), strict=True)):
            planes = width * 2**stage
            # Drop-path rates linspace(0, r, n); the first block of each stage always gets 0 (spec §3.1).
            rates = np.linspace(0.0, cfg.resnet_drop_path_rate, blocks)
            layer = []
            for b in range(blocks):
                rate = 0.0 if b == 0 else float(rates[b])
                layer.append(Bottleneck(in_ch, planes, stride if b == 0 else 1, rate, cfg=cfg, rngs=rngs))
                in_ch = 4 * planes
            stages.append(nnx.List(layer))
        self.layer1, self.layer2, self.layer3 = stages

    def __call__(self, images: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
        x = max_pool_3x3_stride_2(jax.nn.relu(self.bn1(self.conv1(images), train=train)))
        for layer in (self.layer1, self.layer2, self.layer3):
            for block in layer:
                x = block(x, train=train, rngs=rngs)
        return x
