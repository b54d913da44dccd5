"""The paper's protocol suite: metric computations on hand-made answers against independent references
(scikit-learn for AUC/F1/ROC/CE, pixel counting for IoU and Dice, a numpy bootstrap), config validation with
errors naming the field, the table layout, and `imtcxr eval --config` end to end on phantoms (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from matplotlib.path import Path as MplPath
from sklearn import metrics as skm

from imtcxr_jax.evaluation import protocols, report_metrics, tables
from imtcxr_jax.evaluation.protocols import Bootstrap, ProtocolError, suite_from_config
from imtcxr_jax.train.experiment import load_config_file

ROOT = Path(__file__).parents[2]
FAST = Bootstrap(n_resamples=200, confidence=0.95, seed=3)


# ------------------------------------------------------------------------------------------------------------
# Classification


def test_roc_curve_matches_sklearn():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 60)
    score = np.round(rng.random(60), 1)  # many ties
    fpr, tpr, thresholds = protocols.roc_curve(truth, score)
    sk_fpr, sk_tpr, sk_thresholds = skm.roc_curve(truth, score, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thresholds[1:], sk_thresholds[1:])
    assert np.trapezoid(tpr, fpr) == pytest.approx(skm.roc_auc_score(truth, score))
    with pytest.raises(ValueError, match="both"):
        protocols.roc_curve([1, 1], [0.2, 0.3])


def test_classification_scores_match_sklearn_with_unasked_questions_masked():
    rng = np.random.default_rng(1)
    labels = ["cardiomegaly", "pleural effusion", "pneumothorax"]
    truth = rng.integers(0, 2, (40, 3))
    score = np.clip(truth * 0.3 + rng.random((40, 3)) * 0.7, 0, 1)
    score[[2, 5, 7], 1] = np.nan  # questions left out (too long): not scored
    result = protocols.score_classification(truth, score, labels, 0.5, FAST)
    aucs, f1s = [], []
    for column, label in enumerate(labels):
        known = ~np.isnan(score[:, column])
        t, s = truth[known, column], score[known, column]
        aucs.append(skm.roc_auc_score(t, s))
        f1s.append(skm.f1_score(t, s >= 0.5))
        assert result["metrics"][f"auc/{label}"]["estimate"] == pytest.approx(aucs[-1], abs=1e-12)
        assert result["metrics"][f"f1/{label}"]["estimate"] == pytest.approx(f1s[-1], abs=1e-12)
        sk_fpr, sk_tpr, _ = skm.roc_curve(t, s, drop_intermediate=False)
        np.testing.assert_allclose(result["roc"][label]["fpr"], sk_fpr)
        np.testing.assert_allclose(result["roc"][label]["tpr"], sk_tpr)
        assert result["positives"][label] == t.sum()
    assert result["metrics"]["auc"]["estimate"] == pytest.approx(np.mean(aucs), abs=1e-12)
    assert result["metrics"]["f1"]["estimate"] == pytest.approx(np.mean(f1s), abs=1e-12)
    for interval in result["metrics"].values():
        assert interval["low"] <= interval["estimate"] <= interval["high"]
        assert interval["n_resamples"] == 200
    again = protocols.score_classification(truth, score, labels, 0.5, FAST)
    assert again["metrics"] == result["metrics"]  # the seed fixes the intervals


def test_classification_label_with_one_class_is_undefined_not_an_error():
    truth = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    score = np.array([[0.9, 0.1], [0.2, 0.7], [0.8, 0.2], [0.3, 0.4]])
    result = protocols.score_classification(truth, score, ["a", "b"], 0.5, FAST)
    assert result["metrics"]["auc/b"]["estimate"] is None
    assert "b" not in result["roc"]
    assert result["metrics"]["auc"]["estimate"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------------------
# Localization and segmentation, against pixel counting


def _box_pixels(box, size=64):
    grid = np.zeros((size, size), bool)
    x0, y0, x1, y1 = (int(v) for v in box)
    grid[y0:y1, x0:x1] = True
    return grid


def test_localization_matches_pixel_counting_and_a_numpy_bootstrap():
    rng = np.random.default_rng(2)
    predictions, truths, labels, brute = [], [], [], []
    for index in range(30):
        corners = np.sort(rng.integers(0, 64, (2, 2)), axis=0)  # integer boxes: pixel counts are exact
        truth = [corners[0, 0], corners[0, 1], corners[1, 0] + 1, corners[1, 1] + 1]
        shift = rng.integers(-6, 7, 4)
        prediction = np.clip(np.array(truth) + shift, 0, 64)
        prediction[2:] = np.maximum(prediction[2:], prediction[:2] + 1)
        other = [0, 0, 2, 2]  # a second ground-truth box: the best match counts
        a, b, c = _box_pixels(prediction), _box_pixels(truth), _box_pixels(other)
        iou = max((a & b).sum() / (a | b).sum(), (a & c).sum() / (a | c).sum())
        if index == 4:
            prediction, iou = None, 0.0  # unparseable answer: IoU 0
        predictions.append(prediction)
        truths.append(np.array([truth, other], float))
        labels.append("nodule" if index % 2 else "mass")
        brute.append(iou)
    brute = np.array(brute)
    result = protocols.score_localization(predictions, truths, labels, FAST)
    scored = result["metrics"]
    assert scored["acc"]["estimate"] == pytest.approx(np.mean(brute >= 0.5))
    assert scored["miou"]["estimate"] == pytest.approx(np.mean(brute))
    assert scored["miou/mass"]["estimate"] == pytest.approx(np.mean(brute[::2]))
    assert result["unparseable"] == 1 and result["n_samples"] == 30
    # The interval is the 2.5 / 97.5 percentile of the mean IoU over resamples drawn by one numpy call.
    rows = np.random.default_rng(3).integers(0, 30, (200, 30))
    low, high = np.percentile(brute[rows].mean(axis=1), [2.5, 97.5])
    assert (scored["miou"]["low"], scored["miou"]["high"]) == pytest.approx((low, high))


def _polygon_pixels(polygon, shape):
    height, width = shape
    ys, xs = np.mgrid[0:height, 0:width]
    centres = np.column_stack([xs.ravel() + 0.5, ys.ravel() + 0.5])
    return MplPath(polygon).contains_points(centres).reshape(shape)


def test_segmentation_dice_matches_pixel_counting_on_the_original_grid():
    rng = np.random.default_rng(4)
    shape = (48, 80)  # (height, width): not square
    predictions, truths, structures, brute = [], [], [], []
    for index in range(12):
        angles = np.sort(rng.uniform(0, 2 * np.pi, 8))
        centre = rng.uniform(15, 33, 2) + np.array([16.0, 0.0])
        truth = centre + np.column_stack([np.cos(angles), np.sin(angles)]) * rng.uniform(5, 14, (8, 1))
        prediction = truth + rng.normal(0, 2, truth.shape)
        truth, prediction = truth + 0.013, prediction + 0.017  # no vertex or edge through a pixel centre
        a, b = _polygon_pixels(prediction, shape), _polygon_pixels(truth, shape)
        dice = 2 * (a & b).sum() / (a.sum() + b.sum())
        if index == 0:
            prediction, dice = None, 0.0
        predictions.append(prediction)
        truths.append(truth)
        structures.append(("heart", "left lung", "right lung")[index % 3])
        brute.append(dice)
    brute = np.array(brute)
    result = protocols.score_segmentation(predictions, truths, structures, [shape] * 12, FAST)
    assert result["metrics"]["dice"]["estimate"] == pytest.approx(brute.mean(), abs=1e-9)
    assert result["metrics"]["dice/heart"]["estimate"] == pytest.approx(brute[::3].mean(), abs=1e-9)
    assert result["structures"] == ["heart", "left lung", "right lung"]


# ------------------------------------------------------------------------------------------------------------
# Reports


class _KeywordLabeler:
    """A stand-in labeler: 1 when the observation's name is in the text, 0 when 'no <name>' is."""

    def label_many(self, reports):
        from imtcxr_jax.evaluation.labeler import OBSERVATIONS

        out = []
        for report in reports:
            labels = {}
            for observation in OBSERVATIONS:
                name = observation.lower()
                if f"no {name}" in report:
                    labels[observation] = 0
                elif name in report:
                    labels[observation] = 1
            out.append(labels)
        return out


