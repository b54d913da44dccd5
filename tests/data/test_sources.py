"""Manifest loading, validation with counted rejects, and per-family example enumeration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imtcxr_jax.data import sources
from imtcxr_jax.data.phantom import generate_phantom
from imtcxr_jax.tasks import report
from imtcxr_jax.tasks.common import Task


def write_phantom_dataset(folder: Path, count: int, size: int = 64, first_seed: int = 0) -> list[dict]:
    """Phantoms ``first_seed ..`` as PNGs plus ``manifest.jsonl`` in ``folder``; returns the rows."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in range(first_seed, first_seed + count):
        phantom = generate_phantom(seed, size)
        name = f"images/{seed:05d}.png"
        (folder / "images").mkdir(exist_ok=True)
        Image.fromarray(phantom.image).save(folder / name)
        rows.append(phantom.to_record(name))
    write_manifest(folder, rows)
    return rows


def write_manifest(folder: Path, rows: list[dict | str | bytes]) -> None:
    lines = [
        row if isinstance(row, bytes) else (row if isinstance(row, str) else json.dumps(row)).encode()
        for row in rows
    ]
    (folder / "manifest.jsonl").write_bytes(b"\n".join(lines) + b"\n")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantoms")
    rows = write_phantom_dataset(folder, 24)
    return folder, rows


def test_phantom_rows_load_with_their_ground_truth(dataset):
    folder, rows = dataset
    records, rejects = sources.load_records(folder)
    assert rejects.rejected == 0 and rejects.accepted == rejects.rows == len(rows) == len(records)
    for record, row in zip(records, rows, strict=True):
        assert record.image == row["image"] and (record.width, record.height) == (64, 64)
        expected = () if row["labels"] == ["no finding"] else tuple(row["labels"])
        assert record.labels == expected
        assert set(record.polygons) == {name.replace("_", " ") for name in row["polygons"]}
        np.testing.assert_allclose(record.polygons["heart"], row["polygons"]["heart"])
        boxes = [f["box"] for f in row["findings"] if f["box"] is not None]
        assert sum(len(record.boxes(label)) for label in record.box_labels) == len(boxes)
        assert record.ctr == row["ctr"] and record.report == row["report"]
        assert record.where.endswith(f"manifest.jsonl:{rows.index(row) + 1}")


def _bad_rows(good: dict) -> dict[str, list[dict | str | bytes]]:
    """Rows that break one rule each, keyed by the reason they must be rejected with."""

    def changed(**fields) -> dict:
        return {**good, **fields}

    finding = {"label": "nodule", "severity": "mild", "location": "right upper", "box": [10, 10, 20, 20]}
    with_finding = {"labels": ["nodule"]}
    return {
        "malformed_json": ['{"image": "x.png", "width": 64', "[1, 2, 3]", b'{"image": "\xff.png"}'],
        "bad_field": [
            {k: v for k, v in good.items() if k != "labels"},
            changed(width="64"),
            changed(report="  "),
        ],
        "missing_image": [changed(image="images/absent.png")],
        "image_size_mismatch": [changed(width=65)],
        "unknown_label": [
            changed(labels=["dragon pox"]),
            changed(labels=["no finding", "nodule"]),
            changed(labels=["edema"], findings=[finding]),  # a finding label not among the labels
        ],
        "unknown_attribute": [
            changed(**with_finding, findings=[{**finding, "severity": "tiny"}]),
            changed(**with_finding, findings=[{**finding, "location": {"side": "up", "zone": "lower"}}]),
        ],
        "invalid_box": [
            changed(**with_finding, findings=[{**finding, "box": [20, 10, 10, 20]}]),  # x0 > x1
            changed(**with_finding, findings=[{**finding, "box": [10, 10, 70, 20]}]),  # outside the image
            changed(**with_finding, findings=[{**finding, "box": [10, 10, 20]}]),
        ],
        "invalid_polygon": [
            changed(polygons={"heart": [[1, 1], [5, 5]]}),  # fewer than 3 points
            changed(polygons={"heart": [[1, 1], [5, 5], [80, 3]]}),  # outside the image
            changed(polygons={"spleen": [[1, 1], [5, 5], [8, 3]]}),
        ],
        "invalid_measurement": [changed(ctr=-0.1), changed(pcr="big")],
    }


