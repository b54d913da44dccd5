"""Pixels -> model input, as the original's inference path does it (spec §11.1).

RGB (grey replicated to 3 channels), bicubic resize to exactly size x size (aspect ratio not kept), then
(x / 255 - 0.5) / 0.5, giving float32 (size, size, 3) in [-1, 1] (NHWC once batched).
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def to_rgb_uint8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 -> (H, W, 3) uint8; alpha is dropped."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"{name}: got dtype {image.dtype}, expected uint8 pixels")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"{name}: got shape {image.shape}, expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{name}: got shape {image.shape}, expected a non-empty image")
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return image[..., :3]


def to_model_input(image: np.ndarray, size: int, name: str = "image") -> np.ndarray:
    """uint8 pixels (any of the layouts of `to_rgb_uint8`) -> float32 (size, size, 3) in [-1, 1]."""
    if size < 16:
        raise ValueError(f"size: got {size}, expected at least 16 pixels (one patch of the ResNet trunk)")
    rgb = to_rgb_uint8(image, name)
    resized = np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC), np.float32)
    return (resized / 255.0 - 0.5) / 0.5


def normalize_pixels(rgb: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) pixels -> float32 in [-1, 1]: (x / 255 - 0.5) / 0.5, the normalisation of spec §11."""
    return (np.asarray(rgb, np.float32) / 255.0 - 0.5) / 0.5
