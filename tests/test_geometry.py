"""imtcxr_jax.geometry against brute-force references written here, scikit-learn and scipy.ndimage."""

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score, jaccard_score

from imtcxr_jax import geometry as g

# ------------------------------------------------------------------------------------------------------------
# References


def point_in_polygon(px: float, py: float, polygon: np.ndarray) -> bool:
    """Crossing-number test (W. R. Franklin's PNPOLY): count edges crossed by the ray to the right."""
    inside = False
    n = len(polygon)
    for k in range(n):
        xi, yi = polygon[k]
        xj, yj = polygon[k - 1]
        if (yi > py) != (yj > py) and px < (xj - xi) * (py - yi) / (yj - yi) + xi:
            inside = not inside
    return inside


def brute_force_mask(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """Per-pixel loop: a pixel is inside when its centre (j + 0.5, i + 0.5) is."""
    return np.array(
        [[point_in_polygon(j + 0.5, i + 0.5, polygon) for j in range(width)] for i in range(height)],
        dtype=bool,
    )


def ellipse_mask(height, width, cx, cy, a, b, angle=0.0):
    y, x = np.mgrid[0:height, 0:width] + 0.5
    c, s = math.cos(angle), math.sin(angle)
    u, v = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def random_polygon(rng, n, low, high):
    return rng.uniform(low, high, size=(n, 2))


def star_shaped_polygon(rng, n, cx, cy, r_low, r_high):
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = rng.uniform(r_low, r_high, n)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)


# ------------------------------------------------------------------------------------------------------------
# Boxes


