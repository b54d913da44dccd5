"""Phantom radiographs: determinism, ground truth checked by independent measurements, manifest, CLI."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imtcxr_jax import geometry
from imtcxr_jax.data import cli
from imtcxr_jax.data.phantom import (
    FINDING_LABELS,
    LABELS,
    NO_FINDING,
    SEVERITIES,
    SIDES,
    ZONES,
    PhantomConfig,
    generate_phantom,
    pcr_severity,
)

PHRASES = (
    Path(__file__).resolve().parents[3]
    / "shared"
    / "data"
    / "chexpert-labeler-phrases"
    / "phrases"
    / "mention"
)
# Our labels -> the CheXpert observation whose mention phrases must name them in the report.
CHEXPERT_FILE = {
    "cardiomegaly": "cardiomegaly",
    "pleural effusion": "pleural_effusion",
    "pneumothorax": "pneumothorax",
    "nodule": "lung_lesion",
    "mass": "lung_lesion",
    "consolidation": "consolidation",
    "pneumonia": "pneumonia",
    "atelectasis": "atelectasis",
    "edema": "edema",
}
OPACITIES = ("pleural effusion", "nodule", "mass", "consolidation", "pneumonia", "atelectasis")


def force(*labels, severity=None, **kwargs):
    return PhantomConfig(findings=labels, severity=severity, **kwargs)


@pytest.fixture(scope="module")
def sampled():
    """200 sampled studies at 64 px: the population the statistical checks run over."""
    return [generate_phantom(seed, 64) for seed in range(200)]


# ------------------------------------------------------------------------------------------------------------
# Determinism and sizes


def test_same_seed_same_bytes_different_seeds_differ():
    a, b = generate_phantom(11, 96), generate_phantom(11, 96)
    assert a.image.tobytes() == b.image.tobytes()
    assert json.dumps(a.to_record("x.png")) == json.dumps(b.to_record("x.png"))
    for name in a.masks:
        np.testing.assert_array_equal(a.masks[name], b.masks[name])
    c = generate_phantom(12, 96)
    assert a.image.tobytes() != c.image.tobytes()
    assert not np.array_equal(a.masks["heart"], c.masks["heart"])


def test_forcing_findings_keeps_the_anatomy():
    normal, nodule = generate_phantom(3, 96, force()), generate_phantom(3, 96, force("nodule"))
    for name in ("right_lung", "left_lung", "heart"):
        np.testing.assert_array_equal(normal.masks[name], nodule.masks[name])


@pytest.mark.parametrize("size", [64, 101, 256, 300])
def test_any_size(size):
    phantom = generate_phantom(5, size, force("pneumothorax", "nodule"))
    assert phantom.image.shape == (size, size) and phantom.image.dtype == np.uint8
    assert phantom.image.std() > 20  # a picture, not a blank
    for name, mask in phantom.masks.items():
        assert mask.shape == (size, size) and mask.dtype == bool and mask.any(), name
        polygon = phantom.polygons[name]
        assert polygon.shape == (30, 2)
        assert (polygon >= 0).all() and (polygon <= size).all()
        # 30 points follow lungs and heart closely; a pneumothorax is a thin crescent, harder to follow.
        expected = (0.85 if size < 200 else 0.9) if name == "pneumothorax" else (0.93 if size < 100 else 0.97)
        assert geometry.dice(geometry.polygon_to_mask(polygon, mask.shape), mask) > expected, name


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": -1, "size": 64}, "seed must be an integer >= 0"),
        ({"seed": 0, "size": 32}, "size must be an integer number of pixels in [64, 4096], got 32"),
        ({"seed": 0, "size": 64.0}, "got 64.0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError) as info:
        generate_phantom(**kwargs)
    assert message in str(info.value)


def test_bad_config():
    with pytest.raises(ValueError, match="unknown finding label 'effusion'"):
        PhantomConfig(findings=("effusion",))
    with pytest.raises(ValueError, match="string"):
        PhantomConfig(findings="nodule")
    with pytest.raises(ValueError, match="severity 'huge'"):
        PhantomConfig(severity="huge")


# ------------------------------------------------------------------------------------------------------------
# Manifest record


def test_record_fields_are_present_and_typed(sampled):
    for phantom in sampled[:60]:
        record = json.loads(json.dumps(phantom.to_record("images/x.png")))
        assert record["image"] == "images/x.png"
        assert record["width"] == record["height"] == 64
        assert record["labels"] and set(record["labels"]) <= set(LABELS)
        assert (record["labels"] == [NO_FINDING]) == (not record["findings"])
        for finding in record["findings"]:
            assert set(finding) == {"label", "severity", "location", "box"}
            assert finding["label"] in record["labels"] and finding["severity"] in SEVERITIES
            if finding["label"] == "cardiomegaly":
                assert finding["location"] is None
            else:
                assert finding["location"]["side"] in SIDES and finding["location"]["zone"] in ZONES
            if finding["label"] == "edema":
                assert finding["box"] is None
            else:
                x0, y0, x1, y1 = finding["box"]
                assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        expected = {"right_lung", "left_lung", "heart"} | (
            {"pneumothorax"} if record["pcr"] is not None else set()
        )
        assert set(record["polygons"]) == expected
        for points in record["polygons"].values():
            assert len(points) == 30 and all(
                len(p) == 2 and 0 <= p[0] <= 64 and 0 <= p[1] <= 64 for p in points
            )
        assert isinstance(record["ctr"], float) and 0.2 < record["ctr"] < 0.8
        assert record["pcr"] is None or 0 < record["pcr"] < 1
        assert record["report"].startswith("FINDINGS: ") and " IMPRESSION: " in record["report"]


def test_patient_right_is_on_the_image_left(sampled):
    for phantom in sampled[:30]:
        right_x = np.argwhere(phantom.masks["right_lung"])[:, 1].mean()
        left_x = np.argwhere(phantom.masks["left_lung"])[:, 1].mean()
        assert right_x < left_x
        for finding in phantom.findings:
            if finding.side in ("right", "left") and finding.box is not None:
                lung = phantom.masks[f"{finding.side}_lung"]
                cols = np.flatnonzero(lung.any(axis=0))
                centre = (finding.box[0] + finding.box[2]) / 2
                assert cols[0] - 1 <= centre <= cols[-1] + 1, (phantom.seed, finding)


# ------------------------------------------------------------------------------------------------------------
# Measurements, checked with numpy rather than with the geometry module that produced them


def reference_ctr(heart, right_lung, left_lung):
    heart_cols = np.flatnonzero(heart.any(axis=0))
    right_cols = np.flatnonzero(right_lung.any(axis=0))
    left_cols = np.flatnonzero(left_lung.any(axis=0))
    return (heart_cols[-1] + 1 - heart_cols[0]) / (left_cols[-1] + 1 - right_cols[0])


def test_cardiomegaly_label_iff_measured_ctr_above_threshold(sampled):
    forced = [generate_phantom(seed, 64, force("cardiomegaly")) for seed in range(40)]
    phantoms = sampled + forced + [generate_phantom(seed, 192) for seed in range(20)]
    seen = {False: 0, True: 0}
    for phantom in phantoms:
        measured = reference_ctr(
            phantom.masks["heart"], phantom.masks["right_lung"], phantom.masks["left_lung"]
        )
        assert phantom.ctr == pytest.approx(measured, abs=1e-12)
        present = "cardiomegaly" in phantom.labels
        assert present == (measured > 0.51), (phantom.seed, measured)
        seen[present] += 1
        if present:
            (finding,) = [f for f in phantom.findings if f.label == "cardiomegaly"]
            assert finding.severity == geometry.ctr_severity(measured)
            assert finding.box == tuple(float(v) for v in geometry.mask_to_box(phantom.masks["heart"]))
    assert seen[True] >= 30 and seen[False] >= 100


def test_ctr_severities_land_in_their_bins():
    for severity in SEVERITIES:
        for seed in range(5):
            phantom = generate_phantom(seed, 256, force("cardiomegaly", severity=severity))
            assert geometry.ctr_severity(phantom.ctr) == severity


def test_pcr_matches_mask_areas():
    for seed in range(12):
        phantom = generate_phantom(seed, 128, force("pneumothorax", severity=SEVERITIES[seed % 3]))
        (finding,) = phantom.findings
        ptx = phantom.masks["pneumothorax"]
        lung = phantom.masks[f"{finding.side}_lung"]
        other = phantom.masks[f"{'left' if finding.side == 'right' else 'right'}_lung"]
        assert not (ptx & ~lung).any() and not (ptx & other).any()  # inside its own hemithorax
        assert phantom.pcr == pytest.approx(ptx.sum() / lung.sum(), abs=1e-12)
        assert finding.severity == pcr_severity(phantom.pcr) == SEVERITIES[seed % 3]
        assert finding.zone == "apical"
    assert generate_phantom(0, 64, force()).pcr is None


def test_no_vessels_beyond_the_retracted_lung_edge(monkeypatch):
    """Replace the vessel layer by a uniform one and render the same noise-free phantom with and without it:
    the difference is the vessels as drawn. It is present in the retracted lung and absent in the pleural air."""
    from imtcxr_jax.data import phantom as module

    config = force("pneumothorax", severity="moderate", noise=0.0)
    images = {}
    for strength in (0.0, 0.1):
        monkeypatch.setattr(
            module, "_vessels", lambda scene, grid, *_, s=strength: np.full((grid.n, grid.n), s, np.float32)
        )
        images[strength] = generate_phantom(2, 128, config)
    phantom = images[0.1]
    vessels = images[0.1].image.astype(float) - images[0.0].image.astype(float)
    pleural_air = phantom.masks["pneumothorax"]
    side = phantom.findings[0].side
    lung = phantom.masks[f"{side}_lung"] & ~pleural_air
    for _ in range(3):  # away from the edge, where the blur mixes the two
        pleural_air = (
            pleural_air
            & np.roll(pleural_air, 1, 0)
            & np.roll(pleural_air, -1, 0)
            & np.roll(pleural_air, 1, 1)
            & np.roll(pleural_air, -1, 1)
        )
        lung = lung & np.roll(lung, 1, 0) & np.roll(lung, -1, 0) & np.roll(lung, 1, 1) & np.roll(lung, -1, 1)
    assert pleural_air.sum() > 50 and lung.sum() > 50
    assert np.abs(vessels[pleural_air]).max() <= 1  # rounding only
    assert vessels[lung].mean() > 5


# ------------------------------------------------------------------------------------------------------------
# Boxes and lesions


def test_boxes_are_the_tight_boxes_of_their_lesions(sampled):
    checked = 0
    for phantom in sampled:
        for finding, mask in zip(phantom.findings, phantom.lesion_masks, strict=True):
            if finding.box is None:
                assert mask is None and finding.label == "edema"
                continue
            rows, cols = np.nonzero(mask)
            assert finding.box == (cols.min(), rows.min(), cols.max() + 1.0, rows.max() + 1.0)
            if finding.side in ("right", "left"):
                assert not (mask & ~phantom.masks[f"{finding.side}_lung"]).any()  # lesions lie in their lung
            checked += 1
    assert checked > 100


@pytest.mark.parametrize("label", OPACITIES)
def test_the_picture_changes_inside_the_box(label):
    """Same seed with and without the finding: the image gets brighter in the box, and (almost) nothing changes
    outside it (the blur spreads a pixel or two)."""
    for seed in range(3):
        base = generate_phantom(seed, 128, force(severity="severe"))
        lesion = generate_phantom(seed, 128, force(label, severity="severe"))
        difference = lesion.image.astype(float) - base.image.astype(float)
        inside = np.zeros(difference.shape, dtype=bool)
        for finding in lesion.findings:
            x0, y0, x1, y1 = (int(v) for v in finding.box)
            inside[max(y0 - 3, 0) : y1 + 3, max(x0 - 3, 0) : x1 + 3] = True
        assert np.abs(difference[inside]).sum() >= 0.97 * np.abs(difference).sum(), (label, seed)
        assert difference[inside].mean() > 2, (label, seed)


# ------------------------------------------------------------------------------------------------------------
# Distribution and reports


def test_every_finding_appears_in_a_sample(sampled):
    counts = {label: 0 for label in LABELS}
    for phantom in sampled:
        for label in phantom.labels:
            counts[label] += 1
    assert all(count >= 5 for count in counts.values()), counts


def test_forced_findings_at_every_severity_and_small_size():
    for label in FINDING_LABELS:
        for severity in SEVERITIES:
            phantom = generate_phantom(7, 64, force(label, severity=severity))
            assert label in phantom.labels, (label, severity)


def mention_phrases():
    if not PHRASES.is_dir():
        pytest.skip(f"CheXpert phrase lists not found at {PHRASES}")
    return {
        label: [
            line.strip().lower()
            for line in (PHRASES / f"{name}.txt").read_text().splitlines()
            if line.strip()
        ]
        for label, name in CHEXPERT_FILE.items()
    }


def test_report_names_every_finding_with_its_side_and_severity(sampled):
    phrases = mention_phrases()
    severity_words = {
        "pleural effusion": {"mild": "small", "moderate": "moderate", "severe": "large"},
        "pneumothorax": {"mild": "small", "moderate": "moderate", "severe": "large"},
    }
    for phantom in sampled:
        report = phantom.report.lower()
        for finding in phantom.findings:
            assert any(phrase.replace("_", " ").strip() in report for phrase in phrases[finding.label]), (
                finding.label,
                report,
            )
            if finding.side in ("right", "left"):
                assert (
                    finding.side in report
                    or "bilateral" in report
                    or "bibasilar" in report
                    or "both" in report
                )
            if finding.label in severity_words:
                assert severity_words[finding.label][finding.severity] in report
            elif finding.label in ("cardiomegaly", "edema"):
                assert finding.severity in report or (finding.severity == "severe" and "mark" in report)


def test_report_states_negatives(sampled):
    for phantom in sampled:
        report = phantom.report.lower()
        labels = set(phantom.labels)
        if not labels & {"pleural effusion", "pneumothorax"}:
            assert "no pleural effusion or pneumothorax" in report or "no effusion or pneumothorax" in report
        if "cardiomegaly" not in labels:
            assert "normal" in report and "heart" in report
        for absent in {"nodule", "mass", "pneumonia", "atelectasis"} - labels:
            assert absent not in report, (absent, report)
        if labels == {NO_FINDING}:
            assert "lungs are" in report and "clear" in report


def test_report_sentences_start_with_capitals(sampled):
    for phantom in sampled:
        for section in (phantom.report_findings, phantom.report_impression):
            assert not re.findall(r"(?:^|[.;] )[a-z]", section), section
        assert " ct " not in phantom.report


# ------------------------------------------------------------------------------------------------------------
# Command line


def test_cli_writes_images_and_manifest(tmp_path, capsys):
    out = tmp_path / "phantoms"
    assert cli.cli_main(["phantom", "--n", "3", "--seed", "40", "--size", "64", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [row["seed"] for row in rows] == [40, 41, 42]
    for row in rows:
        with Image.open(out / row["image"]) as image:
            pixels = np.asarray(image)
        assert pixels.shape == (64, 64)
        np.testing.assert_array_equal(pixels, generate_phantom(row["seed"], 64).image)
        assert row == json.loads(json.dumps(generate_phantom(row["seed"], 64).to_record(row["image"])))
    assert not (out / "manifest.jsonl.partial").exists()

    # An existing manifest is never replaced silently.
    assert cli.cli_main(["phantom", "--n", "1", "--size", "64", "--out", str(out)]) == 1
    assert str(out / "manifest.jsonl") in capsys.readouterr().err
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 3
    assert cli.cli_main(["phantom", "--n", "1", "--size", "64", "--out", str(out), "--overwrite"]) == 0
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 1


def test_cli_worker_processes_write_the_same_dataset(tmp_path):
    """Worker processes give the single process's files, in seed order. The pooled run is a process of its own,
    as `imtcxr train` starts it: its workers are forked, and this test process has JAX's threads running."""
    args = ["phantom", "--n", "5", "--seed", "7", "--size", "64", "--max-shift", "0.05"]
    assert cli.cli_main([*args, "--out", str(tmp_path / "one")]) == 0
    pooled = [
        sys.executable,
        "-m",
        "imtcxr_jax.data.cli",
        *args,
        "--workers",
        "2",
        "--out",
        str(tmp_path / "two"),
    ]
    assert subprocess.run(pooled, cwd=Path(__file__).parents[2], check=False).returncode == 0
    one, two = ((tmp_path / d / "manifest.jsonl").read_text() for d in ("one", "two"))
    assert one == two
    for image in (json.loads(line)["image"] for line in one.splitlines()):
        assert (tmp_path / "one" / image).read_bytes() == (tmp_path / "two" / image).read_bytes()


