"""Anatomical segmentation: "please segment the X from the given image." -> an N-point polygon (spec §10, §12.3).

* Structures are named in words, lower-case, as the original's data names them: ``left lung``, ``right lung``,
  ``heart``, ``pneumothorax`` (`STRUCTURES`). The phantom manifest's keys (``left_lung``, ...) are accepted and
  mapped to these names by `structure_name`.
* Instruction: ``"please segment the {x} from the given image."`` with **no** leading space (spec §16 item 21).
* Target: 2N bins ``<bin_x1> <bin_y1> ... <bin_xN> <bin_yN>``, x before y, no BPE, no leading space; N >= 3.
  The point order is the caller's (the geometry module fixes start point and orientation).
* Parsing: only location bins, an even number of them, at least 3 points; if ``num_points`` is given, exactly
  ``2 * num_points`` bins. Anything else is `Unparseable` carrying the raw text. Nothing is padded or cut:
  a model trained on 30-point polygons that emits 29 points is reported, not repaired.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from imtcxr_jax.tasks.common import (
    ModelOutput,
    Task,
    TaskSample,
    Unparseable,
    normalize_label,
    output_text,
    parse_bins,
    split_field,
)
from imtcxr_jax.text.coords import NUM_BINS, bins_to_polygon, bins_to_text, check_image_size, polygon_to_bins

STRUCTURES = ("left lung", "right lung", "heart", "pneumothorax")
MIN_POINTS = 3
SEGMENT_TEMPLATE = "please segment the {} from the given image."


def structure_name(name: str) -> str:
    """A structure's name in instructions: ``"left_lung"`` / ``"Left Lung"`` -> ``"left lung"``.

    Raises ValueError for a name that is not in `STRUCTURES` (the original's data holds no other names for the
    trained model; asking about another would be a question it never saw).
    """
    normalized = normalize_label(name.replace("_", " ") if isinstance(name, str) else name, "structure")
    if normalized not in STRUCTURES:
        raise ValueError(f"unknown structure {name!r}; expected one of: {', '.join(STRUCTURES)}")
    return normalized


def segmentation_instruction(structure: str) -> str:
    """``"please segment the {structure} from the given image."`` (no leading space)."""
    return SEGMENT_TEMPLATE.format(structure_name(structure))


def polygon_target(points: ArrayLike, width: float, height: float, num_bins: int = NUM_BINS) -> str:
    """Points ``(N, 2)`` (or flat x, y, ...) in pixels -> ``"<bin_x1> <bin_y1> ..."``; N >= 3.

    Raises ValueError for fewer than 3 points or a point outside the image, naming the value.
    """
    bins = polygon_to_bins(points, width, height, num_bins)
    if bins.size < 2 * MIN_POINTS:
        raise ValueError(f"a polygon needs at least {MIN_POINTS} points, got {bins.size // 2}: {points!r}")
    return bins_to_text(bins, num_bins)


def parse_polygon(
    output: ModelOutput,
    width: float,
    height: float,
    *,
    num_points: int | None = None,
    num_bins: int = NUM_BINS,
) -> np.ndarray | Unparseable:
    """Model output -> ``(N, 2)`` float64 points (x, y) in pixels of a ``width`` x ``height`` image.

    `Unparseable` for empty output, words that are not location bins, an odd number of bins, fewer than 3
    points, or (when ``num_points`` is given) a count other than ``2 * num_points`` bins.
    """
    width, height = check_image_size(width, height)
    if num_points is not None and num_points < MIN_POINTS:
        raise ValueError(f"num_points must be >= {MIN_POINTS}, got {num_points!r}")
    raw = output_text(output)
    bins = parse_bins(raw, "a polygon", num_bins)
    if isinstance(bins, Unparseable):
        return bins
    if len(bins) % 2:
        return Unparseable(raw, f"{len(bins)} location bins is odd; a polygon is pairs of bins (x, y)")
    if num_points is not None and len(bins) != 2 * num_points:
        return Unparseable(raw, f"{len(bins)} location bins; expected {2 * num_points} ({num_points} points)")
    if len(bins) < 2 * MIN_POINTS:
        return Unparseable(raw, f"{len(bins) // 2} points; a polygon needs at least {MIN_POINTS}")
    return bins_to_polygon(bins, width, height, num_bins)


def segmentation_sample(
    structure: str, points: ArrayLike, width: float, height: float, num_bins: int = NUM_BINS
) -> TaskSample:
    target = polygon_target(points, width, height, num_bins)
    return TaskSample(Task.SEGMENTATION, segmentation_instruction(structure), target)


def structure_from_field(names: str) -> str:
    """The structure a row of the original's segmentation data is trained on (spec §12.3).

    The last name of the ``&&``-joined list; a row with a single name gets ``" lung"`` appended, as in the
    original (``"left"`` -> ``"left lung"``; ``"left lung&&right lung&&heart"`` -> ``"heart"``). The rule is
    applied as the original applies it, blindly: a single ``"heart"`` would become ``"heart lung"``. Raises
    ValueError for an empty field.
    """
    parts = split_field(names, "&&")
    if not parts:
        raise ValueError(f"segmentation names field {names!r} is empty")
    last = normalize_label(parts[-1], "structure")
    return f"{last} lung" if "&&" not in names else last


def polygon_from_field(polygon: str) -> np.ndarray:
    """One polygon of the original's data, ``"x,y,x,y,..."`` (``;`` also separates) -> ``(N, 2)`` pixels.

    Raises ValueError naming the field for a bad number or an odd count.
    """
    try:
        values = [float(v) for v in polygon.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"polygon {polygon!r} holds something that is not a number") from None
    if len(values) % 2:
        raise ValueError(f"polygon {polygon!r} has {len(values)} numbers; expected pairs x, y")
    return np.asarray(values).reshape(-1, 2)
