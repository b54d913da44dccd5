"""Boxes, polygons and masks in pixel coordinates: IoU, Dice, rasterisation, contours, CTR and PCR.

Pure numpy, shared by the phantoms, the task parsers, the workflow and the metrics, so every convention of the
project about coordinates is fixed here, once:

* **Coordinates** are pixels of the image they refer to, ``x`` to the right, ``y`` down, origin at the image's
  top-left corner. Pixel ``(row i, column j)`` is the unit square ``[j, j + 1) x [i, i + 1)``; its centre is
  ``(j + 0.5, i + 0.5)``. A ``W x H`` image therefore spans ``[0, W] x [0, H]`` (the range the location bins
  of ``text/coords.py`` cover), and the tight box of a mask is ``[j_min, i_min, j_max + 1, i_max + 1]``.
  (Datasets whose integer coordinates denote pixel *centres*, as OpenCV's ``fillPoly`` does, are half a pixel
  off from this; add 0.5 where that matters.)
* **Boxes** are ``[x0, y0, x1, y1]`` with ``x0 <= x1`` and ``y0 <= y1``; they are never reordered.
* **Polygons** are ``(N, 2)`` float arrays of ``(x, y)`` vertices, ``N >= 3``, implicitly closed.
* **Masks** are boolean ``(H, W)`` arrays (integer 0/1 arrays are accepted and converted).
* **Rasterisation** (`polygon_to_mask`) fills a pixel when its centre is inside the polygon by the even-odd rule.
  A centre exactly on an edge counts as inside on left and top edges and outside on right and bottom edges, so
  polygons that tile the plane fill every pixel exactly once. Polygons with integer vertices (such as the
  contours `mask_contour` returns) never have a pixel centre on an edge, and ``polygon_to_mask(mask_contour(m))``
  gives back the (hole-free) component exactly.
* **Contours** (`mask_contour`, `mask_to_polygon`) follow the outer boundary of the largest 4-connected
  component along pixel edges. They start at the top-most point (the left-most among ties: the top-left corner
  of the first pixel of the component in raster order) and run **clockwise as seen on screen** (first step to
  the right), which makes the shoelace sum `polygon_signed_area` positive.
* **Sides**: radiographs are displayed as PA views, so the patient's **right** lung is on the image's **left**.
  Every ``left`` / ``right`` in this project is the patient's side.

Measurements (`cardiothoracic_ratio`, `pneumothorax_ratio`) return typed results whose ``value`` is ``None``
with a ``reason`` when the measurement is undefined (an empty heart, a missing lung): never a silent 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray

Box: TypeAlias = NDArray[np.float64]  # (4,) x0, y0, x1, y1 in pixels
Boxes: TypeAlias = NDArray[np.float64]  # (N, 4)
Polygon: TypeAlias = NDArray[np.float64]  # (N, 2) x, y in pixels, N >= 3
Mask: TypeAlias = NDArray[np.bool_]  # (H, W)

# Cardiothoracic-ratio severity: each bin includes its upper edge, so that "cardiomegaly" (CTR > 0.51) and
# "not normal" are the same statement: normal <= 0.51 < mild <= 0.55 < moderate <= 0.60 < severe.
CTR_CARDIOMEGALY_THRESHOLD = 0.51
CTR_SEVERITY_EDGES: tuple[tuple[float, str], ...] = ((0.51, "normal"), (0.55, "mild"), (0.60, "moderate"))
CTR_SEVERITY_ABOVE = "severe"


# ------------------------------------------------------------------------------------------------------------
# Validation


def _short(value: object, limit: int = 120) -> str:
    """``repr`` of a value, shortened for error messages."""
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_box(box: ArrayLike, name: str = "box") -> Box:
    """A box as a float64 ``(4,)`` array; raises ValueError naming the box unless it is 4 finite numbers with
    ``x0 <= x1`` and ``y0 <= y1``."""
    try:
        array = np.asarray(box, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{name} {_short(box)} is not numeric; expected [x0, y0, x1, y1] in pixels"
        ) from error
    if array.shape != (4,):
        raise ValueError(
            f"{name} {_short(box)} has shape {array.shape}; expected [x0, y0, x1, y1] (4 numbers)"
        )
    if not np.isfinite(array).all():
        raise ValueError(f"{name} {_short(box)} has a non-finite coordinate; expected 4 finite numbers")
    x0, y0, x1, y1 = array
    if x0 > x1:
        raise ValueError(f"{name} {_short(box)} has x0={x0:g} > x1={x1:g}; expected x0 <= x1")
    if y0 > y1:
        raise ValueError(f"{name} {_short(box)} has y0={y0:g} > y1={y1:g}; expected y0 <= y1")
    return array


def validate_boxes(boxes: ArrayLike, name: str = "boxes") -> Boxes:
    """Boxes as a float64 ``(N, 4)`` array (a single ``(4,)`` box becomes ``(1, 4)``), each validated as in
    `validate_box`; the error names the offending row."""
    array = np.asarray(boxes, dtype=np.float64)
    if array.ndim == 1 and array.shape[0] == 4:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name} has shape {array.shape}; expected (N, 4) rows of [x0, y0, x1, y1]")
    bad = ~np.isfinite(array).all(axis=1) | (array[:, 0] > array[:, 2]) | (array[:, 1] > array[:, 3])
    if bad.any():
        row = int(np.argmax(bad))
        validate_box(array[row], f"{name}[{row}]")  # raises with the precise reason
    return array


def validate_polygon(polygon: ArrayLike, name: str = "polygon") -> Polygon:
    """A polygon as a float64 ``(N, 2)`` array; raises ValueError naming it unless it holds ``N >= 3`` finite
    ``(x, y)`` points."""
    try:
        array = np.asarray(polygon, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} {_short(polygon)} is not numeric; expected (N, 2) points x, y") from error
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{name} {_short(polygon)} has shape {array.shape}; expected (N, 2) points x, y")
    if array.shape[0] < 3:
        raise ValueError(f"{name} {_short(polygon)} has {array.shape[0]} points; expected at least 3")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} {_short(polygon)} has a non-finite coordinate")
    return array


def validate_shape(shape: tuple[int, int], name: str = "image shape") -> tuple[int, int]:
    """An image shape ``(height, width)`` of positive integers."""
    if (
        not isinstance(shape, tuple | list)
        or len(shape) != 2
        or not all(isinstance(s, int | np.integer) and s > 0 for s in shape)
    ):
        raise ValueError(f"{name} {shape!r} is not (height, width) with two positive integers")
    return int(shape[0]), int(shape[1])


def validate_mask(mask: ArrayLike, name: str = "mask", shape: tuple[int, int] | None = None) -> Mask:
    """A mask as a boolean ``(H, W)`` array.

    Accepts bool arrays and integer arrays holding only 0 and 1 (a 0/255 PNG mask is refused rather than
    guessed at: pass ``mask > 0``). Raises ValueError naming the mask for another dtype, other values, another
    number of dimensions, or a shape other than ``shape`` when that is given.
    """
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"{name} has shape {array.shape}; expected a 2-D (height, width) mask")
    if shape is not None and array.shape != tuple(shape):
        raise ValueError(f"{name} has shape {array.shape}; expected {tuple(shape)} (the image shape)")
    if array.dtype == np.bool_:
        return array
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} has dtype {array.dtype}; expected bool (or integers 0/1)")
    values = np.unique(array)
    if not np.isin(values, (0, 1)).all():
        shown = ", ".join(str(v) for v in values[:6]) + (", ..." if values.size > 6 else "")
        raise ValueError(f"{name} holds values {{{shown}}}; expected only 0 and 1 (use mask > 0)")
    return array.astype(bool)


# ------------------------------------------------------------------------------------------------------------
# Boxes


def box_area(boxes: ArrayLike) -> NDArray[np.float64]:
    """Areas of boxes ``(..., 4)`` in square pixels."""
    array = np.asarray(boxes, dtype=np.float64)
    return (array[..., 2] - array[..., 0]) * (array[..., 3] - array[..., 1])


def box_iou_matrix(boxes_a: ArrayLike, boxes_b: ArrayLike) -> NDArray[np.float64]:
    """Pairwise IoU ``(N, M)`` of boxes ``(N, 4)`` and ``(M, 4)`` on continuous coordinates (no "+1").

    Two boxes whose union has zero area (both degenerate) have IoU 0.
    """
    a = validate_boxes(boxes_a, "boxes_a")
    b = validate_boxes(boxes_b, "boxes_b")
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    intersection = np.clip(width, 0, None) * np.clip(height, 0, None)
    union = box_area(a)[:, None] + box_area(b)[None, :] - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0)


def box_iou(box_a: ArrayLike, box_b: ArrayLike) -> float:
    """IoU of two boxes ``[x0, y0, x1, y1]`` (see `box_iou_matrix`)."""
    return float(box_iou_matrix(validate_box(box_a, "box_a"), validate_box(box_b, "box_b"))[0, 0])


def mask_to_box(mask: ArrayLike) -> Box | None:
    """The tight box ``[j_min, i_min, j_max + 1, i_max + 1]`` of a mask's pixels, or None for an empty mask."""
    mask = validate_mask(mask)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def polygon_to_box(polygon: ArrayLike) -> Box:
    """The box ``[min x, min y, max x, max y]`` of a polygon's vertices."""
    points = validate_polygon(polygon)
    return np.concatenate([points.min(axis=0), points.max(axis=0)])


