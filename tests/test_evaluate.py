"""Which held-out examples are scored, and the summary `imtcxr train` and `imtcxr eval` print under the
scores: each headline score beside its yardstick, the margins computed from the scores given."""

from types import SimpleNamespace

from imtcxr_jax.data.pipeline import EvalSet
from imtcxr_jax.evaluate import select_examples, summary_lines
from imtcxr_jax.tasks.common import Task


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
    # The number of images the AUC was scored on, when given.
    assert summary_lines({**scores, "auc_images": 320})[0].startswith("presence AUC 0.90 on 320 images (")
    # A label whose held-out examples hold one class has no AUC (None), nor then has the headline.
    assert summary_lines({"auc/cardiomegaly": None, "auc/pneumothorax": 0.75, "auc_headline": None}) == [
        "presence AUC n/a (cardiomegaly n/a, pneumothorax 0.75; chance 0.50)"
    ]


def test_select_examples_takes_every_label_of_the_first_presence_images_and_the_first_of_other_tasks():
    # Held-out examples in EvalSet order (family, then record): 6 images x 2 labels, then 5 boxes.
    def example(task, record):
        return SimpleNamespace(task=task, ref=SimpleNamespace(record=record), name=(task.name, record))

    presence = [example(Task.PRESENCE, record) for record in range(6) for _ in range(2)]
    boxes = [example(Task.BOX, record) for record in range(5)]
    eval_set = EvalSet(presence + boxes, report=None, maker=None)

    def chosen(*args):
        return {task: [e.name for e in examples] for task, examples in select_examples(*args).items()}

    both_labels = [(Task.PRESENCE.name, r) for r in range(4) for _ in range(2)]
    assert chosen(eval_set, 2, 4) == {
        Task.PRESENCE: both_labels, Task.BOX: [(Task.BOX.name, 0), (Task.BOX.name, 1)]
    }  # fmt: skip
    assert chosen(eval_set, 4) == chosen(eval_set, 4, 4)  # the presence limit defaults to per_task
    assert len(select_examples(eval_set, None)[Task.PRESENCE]) == 12
    assert len(select_examples(eval_set, 1, None)[Task.PRESENCE]) == 2  # None: per_task's images
    assert len(select_examples(eval_set, None, 3)[Task.BOX]) == 5
