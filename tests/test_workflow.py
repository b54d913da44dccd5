"""The evidence workflow on the micro model with random weights: document schema, coordinates in the original
image, every constrained answer parsed, consistency flags, and regenerating only the report after an edit.

Random weights answer nonsense, but the constraints make every structured answer well-formed, which is what
these tests check. One workdir (phantom data, trained tokenizer, a step-0 checkpoint: no training step, which
would cost a long compilation) serves the module. Jit compilations dominate the run time, so every call uses
the same options (batch 4, no batch buckets, greedy): each kind of question compiles once.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from imtcxr_jax import workflow
from imtcxr_jax.data.phantom import FINDING_LABELS, generate_phantom
from imtcxr_jax.tasks import classification, report
from imtcxr_jax.tasks.common import Task
from imtcxr_jax.text import coords

CANVAS = 64
FAST = {"batch_size": 4, "bucket_batches": False, "beam_size": 1}


def random_workdir(workdir: Path) -> Path:
    """A training workdir of the micro config without training: phantoms, tokenizer, model.json and a step-0
    checkpoint of the randomly initialised state, readable by `load_trained_model`."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from imtcxr_jax.data.sources import load_records
    from imtcxr_jax.models.imtcxr import IMTCXR
    from imtcxr_jax.train.checkpoint import Checkpointer
    from imtcxr_jax.train.experiment import config_to_json, load_config
    from imtcxr_jax.train.loop import model_config, prepare_data, prepare_tokenizer
    from imtcxr_jax.train.optimizer import make_optimizer
    from imtcxr_jax.train.steps import create_train_state

    config = load_config(
        Path(__file__).parents[1] / "configs" / "micro.py",
        ["--config.dataset.train_examples=12", "--config.dataset.eval_examples=1", "--config.eval_every=0"],
    )
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config_to_json(config))
    train_dir, _ = prepare_data(config, workdir)
    records, _ = load_records(train_dir)
    tokenizer = prepare_tokenizer(config, workdir, records)
    cfg = model_config(config, tokenizer)
    (workdir / "model.json").write_text(json.dumps(cfg.to_dict()))
    # The state's shapes, filled on the host: initialising with JAX's random initialisers compiles dozens of
    # kernels (about 20 s on 2 cores). Weights N(0, 0.02), norms' scales and variances 1, biases and means 0,
    # optimizer state 0.
    optimizer = make_optimizer(config)
    abstract = jax.eval_shape(
        lambda: create_train_state(IMTCXR(cfg, rngs=nnx.Rngs(config.seed)), optimizer, config.seed)[1]
    )
    rng = np.random.default_rng(config.seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if not name.startswith((".params", ".model_state")):
            return jnp.zeros(leaf.shape, leaf.dtype)
        if name.endswith(("['scale'].value", "['var'].value")):
            return jnp.ones(leaf.shape, leaf.dtype)
        if name.endswith(("['bias'].value", "['mean'].value")):
            return jnp.zeros(leaf.shape, leaf.dtype)
        return jnp.asarray(rng.normal(0.0, 0.02, leaf.shape), leaf.dtype)

    state = jax.tree_util.tree_map_with_path(fill, abstract)
    checkpoints = Checkpointer(workdir / "checkpoints", asynchronous=False)
    checkpoints.save(0, state, None, force=True)
    checkpoints.close()
    return workdir


_WORKDIRS: dict[int, Path] = {}


def shared_workdir(tmp_path_factory) -> Path:
    """One `random_workdir` per test session, shared by the modules that need one (it takes seconds)."""
    key = id(tmp_path_factory)  # the session's factory
    if key not in _WORKDIRS:
        _WORKDIRS[key] = random_workdir(tmp_path_factory.mktemp("workdir"))
    return _WORKDIRS[key]


def phantom_pixels(seed: int, width: int, height: int) -> np.ndarray:
    """A 64 px phantom padded to width x height (one side 64): a non-square original for the letterbox."""
    image = generate_phantom(seed, 64).image
    return np.pad(image, ((0, height - 64), (0, width - 64)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from imtcxr_jax.train.loop import load_trained_model

    model, tokenizer, config, _ = load_trained_model(shared_workdir(tmp_path_factory))
    return model, tokenizer, config


@pytest.fixture(scope="module")
def run(trained):
    """Two images (80x64 and 64x80), every label a finding (threshold 0), so that every kind of question is
    asked; every finding below the review threshold."""
    model, tokenizer, config = trained
    options = workflow.WorkflowOptions.from_config(
        config, labels=FINDING_LABELS, threshold=0.0, review_threshold=1.0, **FAST
    )
    assert options.image_size == CANVAS and options.resize_mode == "letterbox"
    pixels = [phantom_pixels(1, 80, 64), phantom_pixels(2, 64, 80)]
    images = [workflow.prepare_image(p, options, f"/data/{i}.png") for i, p in enumerate(pixels)]
    documents = workflow.run_workflow(model, tokenizer, images, options, provenance={"step": 0})
    return options, pixels, images, documents


def test_document_schema(run):
    documents = run[3]
    assert len(documents) == 2
    for document, (width, height) in zip(documents, [(80, 64), (64, 80)], strict=True):
        json.dumps(document, allow_nan=False)  # JSON-able, no NaN
        assert set(document) == {
            "schema_version",
            "image",
            "model",
            "settings",
            "questions",
            "findings",
            "segmentation",
            "measurements",
            "flags",
            "report",
        }
        assert document["schema_version"] == workflow.SCHEMA_VERSION
        assert document["image"] == {"path": document["image"]["path"], "width": width, "height": height}
        assert document["model"] == {"step": 0}
        assert document["settings"]["labels"] == list(FINDING_LABELS)
        for question in document["questions"]:
            assert {"task", "subject", "instruction", "answer", "parsed", "confidence", "error"} <= set(
                question
            )
            assert 0.0 <= question["confidence"] <= 1.0
        assert [f["label"] for f in document["findings"]] == list(FINDING_LABELS)  # threshold 0: all
        for finding in document["findings"]:
            assert set(finding) == {"label", "confidence", "severity", "location", "box"}
        assert set(document["measurements"]) == {
            "ctr",
            "ctr_reason",
            "ctr_severity",
            "pcr",
            "pcr_reason",
            "pcr_side",
        }
        for name in ("ctr", "pcr"):  # a number, or null with the reason
            value, reason = document["measurements"][name], document["measurements"][f"{name}_reason"]
            assert (value is None) != (reason is None)
            assert value is None or (isinstance(value, float) and value >= 0)
        assert document["report"] is None or isinstance(document["report"], str)


def test_every_question_is_asked_and_every_structured_answer_parses(run):
    documents = run[3]
    labels = list(FINDING_LABELS)
    for document in documents:
        asked = [(q["task"], q["subject"]) for q in document["questions"]]
        expected = [("presence", label) for label in labels] + [("diseases", "")]
        expected += [("segmentation", name) for name in ("right lung", "left lung", "heart")]
        expected += [("location", label) for label in labels] + [("severity", label) for label in labels]
        expected += [("box", label) for label in labels] + [("segmentation", "pneumothorax"), ("report", "")]
        assert asked == expected
        for question in document["questions"]:
            if question["task"] != "report":  # free text may not parse; everything else is constrained
                assert question["error"] is None and question["parsed"] is not None, question
        by_task = {(q["task"], q["subject"]): q for q in document["questions"]}
        for label in labels:
            presence = by_task[("presence", label)]
            assert presence["parsed"] == (presence["answer"] == "yes") == (presence["p_yes"] >= 0.5)
            assert by_task[("location", label)]["parsed"] in classification.LOCATIONS
            assert by_task[("severity", label)]["parsed"] in classification.SEVERITIES
        assert by_task[("diseases", "")]["parsed"] is not None
        # The findings carry the parsed attributes and P(yes) as confidence.
        for finding in document["findings"]:
            label = finding["label"]
            assert finding["confidence"] == by_task[("presence", label)]["p_yes"]
            assert finding["location"] == by_task[("location", label)]["parsed"]
            assert finding["severity"] == by_task[("severity", label)]["parsed"]
            assert finding["box"] == by_task[("box", label)]["parsed"]


def test_coordinates_are_in_the_original_image(run):
    _, _, _, documents = run
    for document in documents:
        width, height = document["image"]["width"], document["image"]["height"]
        for finding in document["findings"]:
            x0, y0, x1, y1 = finding["box"]
            assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height
        assert set(document["segmentation"]) == {"right lung", "left lung", "heart", "pneumothorax"}
        for points in document["segmentation"].values():
            points = np.asarray(points)
            assert points.shape == (30, 2)
            assert (points >= 0).all() and (points[:, 0] <= width).all() and (points[:, 1] <= height).all()


def test_boxes_invert_the_letterbox(run):
    """The parsed box equals the raw bins mapped back by hand: 80x64 -> 64x51 content, 6 px padding on top."""
    _, _, _, documents = run
    document = documents[0]
    content_h = round(64 * CANVAS / 80)  # 51
    offset_y = (CANVAS - content_h) // 2  # 6
    for question in document["questions"]:
        if question["task"] != "box":
            continue
        canvas = coords.bins_to_boxes(coords.text_to_bins(question["answer"]), CANVAS, CANVAS)[0]
        x = canvas[[0, 2]] * 80 / CANVAS
        y = (canvas[[1, 3]] - offset_y) * 64 / content_h
        expected = [x[0], y[0], x[1], y[1]]
        expected = np.clip(expected, 0, [80, 64, 80, 64])
        np.testing.assert_allclose(question["parsed"], expected, atol=0.01)


def test_review_and_box_flags(run):
    _, _, _, documents = run
    for document in documents:
        kinds = [flag["kind"] for flag in document["flags"]]
        review = [flag["label"] for flag in document["flags"] if flag["kind"] == "review"]
        assert review == list(FINDING_LABELS)  # review threshold 1.0: every finding
        # Nine findings with attributes do not fit the micro model's 48 trained source tokens.
        assert "evidence_prompt_shortened" in kinds
        report_question = document["questions"][-1]
        assert report_question["prompt"] in ("findings", "plain") and report_question["note"]


def test_regenerate_report_asks_only_the_report_question(run, trained, monkeypatch):
    model, tokenizer, _ = trained
    _, pixels, _, documents = run
    document = json.loads(json.dumps(documents[0]))  # as read back from its JSON file
    # The user removes every finding but one (the micro model's prompts are short), changes its location and
    # severity and sets the CTR.
    edited = copy.deepcopy(document)
    edited["findings"] = [f for f in edited["findings"] if f["label"] == "pleural effusion"]
    edited["findings"][0]["severity"] = "severe" if edited["findings"][0]["severity"] != "severe" else "mild"
    edited["findings"][0]["location"] = "left"
    edited["measurements"]["ctr"] = 0.62

    asked = []
    real_ask, real_yes_no = workflow._Asker.ask, workflow._Asker.ask_yes_no

    def ask(self, questions, decoding):
        asked.extend(q.task for q in questions)
        return real_ask(self, questions, decoding)

    def ask_yes_no(self, questions, ids):
        asked.extend(q.task for q in questions)
        return real_yes_no(self, questions, ids)

    monkeypatch.setattr(workflow._Asker, "ask", ask)
    monkeypatch.setattr(workflow._Asker, "ask_yes_no", ask_yes_no)
    regenerated = workflow.regenerate_report(
        model, tokenizer, edited, pixels[0], batch_size=4, bucket_batches=False
    )

    assert asked == [Task.REPORT]
    old = [q for q in document["questions"] if q["task"] != "report"]
    assert [q for q in regenerated["questions"] if q["task"] != "report"] == old
    for key in ("image", "model", "settings", "findings", "segmentation", "measurements"):
        assert regenerated[key] == edited[key], key
    prompt = report.report_instruction(
        report.Evidence(
            tuple(report.Finding(f["label"], f["location"], f["severity"]) for f in edited["findings"]),
            ctr=0.62,
            pcr=edited["measurements"]["pcr"],
        )
    )
    report_question = regenerated["questions"][-1]
    assert report_question["task"] == "report" and report_question["instruction"] == prompt
    assert report_question["prompt"] == "evidence" and report_question["note"] is None
    assert regenerated["report"] == report_question["parsed"]
    assert edited == json.loads(json.dumps(edited))  # the input document is not changed
    # Flags follow the edited evidence: only the two kept findings are up for review.
    assert [f["label"] for f in regenerated["flags"] if f["kind"] == "review"] == [
        f["label"] for f in edited["findings"]
    ]


def test_regenerate_report_refuses_bad_edits_and_images(run, trained):
    model, tokenizer, _ = trained
    _, pixels, _, documents = run
    edited = copy.deepcopy(documents[0])
    edited["findings"][0]["severity"] = "gigantic"
    with pytest.raises(ValueError, match="gigantic"):
        workflow.regenerate_report(model, tokenizer, edited, pixels[0])
    with pytest.raises(ValueError, match="80x64"):
        workflow.regenerate_report(model, tokenizer, documents[0], pixels[1])
    with pytest.raises(ValueError, match="schema_version"):
        workflow.regenerate_report(model, tokenizer, {**documents[0], "schema_version": 99}, pixels[0])


def test_downscaled_pixels_report_original_coordinates(trained):
    """Pixels read downscaled (image_io caps the longer side) map back to the original size."""
    _, _, config = trained
    options = workflow.WorkflowOptions.from_config(config, **FAST)
    image = workflow.prepare_image(phantom_pixels(3, 80, 64), options, "big.png", original_size=(800, 640))
    assert (image.width, image.height) == (800, 640)
    np.testing.assert_allclose(
        image.boxes_from_canvas(np.array([[0, 0, CANVAS, CANVAS]]))[0], [0, 0, 800, 640]
    )
    with pytest.raises(ValueError, match="not a scaled copy"):
        workflow.prepare_image(phantom_pixels(3, 80, 64), options, "big.png", original_size=(640, 800))


def _document(findings, ctr, text, asked=("cardiomegaly", "pleural effusion")):
    return {
        "settings": {"review_threshold": 0.5},
        "questions": [{"task": "presence", "subject": label, "error": None} for label in asked],
        "findings": [{"label": label, "confidence": 0.9, "box": None} for label in findings],
        "measurements": {"ctr": ctr},
        "report": text,
    }


def test_flags_compare_the_report_with_the_evidence():
    labeler = workflow._default_labeler()
    if labeler is None:
        pytest.skip("the CheXpert labeler phrase lists are not available")

    def kinds(document):
        return sorted(flag["kind"] for flag in workflow.document_flags(document, labeler))

    # The design's example: the report says no cardiomegaly while CTR is 0.62 and cardiomegaly was found.
    flags = workflow.document_flags(
        _document(["cardiomegaly"], 0.62, "No cardiomegaly. No effusion."), labeler
    )
    assert sorted(f["kind"] for f in flags) == [
        "report_contradicts_evidence",
        "report_contradicts_measurement",
    ]
    assert "0.62" in next(f["message"] for f in flags if f["kind"] == "report_contradicts_measurement")
    # Consistent: nothing to flag.
    assert kinds(_document(["cardiomegaly"], 0.62, "The heart is enlarged. No pleural effusion.")) == []
    # The report asserts a finding the evidence lacks; the CTR contradicts the missing finding.
    assert kinds(_document([], 0.62, "Small left pleural effusion.")) == [
        "measurement_contradicts_finding",
        "report_contradicts_evidence",
    ]
    # A normal report with findings in the evidence.
    assert kinds(_document(["pleural effusion"], 0.45, "No acute cardiopulmonary abnormality.")) == [
        "report_contradicts_evidence"
    ]
    # No labeler: said, not silently skipped.
    assert [f["kind"] for f in workflow.document_flags(_document([], 0.4, "Normal."), None)] == [
        "consistency_not_checked"
    ]


@pytest.mark.parametrize(
    "text, label, sides",
    [
        ("There is a small right apical pneumothorax.", "pneumothorax", {"right"}),
        ("A pneumothorax in the right hemithorax.", "pneumothorax", {"right"}),  # the side after the name
        ("No right pneumothorax. Small left pleural effusion.", "pneumothorax", set()),  # negated
        ("Small left pleural effusion and right pneumothorax.", "pleural effusion", {"left"}),  # the nearest
        ("Small left pleural effusion and right pneumothorax.", "pneumothorax", {"right"}),
        ("Bilateral pleural effusions.", "pleural effusion", {"bilateral"}),  # a plural name
        ("Left and right pneumothorax.", "pneumothorax", {"bilateral"}),
        ("The heart is enlarged. Cardiomegaly.", "cardiomegaly", set()),
    ],
)
def test_report_sides(text, label, sides):
    assert workflow.report_sides(text, label) == sides


def test_a_report_that_puts_a_finding_on_the_other_side_is_flagged():
    def side_flags(findings, report, pcr_side=None):
        document = {
            "settings": {"review_threshold": 0.5},
            "questions": [],
            "findings": [{"label": label, "confidence": 0.9, "location": where} for label, where in findings],
            "measurements": {"ctr": None, "pcr_side": pcr_side},
            "report": report,
        }
        flags = workflow.document_flags(document, None)  # no labeler needed: a text check
        return [f["message"] for f in flags if f["kind"] == "report_contradicts_evidence"]

    # The demo's case (README): the evidence's pneumothorax is left apical, the report's on the right.
    assert side_flags([("pneumothorax", "left apical")], "Small right apical pneumothorax.") == [
        "the report puts the pneumothorax on the right; the evidence has it on the left"
    ]
    assert side_flags([("pneumothorax", "left apical")], "Large left pneumothorax.") == []
    # Both sides in one report (the findings say one, the impression the other): flagged too.
    assert side_flags(
        [("pneumothorax", "left apical")], "A right apical pneumothorax. IMPRESSION: Large left pneumothorax."
    ) == ["the report puts the pneumothorax on the left and right; the evidence has it on the left"]
    assert side_flags([("pneumothorax", "left")], "Left and right pneumothorax.") == []  # both sides
    assert side_flags([("pleural effusion", "bilateral lower")], "Right pleural effusion.") == []
    # Without a location the pneumothorax's side comes from its measured outline.
    assert len(side_flags([("pneumothorax", None)], "Right pneumothorax.", pcr_side="left")) == 1
    assert side_flags([("pneumothorax", None)], "Right pneumothorax.") == []


@pytest.mark.parametrize(
    "text, label, words",
    [
        ("There is a large left apical pneumothorax.", "pneumothorax", {"large": "severe"}),
        ("Moderate bilateral pleural effusions.", "pleural effusion", {"moderate": "moderate"}),
        ("Mild cardiomegaly. No pleural effusion.", "cardiomegaly", {"mild": "mild"}),
        ("No large pneumothorax.", "pneumothorax", {}),  # negated
        ("A large mass and a left pneumothorax.", "pneumothorax", {}),  # "large" is 5 words before
        ("The demo's: a large left apical pneumothorax. IMPRESSION: Small left pneumothorax.", "pneumothorax",
         {"large": "severe", "small": "mild"}),
    ],
)  # fmt: skip
def test_report_severities(text, label, words):
    assert workflow.report_severities(text, label) == words


def test_a_report_that_grades_a_finding_otherwise_is_flagged():
    def severity_flags(severity, report):
        document = {
            "settings": {"review_threshold": 0.5},
            "questions": [],
            "findings": [
                {"label": "pneumothorax", "confidence": 0.9, "location": "left", "severity": severity}
            ],
            "measurements": {"ctr": None},
            "report": report,
        }
        flags = workflow.document_flags(document, None)  # no labeler needed: a text check
        return [f["message"] for f in flags if f["kind"] == "report_contradicts_evidence"]

    # The demo's document (README): a moderate pneumothorax, "large" in the findings and "small" in the
    # impression.
    demo = "There is a large left apical pneumothorax. IMPRESSION: Small left pneumothorax."
    assert severity_flags("moderate", demo) == [
        "the report calls the pneumothorax large and small; the evidence grades it moderate"
    ]
    assert severity_flags("severe", demo) == [
        "the report calls the pneumothorax large and small; the evidence grades it severe"
    ]
    assert severity_flags("severe", "A large left pneumothorax.") == []
    assert severity_flags("moderate", "A moderate left pneumothorax.") == []
    assert severity_flags(None, demo) == []  # no severity in the evidence: nothing to compare
    assert severity_flags("moderate", "A left pneumothorax.") == []  # no grade in the report
    # A mass is sized in cm, not graded: "large" is not read against its severity.
    document = {
        "settings": {"review_threshold": 0.5},
        "questions": [],
        "findings": [{"label": "mass", "confidence": 0.9, "location": "left", "severity": "moderate"}],
        "measurements": {"ctr": None},
        "report": "A large left upper zone mass measuring 5 cm.",
    }
    assert not [
        f for f in workflow.document_flags(document, None) if f["kind"] == "report_contradicts_evidence"
    ]


def test_options_are_validated():
    with pytest.raises(ValueError, match="no finding"):
        workflow.WorkflowOptions(labels=("no finding",))
    with pytest.raises(ValueError, match="threshold"):
        workflow.WorkflowOptions(threshold=1.5)
    with pytest.raises(ValueError, match="resize_mode"):
        workflow.WorkflowOptions(resize_mode="crop")
    options = workflow.WorkflowOptions(labels=("Edema", "Mass"), boxed=("mass", "nodule"))
    assert options.labels == ("edema", "mass") and options.boxed == ("mass",)
    assert (
        options.asks("boxed", "mass")
        and not options.asks("boxed", "edema")
        and options.asks("located", "edema")
    )


def test_questions_from_records_asks_what_was_trained():
    from imtcxr_jax.data.sources import Record, RecordFinding

    records = [
        Record(
            "a.png",
            64,
            64,
            ("cardiomegaly", "edema"),
            (
                RecordFinding("cardiomegaly", "mild", None, (1, 2, 3, 4)),
                RecordFinding("edema", None, "bilateral perihilar", None),
            ),
        ),
        Record("b.png", 64, 64, ()),
    ]
    assert workflow.questions_from_records(records) == {
        "labels": ("cardiomegaly", "edema"),
        "located": ("edema",),
        "graded": ("cardiomegaly",),
        "boxed": ("cardiomegaly",),
    }


def test_regenerate_reports_batches_documents_as_one_by_one(run, trained):
    """Three edited documents in one call, the third with other settings (its own batch): the same reports and
    flags as asking each alone (the same batch shape), and a bad document among them is named by its index
    before the model runs."""
    model, tokenizer, _ = trained
    _, pixels, _, documents = run
    edited = [copy.deepcopy(document) for document in [*documents, documents[0]]]
    for document in edited:
        document["findings"] = document["findings"][:1]
    edited[2]["settings"]["max_report_len"] = 6
    images = [*pixels, pixels[0]]
    alone = [
        workflow.regenerate_report(model, tokenizer, d, p, batch_size=4, bucket_batches=False)
        for d, p in zip(edited, images, strict=True)
    ]
    together = workflow.regenerate_reports(
        model, tokenizer, edited, images, batch_size=4, bucket_batches=False
    )
    assert together == alone
    assert (
        together[2]["questions"][-1]["answer"] != together[0]["questions"][-1]["answer"]
    )  # 6 tokens at most
    assert [d["questions"][-1]["instruction"] for d in together[:2]] != [
        d["questions"][-1]["instruction"] for d in documents
    ]  # the edit reached the prompts

    broken = copy.deepcopy(edited[1])
    broken["findings"][0]["box"] = [1, 2, 3]
    with pytest.raises(ValueError, match=r"document 1: findings: .* box \[1, 2, 3\]"):
        workflow.regenerate_reports(model, tokenizer, [edited[0], broken], list(pixels))


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda d: d["settings"].update(beam=d["settings"].pop("beam_size")),
            r"settings lacks \['beam_size'\] and has unknown \['beam'\]",
        ),
        (lambda d: d["settings"].update(beam_size=0), "settings: beam_size"),
        (lambda d: d.update(questions={}), "questions must be a JSON array"),
        (lambda d: d["questions"][0].pop("task"), r"questions\[0\]"),
        (lambda d: d["findings"][0].update(confidence="high"), "confidence 'high'"),
        (lambda d: d["measurements"].update(ctr=True), "measurements.ctr"),
        (lambda d: d.update(measurements=[]), "measurements must be a JSON object"),
        (lambda d: d["image"].update(width=-80), "image.width/height"),
    ],
)
def test_check_edited_document_names_what_is_wrong(run, edit, message):
    _, pixels, _, documents = run
    document = copy.deepcopy(documents[0])
    workflow.check_edited_document(document, pixels[0])  # as written: fine
    edit(document)
    with pytest.raises(ValueError, match=f"^document: .*{message}"):
        workflow.check_edited_document(document, pixels[0])
