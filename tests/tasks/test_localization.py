"""Boxes of a lesion: instruction, target bins, parsing back to pixels, unparseable outputs."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from imtcxr_jax.tasks import Task, Unparseable
from imtcxr_jax.tasks import localization as loc
from imtcxr_jax.text.coords import NUM_BINS


@st.composite
def image_and_boxes(draw):
    width = draw(st.floats(1.0, 4096.0))
    height = draw(st.floats(1.0, 4096.0))
    count = draw(st.integers(1, 6))
    boxes = []
    for _ in range(count):
        x0, x1 = sorted(draw(st.floats(0.0, width)) for _ in range(2))
        y0, y1 = sorted(draw(st.floats(0.0, height)) for _ in range(2))
        boxes.append([x0, y0, x1, y1])
    return width, height, np.array(boxes)


@given(image_and_boxes())
def test_box_round_trip_within_half_a_bin(example):
    width, height, boxes = example
    target = loc.box_target(boxes, width, height)
    assert len(target.split()) == 4 * len(boxes)
    parsed = loc.parse_boxes(target, width, height)
    assert parsed.shape == boxes.shape
    half_bin = np.array([width, height, width, height]) / (NUM_BINS - 1) / 2
    assert np.all(np.abs(parsed - boxes) <= half_bin * (1 + 1e-9))
    assert np.all(parsed[:, :2] <= parsed[:, 2:])  # rounding keeps corners ordered


def test_box_sample_and_several_boxes():
    sample = loc.box_sample("Nodule", [[64, 48, 320, 240], [0, 0, 640, 480]], 640, 480)
    assert sample.task is Task.BOX
    assert sample.instruction == "give the accurate bbox of nodule."
    assert sample.target == "<bin_100> <bin_100> <bin_500> <bin_500> <bin_0> <bin_0> <bin_999> <bin_999>"
    assert loc.box_target([64, 48, 320, 240], 640, 480) == "<bin_100> <bin_100> <bin_500> <bin_500>"
    np.testing.assert_allclose(loc.parse_boxes([0, 0, 999, 999], 640, 480), [[0, 0, 640, 480]])


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        ("", "empty output"),
        ("cardiomegaly", "'cardiomegaly' is not a location bin word"),
        ("<bin_1> <bin_2> <bin_3>", "3 location bins is not a positive multiple of 4"),
        ("<bin_1> <bin_2> <bin_3> <bin_4> <bin_5>", "5 location bins"),
        ("<bin_1> <bin_2> <bin_3> <bin_1000>", "bin 1000 is outside 0..999"),
        ("<bin_9> <bin_2> <bin_3> <bin_4>", "box of bins [9, 2, 3, 4] has x0 > x1"),
        ("<bin_1> <bin_2> <bin_3> <bin_4> <bin_1> <bin_9> <bin_3> <bin_4>", "[1, 9, 3, 4]"),
        ("<bin_1> <bin_2> there <bin_3> <bin_4>", "'there'"),
        ([1, 2, -3, 4], "'<bin_-3>'"),
    ],
)
def test_unparseable_boxes_carry_the_raw_text_and_a_reason(output, reason):
    result = loc.parse_boxes(output, 640, 480)
    assert isinstance(result, Unparseable)
    assert reason in result.reason
    assert result.raw == (output if isinstance(output, str) else "<bin_1> <bin_2> <bin_-3> <bin_4>")


def test_box_target_errors_name_the_value():
    with pytest.raises(ValueError, match=r"box \[30.0, 20.0, 10.0, 40.0\] has x0 > x1"):
        loc.box_target([30, 20, 10, 40], 640, 480)
    with pytest.raises(ValueError, match=r"x coordinate 641.0 is outside the image \(width 640 x height 480"):
        loc.box_target([[0, 0, 10, 10], [0, 0, 641, 10]], 640, 480)
    with pytest.raises(ValueError, match=r"k >= 1; got shape \(0, 4\)"):
        loc.box_target(np.zeros((0, 4)), 640, 480)
    with pytest.raises(ValueError, match="image width"):
        loc.parse_boxes("<bin_1> <bin_2> <bin_3> <bin_4>", 0, 480)  # the caller's error, not the model's


def test_original_box_field():
    groups = loc.boxes_from_field("10,20,30,40,50,60,70,80&&1,2,3,4")
    assert [g.tolist() for g in groups] == [[[10, 20, 30, 40], [50, 60, 70, 80]], [[1, 2, 3, 4]]]
    with pytest.raises(ValueError, match="'1,2,3' has 3 numbers"):
        loc.boxes_from_field("1,2,3")
    with pytest.raises(ValueError, match="'1,x,3,4'"):
        loc.boxes_from_field("1,x,3,4")
