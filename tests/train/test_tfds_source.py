"""Training on built datasets (config.dataset.source="tfds"): two tiny builds (ChestX-ray14: classification and
boxes; CheXmask: outlines only) mixed by the micro config through `loop.train` (what `imtcxr train` runs),
resumed by a second run; the held-out splits `imtcxr eval --checkpoint W` finds; the config errors."""

import itertools
import logging
from pathlib import Path

import jax
import numpy as np
import pytest

from imtcxr_jax import geometry
from imtcxr_jax.data import tfds as cxr_tfds
from imtcxr_jax.data.pipeline import make_eval_examples, supported_examples
from imtcxr_jax.data.sources import enumerate_examples
from imtcxr_jax.data.tfds import rle
from imtcxr_jax.train import loop
from imtcxr_jax.train.experiment import load_config
from imtcxr_jax.train.logging_utils import read_metrics
from tests.data.tfds.fixtures import phantom, write_csv, write_png
from tests.data.tfds.test_chestxray14 import make_nih

MICRO = Path(__file__).resolve().parents[2] / "configs" / "micro.py"
CHEXMASK_HEADER = "image_id,Dice RCA (Mean),Dice RCA (Max),Landmarks,Left Lung,Right Lung,Heart,Height,Width"
# The landmarks of CheXmask rows: 44 right lung, 50 left lung, 26 heart points.
LANDMARKS = (("right lung", "right_lung", 44), ("left lung", "left_lung", 50), ("heart", "heart", 26))


def make_chexmask(root, ids=("c0", "c1", "c2", "c3", "c4")):
    """A CheXmask CSV with the lungs and heart outlines of 64 px phantoms, and the phantoms as PNGs."""
    rows = [CHEXMASK_HEADER]
    for k, image_id in enumerate(ids):
        source = phantom(k, 64)
        write_png(root / "images" / f"{image_id}.png", source.image)
        parts = [geometry.resample_polygon(np.round(source.polygons[name]), n) for _, name, n in LANDMARKS]
        masks = [rle.chexmask_encode(geometry.polygon_to_mask(points, (64, 64))) for points in parts]
        text = "[" + ", ".join(f"[{x:.1f}, {y:.1f}]" for x, y in np.concatenate(parts)) + "]"
        rows.append(",".join([image_id, "0.9", "0.9", f'"{text}"', masks[1], masks[0], masks[2], "64", "64"]))
    write_csv(root / "OriginalResolution" / "VinDr-CXR.csv", rows)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    make_nih(root / "nih")
    make_chexmask(root / "chexmask")
    for name, manual in (("chestxray14", "nih"), ("chexmask", "chexmask")):
        cxr_tfds.build(name, root / manual, root / "out", progress=False)
    return root / "out"


def tfds_config(data_dir, *extra):
    return load_config(
        MICRO,
        [
            "--config.dataset.source=tfds", f"--config.dataset.data_dir={data_dir}",
            "--config.dataset.datasets=chestxray14,chexmask", "--config.data.weights.report=0",
            "--config.log_every=1", "--config.eval_every=0", "--config.checkpoint_every=2", *extra,
        ],
    )  # fmt: skip


def test_sources_and_families(data_dir, tmp_path):
    config = tfds_config(data_dir)
    train_source, eval_source = loop.prepare_data(config, tmp_path)
    assert train_source.splits == (("chestxray14", "train"), ("chexmask", "train"))
    # held out: the validation split where one was built (CheXmask's patient split made one), else the test
    # split (ChestX-ray14's official one; its patient split put no validation patient in these few rows)
    assert eval_source.splits == (("chestxray14", "test"), ("chexmask", "validation"))
    assert loop.held_out_data(config, tmp_path) == eval_source  # what `imtcxr eval --checkpoint W` reads

    records, images = loop.load_data(train_source)
    assert isinstance(images, cxr_tfds.TfdsImages) and {r.dataset for r in records} == {
        "chestxray14",
        "chexmask",
    }
    # a CheXmask record (outlines only) never teaches classification; ChestX-ray14 never segmentation
    for family, dataset in (("classification", "chexmask"), ("segmentation", "chestxray14")):
        refs = supported_examples(enumerate_examples(records, family), records)
        assert refs and all(records[ref.record].dataset != dataset for ref in refs), family

    held, held_images = loop.load_data(eval_source)
    eval_set = make_eval_examples(held, held_images, _tokenizer(records), config.data)
    assert {e.family for e in eval_set} >= {"classification", "segmentation"}
    assert all(e.family in held[e.ref.record].families for e in eval_set)


