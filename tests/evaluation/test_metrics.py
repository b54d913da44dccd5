"""Classification, localization and segmentation metrics, against scikit-learn and hand-computed values."""

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_recall_fscore_support, roc_auc_score

from imtcxr_jax.evaluation import metrics


@pytest.mark.parametrize("seed", range(5))
def test_multilabel_auc_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n, c = 200, 6
    y_true = rng.integers(0, 2, size=(n, c))
    # Coarse scores make many ties, which is where AUC implementations differ.
    y_score = np.round(rng.random((n, c)) + 0.3 * y_true, 1)
    result = metrics.multilabel_auc(y_true, y_score)
    expected = [roc_auc_score(y_true[:, k], y_score[:, k]) for k in range(c)]
    np.testing.assert_allclose(result.per_class, expected, rtol=0, atol=1e-12)
    assert result.macro == pytest.approx(roc_auc_score(y_true, y_score, average="macro"), abs=1e-12)
    assert result.undefined == {}


def test_multilabel_auc_continuous_scores_and_masks():
    rng = np.random.default_rng(7)
    y_true = rng.integers(0, 2, size=(150, 4))
    y_score = rng.normal(size=(150, 4)) + y_true
    mask = rng.random((150, 4)) > 0.3
    result = metrics.multilabel_auc(y_true, y_score, mask=mask, class_names=["a", "b", "c", "d"])
    for k in range(4):
        expected = roc_auc_score(y_true[mask[:, k], k], y_score[mask[:, k], k])
        assert result.per_class[k] == pytest.approx(expected, abs=1e-12)
    assert set(result.as_dict()) == {"a", "b", "c", "d", "macro"}


def test_auc_of_a_single_class_column_is_none_with_reason_and_left_out_of_macro():
    y_true = np.array([[0, 1], [0, 0], [0, 1], [0, 0]])
    y_score = np.array([[0.1, 0.9], [0.4, 0.2], [0.3, 0.8], [0.2, 0.6]])
    result = metrics.multilabel_auc(y_true, y_score)
    assert result.per_class[0] is None
    assert "only label value 0" in result.undefined[0]
    assert result.macro == result.per_class[1] == pytest.approx(roc_auc_score(y_true[:, 1], y_score[:, 1]))
    all_masked = metrics.multilabel_auc(y_true, y_score, mask=np.zeros_like(y_true, dtype=bool))
    assert all_masked.macro is None and "masked out" in all_masked.undefined[1]


def test_auc_rejects_bad_labels_and_shapes():
    with pytest.raises(ValueError, match="only 0 and 1"):
        metrics.multilabel_auc(np.array([[0], [2]]), np.array([[0.1], [0.2]]))
    with pytest.raises(ValueError, match="same"):
        metrics.multilabel_auc(np.zeros((3, 2)), np.zeros((3, 3)))


@pytest.mark.parametrize("seed", range(5))
def test_multilabel_f1_matches_sklearn(seed):
    rng = np.random.default_rng(100 + seed)
    y_true = rng.integers(0, 2, size=(80, 7))
    y_pred = rng.integers(0, 2, size=(80, 7))
    y_true[:, 3] = 0  # a class with no positives...
    y_pred[:, 3] = 0  # ...and no predicted positives: 0/0
    result = metrics.multilabel_f1(y_true, y_pred)
    np.testing.assert_allclose(
        result.per_class, f1_score(y_true, y_pred, average=None, zero_division=0.0), rtol=0, atol=1e-12
    )
    assert result.macro == pytest.approx(
        f1_score(y_true, y_pred, average="macro", zero_division=0.0), abs=1e-12
    )
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, average="micro", zero_division=0.0
    )
    micro = metrics.micro_precision_recall_f1(y_true, y_pred)
    assert micro == pytest.approx({"precision": precision, "recall": recall, "f1": f1}, abs=1e-12)


def test_f1_requires_binary_predictions():
    with pytest.raises(ValueError, match="threshold scores first"):
        metrics.multilabel_f1(np.array([[0, 1]]), np.array([[0.2, 0.7]]))


def test_box_accuracy_best_matching_ground_truth_and_missing_predictions():
    predictions = [
        [0, 0, 10, 10],  # identical to its ground truth: IoU 1
        [0, 0, 10, 10],  # against two boxes: the second matches exactly
        [0, 0, 10, 10],  # half overlap: IoU 50/150 = 1/3
        None,  # unparseable answer
    ]
    ground_truths = [
        [0, 0, 10, 10],
        [[50, 50, 60, 60], [0, 0, 10, 10]],
        [5, 0, 15, 10],
        [0, 0, 10, 10],
    ]
    result = metrics.box_accuracy(predictions, ground_truths)
    np.testing.assert_allclose(result.ious, [1.0, 1.0, 1 / 3, 0.0])
    assert result.matched == [0, 1, 0, None]
    assert result.accuracy == 0.5
    assert result.mean_iou == pytest.approx((2 + 1 / 3) / 4)


def test_box_accuracy_threshold_is_inclusive():
    # Boxes whose IoU is exactly 0.5: [0,0,10,10] vs [0,0,10,20] -> 100 / 200.
    assert metrics.box_accuracy([[0, 0, 10, 10]], [[0, 0, 10, 20]]).accuracy == 1.0


def test_box_accuracy_errors_name_the_value():
    with pytest.raises(ValueError, match=r"predicted box of sample 0 .*x0=5 > x1=1"):
        metrics.box_accuracy([[5, 0, 1, 4]], [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="they must pair"):
        metrics.box_accuracy([[0, 0, 1, 1]], [])


def test_mask_and_polygon_dice():
    a = np.zeros((20, 20), dtype=bool)
    b = np.zeros((20, 20), dtype=bool)
    a[2:12, 2:12] = True  # 100 pixels
    b[7:17, 2:12] = True  # 100 pixels, 50 shared
    assert metrics.mask_dice(a, b) == pytest.approx(0.5)
    assert metrics.mask_dice(np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == 1.0
    # The same squares as polygons on pixel corners rasterise to the same masks.
    square_a = [[2, 2], [12, 2], [12, 12], [2, 12]]
    square_b = [[2, 7], [12, 7], [12, 17], [2, 17]]
    assert metrics.polygon_dice(square_a, square_b, (20, 20)) == pytest.approx(0.5)
    assert metrics.polygon_dice(square_a, square_a, (20, 20)) == 1.0
    assert metrics.polygon_dice(None, square_a, (20, 20)) == 0.0


def test_dice_bad_input():
    with pytest.raises(ValueError, match="shape"):
        metrics.mask_dice(np.zeros((4, 4), bool), np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="at least 3"):
        metrics.polygon_dice([[0, 0], [1, 1]], [[0, 0], [5, 0], [5, 5]], (10, 10))
