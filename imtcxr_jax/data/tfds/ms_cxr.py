"""MS-CXR local alignment (data-eval-ecosystem §1.11): phrases grounded by boxes on MIMIC-CXR-JPG images.

Manual dir: ``MS_CXR_Local_Alignment_v1.1.0.csv`` (or ``_v1.0.0``, which lacks ``split``) with header
``dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height,split`` (one row per box), and the
MIMIC-CXR-JPG images at ``path`` (``files/p..``) below the manual dir.

* Boxes: ``x, y`` top-left + ``w, h`` in original image pixels; ``image_width`` / ``image_height`` must match
  the JPEG (``image_size_mismatch`` otherwise). Label: ``category_name`` (harmonised); the phrase
  (``label_text``) of each box is kept in ``extras["phrases"]`` (label -> phrases).
* Split: the ``split`` column (v1.1.0), else `common.patient_split` on the subject id of ``path``. Family:
  localization (the labels list only the grounded categories).
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterator
from pathlib import Path

from imtcxr_jax.data.tfds import common
from imtcxr_jax.data.tfds.common import BadRow, EncodedImage, Item, Rejected

NAME = "ms_cxr"
_SUBJECT = re.compile(r"p(\d{8})")


class MsCxr(common.CxrBuilder, skip_registration=True):
    """MS-CXR: 1,162 image-phrase pairs with bounding boxes over 8 findings, on MIMIC-CXR images."""

    name = NAME
    FAMILIES = ("localization",)
    HOMEPAGE = "https://physionet.org/content/ms-cxr/"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Credentialed PhysioNet access is required. Download MS-CXR (https://physionet.org/content/ms-cxr/) and put
    MS_CXR_Local_Alignment_v1.1.0.csv into the manual dir, with the MIMIC-CXR-JPG files/ tree (at least the
    images it names) next to it.
    """

    def _items(self, manual_dir: Path) -> Iterator[Item | Rejected]:
        path = common.find_file(
            manual_dir,
            ["MS_CXR_Local_Alignment_v1.1.0.csv", "MS_CXR_Local_Alignment_v1.0.0.csv"],
            "MS-CXR local alignment CSV",
        )
        columns = [
            "dicom_id",
            "category_name",
            "label_text",
            "path",
            "x",
            "y",
            "w",
            "h",
            "image_width",
            "image_height",
        ]
        table = common.CsvTable(path, columns)
        groups: dict[str, list[tuple[str, dict]]] = collections.defaultdict(list)
        for where, row in table:
            if row is None:
                yield table.wrong_width(where)
                continue
            groups[row["dicom_id"]].append((where, row))
        for dicom, entries in groups.items():
            where = entries[0][0] + (f" (+{len(entries) - 1} rows)" if len(entries) > 1 else "")
            first = entries[0][1]
            try:
                findings, phrases = [], collections.defaultdict(list)
                for row_where, row in entries:
                    label = common.harmonise_label(NAME, row["category_name"])
                    box = common.xywh_box(row["x"], row["y"], row["w"], row["h"], f"{row_where} x,y,w,h")
                    findings.append({"label": label, "box": box})
                    phrases[label].append(row["label_text"])
                    if (row["path"], row["image_width"], row["image_height"]) != (
                        first["path"],
                        first["image_width"],
                        first["image_height"],
                    ):
                        raise BadRow(
                            "bad_field", f"{row_where}: path / image size differ between rows of {dicom}"
                        )
                size = (
                    int(common.number(first["image_width"], "image_width")),
                    int(common.number(first["image_height"], "image_height")),
                )
                subject = _SUBJECT.search(first["path"])
                if subject is None:
                    raise BadRow("bad_field", f"path {first['path']!r} has no pNNNNNNNN subject component")
                split = (
                    common.split_name(first["split"])
                    if first.get("split")
                    else common.patient_split(NAME, subject.group(1))
                )
            except BadRow as bad:
                yield Rejected(bad.reason, where, bad.message)
                continue
            yield Item(
                key=dicom,
                split=split,
                image=first["path"],
                where=where,
                row={"labels": list(dict.fromkeys(f["label"] for f in findings)), "findings": findings},
                patient=subject.group(1),
                extras={"phrases": dict(phrases)},
                check=_size_check(size),
            )


def _size_check(size: tuple[int, int]):
    def check(image: EncodedImage) -> None:
        if (image.width, image.height) != size:
            raise BadRow(
                "image_size_mismatch",
                f"image is {image.width}x{image.height}, image_width/image_height say {size[0]}x{size[1]}",
            )

    return check
