import numpy as np
import pytest

from imtcxr_jax.data.tfds import rle
from tests.data.tfds.fixtures import disk


def test_chexmask_rle_is_one_based_row_major():
    mask = np.zeros((3, 4), dtype=bool)
    mask[0, 1:3] = True  # flat 1, 2 -> start 2
    mask[2, 3] = True  # flat 11 -> start 12
    assert rle.chexmask_encode(mask) == "2 2 12 1"
    np.testing.assert_array_equal(rle.chexmask_decode("2 2 12 1", 3, 4), mask)


def test_siim_rle_is_relative_column_major():
    mask = np.zeros((4, 3), dtype=bool)
    mask[1:3, 0] = True  # column-major flat 1, 2
    mask[0, 2] = True  # flat 8
    assert rle.siim_encode(mask) == "1 2 5 1"  # offset 1 from 0; offset 5 from the end of the first run (3)
    np.testing.assert_array_equal(rle.siim_decode("1 2 5 1", 4, 3), mask)
    assert not rle.siim_decode(" -1", 4, 3).any()


@pytest.mark.parametrize("shape", [(64, 64), (50, 70)])
def test_round_trips_on_disks(shape):
    mask = disk(20, 25, 9, shape) | disk(45, 30, 5, shape)
    np.testing.assert_array_equal(rle.chexmask_decode(rle.chexmask_encode(mask), *shape), mask)
    np.testing.assert_array_equal(rle.siim_decode(rle.siim_encode(mask), *shape), mask)


@pytest.mark.parametrize(
    ("text", "match"),
    [("1 2 3", "even"), ("0 2", "1-based"), ("10 5", "past"), ("1 3 2 1", "inside"), ("a 1", "integer")],
)
def test_chexmask_malformed(text, match):
    with pytest.raises(rle.RLEError, match=match):
        rle.chexmask_decode(text, 3, 4)


def test_siim_malformed():
    with pytest.raises(rle.RLEError, match="past"):
        rle.siim_decode("10 5", 3, 4)
    with pytest.raises(rle.RLEError, match="offset"):
        rle.siim_decode("-2 5", 3, 4)
