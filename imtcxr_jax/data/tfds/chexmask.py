"""CheXmask (PhysioNet chexmask-cxr-segmentation-data; data-eval-ecosystem §1.5): lungs and heart outlines.

Manual dir: one or more CheXmask CSVs (``OriginalResolution/<Source>.csv``; any CSV whose header has
``Dice RCA (Mean)``), columns ``<id>, Dice RCA (Mean), Dice RCA (Max), Landmarks, Left Lung, Right Lung, Heart,
Height, Width`` -- the first column is the source dataset's own id (``image_id`` for VinDr, ``dicom_id`` for
MIMIC, ...) -- and the source images below the manual dir, found by file stem (an id holding a ``/`` is a path
relative to the manual dir).

* Masks: RLE with absolute, 1-based starts, row-major over ``Height x Width`` (`rle.chexmask_decode`); a bad
  one is a ``malformed_rle`` reject. ``Height``/``Width`` must match the image (``image_size_mismatch``).
* Polygons: the 120 landmarks (44 right lung, 50 left lung, 26 heart; left/right are the patient's), which
  are the contours the masks were filled from; the string is parsed robustly (any separators). Each landmark
  polygon must agree with its decoded mask (Dice >= `MIN_AGREEMENT` after `geometry.polygon_to_mask`), else
  ``invalid_polygon``. Without landmarks the polygon is the mask's (`geometry.mask_to_polygon`, 30 points).
* Quality: rows with ``Dice RCA (Mean)`` < `MIN_RCA` (0.7, the CheXmask authors' advice) are skipped by
  policy and counted.
* Split: `common.patient_split` on the image id (CheXmask carries no patient id) [choice]. Family:
  segmentation only (no disease labels).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from imtcxr_jax import geometry
from imtcxr_jax.data.tfds import common, rle
from imtcxr_jax.data.tfds.common import BadRow, EncodedImage, Item, Rejected

NAME = "chexmask"
MIN_RCA = 0.7
MIN_AGREEMENT = 0.9
LANDMARKS = {"right lung": slice(0, 44), "left lung": slice(44, 94), "heart": slice(94, 120)}
MASK_COLUMNS = {"right lung": "Right Lung", "left lung": "Left Lung", "heart": "Heart"}
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def parse_landmarks(text: str) -> np.ndarray:
    """The Landmarks cell -> (120, 2) float; BadRow unless it holds exactly 240 numbers."""
    values = [float(v) for v in _NUMBER.findall(text)]
    if len(values) != 240:
        raise BadRow("invalid_polygon", f"Landmarks holds {len(values)} numbers, expected 120 (x, y) points")
    return np.asarray(values).reshape(120, 2)


def row_polygons(row: dict[str, str], where: str) -> dict[str, list[list[float]]]:
    """Structure -> polygon of one CSV row, checked against its masks (module docstring)."""
    height = int(common.number(row["Height"], "Height"))
    width = int(common.number(row["Width"], "Width"))
    landmarks = parse_landmarks(row["Landmarks"]) if row["Landmarks"].strip() else None
    polygons = {}
    for structure, column in MASK_COLUMNS.items():
        try:
            mask = rle.chexmask_decode(row[column], height, width)
        except rle.RLEError as error:
            raise BadRow("malformed_rle", f"column {column!r}: {error}") from None
        if landmarks is not None:
            polygon = landmarks[LANDMARKS[structure]]
            agreement = geometry.dice(geometry.polygon_to_mask(polygon, (height, width)), mask)
            if agreement < MIN_AGREEMENT:
                raise BadRow(
                    "invalid_polygon",
                    f"{structure} landmarks and the {column!r} mask disagree (Dice {agreement:.3f} < {MIN_AGREEMENT})",
                )
        elif mask.any():
            polygon = geometry.mask_to_polygon(mask, 30)
        else:
            continue
        polygons[structure] = np.round(polygon, 2).tolist()
    return polygons


class Chexmask(common.CxrBuilder, skip_registration=True):
    """CheXmask: anatomically plausible lung and heart outlines for the images of five public datasets."""

    name = NAME
    FAMILIES = ("segmentation",)
    HOMEPAGE = "https://physionet.org/content/chexmask-cxr-segmentation-data/"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download the CheXmask CSVs (https://physionet.org/content/chexmask-cxr-segmentation-data/, OriginalResolution/)
    into the manual dir, together with the images of the source dataset(s) they describe (ChestX-ray8,
    CheXpert, MIMIC-CXR-JPG, PadChest, VinDr-CXR), anywhere below it.
    """

    def _items(self, manual_dir: Path) -> Iterator[Item | Rejected]:
        assert self.build_log is not None
        tables = []
        for path in sorted(manual_dir.rglob("*.csv")):
            with path.open(encoding="utf-8-sig") as f:
                if "Dice RCA (Mean)" in f.readline():
                    tables.append(path)
        if not tables:
            raise FileNotFoundError(f"{manual_dir}: no CheXmask CSV (a header with 'Dice RCA (Mean)')")
        images = common.file_index(manual_dir, [".png", ".jpg", ".jpeg", ".dcm", ".dicom"])
        required = ["Dice RCA (Mean)", "Landmarks", *MASK_COLUMNS.values(), "Height", "Width"]
        for path in tables:
            table = common.CsvTable(path, required)
            id_column = table.header[0]
            for where, row in table:
                if row is None:
                    yield table.wrong_width(where)
                    continue
                image_id = row[id_column]
                try:
                    if common.number(row["Dice RCA (Mean)"], "Dice RCA (Mean)") < MIN_RCA:
                        self.build_log.skip(f"Dice RCA (Mean) < {MIN_RCA}")
                        continue
                    relative = _image(manual_dir, images, image_id)
                    polygons = row_polygons(row, where)
                    size = (int(float(row["Width"])), int(float(row["Height"])))
                except BadRow as bad:
                    yield Rejected(bad.reason, where, bad.message)
                    continue
                yield Item(
                    key=f"{path.stem}/{image_id}",
                    split=common.patient_split(NAME, image_id),
                    image=relative,
                    where=where,
                    row={"labels": [], "polygons": polygons},
                    patient=image_id,
                    extras={"source": path.stem, "id_column": id_column},
                    check=_size_check(size),
                )


def _image(manual_dir: Path, images: dict[str, Path], image_id: str) -> str:
    if "/" in image_id:
        if not (manual_dir / image_id).is_file():
            raise BadRow("missing_image", f"image {image_id} not found under {manual_dir}")
        return image_id
    stem = image_id.rsplit(".", 1)[0] if image_id.lower().endswith((".png", ".jpg", ".dcm")) else image_id
    if stem not in images:
        raise BadRow("missing_image", f"no image file named {stem}.* under {manual_dir}")
    return str(images[stem].relative_to(manual_dir))


def _size_check(size: tuple[int, int]):
    def check(image: EncodedImage) -> None:
        if (image.width, image.height) != size:
            raise BadRow(
                "image_size_mismatch", f"image is {image.width}x{image.height}, Width/Height say {size}"
            )

    return check
