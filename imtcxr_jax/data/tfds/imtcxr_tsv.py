"""The OFA / IMT-CXR training TSVs (spec §12.2): tab-separated, no header, image paths (not images).

Manual dir: one folder per task with ``train.tsv`` (also the original's spelling ``trian.tsv``),
``val.tsv`` and ``test.tsv``; the images at the paths the rows name, relative to the manual dir::

    report_classification/   0 id, 1 second id, 2 report, 3 labels joined by && ("No Finding"), 4 image
                             path(s) joined by "," (the first is used), 5 subject id, 6 study id, 7 unused
    vqa_attribute/           the same + 7 attributes: "atelectasis,right&small&base,effusion,right&small"
    localization/            0 code, 1 id, 2 labels joined by ",", 3 boxes: one group per label joined by
                             &&, each x0,y0,x1,y1[,x0,...] in original pixels, 4 image path
    segmentation/            0 id, 1 structures joined by && (a single name gets " lung" appended: "left"),
                             2 polygons joined by &&, each x,y,x,y,... separated by "," or ";", 3 image path

Each row is one record whose families follow its file: report rows -> classification + report, attribute rows
-> classification (location / severity from `harmonise.LOCATION_SYNONYMS` / `SEVERITY_SYNONYMS`; side and
zone words combine into "right lower" when that is a location, else the original's choice: the first in
reverse lexicographic order), localization rows -> localization, segmentation rows -> segmentation.
Negative files (``train_negative.tsv``) are not read (the original never says what makes a row negative);
they are counted in the notes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from imtcxr_jax.data.tfds import common, harmonise
from imtcxr_jax.data.tfds.common import BadRow, Item, Rejected
from imtcxr_jax.tasks import classification

NAME = "imtcxr_tsv"
TASKS = {
    "report_classification": (("classification", "report"), 7),
    "vqa_attribute": (("classification",), 8),
    "localization": (("localization",), 5),
    "segmentation": (("segmentation",), 4),
}
FILES = {"train.tsv": "train", "trian.tsv": "train", "val.tsv": "validation", "test.tsv": "test"}


def _label(name: str) -> str:
    return common.harmonise_label(NAME, name.strip().lower())


def _numbers(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in re.split(r"[,;]", text) if v.strip()]
    except ValueError:
        raise BadRow("bad_field", f"{what}: {text[:80]!r} is not a list of numbers") from None


def parse_attributes(text: str, labels: list[str]) -> list[dict]:
    """ "atelectasis,right&small&base,..." -> findings with location / severity (module docstring)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) % 2:
        raise BadRow("bad_field", f"attributes {text!r}: expected disease,adjectives pairs")
    findings = []
    for disease, adjectives in zip(parts[::2], parts[1::2], strict=True):
        words = [w.strip().lower() for w in adjectives.split("&") if w.strip()]
        locations = sorted(
            {harmonise.LOCATION_SYNONYMS[w] for w in words if w in harmonise.LOCATION_SYNONYMS}, reverse=True
        )
        severities = [harmonise.SEVERITY_SYNONYMS[w] for w in words if w in harmonise.SEVERITY_SYNONYMS]
        sides = [w for w in locations if w in classification.SIDES]
        zones = [w for w in locations if w in classification.ZONES]
        location = None
        if len(sides) == 1 and len(zones) == 1 and f"{sides[0]} {zones[0]}" in classification.LOCATIONS:
            location = f"{sides[0]} {zones[0]}"
        elif locations:
            location = locations[0]
        label = _label(disease)
        if label not in labels:
            raise BadRow(
                "unknown_label", f"attribute disease {disease!r} is not among the row's labels {labels}"
            )
        findings.append(
            {"label": label, "location": location, "severity": severities[0] if severities else None}
        )
    return findings