def test_cli_contact_sheet(tmp_path):
    path = tmp_path / "sheet.png"
    assert (
        cli.cli_main(["phantom-sheet", "--out", str(path), "--size", "64", "--random", "3", "--columns", "2"])
        == 0
    )
    with Image.open(path) as image:
        assert image.width == 128 and image.height > 128


def test_cli_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        cli.cli_main(["phantom", "--n", "0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        cli.cli_main(["phantom", "--n", "1", "--size", "16", "--out", str(tmp_path)])


# ------------------------------------------------------------------------------------------------------------
# Positioning


def test_repositioning_moves_image_and_every_ground_truth_together():
    moved_config = PhantomConfig(max_shift=0.1, min_zoom=0.75)
    centres, plain_centres = [], []
    for seed in range(12):
        plain, moved = generate_phantom(seed, 128), generate_phantom(seed, 128, moved_config)
        assert moved.labels == plain.labels and moved.report == plain.report and moved.ctr == plain.ctr
        # One zoom for everything: each structure's area shrinks by the same factor (nearest resampling
        # moves a mask's border by at most a pixel).
        ratios = [moved.masks[k].sum() / plain.masks[k].sum() for k in ("right_lung", "left_lung", "heart")]
        assert max(ratios) - min(ratios) < 0.06, ratios
        # The lungs and heart stay 2 px inside the image; the polygons follow the moved masks.
        anatomy = moved.masks["right_lung"] | moved.masks["left_lung"] | moved.masks["heart"]
        rows, cols = np.nonzero(anatomy)
        assert rows.min() >= 1 and cols.min() >= 1 and rows.max() <= 126 and cols.max() <= 126
        for name, polygon in moved.polygons.items():
            filled = geometry.polygon_to_mask(polygon, (128, 128))
            assert geometry.dice(filled, moved.masks[name]) > 0.9, name
        # The picture moved with them: the lungs are darker than the heart, as before.
        assert moved.image[moved.masks["right_lung"]].mean() < moved.image[moved.masks["heart"]].mean() - 20
        # Boxes are the tight boxes of the moved lesions.
        for finding, lesion in zip(moved.findings, moved.lesion_masks, strict=True):
            if finding.box is not None:
                assert finding.box == tuple(float(v) for v in geometry.mask_to_box(lesion))
        # CTR measured on the moved masks is still the recorded one (a ratio: zoom and shift cancel).
        measured = geometry.cardiothoracic_ratio(
            moved.masks["heart"], moved.masks["left_lung"], moved.masks["right_lung"]
        )
        assert abs(measured.value - moved.ctr) < 0.03
        centres.append(np.argwhere(moved.masks["heart"]).mean(axis=0))
        plain_centres.append(np.argwhere(plain.masks["heart"]).mean(axis=0))
    # Positions really vary much more than the unrepositioned anatomy's.
    assert np.std(centres, axis=0).min() > 2 * np.std(plain_centres, axis=0).min()
    with pytest.raises(ValueError, match="max_shift"):
        PhantomConfig(max_shift=0.5)
    with pytest.raises(ValueError, match="min_zoom"):
        PhantomConfig(min_zoom=0.2)


def test_cli_positioning_and_finding_weights(tmp_path, capsys):
    out = tmp_path / "focused"
    args = [
        "phantom",
        "--n",
        "4",
        "--size",
        "64",
        "--out",
        str(out),
        "--max-shift",
        "0.05",
        "--min-zoom",
        "0.9",
    ]
    weights = "cardiomegaly=1, pneumothorax=0.5"
    assert cli.cli_main([*args, "--finding-weights", weights]) == 0
    config = PhantomConfig(
        max_shift=0.05, min_zoom=0.9, finding_weights=(("cardiomegaly", 1.0), ("pneumothorax", 0.5))
    )
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    for row in rows:
        assert set(row["labels"]) <= {"cardiomegaly", "pneumothorax", NO_FINDING}
        assert row == json.loads(
            json.dumps(generate_phantom(row["seed"], 64, config).to_record(row["image"]))
        )
    with pytest.raises(SystemExit):
        cli.cli_main([*args, "--overwrite", "--finding-weights", "cardiomegaly"])
    assert "expected LABEL=WEIGHT" in capsys.readouterr().err
    assert cli.cli_main([*args, "--overwrite", "--finding-weights", "dragon pox=1"]) == 2
    assert "unknown finding label 'dragon pox'" in capsys.readouterr().err
    assert cli.cli_main([*args, "--overwrite", "--max-shift", "0.6"]) == 2
    assert "max_shift" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least one label"):
        PhantomConfig(finding_weights=(("cardiomegaly", 0.0),))
