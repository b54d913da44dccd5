"""SIIM-ACR Pneumothorax Segmentation (Kaggle 2019; data-eval-ecosystem §1.6).

Manual dir: ``train-rle.csv`` (header exactly ``ImageId, EncodedPixels``: the second name has a leading
space) and the DICOM files ``<ImageId>.dcm`` anywhere below (Kaggle nests them as
``dicom-images-train/<study>/<series>/<ImageId>.dcm``).

* RLE: **relative** offsets, 0-based, column-major over the 1024x1024 image (`rle.siim_decode`); ``-1`` (or
  `` -1``) = no pneumothorax. One ImageId may have several rows (one per component): their union.
* The mask becomes the ``pneumothorax`` polygon (`geometry.mask_to_polygon`, 30 points, of its largest
  connected component; the other components are counted in the notes). A malformed RLE, or one that does
  not fit the image, is a ``malformed_rle`` reject.
* Split: none official with labels: `common.patient_split` on the DICOM PatientID (read from the header while
  parsing). Family: segmentation (the labels hold only pneumothorax, so no classification).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from imtcxr_jax import geometry
from imtcxr_jax.data.tfds import common, rle
from imtcxr_jax.data.tfds.common import BadRow, EncodedImage, Item, Rejected

NAME = "siim"
POLYGON_POINTS = 30


def mask_polygon(mask: np.ndarray) -> tuple[list[list[float]] | None, int]:
    """(30-point polygon of the largest component or None, number of components left out)."""
    if not mask.any():
        return None, 0
    largest = geometry.largest_component(mask)
    others = int(mask.sum() - largest.sum() > 0)
    return geometry.mask_to_polygon(largest, POLYGON_POINTS).round(2).tolist(), others


class Siim(common.CxrBuilder, skip_registration=True):
    """SIIM-ACR Pneumothorax: 12,047 NIH-derived radiographs with pneumothorax masks."""

    name = NAME
    FAMILIES = ("segmentation",)
    HOMEPAGE = "https://www.kaggle.com/c/siim-acr-pneumothorax-segmentation"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download the SIIM-ACR Pneumothorax Segmentation data (train-rle.csv and dicom-images-train/, e.g. from the
    Kaggle competition page or its public mirrors) into the manual dir.
    """

    def _items(self, manual_dir: Path) -> Iterator[Item | Rejected]:
        import pydicom

        path = common.find_file(manual_dir, ["train-rle.csv"], "train-rle.csv")
        table = common.CsvTable(path, ["ImageId", "EncodedPixels"])
        images = common.file_index(manual_dir, [".dcm"])
        groups: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
        for where, row in table:
            if row is None:
                yield table.wrong_width(where)
                continue
            groups[row["ImageId"]].append((where, row["EncodedPixels"]))
        for image_id, entries in groups.items():
            where = entries[0][0] + (f" (+{len(entries) - 1} rows)" if len(entries) > 1 else "")
            if image_id not in images:
                yield Rejected("missing_image", where, f"no {image_id}.dcm under {manual_dir}")
                continue
            try:
                header = pydicom.dcmread(images[image_id], stop_before_pixels=True)
                size = (int(header.Columns), int(header.Rows))
                patient = str(header.get("PatientID", "")) or image_id
            except Exception as error:  # pydicom raises several types for broken files
                yield Rejected(
                    "unreadable_image", where, f"{images[image_id]}: cannot read the DICOM header ({error})"
                )
                continue
            try:
                mask = np.zeros((size[1], size[0]), dtype=bool)
                for row_where, text in entries:
                    try:
                        mask |= rle.siim_decode(text, size[1], size[0])
                    except rle.RLEError as error:
                        raise BadRow("malformed_rle", f"{row_where} EncodedPixels: {error}") from None
                polygon, others = mask_polygon(mask)
            except BadRow as bad:
                yield Rejected(bad.reason, where, bad.message)
                continue
            if others:
                self.build_log.note("pneumothorax components beyond the largest (not outlined)", others)
            yield Item(
                key=image_id,
                split=common.patient_split(NAME, patient),
                image=str(images[image_id].relative_to(manual_dir)),
                where=where,
                row={
                    "labels": ["pneumothorax"] if polygon else [],
                    "polygons": {"pneumothorax": polygon} if polygon else {},
                },
                patient=patient,
                check=_size_check(size),
            )


def _size_check(size: tuple[int, int]):
    def check(image: EncodedImage) -> None:
        if (image.width, image.height) != size:
            raise BadRow("image_size_mismatch", f"decoded {image.width}x{image.height}, header says {size}")

    return check
