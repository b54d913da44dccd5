"""Image coordinates <-> location bins, for boxes and polygons (spec §10).

The original quantises every box corner and polygon vertex to one of ``num_bins`` = 1000 bins per axis:

    bin   = round((num_bins - 1) * v / size)        round half to even
    value = bin / (num_bins - 1) * size

where ``size`` is the image width for x and the image height for y, both in pixels of the image the
coordinates refer to. (The original first resizes to 512x512 and divides by 512; the two factors cancel, so the
net effect is ``round(999 * x / w)``, spec §10.) Bin 0 is the left/top border, bin 999 the right/bottom one.

In text a bin is the word ``<bin_k>``; the tokenizer maps it to the k-th of the last 1000 vocabulary ids without
BPE (spec §9.1 point 3). A box is ``<bin_x0> <bin_y0> <bin_x1> <bin_y1>`` (x before y, top-left corner then
bottom-right); several boxes are concatenated. A polygon of N points is 2N words alternating x and y.

Decisions that differ from, or make explicit, what the original does:

* Rounding is done in float64 as ``(num_bins - 1) * v / size`` with half-to-even, which is what the demo's
  ``coord2bin`` (Python ``round`` on float64) computes. The training-side quantisation ran in torch after an
  extra scaling by 512, so an exact tie could land on the other bin there; that is not reproducible bit for bit
  and is below the resolution of the bins anyway.
* Coordinates outside ``[0, size]`` (and NaN) raise ``ValueError``. The original does not clamp them and does not
  check them either (it would emit a bin outside 0..999, i.e. a token that is not a location); we do not clamp
  either, because a silently clamped box is a wrong label, so we refuse instead.
* Bins outside ``0..num_bins-1`` raise ``ValueError`` naming the bin.
* Boxes must have ``x0 <= x1`` and ``y0 <= y1``; they are never reordered.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable

import numpy as np
from numpy.typing import ArrayLike

NUM_BINS = 1000

# A location word as the decoder renders it. No leading zeros: `<bin_007>` is not a dictionary symbol.
_BIN_WORD = re.compile(r"<bin_(0|[1-9][0-9]*)>")


# ------------------------------------------------------------------------------------------------------------
# Validation helpers


def _check_num_bins(num_bins: int) -> int:
    if not isinstance(num_bins, numbers.Integral) or isinstance(num_bins, bool) or num_bins < 2:
        raise ValueError(f"num_bins must be an integer >= 2, got {num_bins!r}")
    return int(num_bins)


def _check_size(size: float, what: str = "image size") -> float:
    """One image side in pixels: a finite number > 0."""
    if isinstance(size, bool) or not isinstance(size, numbers.Real) or not math.isfinite(size) or size <= 0:
        raise ValueError(f"{what} must be a finite number of pixels > 0, got {size!r}")
    return float(size)


def check_image_size(width: float, height: float) -> tuple[float, float]:
    """Validate an image size (pixels) and return it as floats; raises ValueError naming the bad side."""
    return _check_size(width, "image width"), _check_size(height, "image height")


def _as_bin_array(bins: ArrayLike, num_bins: int) -> np.ndarray:
    """Bins as an int64 array; non-integers and bins outside 0..num_bins-1 raise ValueError naming the bin."""
    array = np.asarray(bins)
    if array.size == 0:
        return array.astype(np.int64)  # np.asarray([]) is float64; an empty list of bins is fine
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"location bins must be integers, got {bins!r} (dtype {array.dtype})")
    array = array.astype(np.int64)
    bad = (array < 0) | (array >= num_bins)
    if bad.any():
        first = array[tuple(np.argwhere(bad)[0])].item()
        raise ValueError(f"bin {first} is outside 0..{num_bins - 1}")
    return array


def _check_coords(values: np.ndarray, size: np.ndarray, what: str, image: str) -> None:
    """Raise ValueError naming the first value outside [0, size] (NaN included) and the image size."""
    inside = (values >= 0) & (values <= size)  # False for NaN
    if not inside.all():
        index = tuple(np.argwhere(~inside)[0])
        raise ValueError(
            f"{what} {values[index].item()!r} is outside the image ({image}): it must lie in [0, {size[index]:g}]; "
            "coordinates are never clamped to the image"
        )


# ------------------------------------------------------------------------------------------------------------
# Scalars


def coord_to_bin(value: float, size: float, num_bins: int = NUM_BINS) -> int:
    """The bin of one coordinate: ``round((num_bins - 1) * value / size)``, half to even (spec §10).

    ``size`` is the image width for an x coordinate and the height for a y coordinate (pixels). A value outside
    ``[0, size]`` or NaN raises ValueError (not clamped).
    """
    num_bins = _check_num_bins(num_bins)
    size = _check_size(size)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"a coordinate must be a real number of pixels, got {value!r}")
    v = float(value)
    if not 0.0 <= v <= size:  # also rejects NaN
        raise ValueError(
            f"coordinate {value!r} is outside the image (size {size:g} px): it must lie in [0, {size:g}]; "
            "coordinates are never clamped to the image"
        )
    # Python's round on a float is round-half-to-even, like torch.round and np.rint.
    return round((num_bins - 1) * v / size)


def bin_to_coord(index: int, size: float, num_bins: int = NUM_BINS) -> float:
    """The coordinate of one bin: ``index / (num_bins - 1) * size`` (spec §10, demo ``bin2coord``)."""
    num_bins = _check_num_bins(num_bins)
    size = _check_size(size)
    index = int(_as_bin_array(index, num_bins))
    return index / (num_bins - 1) * size


# ------------------------------------------------------------------------------------------------------------
# Arrays


def coords_to_bins(values: ArrayLike, size: ArrayLike, num_bins: int = NUM_BINS) -> np.ndarray:
    """Vectorised `coord_to_bin`: int64 bins with the shape of ``values``.

    ``size`` is a scalar or anything broadcastable against ``values`` (e.g. ``[width, height]`` for an
    ``(N, 2)`` array of points). The first value outside ``[0, size]`` raises ValueError naming it.
    """
    num_bins = _check_num_bins(num_bins)
    v = np.asarray(values, dtype=np.float64)
    s = np.asarray(size, dtype=np.float64)
    if not (np.isfinite(s).all() and (s > 0).all()):
        raise ValueError(f"image size must be finite and > 0 pixels, got {size!r}")
    s = np.broadcast_to(s, v.shape)
    _check_coords(v, s, "coordinate", f"size {size!r} px")
    # Same operation order as coord_to_bin, so both round the same float64 number.
    return np.rint((num_bins - 1) * v / s).astype(np.int64)


def bins_to_coords(bins: ArrayLike, size: ArrayLike, num_bins: int = NUM_BINS) -> np.ndarray:
    """Vectorised `bin_to_coord`: float64 coordinates with the shape of ``bins`` (``size`` broadcasts)."""
    num_bins = _check_num_bins(num_bins)
    b = _as_bin_array(bins, num_bins)
    s = np.asarray(size, dtype=np.float64)
    if not (np.isfinite(s).all() and (s > 0).all()):
        raise ValueError(f"image size must be finite and > 0 pixels, got {size!r}")
    return b / (num_bins - 1) * s


# ------------------------------------------------------------------------------------------------------------
# Boxes and polygons


def boxes_to_bins(boxes: ArrayLike, width: float, height: float, num_bins: int = NUM_BINS) -> np.ndarray:
    """Boxes ``(..., 4)`` as (x0, y0, x1, y1) pixels -> int64 bins of the same shape.

    Raises ValueError for a wrong shape, a corner outside the image, or ``x0 > x1`` / ``y0 > y1`` (never
    reordered), naming the value.
    """
    width, height = check_image_size(width, height)
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim == 0 or b.shape[-1] != 4:
        raise ValueError(f"a box is 4 numbers (x0, y0, x1, y1); got an array of shape {b.shape}: {boxes!r}")
    image = f"width {width:g} x height {height:g} px"
    _check_coords(b[..., 0::2], np.broadcast_to(width, b[..., 0::2].shape), "x coordinate", image)
    _check_coords(b[..., 1::2], np.broadcast_to(height, b[..., 1::2].shape), "y coordinate", image)
    _check_box_order(b, "box")
    scale = np.array([width, height, width, height])
    return np.rint((_check_num_bins(num_bins) - 1) * b / scale).astype(np.int64)


def _check_box_order(boxes: np.ndarray, what: str) -> None:
    bad = (boxes[..., 0] > boxes[..., 2]) | (boxes[..., 1] > boxes[..., 3])
    if bad.any():
        box = boxes[tuple(np.argwhere(bad)[0])].tolist()
        raise ValueError(
            f"{what} {box} has x0 > x1 or y0 > y1; a box is (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1 "
            "and is never reordered"
        )


def bins_to_boxes(bins: ArrayLike, width: float, height: float, num_bins: int = NUM_BINS) -> np.ndarray:
    """A flat sequence of 4k bins (or a ``(k, 4)`` array) -> ``(k, 4)`` float64 boxes in pixels.

    Raises ValueError if the count is not a multiple of 4, a bin is out of range, or a box has x0 > x1 or
    y0 > y1 (never reordered).
    """
    width, height = check_image_size(width, height)
    num_bins = _check_num_bins(num_bins)
    b = _as_bin_array(bins, num_bins)
    if b.size % 4:
        raise ValueError(f"{b.size} bins do not form boxes: a box is 4 bins (x0, y0, x1, y1)")
    b = b.reshape(-1, 4)
    _check_box_order(b, "box of bins")
    return b / (num_bins - 1) * np.array([width, height, width, height])


def polygon_to_bins(points: ArrayLike, width: float, height: float, num_bins: int = NUM_BINS) -> np.ndarray:
    """Polygon points ``(N, 2)`` (or flat x, y, x, y, ...) in pixels -> flat int64 bins of length 2N."""
    width, height = check_image_size(width, height)
    p = np.asarray(points, dtype=np.float64)
    if p.ndim == 1 and p.size % 2 == 0:
        p = p.reshape(-1, 2)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"a polygon is (N, 2) points or a flat list x, y, x, y, ...; got shape {p.shape}")
    image = f"width {width:g} x height {height:g} px"
    _check_coords(p[:, 0], np.broadcast_to(width, p[:, 0].shape), "x coordinate", image)
    _check_coords(p[:, 1], np.broadcast_to(height, p[:, 1].shape), "y coordinate", image)
    return np.rint((_check_num_bins(num_bins) - 1) * p / np.array([width, height])).astype(np.int64).ravel()


def bins_to_polygon(bins: ArrayLike, width: float, height: float, num_bins: int = NUM_BINS) -> np.ndarray:
    """Flat bins x, y, x, y, ... -> ``(N, 2)`` float64 points in pixels; an odd count raises ValueError."""
    width, height = check_image_size(width, height)
    num_bins = _check_num_bins(num_bins)
    b = _as_bin_array(bins, num_bins).ravel()
    if b.size % 2:
        raise ValueError(f"{b.size} bins do not form points: a polygon is pairs of bins (x, y)")
    return b.reshape(-1, 2) / (num_bins - 1) * np.array([width, height])


# ------------------------------------------------------------------------------------------------------------
# Text


def bin_token(index: int, num_bins: int = NUM_BINS) -> str:
    """The word for one bin, e.g. ``<bin_12>``."""
    return f"<bin_{int(_as_bin_array(index, _check_num_bins(num_bins)))}>"


def bins_to_text(bins: Iterable[int] | ArrayLike, num_bins: int = NUM_BINS) -> str:
    """Bins -> ``"<bin_a> <bin_b> ..."`` (single spaces, no leading space: location targets skip BPE)."""
    array = _as_bin_array(bins if isinstance(bins, np.ndarray) else list(bins), _check_num_bins(num_bins))
    return " ".join(f"<bin_{k}>" for k in array.ravel().tolist())


def is_bin_word(word: str) -> bool:
    """Whether ``word`` is a well-formed location word ``<bin_k>`` (any k >= 0)."""
    return _BIN_WORD.fullmatch(word) is not None


def text_to_bins(text: str, num_bins: int = NUM_BINS) -> list[int]:
    """Whitespace-separated ``<bin_k>`` words -> bin indices.

    Raises ValueError naming the first word that is not a location word, or the first bin outside
    ``0..num_bins-1``. Empty text gives an empty list.
    """
    num_bins = _check_num_bins(num_bins)
    out = []
    for word in text.split():
        match = _BIN_WORD.fullmatch(word)
        if match is None:
            raise ValueError(f"{word!r} is not a location bin word <bin_k>")
        k = int(match.group(1))
        if k >= num_bins:
            raise ValueError(f"bin {k} is outside 0..{num_bins - 1} (word {word!r})")
        out.append(k)
    return out