def test_report_scores_equal_the_corpus_metrics_and_ce_matches_sklearn():
    from imtcxr_jax.evaluation import ptb
    from imtcxr_jax.evaluation.labeler import OBSERVATIONS

    references = [
        "the heart is enlarged. cardiomegaly. small pleural effusion.",
        "no pneumothorax. lungs are clear.",
        "edema and pleural effusion are present.",
        "no cardiomegaly. no edema.",
        "atelectasis at the left base.",
    ]
    hypotheses = [
        "cardiomegaly with a small pleural effusion.",
        "lungs are clear. no pneumothorax.",
        "mild edema.",
        "the heart is enlarged. cardiomegaly.",
        "atelectasis at the right base and pleural effusion.",
    ]
    labeler = _KeywordLabeler()
    result = protocols.score_reports(
        references, hypotheses, FAST, labeler=labeler, meteor=False, tokenizer="python"
    )
    refs, hyps = ptb.ptb_tokenize(references, "python"), ptb.ptb_tokenize(hypotheses, "python")
    scored = result["metrics"]
    for n, value in enumerate(report_metrics.bleu(refs, hyps), start=1):
        assert scored[f"bleu_{n}"]["estimate"] == pytest.approx(value, rel=1e-12)
    assert scored["rouge_l"]["estimate"] == pytest.approx(report_metrics.rouge_l(refs, hyps).score)
    assert scored["cider"]["estimate"] == pytest.approx(report_metrics.cider_d(refs, hyps).score)
    assert scored["meteor"]["estimate"] is None and "disabled" in result["meteor_note"]
    truth = np.array(
        [[labels.get(o) == 1 for o in OBSERVATIONS] for labels in labeler.label_many(references)]
    )
    pred = np.array([[labels.get(o) == 1 for o in OBSERVATIONS] for labels in labeler.label_many(hypotheses)])
    precision, recall, f1, _ = skm.precision_recall_fscore_support(truth, pred, average="micro")
    assert scored["ce_precision"]["estimate"] == pytest.approx(precision)
    assert scored["ce_recall"]["estimate"] == pytest.approx(recall)
    assert scored["ce_f1"]["estimate"] == pytest.approx(f1)
    assert list(scored) == [
        "bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider", "ce_precision", "ce_recall", "ce_f1",
    ]  # fmt: skip


