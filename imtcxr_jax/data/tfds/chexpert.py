"""CheXpert v1.0 (data-eval-ecosystem §1.8): train.csv / valid.csv, optionally CheXlocalize's test labels.

Manual dir: the extracted release, e.g. ``CheXpert-v1.0-small/{train.csv,valid.csv,train/,valid/}`` (any
folder name; ``Path`` cells are resolved against the manual dir, then against the CSV's parent's parent), and
optionally ``test_labels.csv`` (CheXlocalize) with its images.

* Frontal images only (``Frontal/Lateral`` = Frontal; the test file, which lacks the column, is frontal by
  construction); laterals are skipped by policy and counted.
* Labels: `chexpert_labels` (uncertain per `harmonise.UNCERTAIN`; valid/test hold 0/1 only).
* Split: train.csv -> train, valid.csv -> validation, test_labels.csv -> test (the official ones). Patient:
  the ``patientNNNNN`` path component.
* Family: classification.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from imtcxr_jax.data.tfds import chexpert_labels, common
from imtcxr_jax.data.tfds.common import BadRow, Item, Rejected

NAME = "chexpert"
_PATIENT = re.compile(r"(patient\d+)")


class Chexpert(common.CxrBuilder, skip_registration=True):
    """CheXpert: chest radiographs with 14 observations labelled from reports (uncertain labels resolved)."""

    name = NAME
    FAMILIES = ("classification",)
    HOMEPAGE = "https://stanfordmlgroup.github.io/competitions/chexpert/"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Register and download CheXpert v1.0 (or -small) from https://stanfordmlgroup.github.io/competitions/chexpert/
    and extract it into the manual dir (train.csv, valid.csv and the train/ valid/ image folders). Optionally add
    CheXlocalize's test_labels.csv with the test images for a test split.
    """

    def _items(self, manual_dir: Path) -> Iterator[Item | Rejected]:
        assert self.build_log is not None
        sources = [("train", common.find_file(manual_dir, ["train.csv"], "CheXpert train.csv"))]
        sources.append(("validation", common.find_file(manual_dir, ["valid.csv"], "CheXpert valid.csv")))
        tests = sorted(manual_dir.rglob("test_labels.csv"))
        if tests:
            sources.append(("test", tests[0]))
        for split, path in sources:
            table = common.CsvTable(path, ["Path", *chexpert_labels.OBSERVATIONS])
            has_view = "Frontal/Lateral" in table.columns
            for where, row in table:
                if row is None:
                    yield table.wrong_width(where)
                    continue
                if has_view and row["Frontal/Lateral"] != "Frontal":
                    self.build_log.skip(f"view {row['Frontal/Lateral'] or 'blank'} (not frontal)")
                    continue
                try:
                    labels = common.labels_field(chexpert_labels.labels_from_cells(NAME, row))
                    image = _resolve(manual_dir, path, row["Path"])
                    patient = _PATIENT.search(row["Path"])
                    if patient is None:
                        raise BadRow("bad_field", f"Path {row['Path']!r} has no patientNNNNN component")
                except BadRow as bad:
                    yield Rejected(bad.reason, where, bad.message)
                    continue
                yield Item(
                    key=row["Path"],
                    split=split,
                    image=image,
                    where=where,
                    row={"labels": labels},
                    patient=patient.group(1),
                    extras={
                        "view": row.get("AP/PA", ""),
                        "sex": row.get("Sex", ""),
                        "age": row.get("Age", ""),
                    },
                )


def _resolve(manual_dir: Path, csv_path: Path, cell: str) -> str:
    """A ``Path`` cell -> path relative to the manual dir (the file's existence is checked at load)."""
    relative = Path(cell)
    for base in (manual_dir, csv_path.parent.parent, csv_path.parent):
        if (base / relative).is_file():
            return str((base / relative).relative_to(manual_dir))
    return cell  # missing: reported as missing_image when loaded
