"""Resize modes, jitter and the geometry that moves with the image."""

from __future__ import annotations

import numpy as np
import pytest

from imtcxr_jax import geometry
from imtcxr_jax.data import augment
from imtcxr_jax.data.phantom import generate_phantom
from imtcxr_jax.data.preprocess import to_model_input

STRONG = augment.JitterConfig(rotate_deg=10.0, scale=0.1, translate=0.05, brightness=0.0, contrast=0.0)


def test_letterbox_geometry_is_exact():
    # 128 x 64 onto 64: content 64 x 32 at offset (0, 16); every 2 x 2 block becomes one pixel.
    transform = augment.fit_transform(128, 64, 64, "letterbox")
    assert transform.content_size == (64, 32) and transform.content_offset == (0, 16)
    np.testing.assert_array_equal(
        transform.to_canvas([[0, 0], [128, 64], [10, 6]]), [[0, 16], [64, 48], [5, 19]]
    )
    np.testing.assert_array_equal(transform.boxes_to_canvas([20, 10, 40, 30]), [[10, 21, 20, 31]])

    image = np.full((64, 128), 100, np.uint8)
    image[10:30, 20:40] = 250  # a pixel-aligned square: the box [20, 10, 40, 30]
    canvas, _ = augment.prepare_image(image, 64, mode="letterbox", pad_value=7)
    grey = np.rint((canvas[..., 0] * 0.5 + 0.5) * 255).astype(int)
    assert (grey[:16] == 7).all() and (grey[48:] == 7).all()  # padding, exactly
    bright = geometry.mask_to_box(grey > 175)
    np.testing.assert_array_equal(bright, [10, 21, 20, 31])

    tall = augment.fit_transform(30, 90, 64, "letterbox")  # 21.33 px wide -> 21, centred at (64 - 21) // 2
    assert tall.content_size == (21, 64) and tall.content_offset == (21, 0)
    np.testing.assert_allclose(tall.to_canvas([[30, 90]]), [[42, 64]])


def test_stretch_without_jitter_is_the_original_preprocessing():
    image = generate_phantom(1, 96).image
    canvas, transform = augment.prepare_image(image, 64, mode="stretch")
    np.testing.assert_array_equal(canvas, to_model_input(image, 64))
    assert canvas.dtype == np.float32 and canvas.shape == (64, 64, 3)
    np.testing.assert_allclose(transform.to_canvas([[96, 48]]), [[64, 32]])


@pytest.mark.parametrize("mode", augment.RESIZE_MODES)
def test_inverse_after_forward_is_the_identity(mode):
    rng = np.random.default_rng(0)
    transform = augment.fit_transform(300, 200, 64, mode)
    points = rng.uniform([0, 0], [300, 200], size=(50, 2))
    np.testing.assert_allclose(transform.from_canvas(transform.to_canvas(points)), points, atol=1e-9)
    boxes = np.sort(rng.uniform(0, 200, size=(10, 2, 2)), axis=1).reshape(10, 4)  # x0 <= x1, y0 <= y1
    np.testing.assert_allclose(
        transform.boxes_from_canvas(transform.boxes_to_canvas(boxes)), boxes, atol=1e-9
    )
    jittered = transform.with_jitter(augment.sample_jitter(rng, STRONG, 64).matrix(64))
    canvas_points = jittered.to_canvas(points, clip=False)
    np.testing.assert_allclose(jittered.from_canvas(canvas_points, clip=False), points, atol=1e-9)
    np.testing.assert_allclose(jittered.inverse_matrix @ jittered.matrix, np.eye(3), atol=1e-12)
    # Letterbox answers in the padding map outside the original and are clipped back onto it.
    assert (transform.from_canvas([[0, 0], [64, 64]]) >= 0).all()


def test_polygons_stay_aligned_with_the_jittered_image():
    phantom = generate_phantom(3, 128)
    for seed in range(4):
        for name, polygon in phantom.polygons.items():
            mask = geometry.polygon_to_mask(polygon, (128, 128)).astype(np.uint8) * 255
            canvas, transform = augment.prepare_image(
                mask, 96, rng=np.random.default_rng(seed), jitter=STRONG
            )
            assert not np.allclose(transform.jitter_matrix, np.eye(3))
            drawn = canvas[..., 0] > 0
            moved = geometry.polygon_to_mask(transform.to_canvas(polygon), (96, 96))
            assert geometry.dice(drawn, moved) > 0.97, (seed, name)