def test_bleu_statistics_resample_like_bleu():
    refs = ["a b c d e", "the cat sat on the mat", "x y"]
    hyps = ["a b c d", "the cat sat on a mat", "x y z"]
    rows = report_metrics.bleu_statistics(refs, hyps)
    picked = [2, 0, 0]
    expected = report_metrics.bleu([refs[i] for i in picked], [hyps[i] for i in picked])
    assert report_metrics.bleu_from_statistics(rows[picked].sum(axis=0)) == pytest.approx(expected)


# ------------------------------------------------------------------------------------------------------------
# Config validation


def _config(**dataset_fields):
    config = load_config_file(ROOT / "configs" / "eval_phantom.py")
    for key, value in dataset_fields.items():
        config.datasets.phantom[key] = value
    return config


def test_both_shipped_configs_validate():
    paper = load_config_file(ROOT / "configs" / "eval_paper.py")
    paper.data_dir = "/data/tfds"
    suite = suite_from_config(paper)
    assert [spec.key for spec in suite.datasets][:3] == ["chestxray14", "chexpert", "rsna"]
    assert len(suite.datasets[0].labels) == 14 and len(suite.datasets[1].labels) == 5
    phantom = suite_from_config(_config(), checkpoint="/w")
    assert phantom.datasets[0].path == "/w/data/eval"
    assert phantom.datasets[0].protocols == protocols.PROTOCOLS


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"run": "phantom,nih"}, r"config.run: unknown dataset 'nih'"),
        ({"labels": ("cardiomegaly", "dragon pox")}, r"config.datasets.phantom.labels: the checkpoint has no question for label 'dragon pox'"),
        ({"structures": ("liver",)}, r"config.datasets.phantom.structures: .* structure 'liver'"),
        ({"protocols": ("classification", "vqa")}, r"config.datasets.phantom.protocols: unknown protocol 'vqa'"),
        ({"source": "s3"}, r"config.datasets.phantom.source: 's3'"),
        ({"limit": -1}, r"config.datasets.phantom.limit"),
        ({"box_labels": ()}, r"config.datasets.phantom.box_labels: the localization protocol needs"),
        ({"n_resamples": 0}, r"config.n_resamples"),
    ],
)  # fmt: skip
def test_bad_configs_name_the_field(change, message):
    config = _config()
    for key, value in change.items():
        if key in config:
            config[key] = value
        else:
            config.datasets.phantom[key] = value
    with pytest.raises(ProtocolError, match=message):
        suite_from_config(config, checkpoint="/w")


