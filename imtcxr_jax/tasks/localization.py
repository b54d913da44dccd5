"""Lesion localisation: "give the accurate bbox of X." -> one or several boxes (spec §10, §12.3).

* Instruction: ``"give the accurate bbox of {x}."`` with **no** leading space, x lower-cased (pre_caption), as
  trained (spec §16 items 21, 22: not the README's "Give the accurate bounding box of {}.").
* Target: ``<bin_x0> <bin_y0> <bin_x1> <bin_y1>`` per box, every box of the label concatenated, no BPE and no
  leading space. Boxes are (x0, y0, x1, y1) in pixels of an image of the given width and height.
* Parsing: the output must be only location bins, a positive multiple of 4 of them (as the demo requires,
  spec §10); each group of 4 is a box, returned as a ``(k, 4)`` float64 array in pixels. A box with x0 > x1 or
  y0 > y1 is `Unparseable` with the reason: it is never reordered, because a reordered box would hide what the
  model actually said. (Constrained decoding, DESIGN.md decision 7, makes such outputs impossible.)
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
)
from imtcxr_jax.text.coords import NUM_BINS, bins_to_boxes, bins_to_text, boxes_to_bins, check_image_size

BOX_TEMPLATE = "give the accurate bbox of {}."


def box_instruction(label: str) -> str:
    """``"give the accurate bbox of {label}."`` (no leading space; label lower-cased)."""
    return BOX_TEMPLATE.format(normalize_label(label))


def box_target(boxes: ArrayLike, width: float, height: float, num_bins: int = NUM_BINS) -> str:
    """One box ``(4,)`` or several ``(k, 4)`` in pixels -> ``"<bin_x0> <bin_y0> <bin_x1> <bin_y1> ..."``.

    Raises ValueError for no box, a corner outside the image, or x0 > x1 / y0 > y1, naming the value.
    """
    array = np.asarray(boxes, dtype=np.float64)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"expected one box (4,) or several (k, 4) with k >= 1; got shape {array.shape}")
    return bins_to_text(boxes_to_bins(array, width, height, num_bins).ravel(), num_bins)


def parse_boxes(
    output: ModelOutput, width: float, height: float, num_bins: int = NUM_BINS
) -> np.ndarray | Unparseable:
    """Model output -> ``(k, 4)`` boxes (x0, y0, x1, y1) in pixels of a ``width`` x ``height`` image.

    `Unparseable` (carrying the raw output) for empty output, any word that is not a location bin, a bin count
    that is not a positive multiple of 4, or a box with x0 > x1 or y0 > y1. A bad image size is the caller's
    error and raises ValueError.
    """
    width, height = check_image_size(width, height)
    raw = output_text(output)
    bins = parse_bins(raw, "boxes", num_bins)
    if isinstance(bins, Unparseable):
        return bins
    if len(bins) % 4:
        return Unparseable(raw, f"{len(bins)} location bins is not a positive multiple of 4 (4 bins per box)")
    try:
        return bins_to_boxes(bins, width, height, num_bins)
    except ValueError as error:  # x0 > x1 or y0 > y1: the only error left once bins and size are valid
        return Unparseable(raw, str(error))


def box_sample(
    label: str, boxes: ArrayLike, width: float, height: float, num_bins: int = NUM_BINS
) -> TaskSample:
    return TaskSample(Task.BOX, box_instruction(label), box_target(boxes, width, height, num_bins))


def boxes_from_field(field: str) -> list[np.ndarray]:
    """The original's box column -> one ``(k, 4)`` array per label (spec §12.2).

    Groups are joined by ``&&``; each is a comma-separated list of 4k numbers x0, y0, x1, y1, ... in original
    pixels. Raises ValueError naming the group if a count is not a positive multiple of 4 or a number is bad.
    """
    groups = []
    for group in field.split("&&"):
        try:
            numbers = [float(v) for v in group.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"box group {group!r} holds something that is not a number") from None
        if not numbers or len(numbers) % 4:
            raise ValueError(f"box group {group!r} has {len(numbers)} numbers, not a positive multiple of 4")
        groups.append(np.asarray(numbers).reshape(-1, 4))
    return groups
