"""`imtcxr analyze` on phantom files with bad inputs among them, output naming, and the overlay picture.

The model is the micro model with random weights of `test_workflow.random_workdir` (a step-0 checkpoint).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imtcxr_jax import overlay
from imtcxr_jax.analyze import cli_main, output_names
from imtcxr_jax.cli import main as imtcxr_main
from imtcxr_jax.data.phantom import FINDING_LABELS
from tests.test_workflow import phantom_pixels, shared_workdir


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return shared_workdir(tmp_path_factory)


@pytest.fixture
def fixed_batches(monkeypatch):
    """Run the command's batches at the fixed shapes of test_workflow, whose compilations it then reuses (the
    command pads short batches to powers of two, which would compile every kind of question again)."""
    from imtcxr_jax import workflow

    from_config = workflow.WorkflowOptions.from_config

    def fixed(config, **overrides):
        return from_config(config, **(overrides | {"bucket_batches": False}))

    monkeypatch.setattr(workflow.WorkflowOptions, "from_config", staticmethod(fixed))


@pytest.fixture
def inputs(tmp_path) -> dict[str, Path]:
    folder = tmp_path / "in"
    for sub in ("a", "b"):
        (folder / sub).mkdir(parents=True)
    files = {
        "a/x.png": folder / "a" / "x.png",  # 80 x 64 grey
        "b/x.png": folder / "b" / "x.png",  # 64 x 80 RGB: same stem as a/x.png
        "y.jpg": folder / "y.jpg",
        "empty.png": folder / "empty.png",
        "truncated.png": folder / "truncated.png",
        "truncated.jpg": folder / "truncated.jpg",
        "tiny.png": folder / "tiny.png",  # 1 x 1
    }
    Image.fromarray(phantom_pixels(1, 80, 64)).save(files["a/x.png"])
    Image.fromarray(phantom_pixels(2, 64, 80)).convert("RGB").save(files["b/x.png"])
    Image.fromarray(phantom_pixels(3, 64, 64)).save(files["y.jpg"], quality=90)
    files["empty.png"].write_bytes(b"")
    data = files["a/x.png"].read_bytes()
    files["truncated.png"].write_bytes(data[: len(data) // 2])
    data = files["y.jpg"].read_bytes()
    files["truncated.jpg"].write_bytes(data[: len(data) // 2])
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(files["tiny.png"])
    return files


def test_analyze_writes_json_and_png_per_readable_file_and_names_the_bad_ones(
    workdir, inputs, tmp_path, capsys, fixed_batches
):
    out = tmp_path / "out"
    order = ["a/x.png", "empty.png", "b/x.png", "truncated.jpg", "y.jpg", "truncated.png", "tiny.png"]
    argv = [*(str(inputs[name]) for name in order), "--checkpoint", str(workdir), "--out", str(out)]
    options = ["--batch-size", "4", "--beam", "1", "--threshold", "0", "--labels", ",".join(FINDING_LABELS)]
    code = imtcxr_main(["analyze", *argv, *options])
    stderr = capsys.readouterr().err
    assert code == 1
    for bad in ("empty.png", "truncated.png", "truncated.jpg", "tiny.png"):
        line = next(line for line in stderr.splitlines() if str(inputs[bad]) in line)
        assert len(line) > len(str(inputs[bad])) + 20, line  # the file and a reason
    assert "empty" in next(line for line in stderr.splitlines() if str(inputs["empty.png"]) in line)
    assert "4 input(s) failed" in stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "x_png-2.json",
        "x_png-2.png",
        "x_png.json",
        "x_png.png",
        "y.json",
        "y.png",
    ]
    assert f"{inputs['b/x.png']} -> {out / 'x_png-2'}.json" in stderr

    for name, path, (width, height) in [
        ("x_png", inputs["a/x.png"], (80, 64)),
        ("x_png-2", inputs["b/x.png"], (64, 80)),
        ("y", inputs["y.jpg"], (64, 64)),
    ]:
        document = json.loads((out / f"{name}.json").read_text())
        assert document["schema_version"] == 1
        assert document["image"] == {"path": str(path), "width": width, "height": height}
        assert document["model"]["step"] == 0 and document["model"]["checkpoint"] == str(workdir.absolute())
        assert document["findings"] and all(
            f["box"] is None or len(f["box"]) == 4 for f in document["findings"]
        )
        for finding in document["findings"]:
            if finding["box"] is not None:
                x0, y0, x1, y1 = finding["box"]
                assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height
        assert {"right lung", "left lung", "heart"} <= set(document["segmentation"])
        assert set(document["measurements"]) >= {"ctr", "pcr"}
        with Image.open(out / f"{name}.png") as picture:
            assert picture.format == "PNG" and max(picture.size) == overlay.MIN_SIDE  # small: enlarged
            assert picture.size[0] / picture.size[1] == pytest.approx(width / height, rel=0.01)


def test_analyze_asks_only_the_report_of_an_edited_document_again(
    workdir, inputs, tmp_path, capsys, fixed_batches, monkeypatch
):
    """Analyse an image, edit its document, give the document back: only the report is asked, from the edited
    evidence; the image is found beside a moved document; bad documents are named, the others still run."""
    from imtcxr_jax import workflow
    from imtcxr_jax.tasks.common import Task

    out = tmp_path / "out"
    common = ["--checkpoint", str(workdir), "--batch-size", "4"]
    options = ["--beam", "1", "--threshold", "0", "--labels", ",".join(FINDING_LABELS)]
    assert imtcxr_main(["analyze", str(inputs["y.jpg"]), "--out", str(out), *common, *options]) == 0
    original = json.loads((out / "y.json").read_text())
    edited = json.loads((out / "y.json").read_text())
    edited["findings"] = [f for f in edited["findings"] if f["label"] == "pneumothorax"]
    edited["findings"][0] |= {"severity": "severe", "location": "left apical"}
    edited["measurements"]["ctr"] = 0.58
    (out / "y.json").write_text(json.dumps(edited))
    moved = tmp_path / "moved"  # a copy of the document beside a copy of its image, its path not valid here
    moved.mkdir()
    (moved / "y.jpg").write_bytes(inputs["y.jpg"].read_bytes())
    # ... and from another step of the checkpoint, as far as it says.
    z = {
        **edited,
        "image": {**edited["image"], "path": "gone/y.jpg"},
        "model": {**edited["model"], "step": 7},
    }
    (moved / "z.json").write_text(json.dumps(z))
    bad = {
        "empty.json": "",
        "text.json": "findings: none",
        "list.json": "[]",
        "lost.json": json.dumps({**edited, "image": {**edited["image"], "path": "nowhere.png"}}),
        "gigantic.json": json.dumps(
            {**edited, "findings": [{"label": "pneumothorax", "severity": "gigantic"}]}
        ),
    }
    for name, text in bad.items():
        (tmp_path / name).write_text(text)

    asked = []
    real_ask, real_yes_no = workflow._Asker.ask, workflow._Asker.ask_yes_no
    monkeypatch.setattr(
        workflow._Asker, "ask", lambda self, qs, d: asked.extend(q.task for q in qs) or real_ask(self, qs, d)
    )
    monkeypatch.setattr(
        workflow._Asker,
        "ask_yes_no",
        lambda self, qs, ids: asked.extend(q.task for q in qs) or real_yes_no(self, qs, ids),
    )
    files = [str(out / "y.json"), str(moved / "z.json"), *(str(tmp_path / name) for name in bad)]
    code = imtcxr_main(["analyze", *files, "--out", str(out), *common, "--beam", "3"])
    stderr = capsys.readouterr().err

    assert code == 1 and "5 input(s) failed" in stderr
    assert asked == [Task.REPORT, Task.REPORT]  # one batch of the two good documents' report questions
    assert "apply to images only" in stderr  # --beam 3 is not used for documents
    assert f"{moved / 'z.json'}: its evidence came from {workdir.absolute()} (step 7)" in stderr
    for name, reason in [
        ("empty.json", "empty file"),
        ("text.json", "not JSON"),
        ("list.json", "expected a JSON object"),
        ("lost.json", "nowhere.png is not found"),
        ("gigantic.json", "gigantic"),
    ]:
        assert reason in next(line for line in stderr.splitlines() if str(tmp_path / name) in line), name
    for name in ("y", "z"):
        document = json.loads((out / f"{name}.json").read_text())
        assert (out / f"{name}.png").is_file()
        for key in ("image", "settings", "findings", "segmentation"):
            assert document[key] == (edited if name == "y" else z)[key]
        assert document["measurements"]["ctr"] == 0.58
        assert [q for q in document["questions"] if q["task"] != "report"] == original["questions"][:-1]
        prompt = document["questions"][-1]["instruction"]
        assert (
            "severe" in prompt
            and "left apical" in prompt
            and prompt != original["questions"][-1]["instruction"]
        )
        assert document["settings"]["beam_size"] == 1
        provenance = {"checkpoint": str(workdir.absolute()), "step": 0}
        evidence = provenance | {"step": 0 if name == "y" else 7}
        assert document["model"] == evidence | {"report_regenerated_by": provenance}


def test_analyze_usage_errors(tmp_path, inputs, capsys):
    assert (
        cli_main([str(inputs["y.jpg"]), "--checkpoint", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
        == 2
    )
    assert "nowhere" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli_main([str(inputs["y.jpg"]), "--checkpoint", "w", "--out", "o", "--batch-size", "0"])
    assert exit_info.value.code == 2


def test_output_names_never_collide():
    paths = [Path(p) for p in ("a/x.png", "b/x.png", "c/x.dcm", "y.jpg", "x_png-2.png", "Y.png")]
    names = output_names(paths)
    assert names == ["x_png", "x_png-2", "x_dcm", "y_jpg", "x_png-2-2", "Y_png"]
    assert len({name.lower() for name in names}) == len(names)


# ------------------------------------------------------------------------------------------------------------
# Overlay


def _document(width: int, height: int) -> dict:
    lung = [[0.1, 0.1], [0.45, 0.1], [0.45, 0.9], [0.1, 0.9]]
    scale = np.array([width, height])
    polygons = {
        "right lung": (np.array(lung) * scale).tolist(),
        "left lung": ((np.array(lung) + np.array([0.45, 0])) * scale).tolist(),
        "heart": (np.array([[0.35, 0.5], [0.7, 0.5], [0.6, 0.8]]) * scale).tolist(),
        "pneumothorax": [[1, 2]],  # malformed (an edited document): skipped, not fatal
    }
    return {
        "image": {"width": width, "height": height},
        "findings": [
            {
                "label": "cardiomegaly",
                "confidence": 0.9,
                "severity": "mild",
                "location": None,
                "box": [0.3 * width, 0.4 * height, 0.7 * width, 0.85 * height],
            },
            {
                "label": "edema",
                "confidence": None,
                "severity": None,
                "location": "bilateral",
                "box": [3, 2, 1, 0],
            },
        ],
        "segmentation": polygons,
        "measurements": {"ctr": 0.41, "pcr": None},
    }


@pytest.mark.parametrize(
    ("size", "expected"),
    [((64, 80), (410, 512)), ((3000, 1500), (2048, 1024)), ((700, 600), (700, 600))],
)
def test_overlay_size_and_drawing(size, expected):
    width, height = size
    pixels = np.full((height, width), 60, np.uint8)
    picture = overlay.draw_overlay(pixels, _document(width, height))
    assert picture.size == expected and picture.mode == "RGB"
    drawn = np.asarray(picture)
    assert (drawn != 60).any(axis=-1).mean() > 0.005  # contours, box, CTR lines and text are on it
    red = np.all(drawn == overlay.COLOURS["heart"], axis=-1)
    assert red.any()


def test_overlay_of_a_downscaled_copy_uses_the_document_coordinates():
    """Pixels read downscaled (a 4000 x 2000 original at 1000 x 500): drawn where the document says."""
    document = _document(4000, 2000)
    picture = np.asarray(overlay.draw_overlay(np.zeros((500, 1000), np.uint8), document))
    assert picture.shape[:2] == (500, 1000)
    x0, y0, x1, y1 = (np.array(document["findings"][0]["box"]) / 4).round().astype(int)
    box = np.all(picture == overlay.COLOURS["box"], axis=-1)
    assert box[y0 : y1 + 1, x0 : x1 + 1].any() and box[(y0 + y1) // 2, x0 - 1 : x0 + 2].any()


def test_the_demo_analyses_a_held_out_phantom_with_a_finding_and_shows_its_truth(
    workdir, tmp_path, capsys, fixed_batches
):
    """`tools/demo_analysis.py`, the main job's last step, on the shared workdir's held-out phantoms."""
    from tools.demo_analysis import first_phantom_with_a_finding, main

    manifest = workdir / "data" / "eval" / "manifest.jsonl"
    truth = first_phantom_with_a_finding(manifest)
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert truth == next((r for r in records if r["findings"]), records[0])
    assert main([str(workdir), "--out", str(tmp_path / "demo")]) == 0
    stem = Path(truth["image"]).stem
    document = json.loads((tmp_path / "demo" / f"{stem}.json").read_text())
    assert (tmp_path / "demo" / f"{stem}.png").is_file()
    shown = capsys.readouterr().out
    assert f"report: {document['report'] or '(none)'}" in shown and f"report: {truth['report']}" in shown
    assert all(flag["message"] in shown for flag in document["flags"])
    for finding in document["findings"]:
        assert f"  {finding['label']}" in shown.split("drawn into the phantom:")[0]
    for finding in truth["findings"]:
        assert f"  {finding['label']}" in shown.split("drawn into the phantom:")[1]


def test_the_demo_names_a_workdir_without_held_out_phantoms(tmp_path, capsys):
    from tools.demo_analysis import first_phantom_with_a_finding, main

    assert main([str(tmp_path)]) == 2
    assert "manifest.jsonl" in capsys.readouterr().err
    (tmp_path / "manifest.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"manifest\.jsonl: no records"):
        first_phantom_with_a_finding(tmp_path / "manifest.jsonl")