def test_boxes_enclose_the_jittered_rectangle_and_are_clipped_not_dropped():
    image = np.zeros((80, 80), np.uint8)
    image[20:50, 30:60] = 255
    box = [30, 20, 60, 50]
    for seed in range(4):
        canvas, transform = augment.prepare_image(image, 80, rng=np.random.default_rng(seed), jitter=STRONG)
        moved = transform.boxes_to_canvas(box)[0]
        drawn = geometry.mask_to_box(canvas[..., 0] > 0)
        assert np.abs(moved - drawn).max() <= 1.0, (seed, moved, drawn)

    shifted = augment.fit_transform(80, 80, 80).with_jitter(augment.Jitter(shift_x=40.0).matrix(80))
    boxes = shifted.boxes_to_canvas([[30, 20, 60, 50], [70, 0, 80, 10]])
    np.testing.assert_allclose(boxes, [[70, 20, 80, 50], [80, 0, 80, 10]])  # the second left the canvas
    polygon = shifted.to_canvas([[10, 10], [60, 10], [60, 40]])
    np.testing.assert_allclose(polygon, [[50, 10], [80, 10], [80, 40]])


def test_jitter_draws_are_reproducible_and_within_range():
    config = augment.JitterConfig(rotate_deg=4.0, scale=0.1, translate=0.05, brightness=0.2, contrast=0.3)
    draws = [augment.sample_jitter(np.random.default_rng(seed), config, 100) for seed in range(50)]
    assert draws[7] == augment.sample_jitter(np.random.default_rng(7), config, 100)
    assert all(abs(d.angle_deg) <= 4 and abs(d.scale - 1) <= 0.1 and abs(d.shift_x) <= 5 for d in draws)
    assert all(abs(d.brightness - 1) <= 0.2 and abs(d.contrast - 1) <= 0.3 for d in draws)
    assert len({d.angle_deg for d in draws}) == 50
    off = augment.sample_jitter(np.random.default_rng(0), augment.JitterConfig(0, 0, 0, 0, 0), 100)
    assert off.is_geometric_identity and off.brightness == off.contrast == 1.0

    image = generate_phantom(2, 64).image
    first, _ = augment.prepare_image(image, 64, rng=np.random.default_rng(5), jitter=config)
    again, _ = augment.prepare_image(image, 64, rng=np.random.default_rng(5), jitter=config)
    other, _ = augment.prepare_image(image, 64, rng=np.random.default_rng(6), jitter=config)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    with pytest.raises(ValueError, match="rotate_deg"):
        augment.JitterConfig(rotate_deg=-1.0)


def test_photometric_jitter_leaves_the_padding_alone():
    image = np.full((32, 64), 120, np.uint8)
    image[:, :32] = 200
    photometric = augment.JitterConfig(0, 0, 0, brightness=0.5, contrast=0.5)
    canvas, transform = augment.prepare_image(
        image, 64, rng=np.random.default_rng(1), jitter=photometric, pad_value=0
    )
    grey = (canvas[..., 0] * 0.5 + 0.5) * 255
    assert np.allclose(transform.jitter_matrix, np.eye(3))
    assert (grey[:16] == 0).all() and (grey[48:] == 0).all()
    assert not np.allclose(grey[16:48, :32], 200)  # the content did change


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="resize mode 'crop'"):
        augment.fit_transform(10, 10, 64, "crop")
    with pytest.raises(ValueError, match="width"):
        augment.fit_transform(0, 10, 64)
    with pytest.raises(ValueError, match="transform was made for 20x10"):
        augment.render_canvas(np.zeros((10, 10), np.uint8), augment.fit_transform(20, 10, 64))


def test_grey_and_rgb_inputs_give_the_same_canvas():
    grey = generate_phantom(4, 80).image
    config = augment.JitterConfig(rotate_deg=5.0, brightness=0.2, contrast=0.2)
    from_grey, t1 = augment.prepare_image(grey, 64, rng=np.random.default_rng(2), jitter=config)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    from_rgb, t2 = augment.prepare_image(rgb, 64, rng=np.random.default_rng(2), jitter=config)
    np.testing.assert_array_equal(from_grey, from_rgb)
    np.testing.assert_array_equal(t1.matrix, t2.matrix)
    canvas = augment.render_canvas(grey, t1)
    assert canvas.shape == (64, 64, 3) and canvas.dtype == np.uint8
