"""Seeded nonparametric bootstrap confidence intervals for any metric over paired samples.

The percentile method: resample the evaluation units (reports, images, or whatever unit is independent —
resample patients, not images, when a patient has several) with replacement, recompute the metric on each
replicate, and take the (1 − confidence)/2 and (1 + confidence)/2 quantiles of the replicate values (numpy's
linear interpolation). The point estimate is the metric on the full sample, not the bootstrap mean. Paired
inputs (references and predictions, labels and scores) are resampled together, by one draw of indices.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm


@dataclasses.dataclass(frozen=True)
class ConfidenceInterval:
    """A point estimate with its bootstrap confidence interval.

    Attributes:
      estimate: the metric on the full sample (None when undefined there).
      low, high: the interval bounds (None when no replicate gave a defined value).
      confidence: the coverage asked for, e.g. 0.95.
      n_resamples: replicates drawn.
      n_valid: replicates on which the metric was defined (a replicate of an AUC that holds one class only is
        undefined and left out; when many are, the interval is less trustworthy).
    """

    estimate: float | None
    low: float | None
    high: float | None
    confidence: float
    n_resamples: int
    n_valid: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _take(sample: Any, indices: np.ndarray) -> Any:
    if isinstance(sample, np.ndarray):
        return sample[indices]
    return [sample[index] for index in indices]


def _defined(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _replicates(
    metric: Callable[..., Any], samples: Sequence[Any], n_resamples: int, seed: int, progress: bool
) -> tuple[Any, list[Any]]:
    if not samples:
        raise ValueError("bootstrap needs at least one sample to resample")
    lengths = {len(sample) for sample in samples}
    if len(lengths) != 1:
        raise ValueError(f"paired samples must have the same length, got lengths {[len(s) for s in samples]}")
    n = lengths.pop()
    if n == 0:
        raise ValueError("cannot bootstrap empty samples")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be positive, got {n_resamples}")
    estimate = metric(*samples)
    # One draw for all replicates, as scipy.stats.bootstrap makes it, so the same seed gives the same resamples.
    indices = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    rows = tqdm(indices, desc="bootstrap", disable=not progress, leave=False)
    return estimate, [metric(*(_take(sample, row) for sample in samples)) for row in rows]


def _interval(estimate: Any, values: list[Any], confidence: float, n_resamples: int) -> ConfidenceInterval:
    valid = np.array([float(value) for value in values if _defined(value)])
    alpha = (1.0 - confidence) / 2.0
    low = high = None
    if valid.size:
        low, high = (float(q) for q in np.percentile(valid, [100 * alpha, 100 * (1 - alpha)]))
    point = float(estimate) if _defined(estimate) else None
    return ConfidenceInterval(point, low, high, confidence, n_resamples, int(valid.size))


def bootstrap_ci(
    metric: Callable[..., float | None],
    *samples: Sequence[Any] | np.ndarray,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    progress: bool = False,
) -> ConfidenceInterval:
    """Percentile bootstrap confidence interval of `metric(*samples)`.

    Args:
      metric: a function of the samples returning a number (None or NaN when undefined on a replicate).
      *samples: paired samples, resampled together along their first axis (numpy arrays or sequences).
      n_resamples: number of bootstrap replicates (1,000 is the common choice).
      confidence: the interval's coverage.
      seed: the random seed; the same seed and inputs give the same interval.
      progress: show a progress bar.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    estimate, values = _replicates(metric, samples, n_resamples, seed, progress)
    return _interval(estimate, values, confidence, n_resamples)


def bootstrap_cis(
    metric: Callable[..., Mapping[str, float | None]],
    *samples: Sequence[Any] | np.ndarray,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, ConfidenceInterval]:
    """Like `bootstrap_ci` for a metric that returns several named numbers (e.g. BLEU-1..4, or per class);
    every number gets its interval from the same replicates. Non-numeric entries are skipped."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    estimate, values = _replicates(metric, samples, n_resamples, seed, progress)
    keys = [key for key, value in estimate.items() if value is None or isinstance(value, numbers.Real)]
    return {
        key: _interval(estimate[key], [replicate.get(key) for replicate in values], confidence, n_resamples)
        for key in keys
    }