def _tokenizer(records):
    from imtcxr_jax.data.pipeline import build_tokenizer

    return build_tokenizer(records, 1400)


@pytest.mark.parametrize(
    "change, message",
    [
        (["--config.dataset.data_dir="], "config.dataset.data_dir: required"),
        (["--config.dataset.datasets="], "config.dataset.datasets: empty"),
        (["--config.dataset.datasets=chestxray14,nih"], "unknown dataset 'nih'"),
        (["--config.dataset.datasets=chestxray14,siim"], "siim: no built dataset"),
        (["--config.dataset.datasets=chestxray14:validation,chexmask"], "no split 'validation'"),
        (["--config.dataset.datasets=chexmask"], "config.data.weights.classification"),
        (["--config.data.weights.report=0.5"], "config.data.weights.report: 0.5, but none of the datasets"),
    ],
)
def test_config_errors_name_the_key(data_dir, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        loop.train(tfds_config(data_dir, *change), tmp_path / "w")
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_eval_command_finds_the_held_out_splits_or_says_what_to_pass(data_dir, tmp_path, capsys):
    from imtcxr_jax.evaluate import _held_out_data, cli_main
    from imtcxr_jax.train.experiment import config_to_json

    (tmp_path / "config.json").write_text(config_to_json(tfds_config(data_dir)))
    assert _held_out_data(tmp_path) == loop.tfds_splits(tfds_config(data_dir), held_out=True)

    (tmp_path / "config.json").write_text(config_to_json(tfds_config(tmp_path / "moved")))
    assert cli_main(["--checkpoint", str(tmp_path)]) == 2  # before loading any model
    err = capsys.readouterr().err
    assert "not readable here" in err and "--data FOLDER" in err and "configs/eval_paper.py" in err


@pytest.fixture
def compilation_cache(tmp_path):
    """A persistent compilation cache for this test only: the resumed run reads the step the first compiled."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    before = {key: getattr(jax.config, key) for key in keys}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    cc.reset_cache()
    yield
    for key, value in before.items():
        jax.config.update(key, value)
    cc.reset_cache()


@pytest.mark.slow
def test_train_and_resume_on_built_datasets(data_dir, tmp_path, caplog, monkeypatch, compilation_cache):
    """`imtcxr train`'s loop on the two datasets, stopped after step 3 as SIGTERM stops it, then started again."""
    from imtcxr_jax.evaluate import evaluate_during_training

    workdir = tmp_path / "run"
    config = tfds_config(data_dir, "--config.total_steps=5")
    caplog.set_level(logging.INFO, logger="imtcxr_jax.train.loop")
    checks = itertools.count(1)  # the loop asks once per step whether a process got SIGTERM
    monkeypatch.setattr(loop, "any_process", lambda requested: next(checks) == 3)
    loop.train(config, workdir, evaluate_fn=evaluate_during_training)
    assert [m["step"] for m in read_metrics(workdir / "metrics.jsonl")] == [1, 2, 3]
    for name in ("config.json", "tokenizer.json", "model.json"):
        assert (workdir / name).is_file(), name
    tokenizer = (workdir / "tokenizer.json").read_text()

    monkeypatch.undo()
    caplog.clear()
    last = loop.train(config, workdir, evaluate_fn=evaluate_during_training)
    assert "resumed from step 3" in caplog.text
    metrics = read_metrics(workdir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5] and last["step"] == 5
    assert all(np.isfinite(m["loss"]) for m in metrics)
    assert any("loss/segmentation" in m for m in metrics)  # CheXmask's outlines were trained on
    assert not any("loss/report" in m for m in metrics)  # no dataset has reports; weight 0
    assert (workdir / "tokenizer.json").read_text() == tokenizer  # kept, not retrained
    assert max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == 5
    assert '"source": "tfds"' in (workdir / "config.json").read_text()
