"""The paper's evaluation protocols as data: which datasets, where their records come from, what is asked, and
how the answers are scored, with seeded bootstrap 95% intervals.

An evaluation config (``configs/eval_paper.py``, ``configs/eval_phantom.py``) is an ``ml_collections``
ConfigDict; `suite_from_config` validates it into a `Suite`, naming the field at fault. Suite fields:

==================  ==========================================================================================
data_dir            root of the TFDS-built datasets, and of relative manifest paths
run                 comma-separated keys of ``datasets`` to evaluate, in this order
datasets.KEY        one test set (`dataset_entry`; fields below)
n_resamples         bootstrap replicates (1,000 in the literature); confidence: the interval's coverage (0.95)
seed                the bootstrap seed (the same seed and answers give the same intervals)
threshold           F1: a label counts as predicted present when P(yes) >= threshold (0.5: the model's own
                    choice between " yes" and " no"; chosen a priori, never tuned on the test set)
batch_size          questions per forward pass; beam_size: beam width of the decoded answers
max_report_len      report tokens at most (0: the checkpoint's ``data.max_tgt_len``)
meteor              compute METEOR (the Meteor 1.5 jar; reported unavailable, with the reason, without Java)
ptb_tokenizer       PTB tokenizer of the NLG metrics: "auto", "python" or "corenlp" (`ptb.ptb_tokenize`)
phrases_dir         CheXpert labeler phrase lists ("" = ``../shared/data/chexpert-labeler-phrases``)
roc_curves          write one ROC-curve PNG per classification dataset
==================  ==========================================================================================

Dataset fields: ``name`` (the table's row label), ``source`` ("tfds": `imtcxr_jax.data.tfds.read_records`
(data_dir, tfds_name, split); "manifest": the folder ``path``, ``{checkpoint}`` standing for the evaluated
workdir, relative paths under ``data_dir``), ``tfds_name``, ``split``, ``protocols`` (any of `PROTOCOLS`),
``labels`` (classification), ``box_labels`` (localization), ``structures`` (segmentation), ``report_prompt``
("plain" or "evidence"), ``limit`` (the first N records only; 0 = all) and ``complete_labels`` (score
classification of `labels` even on records of a built dataset whose task families leave classification out:
RSNA's Target 0/1 is a complete pneumonia label although its other labels are unknown).

Protocols (what `evaluate.evaluate_suite` asks the model, and how the answers are scored here):

* classification: " is {label} in this image?" for every (image, label); the score is P(" yes") renormalised
  over {" yes", " no"} of the first answer token. AUC per label (Mann-Whitney, = scikit-learn) and its macro
  mean over labels with both classes; F1 per label at `threshold` and its macro mean (scikit-learn's). One ROC
  curve per label. Bootstrap unit: the image.
* localization: "give the accurate bbox of {label}." per (image, label with a box); the first decoded box,
  mapped back to the original image's pixels, against the best-matching ground-truth box of that label. ACC =
  fraction of samples with IoU >= 0.5 (an unparseable answer counts as IoU 0); mIoU = mean IoU. Bootstrap
  unit: the (image, label) sample.
* segmentation: "please segment the {structure} ..." per (image, structure); the polygon mapped back to the
  original pixels and rasterised with the reference on the original image's grid; Dice per structure and over
  all samples (unparseable = 0). Bootstrap unit: the (image, structure) sample.
* report: the generated report against the reference (the target text). BLEU-1..4, METEOR, ROUGE-L (beta
  1.2) and CIDEr-D as pycocoevalcap computes them after PTB tokenisation; clinical efficacy (CE) precision,
  recall and F1, micro-averaged over the 14 CheXpert observations of the rule-based labeler, a label positive
  only when it is 1. Bootstrap unit: the report. Replicates recompute BLEU from per-report n-gram counts,
  ROUGE-L as the mean of per-report scores, CIDEr-D as the mean of per-report scores with the document
  frequencies of the full test set held fixed (recomputing them per replicate would count a duplicated
  report's n-grams twice), and CE from the label matrices. METEOR gets no interval: its corpus score is not a
  function of per-report values, and rerunning the Java scorer 1,000 times is impractical.

Every point estimate is the metric on the full test set, not a bootstrap mean.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from imtcxr_jax.evaluation import metrics
from imtcxr_jax.evaluation.bootstrap import ConfidenceInterval, bootstrap_cis

PROTOCOLS = ("classification", "localization", "segmentation", "report")
SOURCES = ("tfds", "manifest")
REPORT_PROMPTS = ("plain", "evidence")
SUITE_KEYS = (
    "data_dir", "run", "datasets", "n_resamples", "confidence", "seed", "threshold", "batch_size", "beam_size",
    "max_report_len", "meteor", "ptb_tokenizer", "phrases_dir", "roc_curves",
)  # fmt: skip
DATASET_KEYS = (
    "name", "source", "path", "tfds_name", "split", "protocols", "labels", "box_labels", "structures",
    "report_prompt", "limit", "complete_labels",
)  # fmt: skip


class ProtocolError(ValueError):
    """A bad evaluation config or dataset, naming the config field or the file."""


# ------------------------------------------------------------------------------------------------------------
# Configuration


def dataset_entry(
    name: str,
    *,
    source: str = "tfds",
    path: str = "",
    tfds_name: str = "",
    split: str = "test",
    protocols: Sequence[str] = (),
    labels: Sequence[str] = (),
    box_labels: Sequence[str] = (),
    structures: Sequence[str] = (),
    report_prompt: str = "plain",
    limit: int = 0,
    complete_labels: bool = False,
) -> ml_collections.ConfigDict:
    """One ``datasets.KEY`` entry of an evaluation config (fields: the module docstring)."""
    return ml_collections.ConfigDict(
        {
            "name": name, "source": source, "path": path, "tfds_name": tfds_name, "split": split,
            "protocols": tuple(protocols), "labels": tuple(labels), "box_labels": tuple(box_labels),
            "structures": tuple(structures), "report_prompt": report_prompt, "limit": limit,
            "complete_labels": complete_labels,
        }
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One validated test set: `dataset_entry`'s fields, words normalised as the model is asked them."""

    key: str
    name: str
    source: str
    path: str
    tfds_name: str
    split: str
    protocols: tuple[str, ...]
    labels: tuple[str, ...] = ()
    box_labels: tuple[str, ...] = ()
    structures: tuple[str, ...] = ()
    report_prompt: str = "plain"
    limit: int = 0
    complete_labels: bool = False


