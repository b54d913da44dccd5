"""Classification, localization, segmentation and clinical-efficacy metrics, as the IMT-CXR paper reports them.

Pure numpy functions over predictions and references. The conventions (which the paper's numbers depend on)
are stated in each docstring:

* classification: ROC-AUC and F1 per class and macro-averaged over classes, numerically identical to
  scikit-learn's ``roc_auc_score`` and ``f1_score`` (tested to 1e-12) but computed here, with per-label masks
  and with an undefined AUC (a class whose known labels are all one value) reported as None with its reason
  instead of an exception;
* localization: box accuracy at IoU ≥ 0.5 and mean IoU, one predicted box per sample, scored against the
  best-matching ground-truth box;
* segmentation: Dice of masks, and of polygons rasterised to masks.

Box, polygon and mask conventions (and their validation) are those of `imtcxr_jax.geometry`.
* clinical efficacy (CE): precision / recall / F1 of the findings a labeler reads out of generated reports
  against those it reads out of the reference reports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from imtcxr_jax import geometry

# --- classification ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PerClassResult:
    """A metric per class and its macro average.

    Attributes:
      per_class: the value for each class, in column order; None where it is undefined.
      macro: the unweighted mean over the classes where it is defined; None when it is defined for none.
      undefined: class index -> why its value is undefined.
      class_names: the names of the columns, when given.
    """

    per_class: list[float | None]
    macro: float | None
    undefined: dict[int, str]
    class_names: list[str] | None = None

    def as_dict(self) -> dict[str, float | None]:
        """Per-class values keyed by class name (or column index), plus ``"macro"``."""
        names = self.class_names or [str(index) for index in range(len(self.per_class))]
        return {**dict(zip(names, self.per_class, strict=True)), "macro": self.macro}


def _check_label_matrix(
    y_true: np.ndarray, other: np.ndarray, other_name: str
) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    other = np.asarray(other)
    if y_true.ndim == 1:
        y_true, other = y_true[:, None], other.reshape(-1, 1) if other.ndim == 1 else other
    if y_true.ndim != 2 or y_true.shape != other.shape:
        raise ValueError(
            f"y_true has shape {y_true.shape} and {other_name} has shape {other.shape}; expected the same "
            "[n_samples, n_classes] (or [n_samples]) shape"
        )
    values = np.unique(y_true)
    if not np.isin(values, (0, 1)).all():
        raise ValueError(
            f"y_true must hold only 0 and 1 (mask out unknown labels with `mask`), got values {values.tolist()}"
        )
    return y_true.astype(np.int64), other


def _check_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim == 1 and len(shape) == 2 and shape[1] == 1:
        mask = mask[:, None]
    if mask.shape != shape:
        raise ValueError(f"mask has shape {mask.shape}; expected {shape}, the shape of the labels")
    return mask


def binary_roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float | None:
    """Area under the ROC curve of one binary label, or None when only one class is present.

    Computed as the Mann–Whitney statistic with mid-ranks: the probability that a random positive scores
    above a random negative, ties counting one half. That is exactly the trapezoidal area under the ROC curve
    with tied scores forming one step, which is what scikit-learn's ``roc_auc_score`` integrates.
    """
    y_true = np.asarray(y_true).astype(bool).ravel()
    y_score = np.asarray(y_score, dtype=np.float64).ravel()
    n_pos = int(y_true.sum())
    n_neg = y_true.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(y_score, kind="mergesort")
    sorted_scores = y_score[order]
    # Mid-ranks (1-based) for runs of tied scores.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], sorted_scores.size]
    mid_ranks = (starts + ends + 1) / 2.0
    ranks = np.empty(y_score.size)
    ranks[order] = np.repeat(mid_ranks, ends - starts)
    u_statistic = ranks[y_true].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u_statistic / (n_pos * n_neg))


def multilabel_auc(
    y_true: np.ndarray,
    y_score: np.ndarray,
    mask: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
) -> PerClassResult:
    """ROC-AUC per class and its macro average over the classes where it is defined.

    Args:
      y_true: [n_samples, n_classes] (or [n_samples]) labels in {0, 1}.
      y_score: scores of the same shape (higher means more likely positive), e.g. the probability of "yes".
      mask: optional boolean array of the same shape; False marks a label as unknown (blank, or uncertain under
        a U-Ignore policy) and leaves that sample out for that class only.
      class_names: optional names of the columns.

    Returns:
      per-class AUCs; a class whose known labels are all 0 or all 1 has AUC None, with the reason in
      `undefined`, and is left out of the macro average (scikit-learn raises instead).
    """
    y_true, y_score = _check_label_matrix(y_true, y_score, "y_score")
    mask = _check_mask(mask, y_true.shape)
    per_class: list[float | None] = []
    undefined: dict[int, str] = {}
    for column in range(y_true.shape[1]):
        known = mask[:, column]
        labels = y_true[known, column]
        auc = binary_roc_auc(labels, y_score[known, column])
        if auc is None:
            present = sorted(set(labels.tolist()))
            undefined[column] = (
                f"no known labels (all {y_true.shape[0]} masked out)"
                if labels.size == 0
                else f"only label value {present[0]} among its {labels.size} known samples; AUC needs both"
            )
        per_class.append(auc)
    return _per_class_result(per_class, undefined, class_names)


def _per_class_result(
    per_class: list[float | None], undefined: dict[int, str], class_names: Sequence[str] | None
) -> PerClassResult:
    if class_names is not None and len(class_names) != len(per_class):
        raise ValueError(f"got {len(class_names)} class names for {len(per_class)} classes")
    defined = [value for value in per_class if value is not None]
    macro = float(np.mean(defined)) if defined else None
    return PerClassResult(per_class, macro, undefined, list(class_names) if class_names is not None else None)


def _confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, ...]:
    """True positives, false positives and false negatives per column, over the unmasked entries."""
    true_positive = ((y_true == 1) & (y_pred == 1) & mask).sum(axis=0)
    false_positive = ((y_true == 0) & (y_pred == 1) & mask).sum(axis=0)
    false_negative = ((y_true == 1) & (y_pred == 0) & mask).sum(axis=0)
    return true_positive, false_positive, false_negative


def _binary_predictions(y_pred: np.ndarray) -> np.ndarray:
    values = np.unique(y_pred)
    if not np.isin(values, (0, 1)).all():
        raise ValueError(
            f"y_pred must hold only 0 and 1 (threshold scores first, e.g. scores >= 0.5), got {values.tolist()}"
        )
    return y_pred.astype(np.int64)


def multilabel_f1(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    mask: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    zero_division: float = 0.0,
) -> PerClassResult:
    """F1 per class and its macro average (the unweighted mean over all classes), as scikit-learn computes it.

    F1 = 2·TP / (2·TP + FP + FN); a class with no positive label and no positive prediction (0/0) gets
    `zero_division` (0.0, scikit-learn's default value) and stays in the macro average, as in scikit-learn.

    Args:
      y_true: [n_samples, n_classes] (or [n_samples]) labels in {0, 1}.
      y_pred: predictions in {0, 1} of the same shape. A generative model's parsed answers are already binary;
        threshold scores before calling (and choose thresholds on validation data, not on the test set).
      mask: optional boolean array; False leaves that label out, as in `multilabel_auc`.
      class_names: optional names of the columns.
      zero_division: the F1 of a class with 0/0.
    """
    y_true, y_pred = _check_label_matrix(y_true, y_pred, "y_pred")
    y_pred = _binary_predictions(y_pred)
    mask = _check_mask(mask, y_true.shape)
    true_positive, false_positive, false_negative = _confusion_counts(y_true, y_pred, mask)
    denominator = 2 * true_positive + false_positive + false_negative
    per_class = [
        float(2 * tp / d) if d > 0 else float(zero_division)
        for tp, d in zip(true_positive.tolist(), denominator.tolist(), strict=True)
    ]
    result = _per_class_result(per_class, {}, class_names)
    return dataclasses.replace(result, macro=float(np.mean(per_class)) if per_class else None)


def micro_precision_recall_f1(
    y_true: np.ndarray, y_pred: np.ndarray, mask: np.ndarray | None = None, zero_division: float = 0.0
) -> dict[str, float]:
    """Micro-averaged precision, recall and F1: TP, FP and FN pooled over all samples and classes.

    Matches scikit-learn's ``precision_recall_fscore_support(average="micro")``; a 0/0 ratio gives
    `zero_division`.
    """
    y_true, y_pred = _check_label_matrix(y_true, y_pred, "y_pred")
    y_pred = _binary_predictions(y_pred)
    mask = _check_mask(mask, y_true.shape)
    tp, fp, fn = (int(count.sum()) for count in _confusion_counts(y_true, y_pred, mask))
    precision = tp / (tp + fp) if tp + fp > 0 else float(zero_division)
    recall = tp / (tp + fn) if tp + fn > 0 else float(zero_division)
    f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn > 0 else float(zero_division)
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


# --- localization ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LocalizationResult:
    """Box accuracy and mean IoU over samples, with the per-sample values.

    Attributes:
      accuracy: the fraction of samples whose IoU is at least the threshold.
      mean_iou: the mean of the per-sample IoUs.
      ious: per sample, the IoU with the best-matching ground-truth box (0 for a missing prediction).
      matched: per sample, the index of that ground-truth box (None for a missing prediction).
    """

    accuracy: float
    mean_iou: float
    ious: list[float]
    matched: list[int | None]


def box_accuracy(
    predictions: Sequence[np.ndarray | Sequence[float] | None],
    ground_truths: Sequence[np.ndarray | Sequence[float] | Sequence[Sequence[float]]],
    threshold: float = 0.5,
) -> LocalizationResult:
    """Localization accuracy at IoU ≥ `threshold` (ACC@0.5) and mean IoU (mIoU), the paper's box metrics.

    One sample is one (image, queried finding) with one predicted box [x0, y0, x1, y1] in the pixels of the
    image. IoU is taken on continuous coordinates without "+1" (`geometry.box_iou_matrix`); the IMT-CXR
    predecessor's code adds 1e-6 to the union, which changes no result above 1e-6 relative. With several
    ground-truth boxes for the finding, the prediction is scored against the best-matching one (the largest
    IoU): asked for "the box" of a finding, the model is right if it finds any instance. A missing prediction
    (None: the answer was unparseable) scores IoU 0 and counts as wrong, lowering both metrics rather than
    being dropped.

    Args:
      predictions: per sample a box or None.
      ground_truths: per sample one box or a non-empty list of boxes.
      threshold: the IoU a prediction needs to count as correct.
    """
    if len(predictions) != len(ground_truths):
        raise ValueError(
            f"got {len(predictions)} predictions and {len(ground_truths)} ground truths; they must pair"
        )
    if not predictions:
        raise ValueError("no samples to score")
    ious: list[float] = []
    matched: list[int | None] = []
    for index, (prediction, truth) in enumerate(zip(predictions, ground_truths, strict=True)):
        truth_boxes = geometry.validate_boxes(truth, f"ground truth of sample {index}")
        if truth_boxes.shape[0] == 0:
            raise ValueError(f"ground truth of sample {index} holds no box; every sample needs at least one")
        if prediction is None:
            ious.append(0.0)
            matched.append(None)
            continue
        box = geometry.validate_box(prediction, f"predicted box of sample {index}")
        overlaps = geometry.box_iou_matrix(box, truth_boxes)[0]
        best = int(np.argmax(overlaps))
        ious.append(float(overlaps[best]))
        matched.append(best)
    correct = sum(iou >= threshold for iou in ious)
    return LocalizationResult(correct / len(ious), float(np.mean(ious)), ious, matched)


# --- segmentation ------------------------------------------------------------------------------------------


def mask_dice(mask_pred: np.ndarray, mask_true: np.ndarray) -> float:
    """Dice 2|A∩B| / (|A| + |B|) of two boolean (or 0/1) masks of one shape; 1.0 when both are empty."""
    return geometry.dice(mask_pred, mask_true)


def polygon_dice(
    polygon_pred: np.ndarray | Sequence[Sequence[float]] | None,
    polygon_true: np.ndarray | Sequence[Sequence[float]],
    shape: tuple[int, int],
) -> float:
    """Dice of two polygons [[x, y], ...] rasterised on the reference image's grid, `shape` = (height, width).

    Rasterisation is the project's (`geometry.polygon_to_mask`: a pixel is inside when its centre is). A missing
    prediction (None: an unparseable answer) scores 0; a polygon with fewer than 3 points is an error.
    """
    if polygon_pred is None:
        geometry.validate_polygon(polygon_true, "reference polygon")
        return 0.0
    return geometry.polygon_dice(polygon_pred, polygon_true, shape)


# --- clinical efficacy -------------------------------------------------------------------------------------


def clinical_efficacy(
    reference_labels: Sequence[Mapping[str, int]],
    hypothesis_labels: Sequence[Mapping[str, int]],
    observations: Sequence[str],
    positive_values: tuple[int, ...] = (1,),
) -> dict[str, object]:
    """Clinical-efficacy precision, recall and F1 of generated reports against reference reports.

    Both sides are label dictionaries from the same labeler (`labeler.CheXpertLabeler`), observation ->
    1 / 0 / -1, absent when not mentioned. Convention (R2Gen lineage): a label counts as positive when its
    value is in `positive_values` — by default only 1; 0, -1 (uncertain) and no mention are negative. The
    headline numbers are micro-averaged over every (report, observation) pair of `observations` (the 14
    CheXpert observations, normally); per-observation F1 and its macro average are returned too.

    Returns:
      ``precision``, ``recall``, ``f1`` (micro), ``macro_f1``, ``per_observation_f1`` and ``n_reports``.
    """
    if len(reference_labels) != len(hypothesis_labels):
        raise ValueError(
            f"got labels for {len(reference_labels)} references and {len(hypothesis_labels)} hypotheses"
        )
    if not reference_labels:
        raise ValueError("no reports to score")
    y_true = np.array(
        [[int(labels.get(o) in positive_values) for o in observations] for labels in reference_labels]
    )
    y_pred = np.array(
        [[int(labels.get(o) in positive_values) for o in observations] for labels in hypothesis_labels]
    )
    micro = micro_precision_recall_f1(y_true, y_pred)
    per_class = multilabel_f1(y_true, y_pred, class_names=list(observations))
    return {
        **micro,
        "macro_f1": per_class.macro,
        "per_observation_f1": dict(zip(observations, per_class.per_class, strict=True)),
        "n_reports": len(reference_labels),
    }
