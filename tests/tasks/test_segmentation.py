"""Polygons of lungs, heart and pneumothorax: naming, target bins, parsing, unparseable outputs."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from imtcxr_jax.tasks import Task, Unparseable
from imtcxr_jax.tasks import segmentation as seg
from imtcxr_jax.text.coords import NUM_BINS


@st.composite
def image_and_polygon(draw):
    width = draw(st.floats(1.0, 4096.0))
    height = draw(st.floats(1.0, 4096.0))
    n = draw(st.integers(3, 40))
    xs = draw(st.lists(st.floats(0.0, width), min_size=n, max_size=n))
    ys = draw(st.lists(st.floats(0.0, height), min_size=n, max_size=n))
    return width, height, np.stack([xs, ys], axis=1)


@given(image_and_polygon())
def test_polygon_round_trip_within_half_a_bin(example):
    width, height, points = example
    target = seg.polygon_target(points, width, height)
    parsed = seg.parse_polygon(target, width, height, num_points=len(points))
    assert parsed.shape == points.shape
    half_bin = np.array([width, height]) / (NUM_BINS - 1) / 2
    assert np.all(np.abs(parsed - points) <= half_bin * (1 + 1e-9))
    np.testing.assert_array_equal(seg.parse_polygon(target, width, height), parsed)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("left_lung", "left lung"),
        ("Right Lung", "right lung"),
        ("heart", "heart"),
        ("pneumothorax", "pneumothorax"),
    ],
)
def test_structure_names(name, expected):
    assert seg.structure_name(name) == expected
    assert seg.segmentation_instruction(name) == f"please segment the {expected} from the given image."


def test_unknown_structure_is_named():
    with pytest.raises(ValueError, match="unknown structure 'liver'; expected one of: left lung, right lung"):
        seg.segmentation_instruction("liver")


def test_sample():
    sample = seg.segmentation_sample("heart", [[0, 0], [640, 0], [320, 480]], 640, 480)
    assert sample.task is Task.SEGMENTATION
    assert sample.target == "<bin_0> <bin_0> <bin_999> <bin_0> <bin_500> <bin_999>"
    np.testing.assert_allclose(seg.parse_polygon([0, 0, 999, 0, 500, 999], 640, 480)[1], [640, 0])


@pytest.mark.parametrize(
    ("output", "num_points", "reason"),
    [
        ("", None, "empty output"),
        ("<bin_1> <bin_2> <bin_3>", None, "3 location bins is odd"),
        ("<bin_1> <bin_2> <bin_3> <bin_4>", None, "2 points; a polygon needs at least 3"),
        ("<bin_1> <bin_2> <bin_3> <bin_4> <bin_5> <bin_6>", 4, "6 location bins; expected 8 (4 points)"),
        ("<bin_1> <bin_2> heart <bin_4> <bin_5> <bin_6>", None, "'heart' is not a location bin word"),
        ("<bin_1> <bin_2> <bin_3> <bin_4> <bin_5> <bin_6000>", None, "bin 6000 is outside"),
    ],
)
def test_unparseable_polygons(output, num_points, reason):
    result = seg.parse_polygon(output, 640, 480, num_points=num_points)
    assert result == Unparseable(output, result.reason)
    assert reason in result.reason


def test_polygon_target_errors():
    with pytest.raises(ValueError, match="at least 3 points, got 2"):
        seg.polygon_target([[0, 0], [1, 1]], 640, 480)
    with pytest.raises(ValueError, match=r"y coordinate 481.0"):
        seg.polygon_target([[0, 0], [1, 1], [2, 481]], 640, 480)
    with pytest.raises(ValueError, match="num_points must be >= 3"):
        seg.parse_polygon("<bin_1>", 640, 480, num_points=2)


def test_original_segmentation_fields():
    assert seg.structure_from_field("left lung&&right lung&&heart") == "heart"
    assert seg.structure_from_field("left") == "left lung"
    np.testing.assert_array_equal(seg.polygon_from_field("1,2;3,4,5,6"), [[1, 2], [3, 4], [5, 6]])
    with pytest.raises(ValueError, match="'1,2,3' has 3 numbers"):
        seg.polygon_from_field("1,2,3")
    with pytest.raises(ValueError, match="is empty"):
        seg.structure_from_field(" && ")
