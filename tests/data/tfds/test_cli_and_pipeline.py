import json
import sys

import pytest

from imtcxr_jax.data import tfds as cxr_tfds
from imtcxr_jax.data.cli import cli_main
from imtcxr_jax.data.pipeline import supported_examples
from imtcxr_jax.data.sources import enumerate_examples
from tests.data.tfds.test_chestxray14 import make_nih


def test_build_command_reports_and_strict(tmp_path, capsys):
    make_nih(tmp_path / "nih")
    args = ["build", "chestxray14", "--manual-dir", str(tmp_path / "nih"), "--out", str(tmp_path / "out")]
    assert cli_main([*args, "--no-progress"]) == 0
    out = capsys.readouterr().out
    last = json.loads(out.strip().splitlines()[-1])
    assert (
        last["counts"] == {"unknown_label": 1, "invalid_box": 1, "missing_image": 1} and last["accepted"] == 4
    )
    assert "invalid_box: 1" in out
    assert cli_main([*args, "--no-progress"]) == 1  # exists
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main([*args, "--no-progress", "--overwrite", "--strict"]) == 1
    assert "BuildError" not in capsys.readouterr().err  # one line naming file:line and the reason


def test_help_lists_every_builder(capsys):
    with pytest.raises(SystemExit):
        cli_main(["build", "--help"])
    text = capsys.readouterr().out
    assert all(name in text for name in cxr_tfds.BUILDERS)


def test_records_feed_only_their_families(tmp_path):
    make_nih(tmp_path / "nih")
    cxr_tfds.build("chestxray14", tmp_path / "nih", tmp_path / "out", progress=False)
    records, _, reports = cxr_tfds.task_source(tmp_path / "out", ["chestxray14"], "train")
    assert records and not reports[0].rejected
    assert supported_examples(enumerate_examples(records, "classification"), records)
    assert supported_examples(enumerate_examples(records, "report"), records) == []
    segmentation_only = [r.__class__(**{**r.__dict__, "families": ("segmentation",)}) for r in records]
    assert (
        supported_examples(enumerate_examples(segmentation_only, "classification"), segmentation_only) == []
    )


def test_phantoms_need_no_tfds_and_build_says_what_is_missing(tmp_path, monkeypatch, capsys):
    # As on a machine without tensorflow-datasets: every module of data/tfds is imported afresh and fails.
    for name in [m for m in sys.modules if m.startswith("imtcxr_jax.data.tfds")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    out = tmp_path / "phantoms"
    assert cli_main(["phantom", "--n", "1", "--size", "64", "--workers", "1", "--out", str(out)]) == 0
    assert (out / "manifest.jsonl").is_file()
    assert cli_main(["build", "mimic_cxr", "--manual-dir", str(tmp_path), "--out", str(tmp_path)]) == 1
    assert "needs the package 'tensorflow_datasets', which is not installed" in capsys.readouterr().err