# ------------------------------------------------------------------------------------------------------------
# Polygons


def polygon_signed_area(polygon: ArrayLike) -> float:
    """Shoelace area; positive for polygons that run clockwise on screen (x right, y down)."""
    points = validate_polygon(polygon)
    x, y = points[:, 0], points[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def polygon_area(polygon: ArrayLike) -> float:
    """Area enclosed by a simple polygon (absolute shoelace), in square pixels."""
    return abs(polygon_signed_area(polygon))


def canonical_polygon(polygon: ArrayLike) -> Polygon:
    """The same polygon in the project's order: clockwise on screen, starting at the top-most vertex (the
    left-most among ties). Useful to bring polygons from other sources into the order `mask_to_polygon` uses."""
    points = validate_polygon(polygon)
    if polygon_signed_area(points) < 0:
        points = points[::-1]
    start = int(np.lexsort((points[:, 0], points[:, 1]))[0])  # smallest y, then smallest x
    return np.roll(points, -start, axis=0)


def resample_polygon(polygon: ArrayLike, n_points: int) -> Polygon:
    """``n_points`` points evenly spaced by arc length along the closed polygon, starting at its first vertex
    and keeping its orientation."""
    points = validate_polygon(polygon)
    if not isinstance(n_points, int | np.integer) or n_points < 3:
        raise ValueError(f"n_points must be an integer >= 3, got {n_points!r}")
    closed = np.concatenate([points, points[:1]])
    distance = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(closed, axis=0).T))])
    if distance[-1] == 0:
        raise ValueError(f"polygon {_short(polygon)} has zero length; cannot resample it")
    targets = np.arange(n_points) * (distance[-1] / n_points)
    return np.stack(
        [np.interp(targets, distance, closed[:, 0]), np.interp(targets, distance, closed[:, 1])], 1
    )


