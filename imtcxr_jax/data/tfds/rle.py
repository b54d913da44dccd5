"""Run-length encodings of the segmentation datasets, both directions (pure numpy).

* **CheXmask** (data-eval-ecosystem §1.5): space-separated ``start length`` pairs; starts are absolute and
  1-based over the mask flattened in row-major (C) order on its ``Height x Width`` grid. Runs are strictly
  increasing and do not touch or overlap (the encoder emits maximal runs).
* **SIIM-ACR** (§1.6): space-separated ``offset length`` pairs; the offset counts from the end of the previous
  run (from 0 for the first), 0-based, over the mask flattened in column-major (Fortran) order. ``-1`` is an
  empty mask.

Decoders check everything and raise `RLEError` naming what is wrong (odd count, a non-integer, a run outside
the grid, overlapping runs); nothing is clamped.
"""

from __future__ import annotations

import numpy as np


class RLEError(ValueError):
    """A malformed run-length encoding."""


def _numbers(text: str, what: str) -> np.ndarray:
    if not isinstance(text, str):
        raise RLEError(f"{what}: expected a string of integers, got {type(text).__name__}")
    parts = text.split()
    try:
        values = np.array([int(part) for part in parts], dtype=np.int64)
    except ValueError:
        bad = next(part for part in parts if not part.lstrip("-").isdigit())
        raise RLEError(f"{what}: {bad!r} is not an integer") from None
    if values.size % 2:
        raise RLEError(f"{what}: {values.size} numbers, expected start/length pairs (an even count)")
    return values.reshape(-1, 2)


def _paint(starts: np.ndarray, lengths: np.ndarray, size: int) -> np.ndarray:
    """Flat boolean mask with [start, start + length) set; runs already checked to be disjoint and inside.
    One slice assignment per run: masks have hundreds of runs over a million pixels, so this beats any
    whole-grid vectorised form (tools/bench/build.py)."""
    flat = np.zeros(size, dtype=bool)
    for start, end in zip(starts.tolist(), (starts + lengths).tolist(), strict=True):
        flat[start:end] = True
    return flat


def _check_shape(height: int, width: int) -> int:
    if int(height) < 1 or int(width) < 1:
        raise RLEError(f"mask size {width}x{height}: expected positive width and height")
    return int(height) * int(width)


def chexmask_decode(text: str, height: int, width: int) -> np.ndarray:
    """CheXmask RLE -> bool (height, width). An empty string is an empty mask."""
    size = _check_shape(height, width)
    pairs = _numbers(text, "CheXmask RLE")
    starts, lengths = pairs[:, 0] - 1, pairs[:, 1]
    if (starts < 0).any():
        raise RLEError(f"CheXmask RLE: start {int(starts.min()) + 1} < 1 (starts are 1-based)")
    if (lengths < 1).any():
        raise RLEError(f"CheXmask RLE: run length {int(lengths.min())} < 1")
    ends = starts + lengths
    if (ends > size).any():
        k = int(np.argmax(ends > size))
        raise RLEError(
            f"CheXmask RLE: run {k} ({starts[k] + 1} {lengths[k]}) ends past the {width}x{height} grid "
            f"({size} pixels)"
        )
    if (starts[1:] < ends[:-1]).any():
        k = int(np.argmax(starts[1:] < ends[:-1])) + 1
        raise RLEError(f"CheXmask RLE: run {k} starts at {starts[k] + 1}, inside or before run {k - 1}")
    return _paint(starts, lengths, size).reshape(height, width)


def chexmask_encode(mask: np.ndarray) -> str:
    """bool (H, W) -> CheXmask RLE (maximal runs, row-major, 1-based starts)."""
    flat = np.concatenate([[0], np.asarray(mask, dtype=bool).ravel(order="C").astype(np.int8), [0]])
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    changes[1::2] -= changes[::2]
    return " ".join(str(int(v)) for v in changes)


def siim_decode(text: str, height: int = 1024, width: int = 1024) -> np.ndarray:
    """SIIM relative RLE -> bool (height, width); ``-1`` (any surrounding spaces) is an empty mask."""
    size = _check_shape(height, width)
    if isinstance(text, str) and text.strip() == "-1":
        return np.zeros((height, width), dtype=bool)
    pairs = _numbers(text, "SIIM RLE")
    offsets, lengths = pairs[:, 0], pairs[:, 1]
    if (offsets < 0).any():
        raise RLEError(
            f"SIIM RLE: offset {int(offsets.min())} < 0 (offsets are relative to the previous run)"
        )
    if (lengths < 1).any():
        raise RLEError(f"SIIM RLE: run length {int(lengths.min())} < 1")
    # start_k = sum of offsets up to k + sum of lengths before k
    starts = np.cumsum(offsets) + np.concatenate([[0], np.cumsum(lengths)[:-1]])
    ends = starts + lengths
    if (ends > size).any():
        k = int(np.argmax(ends > size))
        raise RLEError(f"SIIM RLE: run {k} ends at pixel {int(ends[k])}, past the {width}x{height} grid")
    return _paint(starts, lengths, size).reshape(width, height).T


def siim_encode(mask: np.ndarray) -> str:
    """bool (H, W) -> SIIM relative RLE (column-major); ``"-1"`` for an empty mask."""
    flat = np.concatenate([[0], np.asarray(mask, dtype=bool).ravel(order="F").astype(np.int8), [0]])
    changes = np.flatnonzero(flat[1:] != flat[:-1])
    if changes.size == 0:
        return "-1"
    starts, ends = changes[::2], changes[1::2]
    previous_end = np.concatenate([[0], ends[:-1]])
    pairs = np.stack([starts - previous_end, ends - starts], axis=1).ravel()
    return " ".join(str(int(v)) for v in pairs)
