"""Image -> model canvas, and the geometry that moves with it: resize modes, training jitter, inverse maps.

Every image the model sees is a square ``size x size`` *canvas*. A `CanvasTransform` records how the
original image was put on it, as one affine map of pixel coordinates (the conventions of
`imtcxr_jax.geometry`: x right, y down, a ``W x H`` image spans ``[0, W] x [0, H]``)::

    canvas (x', y', 1) = matrix @ (x, y, 1)        matrix = jitter_matrix @ fit_matrix

* ``fit_matrix`` is the deterministic resize (`fit_transform`):

  - ``"letterbox"``: scale by ``size / max(W, H)`` so the whole image fits, round the resized sides to whole
    pixels (``rw x rh``), and centre it with padding (``pad_value``) on the short axis. The map is
    ``x' = x * rw / W + ox``, ``y' = y * rh / H + oy`` with ``ox = (size - rw) // 2``, ``oy = (size - rh) // 2``,
    exact for the resized image: the image's edges land on the content's pixel edges.
  - ``"stretch"``: resize to exactly ``size x size`` (aspect ratio lost), ``x' = x * size / W``,
    ``y' = y * size / H``; what the original does (spec §11), so its bins equal ``round(999 x / W)``.

* ``jitter_matrix`` is a small random similarity about the canvas centre (rotation, isotropic scale,
  translation; `sample_jitter`), identity when not training.

Geometry follows the image through the same matrix: points (polygon vertices) are mapped directly; a box is
replaced by the enclosing box of its four mapped corners. Both are then clipped to the canvas: after a
rotation or shift part of a structure may leave the canvas, and its visible part is what the image shows
(clipping here is geometry, nothing is dropped). `CanvasTransform.from_canvas` / `boxes_from_canvas` map
canvas coordinates (a model's answer) back to original pixels, clipped to the original image; without
jitter this is the exact inverse (up to float rounding), which is what inference uses.

Image pixels: the original is resized once with PIL bicubic to the letterbox content size (antialiased, so
large radiographs do not alias), brightness / contrast jitter is applied to the content only (padding keeps
``pad_value``), the content is pasted on the padded canvas, and the jitter (if any) is one bilinear PIL affine
resample with ``pad_value`` fill. `imtcxr_jax.data.preprocess.normalize_pixels` then gives float32 in [-1, 1].
With ``"stretch"`` and no jitter the result equals `preprocess.to_model_input` exactly.

Photometric jitter (as PIL's ImageEnhance does it): brightness multiplies by ``b``; contrast blends with the
mean grey level ``m`` of the (brightened) content, ``m + c (x - m)``; both clipped to [0, 255].
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from numpy.typing import ArrayLike, NDArray
from PIL import Image

from imtcxr_jax.data.preprocess import normalize_pixels, to_rgb_uint8

RESIZE_MODES = ("letterbox", "stretch")

Matrix = NDArray[np.float64]  # (3, 3) affine, last row (0, 0, 1)


# ------------------------------------------------------------------------------------------------------------
# The transform


@dataclasses.dataclass(frozen=True, eq=False)
class CanvasTransform:
    """Original image (``source_size`` = (width, height) pixels) -> ``canvas_size`` square canvas.

    ``fit_matrix`` is the resize (letterbox or stretch), ``jitter_matrix`` the training jitter applied on the
    canvas after it (identity at evaluation and inference). See the module docstring for the formulas.
    """

    source_size: tuple[int, int]  # (width, height) of the original image
    canvas_size: int
    mode: str
    fit_matrix: Matrix  # (3, 3)
    jitter_matrix: Matrix = dataclasses.field(default_factory=lambda: np.eye(3))  # (3, 3)

    @property
    def matrix(self) -> Matrix:
        """Original pixel coordinates -> canvas coordinates, (3, 3)."""
        return self.jitter_matrix @ self.fit_matrix

    @property
    def inverse_matrix(self) -> Matrix:
        """Canvas coordinates -> original pixel coordinates, (3, 3)."""
        return np.linalg.inv(self.matrix)

    @property
    def content_size(self) -> tuple[int, int]:
        """(width, height) in canvas pixels of the resized image before jitter (letterbox: ``rw x rh``)."""
        width, height = self.source_size
        return round(self.fit_matrix[0, 0] * width), round(self.fit_matrix[1, 1] * height)

    @property
    def content_offset(self) -> tuple[int, int]:
        """(ox, oy): where the resized image's top-left corner lies on the canvas before jitter."""
        return round(self.fit_matrix[0, 2]), round(self.fit_matrix[1, 2])

    def with_jitter(self, jitter_matrix: Matrix) -> CanvasTransform:
        """The same resize followed by ``jitter_matrix`` (canvas -> canvas, (3, 3))."""
        return dataclasses.replace(self, jitter_matrix=np.asarray(jitter_matrix, np.float64))

    # Points ------------------------------------------------------------------------------------------------

    def to_canvas(self, points: ArrayLike, *, clip: bool = True) -> NDArray[np.float64]:
        """Points (..., 2) in original pixels -> canvas pixels, clipped to [0, size] unless ``clip=False``."""
        mapped = _apply(self.matrix, points)
        return _clip_points(mapped, self.canvas_size, self.canvas_size) if clip else mapped

    def from_canvas(self, points: ArrayLike, *, clip: bool = True) -> NDArray[np.float64]:
        """Points (..., 2) in canvas pixels -> original pixels, clipped to the original image unless
        ``clip=False`` (a letterbox answer in the padding maps outside the original)."""
        mapped = _apply(self.inverse_matrix, points)
        return _clip_points(mapped, *self.source_size) if clip else mapped

    # Boxes -------------------------------------------------------------------------------------------------

    def boxes_to_canvas(self, boxes: ArrayLike, *, clip: bool = True) -> NDArray[np.float64]:
        """Boxes (k, 4) (or one (4,)) x0, y0, x1, y1 in original pixels -> the enclosing boxes of their mapped
        corners on the canvas, (k, 4), clipped to the canvas unless ``clip=False``."""
        mapped = _enclosing_boxes(self.matrix, boxes)
        return _clip_boxes(mapped, self.canvas_size, self.canvas_size) if clip else mapped

    def boxes_from_canvas(self, boxes: ArrayLike, *, clip: bool = True) -> NDArray[np.float64]:
        """Boxes (k, 4) (or one (4,)) on the canvas -> original pixels, (k, 4), clipped to the original image
        unless ``clip=False``. Exact for the fit alone (axis-aligned); with jitter it is the enclosing box."""
        mapped = _enclosing_boxes(self.inverse_matrix, boxes)
        return _clip_boxes(mapped, *self.source_size) if clip else mapped