def polygon_to_mask(polygon: ArrayLike, shape: tuple[int, int]) -> Mask:
    """Rasterise a polygon into a boolean ``(height, width)`` mask (scanline, even-odd rule).

    A pixel is set when its centre ``(j + 0.5, i + 0.5)`` is inside; centres on left/top edges count as inside,
    on right/bottom edges as outside (see the module docstring). Parts outside the image are cut off.
    """
    points = validate_polygon(polygon)
    height, width = validate_shape(shape)
    x0, y0 = points[:, 0], points[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    # An edge crosses the centre line y = i + 0.5 of row i when min(y0, y1) <= i + 0.5 < max(y0, y1): rows
    # ceil(min - 0.5) up to (excluding) ceil(max - 0.5). Horizontal edges cross no row.
    row_start = np.clip(np.ceil(np.minimum(y0, y1) - 0.5), 0, height).astype(np.int64)
    row_stop = np.clip(np.ceil(np.maximum(y0, y1) - 0.5), 0, height).astype(np.int64)
    counts = row_stop - row_start
    mask = np.zeros((height, width), dtype=bool)
    total = int(counts.sum())
    if total == 0:
        return mask
    edge = np.repeat(np.arange(points.shape[0]), counts)
    first = np.cumsum(counts) - counts  # index of each edge's first crossing
    rows = row_start[edge] + (np.arange(total) - first[edge])
    y_centre = rows + 0.5
    x_cross = x0[edge] + (y_centre - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
    # A centre x_c is inside when an odd number of crossings lie at or left of it (x_cross <= x_c), i.e. the
    # parity flips at the first column whose centre reaches the crossing: ceil(x_cross - 0.5). Flips are
    # counted in the rows and columns the polygon covers and accumulated along each row; the array is laid
    # out column-major because numpy accumulates along the first axis several times faster.
    cols = np.clip(np.ceil(x_cross - 0.5), 0, width).astype(np.int64)
    r0, r1 = int(rows.min()), int(rows.max()) + 1
    c0, c1 = int(cols.min()), int(cols.max())
    n_rows = r1 - r0
    flips = np.bincount((cols - c0) * n_rows + (rows - r0), minlength=(c1 - c0 + 1) * n_rows)
    flips = flips.astype(np.int8).reshape(c1 - c0 + 1, n_rows)
    inside = np.cumsum(flips, axis=0, dtype=np.int8) & 1  # int8 wraps around, which keeps the parity
    mask[r0:r1, c0:c1] = inside[: c1 - c0].T.view(bool)
    return mask


# ------------------------------------------------------------------------------------------------------------
# Masks: components and contours


def _runs(mask: Mask) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Horizontal runs of True pixels in raster order: (row, first column, one past the last column)."""
    height, width = mask.shape
    padded = np.zeros((height, width + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    step = np.diff(padded, axis=1).ravel()  # (height, width + 1): +1 where a run starts, -1 after it ends
    rows, starts = np.divmod(np.flatnonzero(step == 1), width + 1)  # raster order pairs starts with stops
    stops = np.flatnonzero(step == -1) % (width + 1)
    return rows, starts, stops


def _label_runs(
    rows: NDArray[np.int64], starts: NDArray[np.int64], stops: NDArray[np.int64], width: int
) -> NDArray[np.int64]:
    """Component label per run (4-connectivity): the index of the component's first run in raster order."""
    n = rows.size
    key_size = width + 1
    start_keys = rows * key_size + starts  # both sorted: runs come in raster order and never overlap in a row
    stop_keys = rows * key_size + stops
    # Runs of the next row overlapping run a share at least one column: start_b < stop_a and stop_b > start_a.
    below = (rows + 1) * key_size
    first = np.searchsorted(stop_keys, below + starts, side="right")
    last = np.searchsorted(start_keys, below + stops, side="left")
    counts = np.clip(last - first, 0, None)
    a = np.repeat(np.arange(n), counts)
    b = (
        np.arange(int(counts.sum()))
        - np.repeat(np.cumsum(counts) - counts, counts)
        + np.repeat(first, counts)
    )
    labels = np.arange(n)
    # Hook roots onto smaller labels along every overlap, then flatten by pointer jumping, until each overlap
    # joins runs with one label. Labels only decrease, so the root of a component is its first run.
    while True:
        la, lb = labels[a], labels[b]
        differ = la != lb
        if not differ.any():
            return labels
        np.minimum.at(labels, np.maximum(la, lb)[differ], np.minimum(la, lb)[differ])
        while True:
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped


def largest_component(mask: ArrayLike) -> Mask:
    """The largest 4-connected component of a mask (the first in raster order among equal sizes); an empty
    mask gives an empty mask."""
    mask = validate_mask(mask)
    result = np.zeros_like(mask)
    bounds = mask_to_box(mask)
    if bounds is None:
        return result
    x0, y0, x1, y1 = (int(v) for v in bounds)
    crop = mask[y0:y1, x0:x1]
    rows, starts, stops = _runs(crop)
    labels = _label_runs(rows, starts, stops, crop.shape[1])
    sizes = np.bincount(labels, weights=stops - starts)
    root = int(np.argmax(sizes))
    if np.all(labels == root):  # a single component: nothing to remove
        result[y0:y1, x0:x1] = crop
        return result
    keep = labels == root
    edges = np.zeros((crop.shape[0], crop.shape[1] + 1), dtype=np.int8)
    edges[rows[keep], starts[keep]] = 1  # runs of one row never share a start or a stop
    edges[rows[keep], stops[keep]] = -1
    result[y0:y1, x0:x1] = np.cumsum(edges, axis=1, dtype=np.int8)[:, :-1].view(bool)
    return result


# Directions of a contour step: east, south, west, north (clockwise on screen), as (dx, dy).
_STEPS = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=np.int64)


def mask_contour(mask: ArrayLike) -> Polygon:
    """The outer boundary of the mask's largest 4-connected component along pixel edges.

    Vertices are pixel corners (integer coordinates), one per change of direction; the contour starts at the
    top-left corner of the component's first pixel in raster order and runs clockwise on screen. Filling it with
    `polygon_to_mask` gives back the component with its holes filled. Raises ValueError for an empty mask.
    """
    mask = validate_mask(mask)
    if not mask.any():
        raise ValueError("mask is empty: it has no contour")
    contour = _trace_outer_boundary(mask)
    # The contour of the first component encloses exactly the mask's pixels only when the mask is a single
    # component without holes (another component would have to sit in a hole, which holds background too).
    # That is the common case; otherwise trace the largest component.
    if polygon_area(contour) != np.count_nonzero(mask):
        contour = _trace_outer_boundary(largest_component(mask))
    return contour


def _trace_outer_boundary(mask: Mask) -> Polygon:
    """Outer boundary (pixel corners, clockwise) of the component holding the first pixel in raster order."""
    bounds = mask_to_box(mask)
    assert bounds is not None
    x_min, y_min, x_max, y_max = (int(v) for v in bounds)
    # The mask cropped with a one-pixel background border; vertex (vy, vx) of the crop is the corner at
    # x = x_min - 1 + vx, y = y_min - 1 + vy.
    grid = np.zeros((y_max - y_min + 2, x_max - x_min + 2), dtype=bool)
    grid[1:-1, 1:-1] = mask[y_min:y_max, x_min:x_max]
    # Boundary edges directed so that the pixels lie on their right (clockwise on screen): east along a top
    # side, south along a right side, west along a bottom side, north along a left side.
    inner = grid[1:-1, 1:-1]
    sides = tuple(
        np.zeros_like(grid) for _ in range(4)
    )  # top, right, bottom, left sides; the border stays False
    sides[0][1:-1, 1:-1] = inner & ~grid[:-2, 1:-1]
    sides[1][1:-1, 1:-1] = inner & ~grid[1:-1, 2:]
    sides[2][1:-1, 1:-1] = inner & ~grid[2:, 1:-1]
    sides[3][1:-1, 1:-1] = inner & ~grid[1:-1, :-2]
    first_corner = ((0, 0), (0, 1), (1, 1), (1, 0))  # (dy, dx) of each side's first corner from its pixel
    vy_list, vx_list, d_list = [], [], []
    for direction, (side, (dy, dx)) in enumerate(zip(sides, first_corner, strict=True)):
        pi, pj = np.divmod(np.flatnonzero(side), side.shape[1])
        vy_list.append(pi + dy)
        vx_list.append(pj + dx)
        d_list.append(np.full(pi.size, direction))
    vy, vx, d = np.concatenate(vy_list), np.concatenate(vx_list), np.concatenate(d_list)
    # Where each edge ends, and the edge leaving that corner. A corner between two diagonal pixels has two
    # edges leaving it; 4-connectivity keeps to the same pixel, i.e. turns right.
    ey, ex = vy + _STEPS[d, 1], vx + _STEPS[d, 0]
    tl, tr = grid[ey - 1, ex - 1], grid[ey - 1, ex]
    bl, br = grid[ey, ex - 1], grid[ey, ex]
    leaving = np.stack([br & ~tr, bl & ~br, tl & ~bl, tr & ~tl], axis=1)  # east, south, west, north
    next_direction = np.where(leaving.sum(axis=1) == 1, np.argmax(leaving, axis=1), (d + 1) % 4)
    columns = grid.shape[1] + 1
    keys = (vy * columns + vx) * 4 + d
    order = np.argsort(keys)
    sorted_keys = keys[order]
    successor = order[np.searchsorted(sorted_keys, (ey * columns + ex) * 4 + next_direction)]
    # Walk the cycle through the start edge: east along the top of the first pixel in raster order.
    start_vy, start_vx = divmod(int(np.argmax(grid.ravel())), grid.shape[1])
    start = int(order[np.searchsorted(sorted_keys, (start_vy * columns + start_vx) * 4 + 0)])
    successor_list = successor.tolist()
    path = [start]
    edge = successor_list[start]
    while edge != start:
        path.append(edge)
        edge = successor_list[edge]
    path_array = np.asarray(path)
    turns = path_array[d[path_array] != np.roll(d[path_array], 1)]  # keep corners only
    return np.stack([vx[turns] + (x_min - 1), vy[turns] + (y_min - 1)], axis=1).astype(np.float64)


def mask_to_polygon(mask: ArrayLike, n_points: int = 30) -> Polygon:
    """An ``n_points`` polygon for a mask: its `mask_contour` resampled evenly by arc length.

    The first point is the contour's start (top-most, then left-most point: the top-left corner of the
    component's first pixel in raster order) and the points run clockwise on screen. Raises ValueError for an
    empty mask.
    """
    return resample_polygon(mask_contour(mask), n_points)


# ------------------------------------------------------------------------------------------------------------
# Overlap scores


def dice(mask_a: ArrayLike, mask_b: ArrayLike) -> float:
    """Dice ``2|A & B| / (|A| + |B|)`` of two masks of one shape; 1.0 when both are empty."""
    a = validate_mask(mask_a, "mask_a")
    b = validate_mask(mask_b, "mask_b", shape=a.shape)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def mask_iou(mask_a: ArrayLike, mask_b: ArrayLike) -> float:
    """IoU ``|A & B| / |A | B|`` of two masks of one shape; 1.0 when both are empty."""
    a = validate_mask(mask_a, "mask_a")
    b = validate_mask(mask_b, "mask_b", shape=a.shape)
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else int(np.logical_and(a, b).sum()) / union


def polygon_dice(polygon_a: ArrayLike, polygon_b: ArrayLike, shape: tuple[int, int]) -> float:
    """Dice of two polygons rasterised (`polygon_to_mask`) on an image of ``shape`` = (height, width)."""
    a = polygon_to_mask(validate_polygon(polygon_a, "polygon_a"), shape)
    b = polygon_to_mask(validate_polygon(polygon_b, "polygon_b"), shape)
    return dice(a, b)


# ------------------------------------------------------------------------------------------------------------
# Measurements


@dataclass(frozen=True)
class Measurement:
    """A measured ratio: ``value``, or ``None`` with the ``reason`` it is undefined."""

    value: float | None
    reason: str | None = None

    @property
    def defined(self) -> bool:
        return self.value is not None


@dataclass(frozen=True)
class CardiothoracicRatio(Measurement):
    """CTR with the horizontal spans it was measured from, ``(x_left, x_right)`` in pixels (for drawing)."""

    heart_span: tuple[float, float] | None = None
    thorax_span: tuple[float, float] | None = None

    @property
    def heart_width(self) -> float | None:
        return None if self.heart_span is None else self.heart_span[1] - self.heart_span[0]

    @property
    def thoracic_width(self) -> float | None:
        return None if self.thorax_span is None else self.thorax_span[1] - self.thorax_span[0]


@dataclass(frozen=True)
class PneumothoraxRatio(Measurement):
    """PCR with the two areas it was measured from, in square pixels."""

    pneumothorax_area: float | None = None
    hemithorax_area: float | None = None


def _mask_or_polygon(value: ArrayLike, name: str) -> Mask | Polygon:
    """A boolean (H, W) array is a mask; anything else must be an (N, 2) polygon of x, y."""
    array = np.asarray(value)
    if array.dtype == np.bool_:
        return validate_mask(array, name)
    if array.ndim == 2 and array.shape[1] == 2 and np.issubdtype(array.dtype, np.number):
        return validate_polygon(array, name)
    raise ValueError(
        f"{name} has dtype {array.dtype} and shape {array.shape}; expected a boolean (H, W) mask or an "
        "(N, 2) polygon of x, y"
    )


def _horizontal_span(shape: Mask | Polygon) -> tuple[float, float] | None:
    """Left-most and right-most x of a mask's pixels (their outer edges) or of a polygon; None when empty."""
    if shape.dtype == np.bool_:
        cols = np.flatnonzero(shape.any(axis=0))
        return None if cols.size == 0 else (float(cols[0]), float(cols[-1] + 1))
    return float(shape[:, 0].min()), float(shape[:, 0].max())


def _area(shape: Mask | Polygon) -> float:
    return float(shape.sum()) if shape.dtype == np.bool_ else polygon_area(shape)


def _same_image(named: dict[str, Mask | Polygon]) -> None:
    shapes = {name: s.shape for name, s in named.items() if s.dtype == np.bool_}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"masks of different shapes: {listed}; expected masks of one image")