def test_tfds_needs_data_dir_and_a_reader():
    paper = load_config_file(ROOT / "configs" / "eval_paper.py")
    with pytest.raises(ProtocolError, match=r"config\.data_dir"):
        suite_from_config(paper)
    paper.data_dir = "/nonexistent"
    paper.run = "jsrt"
    spec = suite_from_config(paper).datasets[0]
    try:
        import imtcxr_jax.data.tfds  # noqa: F401
    except ImportError:
        with pytest.raises(
            ProtocolError, match=r"config.datasets.jsrt.source: 'tfds' needs imtcxr_jax.data.tfds"
        ):
            protocols.read_dataset(spec, paper.data_dir)
    else:  # the reader exists: a dataset that is not there is an error naming the entry
        with pytest.raises(ProtocolError, match=r"config\.datasets\.jsrt"):
            protocols.read_dataset(spec, paper.data_dir)


def test_missing_manifest_folder_names_the_field(tmp_path):
    spec = suite_from_config(_config(path=str(tmp_path / "nowhere")), checkpoint="/w").datasets[0]
    with pytest.raises(ProtocolError, match=r"config.datasets.phantom.path: .*nowhere has no manifest.jsonl"):
        protocols.read_dataset(spec)


# ------------------------------------------------------------------------------------------------------------
# Tables


def _ci(value, low=None, high=None):
    return {"estimate": value, "low": low, "high": high}


