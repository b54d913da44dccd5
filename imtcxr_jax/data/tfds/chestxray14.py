"""NIH ChestX-ray14 (data-eval-ecosystem §1.7): image labels, the 984 boxes, the official train/test lists.

Manual dir (as downloaded from the NIH box folder, archives extracted anywhere below it)::

    Data_Entry_2017_v2020.csv   (or Data_Entry_2017.csv)
    BBox_List_2017.csv
    train_val_list.txt, test_list.txt
    images_001/images/00000001_000.png ...

Quirks handled: the Data_Entry header has unquoted commas inside brackets (``OriginalImage[Width, Height]``),
so columns are taken **by position**, and the 2017 file's trailing empty column is allowed; BBox_List has
three empty trailing columns and boxes ``x, y, w, h``; ``Infiltrate`` (boxes) and ``Infiltration`` (labels)
meet in `harmonise.LABELS`. Split: the official test list; train_val is split into train and validation by
`common.patient_split` on ``Patient ID`` (validation share 0.1/0.9 of train_val) [choice], so a patient
never spans two splits. Families: classification, localization.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Iterator
from pathlib import Path

from imtcxr_jax.data.tfds import common
from imtcxr_jax.data.tfds.common import BadRow, Item, Rejected

NAME = "chestxray14"
VALIDATION_SHARE = 1 / 9  # of train_val: 10% of the whole


class Chestxray14(common.CxrBuilder, skip_registration=True):
    """NIH ChestX-ray14: 112,120 frontal radiographs, 14 labels from reports, 984 boxes."""

    name = NAME
    FAMILIES = ("classification", "localization")
    HOMEPAGE = "https://nihcc.app.box.com/v/ChestXray-NIHCC"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download the NIH ChestX-ray14 release (https://nihcc.app.box.com/v/ChestXray-NIHCC): the images_*.tar.gz
    archives (extract them anywhere under the manual dir), Data_Entry_2017_v2020.csv, BBox_List_2017.csv,
    train_val_list.txt and test_list.txt, all into the manual dir.
    """

    def _items(self, manual_dir: Path) -> Iterator[Item | Rejected]:
        entry = common.find_file(
            manual_dir, ["Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"], "Data_Entry"
        )
        boxes = _boxes(common.find_file(manual_dir, ["BBox_List_2017.csv"], "BBox_List_2017.csv"))
        test = set(_names(common.find_file(manual_dir, ["test_list.txt"], "test_list.txt")))
        train_val = set(_names(common.find_file(manual_dir, ["train_val_list.txt"], "train_val_list.txt")))
        images = common.file_index(manual_dir, [".png"])
        rows = common.read_csv_rows(entry)
        _, header = next(rows)
        if [h.strip() for h in header[:2]] != ["Image Index", "Finding Labels"] or header[
            3
        ].strip() != "Patient ID":
            raise ValueError(
                f"{entry}: header {header[:4]} is not Data_Entry's (Image Index, Finding Labels, ...)"
            )
        for line, cells in rows:
            where = f"{entry.name}:{line}"
            if not any(c.strip() for c in cells):
                continue
            if len(cells) not in (11, 12) or (len(cells) == 12 and cells[11].strip()):
                yield Rejected(
                    "malformed_row", where, f"expected 11 cells (12 with an empty last), got {len(cells)}"
                )
                continue
            name, finding_labels, patient = cells[0].strip(), cells[1].strip(), cells[3].strip()
            stem = name.rsplit(".", 1)[0]
            try:
                labels = common.labels_field(
                    common.harmonise_label(NAME, label) for label in finding_labels.split("|")
                )
                findings = []
                for box_where, label, box in boxes.pop(name, []):
                    if isinstance(box, BadRow):
                        raise box
                    harmonised = common.harmonise_label(NAME, label)
                    if harmonised not in labels:
                        raise BadRow(
                            "unknown_label",
                            f"{box_where}: box label {label!r} is not among the image's labels {labels}",
                        )
                    findings.append({"label": harmonised, "box": box})
                if name in test:
                    split = "test"
                elif name in train_val:
                    split = "validation" if _unit(patient) < VALIDATION_SHARE else "train"
                else:
                    raise BadRow(
                        "bad_field", f"image {name!r} is in neither train_val_list.txt nor test_list.txt"
                    )
                if stem not in images:
                    raise BadRow("missing_image", f"image file {name} not found under {manual_dir}")
            except BadRow as bad:
                yield Rejected(bad.reason, where, bad.message)
                continue
            yield Item(
                key=stem,
                split=split,
                image=str(images[stem].relative_to(manual_dir)),
                where=where,
                row={"labels": labels, "findings": findings},
                patient=patient,
                extras={"view": cells[6].strip()},
            )
        for name, entries in boxes.items():  # boxes of images Data_Entry does not list
            for box_where, _, _ in entries:
                yield Rejected(
                    "bad_field", box_where, f"box for image {name!r}, which Data_Entry does not list"
                )


def _unit(patient: str) -> float:
    return int.from_bytes(hashlib.sha256(f"{NAME}:{patient}".encode()).digest()[:8], "big") / 2.0**64


def _names(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _boxes(path: Path) -> dict[str, list[tuple[str, str, list[float] | BadRow]]]:
    """Image Index -> [(where, label, [x0, y0, x1, y1] or the BadRow it is)]; a bad box rejects its image
    when that image's row is parsed."""
    out: dict[str, list] = collections.defaultdict(list)
    rows = common.read_csv_rows(path)
    _, header = next(rows)
    if [h.strip() for h in header[:2]] != ["Image Index", "Finding Label"]:
        raise ValueError(
            f"{path}: header {header} is not BBox_List's (Image Index, Finding Label, Bbox [x, y, w, h])"
        )
    for line, cells in rows:
        if not any(c.strip() for c in cells):
            continue
        where = f"{path.name}:{line}"
        if len(cells) < 6 or any(c.strip() for c in cells[6:]):
            out[cells[0].strip()].append((where, "", BadRow("malformed_row", f"{where}: expected 6 cells")))
            continue
        try:
            box = common.xywh_box(*cells[2:6], what=f"{where} Bbox [x, y, w, h]")
        except BadRow as bad:
            box = bad
        out[cells[0].strip()].append((where, cells[1].strip(), box))
    return out
