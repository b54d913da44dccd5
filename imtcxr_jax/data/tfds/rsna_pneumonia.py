"""RSNA Pneumonia Detection Challenge, stage 2 (data-eval-ecosystem §1.9).

Manual dir: ``stage_2_train_labels.csv`` (``patientId,x,y,width,height,Target``; one row per box, a negative
image one row with empty coordinates and Target 0), optionally ``stage_2_detailed_class_info.csv`` (kept in
the extras), and ``stage_2_train_images/<patientId>.dcm`` (1024x1024 MONOCHROME2; stored as 8-bit PNG).

* Boxes ``x, y, width, height`` -> pneumonia findings; Target 0 -> no box. Rows of one image must agree on
  Target (``bad_field`` otherwise).
* Labels are not complete (only pneumonia-like opacity was read), so the family is localization only.
* Split: none official for labelled images: `common.patient_split` on patientId (one image per patient).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path

from imtcxr_jax.data.tfds import common
from imtcxr_jax.data.tfds.common import BadRow, Item, Rejected

NAME = "rsna_pneumonia"


class RsnaPneumonia(common.CxrBuilder, skip_registration=True):
    """RSNA Pneumonia Detection: 26,684 NIH-derived radiographs with pneumonia opacity boxes."""

    name = NAME
    FAMILIES = ("localization",)
    HOMEPAGE = "https://www.kaggle.com/c/rsna-pneumonia-detection-challenge"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Accept the competition rules and download rsna-pneumonia-detection-challenge from Kaggle
    (kaggle competitions download -c rsna-pneumonia-detection-challenge); extract it into the manual dir.
    """

    def _items(self, manual_dir: Path) -> Iterator[Item | Rejected]:
        path = common.find_file(manual_dir, ["stage_2_train_labels.csv"], "stage_2_train_labels.csv")
        table = common.CsvTable(path, ["patientId", "x", "y", "width", "height", "Target"])
        classes: dict[str, str] = {}
        info = sorted(manual_dir.rglob("stage_2_detailed_class_info.csv"))
        if info:
            for _, row in common.CsvTable(info[0], ["patientId", "class"]):
                if row is not None:
                    classes.setdefault(row["patientId"], row["class"])
        images = common.file_index(manual_dir, [".dcm"])
        rows: dict[str, list[tuple[str, dict]]] = collections.defaultdict(list)
        for where, row in table:
            if row is None:
                yield table.wrong_width(where)
                continue
            rows[row["patientId"]].append((where, row))
        for patient, entries in rows.items():
            where = entries[0][0] + (f" (+{len(entries) - 1} rows)" if len(entries) > 1 else "")
            try:
                targets = {row["Target"] for _, row in entries}
                if len(targets) != 1 or targets - {"0", "1"}:
                    raise BadRow(
                        "bad_field", f"Target values {sorted(targets)}: expected one of 0 / 1 per image"
                    )
                label = common.harmonise_label(NAME, targets.pop())
                findings = []
                if label != "no finding":
                    findings = [
                        {"label": label, "box": common.xywh_box(r["x"], r["y"], r["width"], r["height"], w)}
                        for w, r in entries
                    ]
                elif any(r["x"] for _, r in entries):
                    raise BadRow("invalid_box", "a Target 0 row has coordinates")
                if patient not in images:
                    raise BadRow("missing_image", f"no {patient}.dcm under {manual_dir}")
            except BadRow as bad:
                yield Rejected(bad.reason, where, bad.message)
                continue
            yield Item(
                key=patient,
                split=common.patient_split(NAME, patient),
                image=str(images[patient].relative_to(manual_dir)),
                where=where,
                row={"labels": common.labels_field([label]), "findings": findings},
                patient=patient,
                extras={"class": classes.get(patient, "")},
            )
