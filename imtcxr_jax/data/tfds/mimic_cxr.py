"""MIMIC-CXR-JPG v2.0.0 with the MIMIC-CXR free-text reports (data-eval-ecosystem §1.1, §1.2).

Manual dir::

    mimic-cxr-2.0.0-metadata.csv(.gz)  mimic-cxr-2.0.0-split.csv(.gz)  mimic-cxr-2.0.0-chexpert.csv(.gz)
    files/p10/p10000032/s50414267/<dicom_id>.jpg       (MIMIC-CXR-JPG)
    files/p10/p10000032/s50414267.txt                  (mimic-cxr-reports.zip of MIMIC-CXR, optional)

* One record per **frontal** image (ViewPosition PA or AP, `harmonise.FRONTAL_VIEWS`); other views are skipped
  by policy and counted.
* Labels: the study's row of the CheXpert file (`chexpert_labels`: uncertain per `harmonise.UNCERTAIN`).
  A study missing from it is a ``bad_field`` reject.
* Report: the FINDINGS and IMPRESSION sections (`report_sections`), the last occurrence of each, joined as
  ``"findings: ... impression: ..."``-free plain text (findings, then impression), lower-cased with whitespace
  normalised (MIMIC style, as the IMT-CXR TSVs). A study with neither section, or no report file, gets no
  report (counted in the notes); reports absent altogether are noted once.
* Split: the official split file (``validate`` -> validation), patient-disjoint.
* Families: classification, report.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from imtcxr_jax.data.tfds import chexpert_labels, common, harmonise
from imtcxr_jax.data.tfds.common import BadRow, Item, Rejected

NAME = "mimic_cxr"
# A section title: newline, one optional space, capitals / spaces / ()/,- then a colon (the official parser's
# shape, written here from its description).
_TITLE = re.compile(r"(?:^|\n) ?([A-Z][A-Z ()/,-]*):[ \t]*", re.MULTILINE)
_FINDINGS = {"findings", "finding", "findins"}
_IMPRESSION = {
    "impression",
    "impresssion",
    "conclusion",
    "findings and impression",
    "impression and findings",
}


def report_sections(text: str) -> tuple[str | None, str | None]:
    """(findings, impression) of a MIMIC-CXR report: the last non-empty section of each kind, whitespace
    normalised; None where absent."""
    found: dict[str, str] = {}
    matches = list(_TITLE.finditer(text))
    for k, match in enumerate(matches):
        end = matches[k + 1].start() if k + 1 < len(matches) else len(text)
        body = common.clean_text(text[match.end() : end].split("\n____")[0])
        title = common.clean_text(match.group(1)).lower()
        kind = "findings" if title in _FINDINGS else "impression" if title in _IMPRESSION else None
        if kind and body:
            found[kind] = body
    return found.get("findings"), found.get("impression")


def report_text(text: str) -> str | None:
    findings, impression = report_sections(text)
    parts = [part for part in (findings, impression) if part]
    return " ".join(parts).lower() if parts else None


class MimicCxr(common.CxrBuilder, skip_registration=True):
    """MIMIC-CXR-JPG: frontal chest radiographs with CheXpert labels and findings + impression reports."""

    name = NAME
    FAMILIES = ("classification", "report")
    HOMEPAGE = "https://physionet.org/content/mimic-cxr-jpg/2.0.0/"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Credentialed PhysioNet access is required. Download MIMIC-CXR-JPG 2.0.0
    (https://physionet.org/content/mimic-cxr-jpg/2.0.0/): the files/ tree and mimic-cxr-2.0.0-{metadata,split,
    chexpert}.csv.gz into the manual dir; for reports, extract mimic-cxr-reports.zip of MIMIC-CXR
    (https://physionet.org/content/mimic-cxr/2.0.0/) into the same dir (it adds files/pXX/pNNN/sNNN.txt).
    """

    def _items(self, manual_dir: Path) -> Iterator[Item | Rejected]:
        assert self.build_log is not None
        metadata = common.CsvTable(
            common.find_file(manual_dir, ["mimic-cxr-2.0.0-metadata.csv"], "metadata CSV"),
            ["dicom_id", "subject_id", "study_id", "ViewPosition"],
        )
        splits = _split_table(common.find_file(manual_dir, ["mimic-cxr-2.0.0-split.csv"], "split CSV"))
        labels_path = common.find_file(manual_dir, ["mimic-cxr-2.0.0-chexpert.csv"], "CheXpert label CSV")
        labels = {
            (row["subject_id"], row["study_id"]): (where, row)
            for where, row in common.CsvTable(
                labels_path, ["subject_id", "study_id", *chexpert_labels.OBSERVATIONS]
            )
            if row is not None
        }
        if not any((manual_dir / "files").rglob("s*.txt")):
            self.build_log.note("no report files under files/ (reports omitted)")
        for where, row in metadata:
            if row is None:
                yield metadata.wrong_width(where)
                continue
            if row["ViewPosition"] not in harmonise.FRONTAL_VIEWS:
                self.build_log.skip(f"view {row['ViewPosition'] or 'blank'} (not frontal)")
                continue
            subject, study, dicom = row["subject_id"], row["study_id"], row["dicom_id"]
            try:
                if dicom not in splits:
                    raise BadRow("bad_field", f"dicom_id {dicom!r} is not in the split file")
                if (subject, study) not in labels:
                    raise BadRow(
                        "bad_field", f"study s{study} of p{subject} has no row in {labels_path.name}"
                    )
                label_where, label_row = labels[(subject, study)]
                found = common.labels_field(chexpert_labels.labels_from_cells(NAME, label_row))
            except BadRow as bad:
                yield Rejected(bad.reason, where, bad.message)
                continue
            folder = Path("files") / f"p{subject[:2]}" / f"p{subject}"
            report_path = manual_dir / folder / f"s{study}.txt"
            report = report_text(report_path.read_text(errors="replace")) if report_path.is_file() else None
            if report is None:
                self.build_log.note("image without findings/impression report")
            yield Item(
                key=dicom,
                split=splits[dicom],
                image=str(folder / f"s{study}" / f"{dicom}.jpg"),
                where=f"{where} (+{label_where})",
                row={"labels": found, "report": report},
                patient=subject,
                extras={"view": row["ViewPosition"], "study_id": study},
            )


def _split_table(path: Path) -> dict[str, str]:
    table = common.CsvTable(path, ["dicom_id", "study_id", "subject_id", "split"])
    out = {}
    for where, row in table:
        if row is None:
            raise ValueError(f"{where}: expected {len(table.header)} cells")
        try:
            out[row["dicom_id"]] = common.split_name(row["split"])
        except BadRow as bad:
            raise ValueError(f"{where}: {bad.message}") from None
    return out
