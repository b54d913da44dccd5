"""Coordinates <-> location bins (spec §10): round trips, half-to-even ties, boxes, polygons, text, errors."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from imtcxr_jax.text import coords
from imtcxr_jax.text.coords import (
    NUM_BINS,
    bin_to_coord,
    bin_token,
    bins_to_boxes,
    bins_to_coords,
    bins_to_polygon,
    bins_to_text,
    boxes_to_bins,
    coord_to_bin,
    coords_to_bins,
    polygon_to_bins,
    text_to_bins,
)

# Square and non-square sides, integer and fractional, smaller and larger than 999.
SIZES = [1.0, 7.0, 333.0, 512.0, 513.0, 999.0, 1000.0, 1024.0, 2048.5, 3000.0, 4096.0]
sizes = st.floats(min_value=1.0, max_value=8192.0, allow_nan=False)


@st.composite
def coordinate_and_size(draw):
    size = draw(sizes)
    return draw(st.floats(min_value=0.0, max_value=size)), size


@given(coordinate_and_size())
def test_coord_to_bin_to_coord_within_half_a_bin(value_and_size):
    value, size = value_and_size
    index = coord_to_bin(value, size)
    assert 0 <= index < NUM_BINS
    half_bin = size / (NUM_BINS - 1) / 2
    assert abs(bin_to_coord(index, size) - value) <= half_bin * (1 + 1e-9)


@pytest.mark.parametrize("size", SIZES)
def test_bin_to_coord_to_bin_is_exact_for_every_bin(size):
    every_bin = np.arange(NUM_BINS)
    assert [coord_to_bin(bin_to_coord(k, size), size) for k in range(NUM_BINS)] == every_bin.tolist()
    np.testing.assert_array_equal(coords_to_bins(bins_to_coords(every_bin, size), size), every_bin)


@pytest.mark.parametrize(("width", "height"), [(512, 512), (640, 480), (333, 2048.5), (1, 4096)])
def test_every_bin_round_trips_through_boxes_and_polygons_of_non_square_images(width, height):
    every_bin = np.arange(NUM_BINS)
    boxes = np.stack([every_bin, np.zeros_like(every_bin), every_bin, every_bin[::-1]], axis=1)  # y0 <= y1
    np.testing.assert_array_equal(boxes_to_bins(bins_to_boxes(boxes, width, height), width, height), boxes)
    flat = np.stack([every_bin, every_bin[::-1]], axis=1).ravel()
    np.testing.assert_array_equal(polygon_to_bins(bins_to_polygon(flat, width, height), width, height), flat)


def test_borders_are_the_first_and_last_bin():
    assert coord_to_bin(0, 640) == 0
    assert coord_to_bin(640, 640) == NUM_BINS - 1
    assert bin_to_coord(0, 640) == 0.0
    assert bin_to_coord(NUM_BINS - 1, 640) == 640.0
    assert coord_to_bin(256, 512) == 500  # 499.5 is a tie, and it rounds to the even neighbour


def test_ties_round_half_to_even_like_python_round_on_float64():
    # With size = 2 * 999 every odd pixel lands exactly on a half: 999 * v / 1998 = v / 2.
    size = 2.0 * (NUM_BINS - 1)
    values = np.arange(0, size + 1, 1.0)
    expected = [round((NUM_BINS - 1) * v / size) for v in values.tolist()]
    assert [coord_to_bin(v, size) for v in values.tolist()] == expected
    np.testing.assert_array_equal(coords_to_bins(values, size), expected)
    # Half-up would give 1, 2, 3; half-to-even gives 0, 2, 2.
    assert [coord_to_bin(v, size) for v in (1.0, 3.0, 5.0)] == [0, 2, 2]


@given(st.lists(coordinate_and_size(), min_size=1, max_size=20))
def test_vectorised_matches_scalar(pairs):
    values = [v for v, _ in pairs]
    size_array = [s for _, s in pairs]
    np.testing.assert_array_equal(coords_to_bins(values, size_array), [coord_to_bin(v, s) for v, s in pairs])
    index = coords_to_bins(values, size_array)
    np.testing.assert_array_equal(
        bins_to_coords(index, size_array),
        [bin_to_coord(int(k), s) for k, s in zip(index, size_array, strict=True)],
    )


def test_rounding_matches_torch_round_half_to_even():
    torch = pytest.importorskip("torch")
    size = 2.0 * (NUM_BINS - 1)
    values = np.linspace(0, size, 4001)
    reference = torch.round(torch.tensor((NUM_BINS - 1) * values / size, dtype=torch.float64)).long().numpy()
    np.testing.assert_array_equal(coords_to_bins(values, size), reference)


def test_custom_num_bins():
    assert coord_to_bin(1.0, 2.0, num_bins=3) == 1
    assert bin_to_coord(2, 10.0, num_bins=3) == 10.0
    assert text_to_bins("<bin_9>", num_bins=10) == [9]
    with pytest.raises(ValueError, match=r"bin 10 is outside 0\.\.9"):
        text_to_bins("<bin_10>", num_bins=10)


# ------------------------------------------------------------------------------------------------------------
# Boxes, polygons, text


def test_box_target_layout_is_x0_y0_x1_y1():
    assert boxes_to_bins([0, 0, 640, 480], 640, 480).tolist() == [0, 0, 999, 999]
    assert boxes_to_bins([[64, 48, 320, 240]], 640, 480).tolist() == [[100, 100, 500, 500]]  # 99.9 -> 100
    np.testing.assert_allclose(
        bins_to_boxes([0, 0, 999, 999, 0, 0, 0, 0], 640, 480), [[0, 0, 640, 480], [0] * 4]
    )


def test_polygon_bins_alternate_x_and_y():
    points = [[0, 480], [640, 0], [320, 240]]
    assert polygon_to_bins(points, 640, 480).tolist() == [0, 999, 999, 0, 500, 500]
    assert polygon_to_bins([0, 480, 640, 0], 640, 480).tolist() == [0, 999, 999, 0]  # flat input
    np.testing.assert_allclose(bins_to_polygon([0, 999, 999, 0], 640, 480), [[0, 480], [640, 0]])


def test_text_round_trip():
    assert bin_token(12) == "<bin_12>"
    assert bins_to_text([0, 500, 999]) == "<bin_0> <bin_500> <bin_999>"
    assert bins_to_text(np.array([[1, 2], [3, 4]])) == "<bin_1> <bin_2> <bin_3> <bin_4>"
    assert text_to_bins("  <bin_0>\n<bin_500>  <bin_999> ") == [0, 500, 999]
    assert text_to_bins("") == []
    assert bins_to_text([]) == ""


@given(st.lists(st.integers(0, NUM_BINS - 1), max_size=50))
def test_text_round_trip_property(bins):
    assert text_to_bins(bins_to_text(bins)) == bins


# ------------------------------------------------------------------------------------------------------------
# Errors name the value


@pytest.mark.parametrize("value", [-0.5, 512.25, math.nan, math.inf])
def test_coordinates_outside_the_image_are_rejected_not_clamped(value):
    with pytest.raises(ValueError, match=rf"coordinate {value!r} is outside the image \(size 512 px\)"):
        coord_to_bin(value, 512)
    with pytest.raises(ValueError, match=r"never clamped"):
        coords_to_bins([1.0, value], 512)


def test_box_errors_name_the_value_and_the_image():
    with pytest.raises(ValueError, match=r"x coordinate 641.0 .*width 640 x height 480"):
        boxes_to_bins([10, 20, 641, 30], 640, 480)
    with pytest.raises(ValueError, match=r"y coordinate -1.0 .*\[0, 480\]"):
        boxes_to_bins([10, -1, 20, 30], 640, 480)
    with pytest.raises(ValueError, match=r"box \[30.0, 20.0, 10.0, 40.0\] has x0 > x1"):
        boxes_to_bins([30, 20, 10, 40], 640, 480)
    with pytest.raises(ValueError, match=r"box of bins \[1, 9, 2, 3\]"):
        bins_to_boxes([1, 9, 2, 3], 640, 480)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        boxes_to_bins([1, 2, 3], 640, 480)
    with pytest.raises(ValueError, match="5 bins do not form boxes"):
        bins_to_boxes([1, 2, 3, 4, 5], 640, 480)


def test_polygon_errors():
    with pytest.raises(ValueError, match=r"x coordinate 700.0"):
        polygon_to_bins([[700, 1], [2, 3]], 640, 480)
    with pytest.raises(ValueError, match="3 bins do not form points"):
        bins_to_polygon([1, 2, 3], 640, 480)
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        polygon_to_bins([[1, 2, 3], [4, 5, 6]], 640, 480)


@pytest.mark.parametrize("bad", [-1, 1000, 5000])
def test_bins_outside_range_name_the_bin(bad):
    with pytest.raises(ValueError, match=f"bin {bad} is outside 0..999"):
        bin_to_coord(bad, 512)
    with pytest.raises(ValueError, match=f"bin {bad} is outside 0..999"):
        bins_to_coords([0, bad], 512)
    with pytest.raises(ValueError, match=f"bin {bad} is outside 0..999"):
        bins_to_text([bad])


def test_non_integer_bins_and_bad_words_are_rejected():
    with pytest.raises(ValueError, match="must be integers"):
        bins_to_coords([1.5], 512)
    with pytest.raises(ValueError, match="must be integers"):
        bin_to_coord(True, 512)
    for word in ("cardiomegaly", "<bin_007>", "<bin_-1>", "<bin_12", "bin_12"):
        with pytest.raises(ValueError, match="is not a location bin word"):
            text_to_bins(f"<bin_1> {word}")


@pytest.mark.parametrize("size", [0, -3, math.nan, math.inf, True])
def test_bad_image_sizes(size):
    with pytest.raises(ValueError, match="must be a finite number of pixels > 0"):
        coord_to_bin(0, size)
    with pytest.raises(ValueError, match="image width"):
        coords.check_image_size(size, 10)
    with pytest.raises(ValueError, match="image height"):
        coords.check_image_size(10, size)