def test_bad_rows_are_counted_by_reason_with_file_and_line(dataset, tmp_path):
    folder, rows = dataset
    good = {**rows[0], "image": str(folder / rows[0]["image"])}  # absolute paths work too
    bad = _bad_rows(good)
    lines: list[dict | str | bytes] = [good]
    for reason_rows in bad.values():
        lines += reason_rows
    lines.append(good)
    write_manifest(tmp_path, lines)

    records, rejects = sources.load_records(tmp_path)
    assert len(records) == 2
    assert dict(rejects.counts) == {reason: len(reason_rows) for reason, reason_rows in bad.items()}
    assert set(rejects.counts) <= set(sources.REJECT_REASONS)
    assert rejects.rows == len(lines) and rejects.rejected == len(lines) - 2
    assert rejects.examples["malformed_json"][0].startswith(f"{tmp_path / 'manifest.jsonl'}:2: ")
    assert "outside the 64x64 image" in rejects.examples["invalid_box"][1]
    assert "invalid_polygon" in rejects.summary()
    json.dumps(rejects.to_dict())


def test_strict_raises_at_the_first_bad_row(dataset, tmp_path):
    folder, rows = dataset
    good = {**rows[0], "image": str(folder / rows[0]["image"])}
    write_manifest(tmp_path, [good, good, {**good, "labels": ["dragon pox"]}, "not json"])
    with pytest.raises(
        sources.ManifestError, match=r"manifest.jsonl:3: unknown_label: .*dragon pox"
    ) as error:
        sources.load_records(tmp_path, strict=True)
    assert error.value.reason == "unknown_label"
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        sources.load_records(tmp_path / "nowhere")


def test_classification_examples(dataset):
    records, _ = sources.load_records(dataset[0])
    vocabulary = sources.label_vocabulary(records)
    examples = sources.classification_examples(records, seed=3)
    assert examples == sources.classification_examples(records, seed=3)
    assert examples != sources.classification_examples(records, seed=4)  # other negatives
    for index, record in enumerate(records):
        mine = [e for e in examples if e.record == index]
        tasks = [e.task for e in mine]
        assert tasks.count(Task.DISEASES) == 1
        yes = {e.subject for e in mine if e.task == Task.PRESENCE and e.flag}
        no = [e.subject for e in mine if e.task == Task.PRESENCE and not e.flag]
        assert yes == set(record.labels)
        assert (
            len(no) == len(set(no)) == min(max(1, len(record.labels)), len(vocabulary) - len(record.labels))
        )
        assert not set(no) & set(record.labels) and set(no) <= set(vocabulary)
        located = {label for label, (location, _) in record.attributes.items() if location is not None}
        graded = {label for label, (_, severity) in record.attributes.items() if severity is not None}
        assert {e.subject for e in mine if e.task == Task.LOCATION} == located
        assert {e.subject for e in mine if e.task == Task.SEVERITY} == graded
    assert all(e.family == "classification" for e in examples)


def test_localization_segmentation_and_report_examples(dataset):
    records, _ = sources.load_records(dataset[0])
    boxes = sources.localization_examples(records)
    assert len(boxes) == sum(len(r.box_labels) for r in records)
    assert all(len(records[e.record].boxes(e.subject)) >= 1 for e in boxes)
    polygons = sources.segmentation_examples(records)
    assert len(polygons) == sum(len(r.polygons) for r in records)
    assert {e.subject for e in polygons} <= {"left lung", "right lung", "heart", "pneumothorax"}

    reports = sources.report_examples(records, seed=1)
    assert [e.record for e in reports] == list(range(len(records)))
    assert sum(e.flag for e in reports) == len(records) // 2
    assert reports == sources.report_examples(records, seed=1)
    assert reports != sources.report_examples(records, seed=2)
    for family in sources.FAMILIES:
        assert all(e.family == family for e in sources.enumerate_examples(records, family))
    with pytest.raises(ValueError, match="unknown task family"):
        sources.enumerate_examples(records, "vqa")


def test_findings_of_one_label_merge_into_one_answer_and_evidence():
    def finding(side, zone, severity):
        return sources.RecordFinding("pleural effusion", severity, f"{side} {zone}".strip(), (1, 2, 3, 4))

    both = (finding("right", "lower", "mild"), finding("left", "lower", "moderate"))
    record = sources.Record("x.png", 8, 8, ("pleural effusion", "cardiomegaly"), both, ctr=0.56, pcr=None)
    assert record.attributes == {"pleural effusion": ("bilateral lower", "moderate")}
    other_zones = sources.Record(
        "x.png", 8, 8, ("pleural effusion",), (both[0], finding("left", "middle", None))
    )
    assert other_zones.attributes["pleural effusion"] == ("bilateral", "mild")
    same_side = sources.Record(
        "x.png", 8, 8, ("pleural effusion",), (both[0], finding("right", "middle", None))
    )
    assert same_side.attributes["pleural effusion"] == ("right", "mild")
    assert record.boxes("pleural effusion").shape == (2, 4)

    evidence = sources.record_evidence(record)
    prompt = report.report_instruction(evidence)
    assert prompt == (
        " based on the findings: pleural effusion (bilateral lower, moderate); cardiomegaly. ctr 0.56."
        " describe the image"
    )
    assert report.parse_report_prompt(prompt) == evidence
