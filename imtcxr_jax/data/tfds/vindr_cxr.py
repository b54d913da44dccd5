"""VinDr-CXR 1.0.0 from PhysioNet (data-eval-ecosystem §1.3): boxes by several radiologists, DICOM images.

Manual dir::

    annotations/annotations_train.csv  annotations/annotations_test.csv
        image_id,rad_id,class_name,x_min,y_min,x_max,y_max    (one row per box; "No finding" rows blank)
    train/<image_id>.dicom  test/<image_id>.dicom

The Kaggle VinBigData ``train.csv`` (``image_id,class_name,class_id,rad_id,x_min,...``) is accepted too, with
images ``train/<image_id>.dicom``; it has no test labels.

**Reader fusion** [choice], per image and label: the readers are the distinct ``rad_id`` of the image; boxes
of the label from different readers are grouped greedily (box IoU >= `FUSE_IOU` with the group's first box,
in row order) and each group supported by a majority of the image's readers (> half) becomes one box, the
coordinate-wise mean of its members. A label is present when it keeps at least one box, or when a majority
of readers named it (box-less global labels); ``No finding`` when no label is present. Test annotations are
a consensus (one reader), so the rule keeps them as they are.

Images: DICOM windowed and inverted per `image_io.read_image`, stored as 8-bit PNG at the original size
(boxes are in original DICOM pixels). Split: official train / test; validation is carved from train by
`common.patient_split` on image_id (one image per patient in VinDr) [choice]. Families: classification,
localization.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from imtcxr_jax import geometry
from imtcxr_jax.data.tfds import common
from imtcxr_jax.data.tfds.common import BadRow, Item, Rejected

NAME = "vindr_cxr"
FUSE_IOU = 0.5
COLUMNS = ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]


def fuse(readers: set[str], marks: list[tuple[str, str, list[float] | None]]) -> tuple[list[str], list[dict]]:
    """(labels, findings) from one image's (reader, harmonised label, box or None) marks (module docstring)."""
    quorum = len(readers) / 2
    labels: list[str] = []
    findings: list[dict] = []
    by_label: dict[str, list[tuple[str, list[float] | None]]] = collections.defaultdict(list)
    for reader, label, box in marks:
        by_label[label].append((reader, box))
    for label, entries in by_label.items():
        if label == "no finding":
            continue
        groups: list[list[tuple[str, list[float]]]] = []
        for reader, box in entries:
            if box is None:
                continue
            for group in groups:
                if geometry.box_iou(group[0][1], box) >= FUSE_IOU:
                    group.append((reader, box))
                    break
            else:
                groups.append([(reader, box)])
        kept = [g for g in groups if len({reader for reader, _ in g}) > quorum]
        named = len({reader for reader, _ in entries}) > quorum
        if kept or (named and not groups):
            labels.append(label)
            findings += [
                {"label": label, "box": np.mean([box for _, box in g], axis=0).round(2).tolist()}
                for g in kept
            ]
    return labels, findings


class VindrCxr(common.CxrBuilder, skip_registration=True):
    """VinDr-CXR: 18,000 PA radiographs with lesions boxed by 3 radiologists (test: a 5-reader consensus)."""

    name = NAME
    FAMILIES = ("classification", "localization")
    HOMEPAGE = "https://physionet.org/content/vindr-cxr/1.0.0/"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Credentialed PhysioNet access is required. Download VinDr-CXR 1.0.0
    (https://physionet.org/content/vindr-cxr/1.0.0/): annotations/ and the train/ and test/ DICOM folders, into
    the manual dir. (Kaggle's VinBigData train.csv + train/ also works, without a test split.)
    """

    def _items(self, manual_dir: Path) -> Iterator[Item | Rejected]:
        sources = []
        for split in ("train", "test"):
            found = sorted(manual_dir.rglob(f"annotations_{split}.csv"))
            if found:
                sources.append((split, found[0]))
        if not sources:
            sources.append(("train", common.find_file(manual_dir, ["train.csv"], "VinDr annotations CSV")))
        images = common.file_index(manual_dir, [".dicom", ".dcm"])
        for split, path in sources:
            table = common.CsvTable(path, COLUMNS)
            per_image: dict[str, list] = collections.defaultdict(list)
            wheres: dict[str, list[str]] = collections.defaultdict(list)
            bad: dict[str, BadRow] = {}
            for where, row in table:
                if row is None:
                    yield table.wrong_width(where)
                    continue
                image_id = row["image_id"]
                wheres[image_id].append(where)
                try:
                    label = common.harmonise_label(NAME, row["class_name"])
                    cells = [row[c] for c in ("x_min", "y_min", "x_max", "y_max")]
                    if label == "no finding" or not any(cells):
                        box = None
                    else:
                        box = common.xyxy_box(cells, f"{where} x_min,y_min,x_max,y_max")
                    per_image[image_id].append((row["rad_id"] or "consensus", label, box))
                except BadRow as error:
                    bad.setdefault(image_id, BadRow(error.reason, f"{where}: {error.message}"))
            for image_id in dict.fromkeys([*per_image, *bad]):
                marks = per_image.get(image_id, [])
                where = wheres[image_id][0] + (
                    f" (+{len(wheres[image_id]) - 1} rows)" if len(wheres[image_id]) > 1 else ""
                )
                if image_id in bad:
                    yield Rejected(bad[image_id].reason, where, bad[image_id].message)
                    continue
                if image_id not in images:
                    yield Rejected("missing_image", where, f"no {image_id}.dicom under {manual_dir}")
                    continue
                labels, findings = fuse({reader for reader, _, _ in marks}, marks)
                yield Item(
                    key=image_id,
                    split=split if split == "test" else common.patient_split(NAME, image_id, (0.9, 0.1, 0.0)),
                    image=str(images[image_id].relative_to(manual_dir)),
                    where=where,
                    row={"labels": labels, "findings": findings},
                    patient=image_id,
                    extras={"readers": sorted({reader for reader, _, _ in marks})},
                )
