"""The summary `imtcxr train` and `imtcxr eval` print under the scores: each headline score beside its
yardstick, the margins computed from the scores given."""

from imtcxr_jax.evaluate import summary_lines


def test_summary_lines_put_each_score_beside_its_yardstick():
    scores = {
        "auc/cardiomegaly": 0.8, "auc/pleural effusion": 0.9, "auc/pneumothorax": 1.0, "auc_headline": 0.9,
        "box_acc": 0.5, "box_miou": 0.42, "box_acc_mean_box": 0.3, "box_miou_mean_box": 0.32,
        "dice/left lung": 0.8, "dice_mean_polygon/left lung": 0.7, "dice/heart": 0.6,
        "dice_mean_polygon/heart": 0.65, "dice": 0.7, "dice_mean_polygon": 0.675,
        "ce_f1": 0.55, "bleu_4": 0.2, "rouge_l": 0.45, "report_example": "FINDINGS: ...",
    }  # fmt: skip
    assert summary_lines(scores) == [
        "presence AUC 0.90 (cardiomegaly 0.80, pleural effusion 0.90, pneumothorax 1.00; chance 0.50)",
        "boxes ACC@0.5 0.50 / mIoU 0.42; the mean box 0.30 / 0.32 (+0.20 / +0.10)",
        "outline Dice against the mean polygon: left lung 0.80 vs 0.70 (+0.10); heart 0.60 vs 0.65 (-0.05)",
        "report CE-F1 0.55 (BLEU-4 0.20, ROUGE-L 0.45)",
    ]
    # Only the tasks that were scored.
    assert summary_lines({"ce_f1": 0.5, "bleu_4": 0.1, "rouge_l": 0.3}) == [
        "report CE-F1 0.50 (BLEU-4 0.10, ROUGE-L 0.30)"
    ]
    assert summary_lines({}) == []
    # A label whose held-out examples hold one class has no AUC (None), nor then has the headline.
    assert summary_lines({"auc/cardiomegaly": None, "auc/pneumothorax": 0.75, "auc_headline": None}) == [
        "presence AUC n/a (cardiomegaly n/a, pneumothorax 0.75; chance 0.50)"
    ]