def cardiothoracic_ratio(
    heart: ArrayLike, left_lung: ArrayLike, right_lung: ArrayLike
) -> CardiothoracicRatio:
    """CTR = maximal transverse width of the heart / maximal transverse width of the thorax.

    Each argument is a boolean mask or an ``(N, 2)`` polygon (they may be mixed). The heart's width is its
    horizontal extent (``max x - min x``; on a mask, from the outer edge of its left-most pixel column to the
    outer edge of its right-most). The thorax is measured between the outer borders of the two lungs: from the
    left-most x of the right lung (on the image's left, PA convention) to the right-most x of the left lung.
    Both widths are extents over all rows, as is usual when measuring CTR on masks.

    Undefined (``value`` None, with ``reason``) when the heart or a lung is empty, the heart has no width, or
    the lungs are swapped (the left lung's centre left of the right lung's).
    """
    shapes = {
        "heart": _mask_or_polygon(heart, "heart"),
        "left_lung": _mask_or_polygon(left_lung, "left_lung"),
        "right_lung": _mask_or_polygon(right_lung, "right_lung"),
    }
    _same_image(shapes)
    spans = {name: _horizontal_span(shape) for name, shape in shapes.items()}
    for name, span in spans.items():
        if span is None:
            return CardiothoracicRatio(None, f"{name.replace('_', ' ')} is empty")
    heart_span, left_span, right_span = spans["heart"], spans["left_lung"], spans["right_lung"]
    assert heart_span is not None and left_span is not None and right_span is not None
    if sum(left_span) < sum(right_span):
        return CardiothoracicRatio(
            None,
            "the left lung lies left of the right lung on the image; expected a PA view with the patient's "
            "right lung on the image's left",
        )
    thorax_span = (right_span[0], left_span[1])
    heart_width = heart_span[1] - heart_span[0]
    if heart_width <= 0:
        return CardiothoracicRatio(None, "heart has zero width", heart_span, thorax_span)
    if thorax_span[1] <= thorax_span[0]:  # degenerate lung outlines (e.g. an untrained model's answers)
        return CardiothoracicRatio(None, "thorax has zero width", heart_span, thorax_span)
    ratio = heart_width / (thorax_span[1] - thorax_span[0])
    return CardiothoracicRatio(ratio, None, heart_span, thorax_span)