def fit_transform(width: int, height: int, size: int, mode: str = "letterbox") -> CanvasTransform:
    """The resize of a ``width x height`` image onto a ``size x size`` canvas (no jitter).

    Raises ValueError for an unknown mode or a non-positive size, naming it.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r} is not one of {RESIZE_MODES}")
    for name, value in (("width", width), ("height", height), ("canvas size", size)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer number of pixels, got {value!r}")
    width, height, size = int(width), int(height), int(size)
    if mode == "stretch":
        fit = np.array([[size / width, 0.0, 0.0], [0.0, size / height, 0.0], [0.0, 0.0, 1.0]])
    else:
        scale = size / max(width, height)
        # Whole-pixel content so that the resized image and the coordinate map agree exactly.
        content_w = min(size, max(1, round(width * scale)))
        content_h = min(size, max(1, round(height * scale)))
        offset_x, offset_y = (size - content_w) // 2, (size - content_h) // 2
        fit = np.array(
            [[content_w / width, 0.0, offset_x], [0.0, content_h / height, offset_y], [0.0, 0.0, 1.0]]
        )
    return CanvasTransform((width, height), size, mode, fit)


def _apply(matrix: Matrix, points: ArrayLike) -> NDArray[np.float64]:
    array = np.asarray(points, dtype=np.float64)
    if array.shape[-1:] != (2,):
        raise ValueError(f"points must have shape (..., 2) (x, y); got {array.shape}")
    return array @ matrix[:2, :2].T + matrix[:2, 2]


def _enclosing_boxes(matrix: Matrix, boxes: ArrayLike) -> NDArray[np.float64]:
    array = np.asarray(boxes, dtype=np.float64)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"boxes must have shape (k, 4) or (4,) (x0, y0, x1, y1); got {array.shape}")
    x0, y0, x1, y1 = array.T
    corners = np.stack([x0, y0, x1, y0, x1, y1, x0, y1], axis=-1).reshape(-1, 4, 2)  # (k, 4 corners, 2)
    mapped = _apply(matrix, corners)
    return np.concatenate([mapped.min(axis=1), mapped.max(axis=1)], axis=1)


def _clip_points(points: NDArray[np.float64], width: float, height: float) -> NDArray[np.float64]:
    return np.clip(points, 0.0, np.array([width, height], dtype=np.float64))


def _clip_boxes(boxes: NDArray[np.float64], width: float, height: float) -> NDArray[np.float64]:
    return np.clip(boxes, 0.0, np.array([width, height, width, height], dtype=np.float64))


# ------------------------------------------------------------------------------------------------------------
# Training jitter


@dataclasses.dataclass(frozen=True)
class JitterConfig:
    """Strengths of the training jitter; each parameter is drawn uniformly from the range given (0 = off).

    ``rotate_deg``: angle in [-r, r] degrees; ``scale``: factor in [1 - s, 1 + s]; ``translate``: shift in
    [-t, t] canvas sides per axis; ``brightness``: factor in [1 - b, 1 + b]; ``contrast``: factor in
    [1 - c, 1 + c]. The defaults are gentle: anatomy stays where a radiograph would put it.
    """

    rotate_deg: float = 3.0
    scale: float = 0.05
    translate: float = 0.03
    brightness: float = 0.1
    contrast: float = 0.1

    def __post_init__(self) -> None:
        limits = {"rotate_deg": 45.0, "scale": 0.5, "translate": 0.25, "brightness": 0.9, "contrast": 0.9}
        for name, upper in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= upper:
                raise ValueError(f"jitter {name} must be a number in [0, {upper}], got {value!r}")


@dataclasses.dataclass(frozen=True)
class Jitter:
    """One draw of the training jitter. Positive ``angle_deg`` turns the image counter-clockwise on screen."""

    angle_deg: float = 0.0
    scale: float = 1.0
    shift_x: float = 0.0  # canvas pixels
    shift_y: float = 0.0
    brightness: float = 1.0
    contrast: float = 1.0

    def matrix(self, size: int) -> Matrix:
        """Canvas -> canvas (3, 3): scale and rotate about the canvas centre, then shift."""
        theta = math.radians(self.angle_deg)
        cos, sin = self.scale * math.cos(theta), self.scale * math.sin(theta)
        centre = size / 2.0
        # With y pointing down, [[cos, sin], [-sin, cos]] turns counter-clockwise as seen on screen.
        linear = np.array([[cos, sin], [-sin, cos]])
        offset = np.array([centre + self.shift_x, centre + self.shift_y]) - linear @ np.array(
            [centre, centre]
        )
        matrix = np.eye(3)
        matrix[:2, :2], matrix[:2, 2] = linear, offset
        return matrix

    @property
    def is_geometric_identity(self) -> bool:
        return self.angle_deg == 0.0 and self.scale == 1.0 and self.shift_x == 0.0 and self.shift_y == 0.0


def sample_jitter(rng: np.random.Generator, config: JitterConfig, size: int) -> Jitter:
    """Draw one `Jitter` from ``rng`` (always six uniform draws in a fixed order, so a generator advanced
    by this call is in the same state whatever the strengths are)."""
    u = rng.uniform(-1.0, 1.0, size=6)
    return Jitter(
        angle_deg=float(u[0] * config.rotate_deg),
        scale=float(1.0 + u[1] * config.scale),
        shift_x=float(u[2] * config.translate * size),
        shift_y=float(u[3] * config.translate * size),
        brightness=float(1.0 + u[4] * config.brightness),
        contrast=float(1.0 + u[5] * config.contrast),
    )


# ------------------------------------------------------------------------------------------------------------
# Pixels


def render_canvas(
    image: np.ndarray, transform: CanvasTransform, jitter: Jitter | None = None, *, pad_value: int = 0
) -> NDArray[np.uint8]:
    """uint8 pixels (H, W), (H, W, 1|3|4) -> the uint8 (size, size, 3) canvas of ``transform``.

    ``jitter`` supplies the photometric factors; its geometric part must already be in
    ``transform.jitter_matrix`` (`prepare_image` keeps the two together). Raises ValueError if the image size
    is not the transform's ``source_size``.
    """
    canvas = _render(_grey_or_rgb(image), transform, jitter, pad_value)
    return canvas if canvas.ndim == 3 else np.repeat(canvas[..., None], 3, axis=-1)


def _grey_or_rgb(image: np.ndarray) -> NDArray[np.uint8]:
    """(H, W) grey or (H, W, 3) RGB uint8. Radiographs are grey: keeping one channel until the end makes the
    resize and the affine three times cheaper, with the same values per channel."""
    array = np.asarray(image)
    if array.dtype == np.uint8 and (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 1)):
        return array.reshape(array.shape[:2])
    return to_rgb_uint8(array)


def _render(
    pixels: NDArray[np.uint8], transform: CanvasTransform, jitter: Jitter | None, pad_value: int
) -> NDArray[np.uint8]:
    """`render_canvas` on (H, W) or (H, W, 3) pixels, keeping the channel layout."""
    return _compose(_fit_content(pixels, transform), transform, jitter, pad_value)


def _fit_content(pixels: NDArray[np.uint8], transform: CanvasTransform) -> NDArray[np.uint8]:
    """The image resized to ``transform.content_size`` (bicubic, antialiased), before padding and jitter."""
    height, width = pixels.shape[:2]
    if (width, height) != transform.source_size:
        raise ValueError(
            f"image is {width}x{height} pixels but the transform was made for "
            f"{transform.source_size[0]}x{transform.source_size[1]}"
        )
    content = Image.fromarray(pixels)
    if content.size != transform.content_size:
        content = content.resize(transform.content_size, Image.Resampling.BICUBIC)
    return np.asarray(content, dtype=np.uint8)


def _compose(
    content_pixels: NDArray[np.uint8], transform: CanvasTransform, jitter: Jitter | None, pad_value: int
) -> NDArray[np.uint8]:
    """Resized content -> the canvas: photometric jitter on the content, padding, then the affine jitter."""
    if not 0 <= pad_value <= 255:
        raise ValueError(f"pad_value must be a grey level in [0, 255], got {pad_value!r}")
    if jitter is not None and (jitter.brightness != 1.0 or jitter.contrast != 1.0):
        content_pixels = _photometric(content_pixels, jitter.brightness, jitter.contrast)
    content = Image.fromarray(content_pixels)
    size = transform.canvas_size
    fill = pad_value if content.mode == "L" else (pad_value,) * 3
    if transform.content_size == (size, size):
        canvas = content
    else:
        canvas = Image.new(content.mode, (size, size), fill)
        canvas.paste(content, transform.content_offset)
    if not np.array_equal(transform.jitter_matrix, np.eye(3)):
        # PIL maps each output pixel back to the input: it wants the inverse, first two rows. Its continuous
        # coordinates are those of geometry.py (pixel j spans [j, j + 1)), so no half-pixel correction.
        inverse = np.linalg.inv(transform.jitter_matrix)[:2].ravel()
        canvas = canvas.transform(
            (size, size),
            Image.Transform.AFFINE,
            data=tuple(inverse.tolist()),
            resample=Image.Resampling.BILINEAR,
            fillcolor=fill,
        )
    return np.asarray(canvas, dtype=np.uint8)


def _photometric(pixels: NDArray[np.uint8], brightness: float, contrast: float) -> NDArray[np.uint8]:
    """Brightness then contrast about the mean grey level (PIL's ImageEnhance), as a 256-entry lookup table:
    both are maps of the pixel value alone, so a table is exact and far cheaper than float arithmetic."""
    mean = brightness * float(pixels.mean(dtype=np.float64))
    values = mean + contrast * (brightness * np.arange(256, dtype=np.float64) - mean)
    table = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return table[pixels]


@dataclasses.dataclass(frozen=True, eq=False)
class FittedImage:
    """An image resized for its canvas: the part of `prepare_image` that no jitter changes, so a training
    pipeline can keep it (decoding and resizing cost more than the jitter) and draw a new jitter each time."""

    content: NDArray[np.uint8]  # (rh, rw) grey or (rh, rw, 3) RGB: the resized image, before padding
    transform: CanvasTransform  # the fit alone (no jitter)

    @property
    def nbytes(self) -> int:
        return self.content.nbytes


def fit_image(image: np.ndarray, size: int, *, mode: str = "letterbox") -> FittedImage:
    """uint8 pixels (H, W), (H, W, 1|3|4) -> the `FittedImage` of a ``size x size`` canvas."""
    pixels = _grey_or_rgb(image)
    transform = fit_transform(pixels.shape[1], pixels.shape[0], size, mode)
    return FittedImage(_fit_content(pixels, transform), transform)


def prepare_image(
    image: np.ndarray,
    size: int,
    *,
    mode: str = "letterbox",
    rng: np.random.Generator | None = None,
    jitter: JitterConfig | None = None,
    pad_value: int = 0,
) -> tuple[NDArray[np.float32], CanvasTransform]:
    """uint8 pixels -> (float32 (size, size, 3) model input in [-1, 1], the `CanvasTransform` used).

    With both ``rng`` and ``jitter`` given, a jitter is drawn from ``rng`` (grain's ``random_map`` hands one
    generator per element) and applied to the image; the returned transform includes it, so boxes and
    polygons mapped with it stay aligned with the pixels. Otherwise the image is only resized.
    """
    return prepare_fitted(fit_image(image, size, mode=mode), rng=rng, jitter=jitter, pad_value=pad_value)


def prepare_fitted(
    fitted: FittedImage,
    *,
    rng: np.random.Generator | None = None,
    jitter: JitterConfig | None = None,
    pad_value: int = 0,
) -> tuple[NDArray[np.float32], CanvasTransform]:
    """`prepare_image` from an image already fitted (`fit_image`): the same arrays and transform."""
    transform = fitted.transform
    size = transform.canvas_size
    drawn = None
    if rng is not None and jitter is not None:
        drawn = sample_jitter(rng, jitter, size)
        if not drawn.is_geometric_identity:
            transform = transform.with_jitter(drawn.matrix(size))
    canvas = normalize_pixels(_compose(fitted.content, transform, drawn, pad_value))
    if canvas.ndim == 2:
        canvas = np.repeat(canvas[..., None], 3, axis=-1)
    return canvas, transform