def parse_row(task: str, cells: list[str]) -> tuple[str, str, dict]:
    """(id, image path, manifest row) of one TSV row."""
    if task in ("report_classification", "vqa_attribute"):
        labels = common.labels_field(_label(name) for name in cells[3].split("&&"))
        row: dict = {"labels": labels}
        if task == "report_classification":
            row["report"] = common.clean_text(cells[2]) or None
        else:
            row["findings"] = parse_attributes(cells[7], labels)
        return cells[0], cells[4].split(",")[0].strip(), row
    if task == "localization":
        labels = [_label(name) for name in cells[2].split(",")]
        groups = cells[3].split("&&")
        if len(groups) != len(labels):
            raise BadRow("invalid_box", f"{len(labels)} labels but {len(groups)} box groups")
        findings = []
        for label, group in zip(labels, groups, strict=True):
            values = _numbers(group, "boxes")
            if not values or len(values) % 4:
                raise BadRow("invalid_box", f"box group {group!r} is not a multiple of 4 numbers")
            findings += [
                {"label": label, "box": common.xyxy_box(values[k : k + 4], f"{label} box")}
                for k in range(0, len(values), 4)
            ]
        return cells[1], cells[4].strip(), {"labels": list(dict.fromkeys(labels)), "findings": findings}
    names = cells[1].split("&&")
    if len(names) == 1 and " " not in names[0].strip():
        names = [f"{names[0].strip()} lung"]
    shapes = cells[2].split("&&")
    if len(shapes) != len(names):
        raise BadRow("invalid_polygon", f"{len(names)} structures but {len(shapes)} polygons")
    polygons = {}
    for name, shape in zip(names, shapes, strict=True):
        values = _numbers(shape, f"polygon {name!r}")
        if len(values) % 2:
            raise BadRow("invalid_polygon", f"polygon {name!r} has an odd number of coordinates")
        polygons[name.strip()] = [values[k : k + 2] for k in range(0, len(values), 2)]
    return cells[0], cells[3].strip(), {"labels": [], "polygons": polygons}


class ImtcxrTsv(common.CxrBuilder, skip_registration=True):
    """The IMT-CXR / OmniFM-DR training TSVs (report, attribute, localization and segmentation rows)."""

    name = NAME
    HOMEPAGE = "https://huggingface.co/datasets/MedHK23/IMT-CXR"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Put the IMT-CXR TSVs into report_classification/, vqa_attribute/, localization/ and segmentation/ folders
    of the manual dir (train.tsv or trian.tsv, val.tsv, test.tsv), with the images they name at those paths
    relative to the manual dir (the TSVs hold paths to MIMIC-CXR-JPG, VinDr-CXR, ... images).
    """

    def _items(self, manual_dir: Path) -> Iterator[Item | Rejected]:
        assert self.build_log is not None
        found = False
        for task, (families, width) in TASKS.items():
            folder = manual_dir / task
            if not folder.is_dir():
                continue
            self.build_log.note("negative TSVs not read", len(list(folder.glob("*negative*.tsv"))))
            for file_name, split in FILES.items():
                path = folder / file_name
                if not path.is_file():
                    continue
                found = True
                for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                    if not text.strip():
                        continue
                    where = f"{task}/{file_name}:{line}"
                    cells = text.split("\t")
                    try:
                        if len(cells) < width:
                            raise BadRow(
                                "malformed_row", f"{len(cells)} tab-separated cells, expected {width}"
                            )
                        row_id, image, row = parse_row(task, cells)
                    except BadRow as bad:
                        yield Rejected(bad.reason, where, bad.message)
                        continue
                    yield Item(
                        key=f"{task}/{split}/{row_id}",
                        split=split,
                        image=image,
                        where=where,
                        row=row,
                        patient=cells[5] if task in ("report_classification", "vqa_attribute") else "",
                        families=families,
                    )
        if not found:
            raise FileNotFoundError(f"{manual_dir}: no TSV under {', '.join(TASKS)} ({', '.join(FILES)})")
