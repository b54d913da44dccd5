"""Bootstrap confidence intervals, against scipy.stats.bootstrap (percentile method, paired)."""

import numpy as np
import pytest
from scipy import stats

from imtcxr_jax.evaluation import bootstrap_ci, bootstrap_cis, multilabel_auc


def _correlation(a, b):
    return float(np.corrcoef(a, b)[0, 1])


def test_matches_scipy_percentile_bootstrap():
    rng = np.random.default_rng(1)
    x = rng.normal(size=60)
    y = x + rng.normal(size=60)
    ours = bootstrap_ci(_correlation, x, y, n_resamples=400, seed=3)
    reference = stats.bootstrap(
        (x, y),
        _correlation,
        paired=True,
        vectorized=False,
        n_resamples=400,
        confidence_level=0.95,
        method="percentile",
        rng=np.random.default_rng(3),
    )
    assert ours.low == pytest.approx(reference.confidence_interval.low, abs=1e-12)
    assert ours.high == pytest.approx(reference.confidence_interval.high, abs=1e-12)
    assert ours.estimate == pytest.approx(_correlation(x, y))
    assert (ours.n_resamples, ours.n_valid) == (400, 400)


def test_seeded_and_works_on_lists():
    values = [float(v) for v in np.random.default_rng(0).random(30)]
    first = bootstrap_ci(lambda v: sum(v) / len(v), values, n_resamples=200, seed=5)
    again = bootstrap_ci(lambda v: sum(v) / len(v), values, n_resamples=200, seed=5)
    other = bootstrap_ci(lambda v: sum(v) / len(v), values, n_resamples=200, seed=6)
    assert first == again
    assert first != other
    assert first.low < first.estimate < first.high


def test_undefined_replicates_are_skipped_and_counted():
    # With 2 positives in 20 samples, many replicates hold no positive: AUC undefined there.
    y_true = np.array([1, 1] + [0] * 18)
    scores = np.linspace(0, 1, 20)[::-1]

    def macro_auc(labels, values):
        return multilabel_auc(labels, values).macro

    interval = bootstrap_ci(macro_auc, y_true, scores, n_resamples=300, seed=0)
    assert interval.estimate == 1.0
    assert 0 < interval.n_valid < 300
    assert interval.low == interval.high == 1.0


def test_several_named_metrics_share_replicates():
    rng = np.random.default_rng(2)
    a, b = rng.random(40), rng.random(40)
    intervals = bootstrap_cis(
        lambda x, y: {"mean_a": x.mean(), "mean_b": y.mean(), "name": "skip me"}, a, b, seed=1
    )
    assert set(intervals) == {"mean_a", "mean_b"}
    single = bootstrap_ci(lambda x, y: x.mean(), a, b, seed=1)
    assert intervals["mean_a"] == single


def test_bad_input():
    with pytest.raises(ValueError, match="same length"):
        bootstrap_ci(lambda x, y: 0.0, [1, 2], [1])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(lambda x: 0.0, [1, 2], confidence=95)