def pneumothorax_ratio(pneumothorax: ArrayLike, hemithorax: ArrayLike) -> PneumothoraxRatio:
    """PCR = pneumothorax area / area of the hemithorax on its side.

    ``hemithorax`` is the whole lung field of that side *including* the pneumothorax (e.g. lung | pneumothorax);
    each argument is a boolean mask or a polygon. An empty pneumothorax gives 0.0. Undefined when the
    hemithorax is empty or smaller than the pneumothorax (which means it was not passed including it).
    """
    shapes = {
        "pneumothorax": _mask_or_polygon(pneumothorax, "pneumothorax"),
        "hemithorax": _mask_or_polygon(hemithorax, "hemithorax"),
    }
    _same_image(shapes)
    ptx_area, hemi_area = _area(shapes["pneumothorax"]), _area(shapes["hemithorax"])
    if hemi_area <= 0:
        return PneumothoraxRatio(None, "hemithorax is empty", ptx_area, hemi_area)
    if ptx_area > hemi_area:
        return PneumothoraxRatio(
            None,
            f"pneumothorax area {ptx_area:g} exceeds hemithorax area {hemi_area:g}; pass the hemithorax "
            "including the pneumothorax",
            ptx_area,
            hemi_area,
        )
    return PneumothoraxRatio(ptx_area / hemi_area, None, ptx_area, hemi_area)


def ctr_severity(ctr: float | None) -> str | None:
    """``"normal"`` (CTR <= 0.51), ``"mild"`` (<= 0.55), ``"moderate"`` (<= 0.60) or ``"severe"`` (> 0.60).

    Each bin includes its upper edge, so ``ctr_severity(ctr) != "normal"`` exactly when ``ctr > 0.51``, the
    cardiomegaly rule. ``None`` (an undefined CTR) gives None; a negative or non-finite CTR raises ValueError.
    """
    if ctr is None:
        return None
    if not isinstance(ctr, int | float | np.floating | np.integer) or not math.isfinite(ctr) or ctr < 0:
        raise ValueError(f"CTR must be a finite number >= 0 or None, got {ctr!r}")
    for upper, name in CTR_SEVERITY_EDGES:
        if ctr <= upper:
            return name
    return CTR_SEVERITY_ABOVE