@dataclasses.dataclass(frozen=True)
class Suite:
    """A validated evaluation config (fields: the module docstring)."""

    datasets: tuple[DatasetSpec, ...]
    data_dir: str = ""
    n_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0
    threshold: float = 0.5
    batch_size: int = 16
    beam_size: int = 1
    max_report_len: int = 0
    meteor: bool = True
    ptb_tokenizer: str = "auto"
    phrases_dir: str = ""
    roc_curves: bool = True

    def settings(self) -> dict[str, Any]:
        """The suite's settings without the datasets, for the results file."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "datasets"}


def _words(values: Any, field: str, vocabulary: Sequence[str], what: str) -> tuple[str, ...]:
    from imtcxr_jax.tasks.common import normalize_label

    if isinstance(values, str) or not isinstance(values, Sequence):
        raise ProtocolError(f"{field}: expected a tuple of {what}s, got {values!r}")
    words = []
    for value in values:
        try:
            word = normalize_label(value, field)
        except ValueError as error:
            raise ProtocolError(str(error)) from None
        if word not in vocabulary:
            raise ProtocolError(
                f"{field}: the checkpoint has no question for {what} {value!r}; the {what}s it is asked about "
                f"are {list(vocabulary)}"
            )
        if word in words:
            raise ProtocolError(f"{field}: {what} {value!r} is listed twice")
        words.append(word)
    return tuple(words)


def _dataset_spec(key: str, entry: Any, checkpoint: str | Path | None) -> DatasetSpec:
    from imtcxr_jax.tasks.classification import DISEASES
    from imtcxr_jax.tasks.segmentation import STRUCTURES

    field = f"config.datasets.{key}"
    if not isinstance(entry, Mapping | ml_collections.ConfigDict):
        raise ProtocolError(f"{field}: expected a dataset entry (protocols.dataset_entry), got {entry!r}")
    values = dict(entry)
    unknown = sorted(set(values) - set(DATASET_KEYS))
    missing = sorted(set(DATASET_KEYS) - set(values))
    if unknown or missing:
        raise ProtocolError(f"{field}: unknown fields {unknown}, missing fields {missing}; see dataset_entry")
    protocols = values["protocols"]
    if isinstance(protocols, str) or not protocols:
        raise ProtocolError(
            f"{field}.protocols: expected a non-empty tuple of {PROTOCOLS}, got {protocols!r}"
        )
    for protocol in protocols:
        if protocol not in PROTOCOLS:
            raise ProtocolError(
                f"{field}.protocols: unknown protocol {protocol!r}; expected one of {PROTOCOLS}"
            )
    needs = {"classification": "labels", "localization": "box_labels", "segmentation": "structures"}
    for protocol, name in needs.items():
        if protocol in protocols and not values[name]:
            raise ProtocolError(f"{field}.{name}: the {protocol} protocol needs at least one entry")
    source = values["source"]
    if source not in SOURCES:
        raise ProtocolError(f"{field}.source: {source!r} is not one of {SOURCES}")
    if source == "manifest" and not values["path"]:
        raise ProtocolError(f"{field}.path: a manifest source needs the folder holding manifest.jsonl")
    if source == "tfds" and not values["tfds_name"]:
        raise ProtocolError(f"{field}.tfds_name: a tfds source needs the dataset's name")
    path = str(values["path"])
    if "{checkpoint}" in path:
        if checkpoint is None:
            raise ProtocolError(f"{field}.path: {path!r} names {{checkpoint}} but no checkpoint was given")
        path = path.replace("{checkpoint}", str(checkpoint))
    if values["report_prompt"] not in REPORT_PROMPTS:
        raise ProtocolError(
            f"{field}.report_prompt: {values['report_prompt']!r} is not one of {REPORT_PROMPTS}"
        )
    limit = values["limit"]
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ProtocolError(f"{field}.limit: expected an integer >= 0 (0 = all records), got {limit!r}")
    return DatasetSpec(
        key=key, name=str(values["name"] or key), source=source, path=path, tfds_name=str(values["tfds_name"]),
        split=str(values["split"]), protocols=tuple(p for p in PROTOCOLS if p in protocols),
        labels=_words(values["labels"], f"{field}.labels", DISEASES, "label"),
        box_labels=_words(values["box_labels"], f"{field}.box_labels", DISEASES, "label"),
        structures=_words(values["structures"], f"{field}.structures", STRUCTURES, "structure"),
        report_prompt=values["report_prompt"], limit=limit, complete_labels=bool(values["complete_labels"]),
    )  # fmt: skip


def suite_from_config(config: ml_collections.ConfigDict, checkpoint: str | Path | None = None) -> Suite:
    """Validate an evaluation config; raises `ProtocolError` naming the field (``config.datasets.x.labels``)."""
    values = dict(config)
    unknown = sorted(set(values) - set(SUITE_KEYS))
    missing = sorted({"run", "datasets"} - set(values))
    if unknown or missing:
        raise ProtocolError(
            f"evaluation config: unknown keys {unknown}, missing keys {missing} (known: {list(SUITE_KEYS)}); "
            "is this an evaluation config such as configs/eval_paper.py?"
        )
    datasets = values["datasets"]
    keys = [key.strip() for key in str(values["run"]).split(",") if key.strip()]
    if not keys:
        raise ProtocolError(
            "config.run: no dataset to evaluate; list keys of config.datasets, comma-separated"
        )
    for key in keys:
        if key not in datasets:
            raise ProtocolError(
                f"config.run: unknown dataset {key!r}; config.datasets has {sorted(datasets)}"
            )
    if len(set(keys)) != len(keys):
        raise ProtocolError(f"config.run: a dataset is listed twice in {values['run']!r}")
    settings = {k: v for k, v in values.items() if k not in ("run", "datasets")}
    suite = Suite(tuple(_dataset_spec(key, datasets[key], checkpoint) for key in keys), **settings)
    checks = (
        ("n_resamples", isinstance(suite.n_resamples, int) and suite.n_resamples >= 1, "an integer >= 1"),
        ("confidence", 0.0 < suite.confidence < 1.0, "a number in (0, 1)"),
        ("threshold", 0.0 <= suite.threshold <= 1.0, "a number in [0, 1]"),
        ("batch_size", isinstance(suite.batch_size, int) and suite.batch_size >= 1, "an integer >= 1"),
        ("beam_size", isinstance(suite.beam_size, int) and suite.beam_size >= 1, "an integer >= 1"),
        ("max_report_len", isinstance(suite.max_report_len, int) and suite.max_report_len >= 0, "an integer >= 0"),
        ("ptb_tokenizer", suite.ptb_tokenizer in ("auto", "python", "corenlp"), "auto, python or corenlp"),
    )  # fmt: skip
    for name, ok, expected in checks:
        if not ok:
            raise ProtocolError(f"config.{name}: expected {expected}, got {getattr(suite, name)!r}")
    if any(spec.source == "tfds" for spec in suite.datasets) and not suite.data_dir:
        tfds = [spec.key for spec in suite.datasets if spec.source == "tfds"]
        raise ProtocolError(
            f"config.data_dir: datasets {tfds} are read from TFDS-built datasets; set --config.data_dir=DIR "
            "(or point them at manifest folders: --config.datasets.KEY.source=manifest "
            "--config.datasets.KEY.path=FOLDER)"
        )
    return suite


# ------------------------------------------------------------------------------------------------------------
# Where records come from


def read_dataset(spec: DatasetSpec, data_dir: str | Path = "") -> tuple[list[Any], Any, str]:
    """(records, image source, what was rejected) of one test set: the one place that switches on the source.

    * manifest: `sources.load_records` of the folder (relative paths under `data_dir`); the image source is
      the folder.
    * tfds: ``imtcxr_jax.data.tfds.read_records(data_dir, tfds_name, split)`` -> (records, reject report); the
      image source is ``imtcxr_jax.data.tfds.TfdsImages(data_dir)`` (the stored image bytes).
    Bad rows are counted and summarised, never silently dropped. The first ``spec.limit`` records are kept
    when a limit is set.
    """
    field = f"config.datasets.{spec.key}"
    rejected = ""
    if spec.source == "manifest":
        from imtcxr_jax.data.sources import MANIFEST_NAME, load_records

        folder = Path(spec.path)
        if not folder.is_absolute() and data_dir:
            folder = Path(data_dir) / folder
        if not (folder / MANIFEST_NAME).is_file():
            raise ProtocolError(f"{field}.path: {folder} has no {MANIFEST_NAME} (expected a manifest folder)")
        records, report = load_records(folder)
        image_dir = folder
        if report.rejected:
            rejected = report.summary()
    else:
        try:
            reader = importlib.import_module("imtcxr_jax.data.tfds")
        except ImportError as error:
            raise ProtocolError(
                f"{field}.source: 'tfds' needs imtcxr_jax.data.tfds.read_records, which cannot be imported "
                f"({error}); build the dataset into a manifest folder and set source='manifest' instead"
            ) from None
        for name in ("read_records", "TfdsImages"):
            if not hasattr(reader, name):
                raise ProtocolError(
                    f"{field}.source: 'tfds' needs imtcxr_jax.data.tfds.{name}, which is missing"
                )
        try:
            records, report = reader.read_records(str(data_dir), spec.tfds_name, spec.split)
        except (FileNotFoundError, ValueError, KeyError) as error:
            raise ProtocolError(
                f"{field}: cannot read TFDS dataset {spec.tfds_name!r} split {spec.split!r} under {data_dir}: "
                f"{error}"
            ) from None
        records = list(records)
        if report.rejected:
            rejected = report.summary()
        image_dir = reader.TfdsImages(data_dir)
    if spec.limit:
        records = records[: spec.limit]
    if not records:
        raise ProtocolError(f"{field}: no records to evaluate ({spec.source} {spec.path or spec.tfds_name})")
    return records, image_dir, rejected


# ------------------------------------------------------------------------------------------------------------
# Scoring (pure functions of answers and references)


@dataclasses.dataclass(frozen=True)
class Bootstrap:
    n_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0

    @classmethod
    def of(cls, suite: Suite) -> Bootstrap:
        return cls(suite.n_resamples, suite.confidence, suite.seed)

    def __call__(self, metric, *samples) -> dict[str, ConfidenceInterval]:
        return bootstrap_cis(
            metric, *samples, n_resamples=self.n_resamples, confidence=self.confidence, seed=self.seed
        )


def _intervals(cis: Mapping[str, ConfidenceInterval]) -> dict[str, dict[str, Any]]:
    return {key: ci.as_dict() for key, ci in cis.items()}


def roc_curve(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates, thresholds) of one binary label: one point per distinct score,
    from the highest down, starting at (0, 0) with threshold +inf (scikit-learn's points without dropping
    collinear ones). Needs both classes."""
    y_true = np.asarray(y_true).astype(bool).ravel()
    y_score = np.asarray(y_score, dtype=np.float64).ravel()
    n_pos, n_neg = int(y_true.sum()), int((~y_true).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("a ROC curve needs both positive and negative samples")
    order = np.argsort(-y_score, kind="mergesort")
    scores, truth = y_score[order], y_true[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]  # the end of each run of ties
    tps = np.cumsum(truth)[last_of_run]
    fps = (last_of_run + 1) - tps
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    return fpr, tpr, np.r_[np.inf, scores[last_of_run]]


def score_classification(
    truth: np.ndarray, score: np.ndarray, labels: Sequence[str], threshold: float, bootstrap: Bootstrap
) -> dict[str, Any]:
    """AUC and F1 (macro, and per label) with intervals, plus ROC-curve points per label.

    Args:
      truth: (images, labels) 0/1; score: P(yes), NaN where the question was not asked (masked out).
    """
    truth = np.asarray(truth, dtype=np.int64)
    score = np.asarray(score, dtype=np.float64)
    known = ~np.isnan(score)
    filled = np.nan_to_num(score)
    predicted = (filled >= threshold).astype(np.int64)

    def metric(t: np.ndarray, s: np.ndarray, p: np.ndarray, k: np.ndarray) -> dict[str, float | None]:
        auc = metrics.multilabel_auc(t, s, mask=k)
        f1 = metrics.multilabel_f1(t, p, mask=k)
        values: dict[str, float | None] = {"auc": auc.macro, "f1": f1.macro}
        for index, label in enumerate(labels):
            values[f"auc/{label}"] = auc.per_class[index]
            values[f"f1/{label}"] = f1.per_class[index]
        return values

    cis = bootstrap(metric, truth, filled, predicted, known)
    roc = {}
    for index, label in enumerate(labels):
        column_truth, column_score = truth[known[:, index], index], filled[known[:, index], index]
        if 0 < column_truth.sum() < column_truth.size:
            fpr, tpr, _ = roc_curve(column_truth, column_score)
            roc[label] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    return {
        "metrics": _intervals(cis),
        "labels": list(labels),
        "n_images": int(truth.shape[0]),
        "positives": {label: int(truth[known[:, i], i].sum()) for i, label in enumerate(labels)},
        "threshold": threshold,
        "roc": roc,
    }


def score_localization(
    predictions: Sequence[np.ndarray | None],
    truths: Sequence[np.ndarray],
    labels: Sequence[str],
    bootstrap: Bootstrap,
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """ACC (IoU >= 0.5) and mIoU over (image, label) samples, overall and per label, with intervals.

    Args:
      predictions: per sample the predicted box [x0, y0, x1, y1] or None (unparseable).
      truths: per sample the (k, 4) ground-truth boxes of the asked label; labels: per sample the label.
    """
    result = metrics.box_accuracy(predictions, truths, threshold=iou_threshold)
    ious = np.asarray(result.ious)
    label_array = np.asarray(labels, dtype=object)
    names = list(dict.fromkeys(labels))

    def metric(iou: np.ndarray, label: np.ndarray) -> dict[str, float | None]:
        values: dict[str, float | None] = {
            "acc": float(np.mean(iou >= iou_threshold)),
            "miou": float(np.mean(iou)),
        }
        for name in names:
            selected = iou[label == name]
            values[f"acc/{name}"] = float(np.mean(selected >= iou_threshold)) if selected.size else None
            values[f"miou/{name}"] = float(np.mean(selected)) if selected.size else None
        return values

    return {
        "metrics": _intervals(bootstrap(metric, ious, label_array)),
        "n_samples": len(ious),
        "unparseable": sum(p is None for p in predictions),
        "iou_threshold": iou_threshold,
    }


def score_segmentation(
    predictions: Sequence[np.ndarray | None],
    truths: Sequence[np.ndarray],
    structures: Sequence[str],
    shapes: Sequence[tuple[int, int]],
    bootstrap: Bootstrap,
) -> dict[str, Any]:
    """Dice per (image, structure) sample on the original image's grid (``shapes``: (height, width)); the mean
    over all samples and per structure, with intervals. An unparseable answer (None) scores 0."""
    dice = np.asarray(
        [
            metrics.polygon_dice(prediction, truth, shape)
            for prediction, truth, shape in zip(predictions, truths, shapes, strict=True)
        ]
    )
    structure_array = np.asarray(structures, dtype=object)
    names = list(dict.fromkeys(structures))

    def metric(values: np.ndarray, structure: np.ndarray) -> dict[str, float | None]:
        result: dict[str, float | None] = {"dice": float(np.mean(values))}
        for name in names:
            selected = values[structure == name]
            result[f"dice/{name}"] = float(np.mean(selected)) if selected.size else None
        return result

    return {
        "metrics": _intervals(bootstrap(metric, dice, structure_array)),
        "n_samples": len(dice),
        "unparseable": sum(p is None for p in predictions),
        "structures": names,
    }


def score_reports(
    references: Sequence[str],
    hypotheses: Sequence[str],
    bootstrap: Bootstrap,
    *,
    labeler: Any,
    meteor: bool = True,
    tokenizer: str = "auto",
) -> dict[str, Any]:
    """NLG metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D) and CE P/R/F1 of generated reports, with intervals
    (the module docstring says how each replicate is recomputed). `labeler`: a `labeler.CheXpertLabeler`."""
    from imtcxr_jax.evaluation import ptb, report_metrics
    from imtcxr_jax.evaluation.labeler import OBSERVATIONS

    if len(references) != len(hypotheses) or not references:
        raise ValueError(
            f"got {len(references)} references and {len(hypotheses)} hypotheses; need equal, > 0"
        )
    backend = ptb.resolve_tokenizer(tokenizer)
    refs = ptb.ptb_tokenize(list(references), backend)
    hyps = ptb.ptb_tokenize(list(hypotheses), backend)
    bleu_rows = report_metrics.bleu_statistics(refs, hyps)
    rouge = np.asarray(report_metrics.rouge_l(refs, hyps).per_item)
    cider = np.asarray(report_metrics.cider_d(refs, hyps).per_item)
    positive = (1,)
    y_true = np.array(
        [[int(labels.get(o) in positive) for o in OBSERVATIONS] for labels in labeler.label_many(references)]
    )
    y_pred = np.array(
        [[int(labels.get(o) in positive) for o in OBSERVATIONS] for labels in labeler.label_many(hypotheses)]
    )

    def metric(
        rows: np.ndarray, r: np.ndarray, c: np.ndarray, t: np.ndarray, p: np.ndarray
    ) -> dict[str, float]:
        values = {
            f"bleu_{n}": v for n, v in enumerate(report_metrics.bleu_from_statistics(rows.sum(axis=0)), 1)
        }
        values |= {"rouge_l": float(np.mean(r)), "cider": float(np.mean(c))}
        ce = metrics.micro_precision_recall_f1(t, p)
        return values | {f"ce_{key}": value for key, value in ce.items()}

    cis = _intervals(bootstrap(metric, bleu_rows, rouge, cider, y_true, y_pred))
    meteor_value, meteor_note = None, "disabled by config.meteor"
    if meteor:
        meteor_note = report_metrics.meteor_unavailable_reason()
        if meteor_note is None:
            with report_metrics.MeteorScorer() as scorer:
                meteor_value = scorer.score(refs, hyps).score
            meteor_note = "no interval: METEOR's corpus score is not a function of per-report values"
    cis["meteor"] = ConfidenceInterval(
        meteor_value, None, None, bootstrap.confidence, bootstrap.n_resamples, 0
    ).as_dict()
    ordered = ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider"]
    ordered += ["ce_precision", "ce_recall", "ce_f1"]
    return {
        "metrics": {key: cis[key] for key in ordered},
        "n_reports": len(references),
        "meteor_note": meteor_note,
        "ptb_tokenizer": backend,
        "ce_convention": "micro over the 14 CheXpert observations; positive = labeler value 1",
    }


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def supports(record: Any, protocol: str, spec: DatasetSpec | None = None) -> bool:
    """Whether a record's dataset has ground truth for `protocol`: built datasets list their task families
    (a segmentation-only dataset's records must not count as "no finding"); manifest records support all;
    ``spec.complete_labels`` vouches for classification of the spec's labels."""
    if protocol == "classification" and spec is not None and spec.complete_labels:
        return True
    return protocol in getattr(record, "families", PROTOCOLS)
