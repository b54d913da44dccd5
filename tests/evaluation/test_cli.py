"""`imtcxr metrics report` and `imtcxr metrics label`, through cli_main and through the `imtcxr` router."""

import json
import pathlib

import pytest

from imtcxr_jax.cli import main as imtcxr_main
from imtcxr_jax.evaluation.cli import cli_main

PHRASES_DIR = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" / "chexpert-labeler-phrases"
pytestmark = pytest.mark.skipif(
    not PHRASES_DIR.is_dir(), reason=f"the CheXpert phrase lists are not at {PHRASES_DIR} (third-party data)"
)

REFS = [
    "The heart is enlarged. Small left pleural effusion. No pneumothorax.",
    "No acute cardiopulmonary process.",
    "Right lower lobe consolidation concerning for pneumonia.",
]
HYPS = [
    "Mild cardiomegaly with a small left effusion.",
    "No acute process. Heart size normal.",
    "Right lower lobe consolidation.",
]


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_report_prints_all_metrics_as_the_last_line(tmp_path, capsys):
    refs, hyps = _write(tmp_path / "refs.txt", REFS), _write(tmp_path / "hyps.txt", HYPS)
    argv = ["report", "--refs", refs, "--hyps", hyps, "--phrases-dir", str(PHRASES_DIR)]
    assert cli_main([*argv, "--tokenizer", "python", "--no-meteor"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in (
        "bleu_1",
        "bleu_2",
        "bleu_3",
        "bleu_4",
        "rouge_l",
        "cider",
        "ce_precision",
        "ce_recall",
        "ce_f1",
    ):
        assert isinstance(result[key], float), key
    assert result["meteor"] is None and "--no-meteor" in result["meteor_unavailable"]
    # CE by hand: reference positives {Cardiomegaly, Pleural Effusion} | {No Finding} | {Consolidation};
    # generated {Cardiomegaly, Pleural Effusion} | {No Finding} | {Consolidation} -> all 4 found, none extra
    # (the pneumonia of report 3 is uncertain, hence negative).
    assert (result["ce_precision"], result["ce_recall"], result["ce_f1"]) == (1.0, 1.0, 1.0)
    assert result["n_reports"] == 3


def test_report_files_of_different_lengths_are_refused(tmp_path, capsys):
    refs, hyps = _write(tmp_path / "refs.txt", REFS), _write(tmp_path / "hyps.txt", HYPS[:2])
    code = cli_main(["report", "--refs", refs, "--hyps", hyps, "--phrases-dir", str(PHRASES_DIR)])
    captured = capsys.readouterr()
    assert code != 0
    assert captured.out == ""  # nothing computed
    assert f"{refs} has 3 lines" in captured.err and f"{hyps} has 2" in captured.err


def test_missing_file_and_bad_phrase_dir(tmp_path, capsys):
    hyps = _write(tmp_path / "hyps.txt", HYPS)
    assert cli_main(["report", "--refs", str(tmp_path / "nope.txt"), "--hyps", hyps]) == 2
    assert "nope.txt: no such file" in capsys.readouterr().err
    reports = _write(tmp_path / "reports.txt", REFS)
    assert cli_main(["label", "--reports", reports, "--phrases-dir", str(tmp_path)]) == 2
    assert "phrases/mention" in capsys.readouterr().err


def test_label_prints_one_json_object_per_report(tmp_path, capsys):
    reports = _write(tmp_path / "reports.txt", [*REFS, ""])
    assert imtcxr_main(["metrics", "label", "--reports", reports, "--phrases-dir", str(PHRASES_DIR)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"Cardiomegaly": 1, "Pneumothorax": 0, "Pleural Effusion": 1},
        {"No Finding": 1},
        {"Consolidation": 1, "Pneumonia": -1},
        {"No Finding": 1},
    ]


def test_help_and_usage_errors_return_codes(capsys):
    assert cli_main(["--help"]) == 0
    assert cli_main(["report"]) == 2  # --refs and --hyps are required
    assert "--refs" in capsys.readouterr().err


@pytest.mark.slow
def test_report_with_meteor_and_the_default_tokenizer(tmp_path, capsys):
    """Starts the Meteor JVM (~10 s); METEOR is a number when pycocoevalcap and Java are present."""
    from imtcxr_jax.evaluation.report_metrics import meteor_unavailable_reason

    refs, hyps = _write(tmp_path / "refs.txt", REFS), _write(tmp_path / "hyps.txt", HYPS)
    assert cli_main(["report", "--refs", refs, "--hyps", hyps, "--phrases-dir", str(PHRASES_DIR)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    reason = meteor_unavailable_reason()
    if reason is None:
        assert 0.0 < result["meteor"] < 1.0
    else:
        assert result["meteor"] is None and result["meteor_unavailable"] == reason