def test_tables_follow_the_paper_layout(tmp_path):
    results = {
        "checkpoint": "W",
        "step": 7,
        "settings": {"n_resamples": 10, "confidence": 0.95, "seed": 0, "threshold": 0.5, "beam_size": 1},
        "datasets": {
            "nih": {
                "name": "ChestX-ray14",
                "classification": {
                    "metrics": {"auc": _ci(0.8, 0.7, 0.9), "f1": _ci(0.5, 0.4, 0.6), "auc/mass": _ci(0.8, 0.7, 0.9),
                                "f1/mass": _ci(0.5, 0.4, 0.6), "auc/edema": _ci(None), "f1/edema": _ci(0.0, 0.0, 0.0)},
                    "labels": ["mass", "edema"], "positives": {"mass": 3, "edema": 0}, "n_images": 9,
                    "roc": {"mass": {"fpr": [0, 0.5, 1], "tpr": [0, 1, 1]}},
                },
                "localization": {"metrics": {"acc": _ci(0.25, 0.1, 0.4), "miou": _ci(0.3, 0.2, 0.4)}, "n_samples": 4},
            },
            "jsrt": {
                "name": "JSRT",
                "segmentation": {"metrics": {"dice": _ci(0.9, 0.85, 0.95), "dice/heart": _ci(0.8, 0.7, 0.9)},
                                 "n_samples": 2, "structures": ["heart"]},
            },
        },
    }  # fmt: skip
    written = tables.write_results(results, tmp_path / "out")
    built = json.loads(written["json"].read_text())["tables"]
    assert [t["title"] for t in built] == [
        "Classification", "Classification per label: ChestX-ray14", "Localization", "Segmentation (Dice)",
    ]  # fmt: skip
    assert built[0]["columns"] == ["AUC", "F1"] and [r["dataset"] for r in built[0]["rows"]] == [
        "ChestX-ray14"
    ]
    assert built[3]["columns"] == ["Dice", "heart"] and built[3]["rows"][0]["dataset"] == "JSRT"
    text = written["markdown"].read_text()
    assert "| ChestX-ray14 | 0.800 [0.700, 0.900] | 0.500 [0.400, 0.600] | 9 |" in text
    assert "| edema | — | 0.000 [0.000, 0.000] | 0 |" in text
    assert "## Localization" in text and "| JSRT | 0.900 [0.850, 0.950] | 0.800 [0.700, 0.900] | 2 |" in text
    assert written["roc_nih"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert tables.format_cell(_ci(0.12345)) == "0.123"


# ------------------------------------------------------------------------------------------------------------
# End to end on phantoms


@pytest.mark.slow
def test_eval_config_end_to_end_on_phantoms(tmp_path_factory, capsys):
    from imtcxr_jax.evaluate import cli_main
    from tests.test_workflow import shared_workdir

    workdir = shared_workdir(tmp_path_factory)
    out = tmp_path_factory.mktemp("eval")
    argv = [
        "--checkpoint", str(workdir), "--config", str(ROOT / "configs" / "eval_phantom.py"), "--out", str(out),
        "--config.n_resamples=20", "--config.meteor=false", "--config.batch_size=16",
        "--config.ptb_tokenizer=python", "--config.datasets.phantom.path={checkpoint}/data/train",
        "--config.datasets.phantom.limit=4",
    ]  # fmt: skip
    assert cli_main(argv) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["step"] == 0 and Path(last["markdown"]) == out / "results.md"
    document = json.loads((out / "results.json").read_text())
    titles = [t["title"] for t in document["tables"]]
    assert titles == [
        "Classification", "Classification per label: Phantom (held-out)", "Localization", "Segmentation (Dice)",
        "Report generation", "Clinical efficacy",
    ]  # fmt: skip
    phantom = document["datasets"]["phantom"]
    assert phantom["n_records"] == 4
    assert (
        document["tables"][3]["columns"]
        == ["Dice", "left lung", "right lung", "heart", "pneumothorax"][
            : len(document["tables"][3]["columns"])
        ]
    )
    for table in document["tables"]:
        assert [row["dataset"] for row in table["rows"]] != []
        for row in table["rows"]:
            for cell in row["cells"].values():
                if cell is not None and cell["estimate"] is not None:
                    assert 0.0 <= cell["estimate"] <= (10.0 if "CIDEr" in row["cells"] else 1.0)
                    if cell["low"] is not None:
                        assert cell["low"] <= cell["high"]
    assert phantom["classification"]["n_images"] == 4
    assert phantom["report"]["n_reports"] == 4
    assert (out / "roc_phantom.png").is_file() == bool(phantom["classification"]["roc"])
    text = (out / "results.md").read_text()
    assert "| Phantom (held-out) |" in text and "BLEU-4" in text and "ACC (IoU ≥ 0.5)" in text

    # Without --config the held-out evaluation runs as before (on the same compiled shapes).
    train_data = str(workdir / "data" / "train")
    assert cli_main(["--checkpoint", str(workdir), "--data", train_data, "--per-task", "2"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"auc_macro", "box_acc", "dice", "ce_f1", "bleu_4"} <= set(scores)
    assert scores["auc_images"] == 2
    more_images = ["--checkpoint", str(workdir), "--data", train_data, "--per-task=2", "--presence-images=3"]
    assert cli_main(more_images) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["auc_images"] == 3


def test_eval_cli_usage_errors(tmp_path, capsys):
    from imtcxr_jax.evaluate import cli_main

    config = str(ROOT / "configs" / "eval_phantom.py")
    assert cli_main(["--checkpoint", str(tmp_path), "--config", config, "--config.run=nih"]) == 2
    assert "config.run: unknown dataset 'nih'" in capsys.readouterr().err
    assert cli_main(["--checkpoint", str(tmp_path), "--config", config, "--config.nope=1"]) == 2
    assert "has no key 'nope'" in capsys.readouterr().err
    assert cli_main(["--checkpoint", str(tmp_path), "--config", config]) == 2  # no held-out phantoms there
    assert "config.datasets.phantom.path" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["--checkpoint", str(tmp_path), "--config.run=x"])  # overrides need --config
    assert isinstance(ml_collections.ConfigDict(), ml_collections.ConfigDict)


def test_tfds_source_reads_records_and_images_through_the_pipeline(tmp_path):
    """A built ChestX-ray14 (the tfds builders' own fixture) evaluated through `read_dataset`: records with
    their families, images from the stored bytes, the same canvases the pipeline makes."""
    pytest.importorskip("tensorflow_datasets")
    from imtcxr_jax.data import tfds as cxr_tfds
    from imtcxr_jax.data.pipeline import build_tokenizer, make_eval_examples
    from tests.data.tfds.test_chestxray14 import make_nih

    make_nih(tmp_path / "nih")
    cxr_tfds.build("chestxray14", tmp_path / "nih", tmp_path / "out", progress=False)
    paper = load_config_file(ROOT / "configs" / "eval_paper.py")
    paper.data_dir, paper.run = str(tmp_path / "out"), "chestxray14"
    paper.datasets.chestxray14.split = "train"
    spec = suite_from_config(paper).datasets[0]
    records, images, rejected = protocols.read_dataset(spec, paper.data_dir)
    assert isinstance(images, cxr_tfds.TfdsImages) and rejected == ""
    assert all(
        protocols.supports(r, "classification") and not protocols.supports(r, "segmentation") for r in records
    )
    tokenizer = build_tokenizer(records, vocab_size=1400, labels=spec.labels)
    config = {"image_size": 32, "max_src_len": 32, "max_tgt_len": 32}
    eval_set = make_eval_examples(records, images, tokenizer, config, families=("classification", "localization"),
                                  labels=spec.labels, report_prompts=("plain",))  # fmt: skip
    boxes = [e for e in eval_set if e.task == "box"]
    assert boxes and eval_set.images(boxes).shape == (len(boxes), 32, 32, 3)
    spec_bad = suite_from_config(paper).datasets[0].__class__(**{**spec.__dict__, "split": "nope"})
    with pytest.raises(
        ProtocolError, match=r"config\.datasets\.chestxray14: cannot read TFDS dataset .*'nope'"
    ):
        protocols.read_dataset(spec_bad, paper.data_dir)


def test_supports_follows_the_dataset_families_unless_labels_are_complete():
    class Built:
        families = ("localization",)

    paper = load_config_file(ROOT / "configs" / "eval_paper.py")
    paper.data_dir, paper.run = "/d", "rsna,ms_cxr"
    rsna, ms_cxr = suite_from_config(paper).datasets
    assert rsna.complete_labels and protocols.supports(Built(), "classification", rsna)
    assert not protocols.supports(Built(), "classification", ms_cxr)
    assert protocols.supports(Built(), "localization", ms_cxr) and not protocols.supports(Built(), "report")
    assert protocols.supports(object(), "segmentation")  # manifest records: every family
