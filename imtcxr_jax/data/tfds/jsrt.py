"""JSRT database with the SCR lung and heart outlines (data-eval-ecosystem §1.10).

Manual dir: the JSRT ``.IMG`` files (anywhere below, e.g. ``All247images/JPCLN001.IMG``) and the SCR masks
``.../masks/{left lung,right lung,heart}/<name>.gif`` (optionally under ``fold1/`` / ``fold2/``).

* Images: raw, **no header**, 2048x2048, 12-bit values in big-endian 16-bit words (``>u2``), inverted
  relative to display. Stored as 16-bit PNG with ``(4095 - v) * 65535 // 4095`` (bone bright, full 16-bit
  range, exact). A file of the wrong length or with values above 4095 is ``unreadable_image``.
* Outlines: each SCR mask (GIF, half resolution, 1024x1024) becomes a 30-point polygon
  (`geometry.mask_to_polygon`) scaled by image size / mask size (2) to image pixels. An image missing one of
  the three masks is a ``bad_field`` reject.
* Split: SCR's fold1 -> train, fold2 -> test when the masks are under fold folders; otherwise
  `common.patient_split` on the image name (one image per patient). Family: segmentation.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from imtcxr_jax import geometry
from imtcxr_jax.data.tfds import common
from imtcxr_jax.data.tfds.common import BadRow, EncodedImage, Item, Rejected

NAME = "jsrt"
SIDE = 2048
MAX_VALUE = 4095
STRUCTURES = ("right lung", "left lung", "heart")


def read_raw(path: Path) -> np.ndarray:
    """A JSRT .IMG -> uint16 (2048, 2048) display values (bone bright), scaled to 0..65535."""
    data = path.read_bytes() if path.is_file() else None
    if data is None:
        raise BadRow("missing_image", f"image file {path} does not exist")
    if len(data) != SIDE * SIDE * 2:
        raise BadRow(
            "unreadable_image", f"{path}: {len(data)} bytes, expected {SIDE * SIDE * 2} (2048x2048 >u2)"
        )
    values = np.frombuffer(data, dtype=">u2").reshape(SIDE, SIDE).astype(np.uint32)
    if values.max() > MAX_VALUE:
        raise BadRow(
            "unreadable_image", f"{path}: value {int(values.max())} > {MAX_VALUE} (expected 12-bit data)"
        )
    return ((MAX_VALUE - values) * 65535 // MAX_VALUE).astype(np.uint16)


def mask_polygon(path: Path, image_side: int = SIDE) -> list[list[float]]:
    with Image.open(path) as image:
        mask = np.asarray(image.convert("L")) > 127
    if mask.shape[0] != mask.shape[1] or not mask.any():
        raise BadRow(
            "invalid_polygon", f"{path}: mask {mask.shape[1]}x{mask.shape[0]} is not square or is empty"
        )
    scale = image_side / mask.shape[0]
    return (geometry.mask_to_polygon(mask, 30) * scale).round(2).tolist()


class Jsrt(common.CxrBuilder, skip_registration=True):
    """JSRT: 247 PA radiographs (154 with a lung nodule) with SCR outlines of both lungs and the heart."""

    name = NAME
    FAMILIES = ("segmentation",)
    HOMEPAGE = "http://db.jsrt.or.jp/eng.php"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Register and download the JSRT database (http://db.jsrt.or.jp/eng.php; the 247 .IMG files) and the SCR
    masks (https://www.isi.uu.nl/Research/Databases/SCR/) into the manual dir.
    """

    def _items(self, manual_dir: Path) -> Iterator[Item | Rejected]:
        raws = common.file_index(manual_dir, [".img"])
        masks: dict[tuple[str, str], Path] = {}
        for path in sorted(manual_dir.rglob("*.gif")):
            if path.parent.name in STRUCTURES:
                masks[(path.parent.name, path.stem)] = path
        for stem, raw in raws.items():
            where = str(raw.relative_to(manual_dir))
            try:
                polygons = {}
                for structure in STRUCTURES:
                    if (structure, stem) not in masks:
                        raise BadRow("bad_field", f"no SCR {structure} mask ({structure}/{stem}.gif)")
                    polygons[structure] = mask_polygon(masks[(structure, stem)])
            except BadRow as bad:
                yield Rejected(bad.reason, where, bad.message)
                continue
            parts = masks[("heart", stem)].parts
            split = (
                "train"
                if "fold1" in parts
                else "test"
                if "fold2" in parts
                else common.patient_split(NAME, stem)
            )
            yield Item(
                key=stem,
                split=split,
                image=where,
                where=where,
                row={"labels": [], "polygons": polygons},
                patient=stem,
                extras={"nodule": stem.startswith("JPCLN")},
                load=_loader(raw),
            )


def _loader(path: Path):
    def load() -> EncodedImage:
        return common.encode_pixels(read_raw(path))

    return load