def test_box_iou_matches_pixel_count_reference():
    """Integer boxes: IoU equals the Jaccard index of their unit cells (scikit-learn)."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        boxes = []
        for _ in range(2):
            x0, x1 = np.sort(rng.integers(0, 30, 2))
            y0, y1 = np.sort(rng.integers(0, 30, 2))
            boxes.append([x0, y0, x1 + 1, y1 + 1])
        masks = []
        for x0, y0, x1, y1 in boxes:
            m = np.zeros((32, 32), dtype=bool)
            m[y0:y1, x0:x1] = True
            masks.append(m.ravel())
        expected = jaccard_score(masks[0], masks[1], zero_division=0.0)
        assert g.box_iou(boxes[0], boxes[1]) == pytest.approx(expected)


def test_box_iou_hand_values_and_degenerate():
    assert g.box_iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)
    assert g.box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0
    assert g.box_iou([0.5, 0.5, 1.5, 2.5], [0.5, 0.5, 1.5, 2.5]) == 1.0
    assert g.box_iou([1, 1, 1, 1], [1, 1, 1, 1]) == 0.0  # zero union


def test_box_iou_matrix_is_pairwise():
    rng = np.random.default_rng(1)
    a = np.sort(rng.uniform(0, 100, (5, 2, 2)), axis=1).transpose(0, 2, 1).reshape(5, 4)[:, [0, 2, 1, 3]]
    b = np.sort(rng.uniform(0, 100, (3, 2, 2)), axis=1).transpose(0, 2, 1).reshape(3, 4)[:, [0, 2, 1, 3]]
    matrix = g.box_iou_matrix(a, b)
    assert matrix.shape == (5, 3)
    for i in range(5):
        for j in range(3):
            assert matrix[i, j] == pytest.approx(g.box_iou(a[i], b[j]))
            assert g.box_iou(a[i], b[j]) == pytest.approx(g.box_iou(b[j], a[i]))


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ([3, 0, 2, 5], "x0=3 > x1=2"),
        ([0, 6, 2, 5], "y0=6 > y1=5"),
        ([0, 0, float("nan"), 5], "non-finite"),
        ([0, 0, 1], "shape (3,)"),
        (["a", 0, 1, 2], "not numeric"),
    ],
)
def test_validate_box_errors_name_the_value(box, message):
    with pytest.raises(ValueError, match="box") as info:
        g.validate_box(box)
    assert message in str(info.value)


def test_validate_boxes_names_the_row():
    with pytest.raises(ValueError, match=r"boxes\[1\].*x0=5 > x1=4"):
        g.validate_boxes([[0, 0, 1, 1], [5, 0, 4, 1]])


def test_mask_to_box_is_tight_on_pixel_edges():
    m = np.zeros((10, 12), dtype=bool)
    m[2:5, 3:9] = True
    assert g.mask_to_box(m).tolist() == [3, 2, 9, 5]
    assert g.mask_to_box(np.zeros((4, 4), dtype=bool)) is None


# ------------------------------------------------------------------------------------------------------------
# Rasterisation


def test_polygon_to_mask_matches_point_in_polygon_loop():
    """Random (often self-intersecting) polygons, partly outside the image: exactly the brute-force mask."""
    rng = np.random.default_rng(2)
    for n in (3, 4, 7, 12):
        for _ in range(4):
            polygon = random_polygon(rng, n, -8, 40)
            expected = brute_force_mask(polygon, 33, 29)
            np.testing.assert_array_equal(g.polygon_to_mask(polygon, (33, 29)), expected)


def test_polygon_to_mask_star_shapes_and_integer_vertices():
    rng = np.random.default_rng(3)
    for _ in range(5):
        polygon = star_shaped_polygon(rng, 15, 20, 18, 4, 15)
        np.testing.assert_array_equal(g.polygon_to_mask(polygon, (40, 40)), brute_force_mask(polygon, 40, 40))
    integer = rng.integers(0, 30, size=(9, 2)).astype(float)
    np.testing.assert_array_equal(g.polygon_to_mask(integer, (30, 30)), brute_force_mask(integer, 30, 30))


def test_rectangle_fills_the_pixels_it_covers():
    mask = g.polygon_to_mask([[2, 3], [7, 3], [7, 5], [2, 5]], (8, 10))
    expected = np.zeros((8, 10), dtype=bool)
    expected[3:5, 2:7] = True
    np.testing.assert_array_equal(mask, expected)
    # Two rectangles sharing an edge tile it: every pixel exactly once.
    left = g.polygon_to_mask([[0, 0], [4.5, 0], [4.5, 8], [0, 8]], (8, 10))
    right = g.polygon_to_mask([[4.5, 0], [10, 0], [10, 8], [4.5, 8]], (8, 10))
    assert not (left & right).any()
    assert (left | right).all()


def test_polygon_outside_image_gives_empty_mask():
    assert not g.polygon_to_mask([[-10, -10], [-5, -10], [-5, -5]], (8, 8)).any()


# ------------------------------------------------------------------------------------------------------------
# Components and contours


def test_largest_component_matches_scipy_label():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(4)
    four = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    for density in (0.3, 0.45, 0.55, 0.7):
        mask = rng.random((40, 50)) < density
        labels, _ = ndimage.label(mask, structure=four)
        sizes = np.bincount(labels.ravel())[1:]
        expected = labels == (int(np.argmax(sizes)) + 1)  # first in raster order among ties, like ours
        np.testing.assert_array_equal(g.largest_component(mask), expected)
    assert not g.largest_component(np.zeros((5, 5), dtype=bool)).any()


def test_contour_fills_back_to_the_component_exactly():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(5)
    for density in (0.5, 0.6, 0.7):
        mask = rng.random((30, 35)) < density
        component = g.largest_component(mask)
        contour = g.mask_contour(mask)
        # Holes are background not connected to the outside through 8-neighbours (the dual of 4-connectivity).
        filled = ndimage.binary_fill_holes(component, structure=np.ones((3, 3), dtype=bool))
        np.testing.assert_array_equal(g.polygon_to_mask(contour, mask.shape), filled)
        assert g.polygon_area(contour) == filled.sum()
        assert np.all(contour == np.round(contour))  # pixel corners


def test_contour_handles_diagonal_pinches():
    """Pixels touching only at a corner are separate (4-connectivity); background touching at a corner is
    connected (8-connectivity), so a ring pinched at a corner encloses no hole and fills back to itself."""
    mask = np.zeros((6, 6), dtype=bool)
    mask[1, 1] = mask[2, 2] = True
    assert g.mask_contour(mask).tolist() == [[1, 1], [2, 1], [2, 2], [1, 2]]
    ring = np.zeros((7, 7), dtype=bool)
    ring[1, 1:5] = ring[1:5, 1] = ring[1:4, 4] = ring[4, 1:4] = True  # (3, 4) and (4, 3) touch at a corner
    contour = g.mask_contour(ring)
    np.testing.assert_array_equal(g.polygon_to_mask(contour, ring.shape), ring)
    assert g.polygon_area(contour) == ring.sum()


def test_contour_start_point_and_orientation():
    mask = np.zeros((20, 20), dtype=bool)
    mask[5:15, 4:7] = True  # a U: left prong,
    mask[3:15, 12:15] = True  # a higher right prong,
    mask[12:15, 4:15] = True  # and the bottom
    contour = g.mask_contour(mask)
    assert contour[0].tolist() == [12, 3]  # top-most point
    mask[3:5, 4:7] = True  # prongs of equal height: the left-most top point
    assert g.mask_contour(mask)[0].tolist() == [4, 3]
    assert g.polygon_signed_area(contour) > 0  # clockwise on screen
    assert contour[1, 0] > contour[0, 0] and contour[1, 1] == contour[0, 1]  # first step to the right


@pytest.mark.parametrize(
    ("a", "b", "angle"), [(40, 25, 0.0), (60, 30, 0.5), (15, 12, 1.2), (100, 70, -0.3), (8, 8, 0.0)]
)
def test_mask_to_polygon_round_trip_on_ellipses(a, b, angle):
    mask = ellipse_mask(256, 256, 128.3, 121.7, a, b, angle)
    polygon = g.mask_to_polygon(mask, 30)
    assert polygon.shape == (30, 2)
    assert g.dice(g.polygon_to_mask(polygon, mask.shape), mask) > 0.97
    assert g.polygon_area(polygon) == pytest.approx(mask.sum(), rel=0.03)
    assert g.polygon_signed_area(polygon) > 0
    top = np.lexsort((polygon[:, 0], polygon[:, 1]))[0]
    assert top == 0  # starts at the top-most (then left-most) point
    steps = np.hypot(*np.diff(np.concatenate([polygon, polygon[:1]]), axis=0).T)
    assert steps.max() <= 1.5 * g.polygon_area(polygon) ** 0.5  # sanity: no jumps across the shape


def test_mask_to_polygon_uses_largest_component():
    mask = ellipse_mask(100, 100, 30, 30, 10, 10) | ellipse_mask(100, 100, 70, 70, 20, 15)
    polygon = g.mask_to_polygon(mask, 30)
    assert polygon[:, 0].min() > 45  # the big one
    with pytest.raises(ValueError, match="empty"):
        g.mask_to_polygon(np.zeros((10, 10), dtype=bool))


def test_resample_polygon_is_even_by_arc_length():
    square = [[0, 0], [4, 0], [4, 4], [0, 4]]
    points = g.resample_polygon(square, 8)
    assert points.tolist() == [[0, 0], [2, 0], [4, 0], [4, 2], [4, 4], [2, 4], [0, 4], [0, 2]]
    repeated = [[0, 0], [0, 0], [4, 0], [4, 0], [4, 4], [0, 4]]  # datasets repeat points; zero-length steps
    assert g.resample_polygon(repeated, 8).tolist() == points.tolist()
    with pytest.raises(ValueError, match="n_points"):
        g.resample_polygon(square, 2)


def test_canonical_polygon_fixes_start_and_orientation():
    square = np.array([[0, 0], [4, 0], [4, 4], [0, 4]], dtype=float)
    expected = g.canonical_polygon(square)
    assert expected.tolist() == square.tolist()
    for shift in range(4):
        for polygon in (np.roll(square, shift, 0), np.roll(square[::-1], shift, 0)):
            assert g.canonical_polygon(polygon).tolist() == expected.tolist()


def test_polygon_area_shoelace():
    triangle = [[0, 0], [4, 0], [0, 3]]
    assert g.polygon_area(triangle) == 6.0
    assert g.polygon_signed_area(triangle) == 6.0  # clockwise on screen (y down)
    assert g.polygon_signed_area(triangle[::-1]) == -6.0


# ------------------------------------------------------------------------------------------------------------
# Overlap scores


def test_dice_and_iou_match_scikit_learn():
    rng = np.random.default_rng(6)
    for _ in range(10):
        a, b = rng.random((2, 20, 30)) < rng.uniform(0.05, 0.9, (2, 1, 1))
        assert g.dice(a, b) == pytest.approx(f1_score(a.ravel(), b.ravel()))
        assert g.mask_iou(a, b) == pytest.approx(jaccard_score(a.ravel(), b.ravel()))
    empty = np.zeros((4, 4), dtype=bool)
    assert g.dice(empty, empty) == 1.0 and g.mask_iou(empty, empty) == 1.0
    assert g.dice(empty, ~empty) == 0.0 and g.mask_iou(empty, ~empty) == 0.0


def test_polygon_dice_rasterises_both():
    rng = np.random.default_rng(7)
    p = star_shaped_polygon(rng, 12, 20, 20, 6, 14)
    q = star_shaped_polygon(rng, 12, 24, 18, 6, 14)
    expected = f1_score(brute_force_mask(p, 40, 40).ravel(), brute_force_mask(q, 40, 40).ravel())
    assert g.polygon_dice(p, q, (40, 40)) == pytest.approx(expected)
    assert g.polygon_dice(p, p, (40, 40)) == 1.0


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (np.zeros((4, 4), dtype=np.float32), "dtype float32"),
        (np.full((4, 4), 255, dtype=np.uint8), "values {255}"),
        (np.zeros((2, 4, 4), dtype=bool), "2-D"),
    ],
)
def test_bad_masks_are_refused_by_name(mask, message):
    with pytest.raises(ValueError, match="mask_a") as info:
        g.dice(mask, np.zeros((4, 4), dtype=bool))
    assert message in str(info.value)


def test_masks_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match=r"mask_b has shape \(4, 5\); expected \(4, 4\)"):
        g.dice(np.zeros((4, 4), dtype=bool), np.zeros((4, 5), dtype=bool))
    assert (
        g.dice(np.ones((2, 2), dtype=np.uint8), np.ones((2, 2), dtype=bool)) == 1.0
    )  # 0/1 integers are fine


@pytest.mark.parametrize(
    ("polygon", "message"),
    [
        ([[0, 0], [1, 1]], "has 2 points; expected at least 3"),
        ([0, 1, 2, 3], "shape (4,)"),
        ([[0, 0], [1, float("inf")], [2, 2]], "non-finite"),
    ],
)
def test_bad_polygons_are_refused_by_name(polygon, message):
    with pytest.raises(ValueError, match="polygon") as info:
        g.polygon_to_mask(polygon, (8, 8))
    assert message in str(info.value)


# ------------------------------------------------------------------------------------------------------------
# Measurements


def thorax_masks():
    """Right lung columns 10..39 (image left), heart 40..59, left lung 60..89: CTR 20 / 80."""
    right, heart, left = (np.zeros((50, 100), dtype=bool) for _ in range(3))
    right[5:45, 10:40] = True
    right[30:45, 35:40] = False  # a heart notch does not change the outer border
    heart[25:45, 40:60] = True
    left[5:40, 60:90] = True
    return heart, left, right


def rectangle(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def test_ctr_on_hand_built_masks():
    heart, left, right = thorax_masks()
    ctr = g.cardiothoracic_ratio(heart, left, right)
    assert ctr.value == pytest.approx(0.25)
    assert ctr.heart_span == (40.0, 60.0) and ctr.thorax_span == (10.0, 90.0)
    assert ctr.heart_width == 20 and ctr.thoracic_width == 80
    # Widths are the maximal extents over all rows: a wider heart row anywhere counts.
    heart[40, 30:65] = True
    assert g.cardiothoracic_ratio(heart, left, right).value == pytest.approx(35 / 80)


def test_ctr_on_polygons_and_mixed_inputs():
    heart, left, right = thorax_masks()
    polygons = (rectangle(40, 25, 60, 45), rectangle(60, 5, 90, 40), rectangle(10, 5, 40, 45))
    assert g.cardiothoracic_ratio(*polygons).value == pytest.approx(0.25)
    assert g.cardiothoracic_ratio(polygons[0], left, right).value == pytest.approx(0.25)
    assert g.cardiothoracic_ratio(heart, polygons[1], right.astype(bool)).value == pytest.approx(0.25)


def test_ctr_undefined_has_a_reason_not_zero():
    heart, left, right = thorax_masks()
    empty = g.cardiothoracic_ratio(np.zeros_like(heart), left, right)
    assert empty.value is None and not empty.defined and empty.reason == "heart is empty"
    missing = g.cardiothoracic_ratio(heart, np.zeros_like(left), right)
    assert missing.value is None and missing.reason == "left lung is empty"
    swapped = g.cardiothoracic_ratio(heart, right, left)
    assert swapped.value is None and "right lung on the image's left" in swapped.reason
    # Degenerate outlines (an untrained model's polygons): both lungs a single vertical line at one x.
    line = np.array([[5.0, 2.0], [5.0, 9.0], [5.0, 5.0]])
    flat = g.cardiothoracic_ratio(np.array([[4.0, 3.0], [6.0, 3.0], [5.0, 6.0]]), line, line)
    assert flat.value is None and flat.reason == "thorax has zero width"


def test_ctr_bad_inputs_raise_naming_the_argument():
    heart, left, right = thorax_masks()
    with pytest.raises(ValueError, match="heart has dtype float64 and shape"):
        g.cardiothoracic_ratio(heart.astype(float), left, right)
    with pytest.raises(ValueError, match=r"left_lung .* has 2 points"):
        g.cardiothoracic_ratio(heart, [[0, 0], [1, 1]], right)
    with pytest.raises(ValueError, match="different shapes"):
        g.cardiothoracic_ratio(heart, left[:, :90], right)


def test_pcr_from_areas():
    hemithorax = np.zeros((30, 30), dtype=bool)
    hemithorax[5:25, 5:25] = True
    ptx = np.zeros_like(hemithorax)
    ptx[5:10, 5:25] = True
    pcr = g.pneumothorax_ratio(ptx, hemithorax)
    assert pcr.value == pytest.approx(100 / 400)
    assert (pcr.pneumothorax_area, pcr.hemithorax_area) == (100, 400)
    assert g.pneumothorax_ratio(rectangle(5, 5, 25, 10), rectangle(5, 5, 25, 25)).value == pytest.approx(0.25)
    assert g.pneumothorax_ratio(np.zeros_like(ptx), hemithorax).value == 0.0
    undefined = g.pneumothorax_ratio(ptx, np.zeros_like(ptx))
    assert undefined.value is None and undefined.reason == "hemithorax is empty"
    assert "including the pneumothorax" in g.pneumothorax_ratio(hemithorax, ptx).reason


@pytest.mark.parametrize(
    ("ctr", "severity"),
    [
        (0.3, "normal"),
        (0.51, "normal"),
        (0.5100001, "mild"),
        (0.55, "mild"),
        (0.56, "moderate"),
        (0.60, "moderate"),
        (0.6000001, "severe"),
        (0.8, "severe"),
        (None, None),
    ],
)
def test_ctr_severity_bins(ctr, severity):
    assert g.ctr_severity(ctr) == severity
    if ctr is not None:
        assert (g.ctr_severity(ctr) != "normal") == (ctr > g.CTR_CARDIOMEGALY_THRESHOLD)


def test_ctr_severity_rejects_nonsense():
    with pytest.raises(ValueError, match="nan"):
        g.ctr_severity(float("nan"))
    with pytest.raises(ValueError, match=r"-0\.1"):
        g.ctr_severity(-0.1)
