"""Evaluation: metrics for every task, a CheXpert-style report labeler, and bootstrap confidence intervals.

- `metrics`: multi-label AUC and F1 (per class and macro), box ACC@IoU≥0.5 and mIoU, Dice of masks and
  polygons, clinical-efficacy P/R/F1.
- `report_metrics` and `ptb`: BLEU-1..4, METEOR, ROUGE-L and CIDEr-D exactly as pycocoevalcap computes them,
  after its PTB tokenisation.
- `labeler`: the 14 CheXpert observations read out of report text (mention, negation, uncertainty).
- `bootstrap`: seeded percentile bootstrap intervals for any of them.
- `cli`: ``imtcxr metrics report`` and ``imtcxr metrics label``.
"""

from imtcxr_jax.evaluation.bootstrap import ConfidenceInterval, bootstrap_ci, bootstrap_cis
from imtcxr_jax.evaluation.labeler import (
    OBSERVATIONS,
    CheXpertLabeler,
    Mention,
    default_phrases_dir,
    load_phrases,
)
from imtcxr_jax.evaluation.metrics import (
    LocalizationResult,
    PerClassResult,
    binary_roc_auc,
    box_accuracy,
    clinical_efficacy,
    mask_dice,
    micro_precision_recall_f1,
    multilabel_auc,
    multilabel_f1,
    polygon_dice,
)
from imtcxr_jax.evaluation.ptb import ptb_tokenize
from imtcxr_jax.evaluation.report_metrics import (
    CorpusScore,
    MeteorScorer,
    bleu,
    cider_d,
    meteor_unavailable_reason,
    rouge_l,
    score_reports,
)

__all__ = [
    "OBSERVATIONS",
    "CheXpertLabeler",
    "ConfidenceInterval",
    "CorpusScore",
    "LocalizationResult",
    "Mention",
    "MeteorScorer",
    "PerClassResult",
    "binary_roc_auc",
    "bleu",
    "bootstrap_ci",
    "bootstrap_cis",
    "box_accuracy",
    "cider_d",
    "clinical_efficacy",
    "default_phrases_dir",
    "load_phrases",
    "mask_dice",
    "meteor_unavailable_reason",
    "micro_precision_recall_f1",
    "multilabel_auc",
    "multilabel_f1",
    "polygon_dice",
    "ptb_tokenize",
    "rouge_l",
    "score_reports",
]
