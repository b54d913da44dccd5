"""An overlay picture of an evidence document (`imtcxr_jax.workflow`) on its image.

What is drawn, in the document's original-pixel coordinates scaled to the picture:

* the lung contours (cyan), the heart (red) and a pneumothorax (yellow), from ``segmentation``;
* each finding's box (orange) with its label and confidence, e.g. ``pleural effusion 0.82``;
* the CTR: the heart's and the thorax's widest horizontal spans as two lines (green) and ``CTR 0.57
  (moderate)``; when CTR is undefined its reason is written instead;
* a legend in the top-left corner: every finding with confidence, location and severity, then PCR.

Size. The picture is the image rescaled so that its longer side lies in [`MIN_SIDE`, `MAX_SIDE`]: a
20000 x 20000 radiograph is drawn at 2048 x 2048 (the JSON keeps the original coordinates), a 64 px phantom is
enlarged (nearest neighbour, so its pixels stay visible) for the text to be legible. Line widths and the font
follow the picture's size.

The drawing reads the document leniently: a user may have edited it, so a malformed polygon or box is skipped
rather than failing the picture.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from imtcxr_jax import geometry
from imtcxr_jax.data.preprocess import to_rgb_uint8

MIN_SIDE = 512
MAX_SIDE = 2048
COLOURS = {
    "right lung": (0, 200, 255),
    "left lung": (0, 200, 255),
    "heart": (255, 60, 60),
    "pneumothorax": (255, 230, 0),
    "box": (255, 150, 0),
    "ctr": (60, 230, 60),
    "text": (255, 255, 255),
    "shadow": (0, 0, 0),
}


def draw_overlay(pixels: np.ndarray, document: Mapping[str, Any]) -> Image.Image:
    """The overlay of `document` on `pixels` (uint8 (H, W) or (H, W, 1|3|4); the original image or a scaled
    copy of it, e.g. `LoadedImage.pixels`), as an RGB PIL image (module docstring)."""
    base = Image.fromarray(to_rgb_uint8(np.asarray(pixels)))
    width, height = int(document["image"]["width"]), int(document["image"]["height"])
    long_side = max(base.size)
    target = min(max(long_side, MIN_SIDE), MAX_SIDE)
    size = (max(1, round(base.width * target / long_side)), max(1, round(base.height * target / long_side)))
    if size != base.size:
        enlarging = target > long_side
        resample = Image.Resampling.NEAREST if enlarging else Image.Resampling.BILINEAR
        base = base.resize(size, resample, reducing_gap=None if enlarging else 2.0)
    scale = np.array([base.width / width, base.height / height])  # original pixels -> picture pixels
    canvas = _Canvas(base, scale)

    polygons = _polygons(document.get("segmentation", {}))
    for name, polygon in polygons.items():
        canvas.polygon(polygon, COLOURS.get(name, COLOURS["box"]))
    for finding in document.get("findings", []):
        box = _box(finding.get("box"))
        if box is not None:
            canvas.box(box, COLOURS["box"], f"{finding.get('label', '?')} {_confidence(finding)}".strip())
    _draw_ctr(canvas, document, polygons)
    canvas.legend(_legend_lines(document))
    return base


def save_overlay(pixels: np.ndarray, document: Mapping[str, Any], path: str | Path) -> Path:
    """`draw_overlay` written as a PNG to `path`."""
    path = Path(path)
    draw_overlay(pixels, document).save(path, format="PNG")
    return path


class _Canvas:
    """Drawing in original-image coordinates on the (rescaled) picture."""

    def __init__(self, image: Image.Image, scale: np.ndarray):
        self.draw = ImageDraw.Draw(image)
        self.scale = scale
        side = max(image.size)
        self.line = max(1, round(side / 400))
        self.font = ImageFont.load_default(size=max(10, round(side / 40)))

    def _xy(self, points: np.ndarray) -> list[tuple[float, float]]:
        return [tuple(p) for p in (np.asarray(points, np.float64) * self.scale).tolist()]

    def polygon(self, points: np.ndarray, colour: tuple[int, int, int]) -> None:
        xy = self._xy(points)
        self.draw.line([*xy, xy[0]], fill=colour, width=self.line, joint="curve")

    def box(self, box: np.ndarray, colour: tuple[int, int, int], label: str) -> None:
        (x0, y0), (x1, y1) = self._xy(box.reshape(2, 2))
        self.draw.rectangle([x0, y0, max(x0, x1), max(y0, y1)], outline=colour, width=self.line)
        top = self.draw.textbbox((0, 0), label, font=self.font)[3]
        self.text((x0, max(0.0, y0 - top - self.line)), label, colour)

    def segment(
        self, start: tuple[float, float], end: tuple[float, float], colour: tuple[int, int, int]
    ) -> None:
        self.draw.line(self._xy(np.array([start, end])), fill=colour, width=self.line)

    def text(self, xy: tuple[float, float], text: str, colour: tuple[int, int, int]) -> None:
        # A dark outline keeps the text legible on bright bone and dark lung alike.
        self.draw.text(
            xy,
            text,
            fill=colour,
            font=self.font,
            stroke_width=max(1, self.line // 2),
            stroke_fill=COLOURS["shadow"],
        )

    def text_below(self, point: tuple[float, float], text: str, colour: tuple[int, int, int]) -> None:
        """Text just below `point` (original coordinates), starting at its x."""
        ((x, y),) = self._xy(np.array([point]))
        self.text((x, y + 2 * self.line), text, colour)

    def legend(self, lines: Sequence[str]) -> None:
        y = float(self.line)
        for line in lines:
            self.text((float(self.line * 2), y), line, COLOURS["text"])
            y += self.draw.textbbox((0, 0), line, font=self.font)[3] + self.line


def _polygons(segmentation: Any) -> dict[str, np.ndarray]:
    out = {}
    if isinstance(segmentation, Mapping):
        for name, points in segmentation.items():
            try:
                out[str(name)] = geometry.validate_polygon(points, str(name))
            except ValueError:
                continue  # an edited document: draw what is valid
    return out


def _box(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    try:
        return geometry.validate_box(value)
    except ValueError:
        return None


def _confidence(finding: Mapping[str, Any]) -> str:
    confidence = finding.get("confidence")
    return f"{confidence:.2f}" if isinstance(confidence, int | float) else ""


def _draw_ctr(canvas: _Canvas, document: Mapping[str, Any], polygons: Mapping[str, np.ndarray]) -> None:
    """The heart's and the thorax's spans CTR is measured from, one line each, with the ratio."""
    measurements = document.get("measurements", {})
    if not all(name in polygons for name in ("heart", "left lung", "right lung")):
        return
    ctr = geometry.cardiothoracic_ratio(polygons["heart"], polygons["left lung"], polygons["right lung"])
    if ctr.heart_span is None or ctr.thorax_span is None:
        return
    # Spans are widths over all rows; draw them at the heart's mid height and just below it.
    heart_y = float(np.mean(polygons["heart"][:, 1]))
    lungs = np.concatenate([polygons["left lung"], polygons["right lung"]])
    thorax_y = min(float(lungs[:, 1].max()), heart_y + 0.1 * float(np.ptp(lungs[:, 1])))
    colour = COLOURS["ctr"]
    canvas.segment((ctr.heart_span[0], heart_y), (ctr.heart_span[1], heart_y), colour)
    canvas.segment((ctr.thorax_span[0], thorax_y), (ctr.thorax_span[1], thorax_y), colour)
    value = measurements.get("ctr", ctr.value)
    if isinstance(value, int | float):
        severity = geometry.ctr_severity(float(value)) if value >= 0 else None
        canvas.text_below((ctr.thorax_span[0], thorax_y), f"CTR {value:.2f} ({severity})", colour)


def _legend_lines(document: Mapping[str, Any]) -> list[str]:
    lines = []
    for finding in document.get("findings", []):
        details = ", ".join(str(v) for v in (finding.get("location"), finding.get("severity")) if v)
        text = f"{finding.get('label', '?')} {_confidence(finding)}".strip()
        lines.append(f"{text} ({details})" if details else text)
    if not lines:
        lines.append("no finding")
    measurements = document.get("measurements", {})
    for name in ("ctr", "pcr"):
        value = measurements.get(name)
        if isinstance(value, int | float):
            lines.append(f"{name.upper()} {value:.2f}")
        elif measurements.get(f"{name}_reason") and name == "ctr":
            lines.append(f"CTR: {measurements[f'{name}_reason']}")
    return lines
