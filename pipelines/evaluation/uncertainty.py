"""95% paired-bootstrap intervals over test faces: each gated number, and the difference of two systems.

Every system answered the same faces, so a resample of face indices is applied to all of them at once
(paired): the interval of a difference then reflects how much the two systems disagree face by face, not
the faces' own spread. `scipy.stats.bootstrap` does the resampling (percentile intervals, seeded).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import bootstrap

from model.labels import CELEBA_ATTRIBUTES, EXPRESSIONS
from pipelines.evaluation.metrics import UNREAD, faces_breaking_a_rule

RESAMPLES = 1000
SEED = 20250421
Predictions = dict[str, np.ndarray]  # target -> one label per face (UNREAD where no answer was read)


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


# A metric on resampled faces. `idx` is one resample of face indices (n,) or a batch of them (B, n); the metric is
# a float, or one per resample. Every one is a ratio of counts over the resampled faces, so each is computed from
# how often each face was drawn (`_draws`) by one matrix product over the faces: the bootstrap's 1,000 resamples of
# 720 faces x 40 attributes in milliseconds, not a metrics call per resample. The counts are whole numbers, so the
# values are the same bit for bit as metrics.py's on the resampled arrays (tests/evaluation/test_uncertainty.py).
Metric = Callable[[Predictions, Predictions, np.ndarray], float | np.ndarray]


def _draws(idx: np.ndarray, n: int) -> np.ndarray:
    """(B, n) float64: how many times each of the n faces is in each resample."""
    rows = np.atleast_2d(idx)
    offsets = np.arange(len(rows))[:, None] * n
    return np.bincount((rows + offsets).ravel(), minlength=len(rows) * n).reshape(len(rows), n).astype(np.float64)


def _per_resample(idx: np.ndarray, values: np.ndarray) -> float | np.ndarray:
    return float(values[0]) if np.ndim(idx) == 1 else values


def _recall_mean(hits: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per resample (row), the mean over the classes (columns) it has of hits / counts, in column order: as
    metrics._mean over its recalls list, rows grouped by which classes they have so each mean is the same reduction."""
    present = counts > 0
    out = np.zeros(len(counts))
    patterns, which = np.unique(present, axis=0, return_inverse=True)
    for k, pattern in enumerate(patterns):
        rows = np.flatnonzero(which.ravel() == k)
        if pattern.any():
            out[rows] = (hits[np.ix_(rows, pattern)] / counts[np.ix_(rows, pattern)]).mean(axis=1)
    return out


def _attribute_matrix(labels: Predictions) -> np.ndarray:
    return np.stack([labels[name] for name in CELEBA_ATTRIBUTES], axis=1)


def _balanced_accuracy(pred: Predictions, true: Predictions, idx: np.ndarray) -> float | np.ndarray:
    """metrics.attribute_metrics' mean_balanced_accuracy: per attribute the mean of the recalls on the negatives and
    the positives the resample has, then the mean over the 40 attributes."""
    p, t = _attribute_matrix(pred), _attribute_matrix(true)
    w = _draws(idx, len(t))
    neg_n, pos_n = w @ (t == 0), w @ (t == 1)
    neg_hit, pos_hit = w @ ((p == 0) & (t == 0)), w @ ((p == 1) & (t == 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        neg, pos = neg_hit / neg_n, pos_hit / pos_n
    per_attribute = np.where(neg_n == 0, pos, np.where(pos_n == 0, neg, (neg + pos) / 2))
    return _per_resample(idx, per_attribute.mean(axis=1))


def _accuracy(target: str) -> Metric:
    def accuracy(pred: Predictions, true: Predictions, idx: np.ndarray) -> float | np.ndarray:
        w = _draws(idx, len(true[target]))
        return _per_resample(idx, (w @ (pred[target] == true[target])) / w.sum(axis=1))
    return accuracy


def _uar(target: str, names) -> Metric:
    """metrics.classification_metrics' uar: the mean recall over the classes the resample has."""
    def uar(pred: Predictions, true: Predictions, idx: np.ndarray) -> float | np.ndarray:
        p, t = pred[target], true[target]
        w = _draws(idx, len(t))
        classes = np.arange(len(names))
        counts, hits = w @ (t[:, None] == classes), w @ ((t[:, None] == classes) & (p[:, None] == classes))
        return _per_resample(idx, _recall_mean(hits, counts))
    return uar


def _mae(pred: Predictions, true: Predictions, idx: np.ndarray) -> float | np.ndarray:
    """The mean absolute age error over the resample's read answers (NaN where none was read)."""
    p, t = pred["age"], true["age"]
    read = p != UNREAD
    w = _draws(idx, len(t))
    with np.errstate(invalid="ignore", divide="ignore"):
        return _per_resample(idx, (w @ np.where(read, np.abs(p - t), 0)) / (w @ read))


def violation_rate(rules: np.ndarray) -> Metric:
    """The share of faces whose 40 answers break one of `rules` ((R, 3): knowledge_modules.rules_tensor) on a subset
    of faces (metrics.rule_violations)."""
    def rate(pred: Predictions, true: Predictions, idx: np.ndarray) -> float | np.ndarray:
        broken = faces_breaking_a_rule(_attribute_matrix(pred), rules)  # a face's, whichever resample holds it
        w = _draws(idx, len(broken))
        return _per_resample(idx, (w @ broken) / w.sum(axis=1))
    return rate


# "task.metric" -> the metric on a subset of face indices
METRICS: dict[str, Metric] = {
    "attributes.mean_balanced_accuracy": _balanced_accuracy,
    "age_gender_race.gender_accuracy": _accuracy("gender"),
    "age_gender_race.race_accuracy": _accuracy("race"),
    "age_gender_race.age_mae": _mae,
    "expression.uar": _uar("expression", EXPRESSIONS),
    "expression.war": _accuracy("expression"),
}


def _interval(statistic: Callable[[np.ndarray], float | np.ndarray], n: int, resamples: int, seed: int) -> Interval:
    value = statistic(np.arange(n))
    if n < 2:
        return Interval(value, value, value)
    # vectorized: the statistic gets every resample at once, (resamples, n) face indices
    res = bootstrap((np.arange(n),), lambda idx, axis=-1: statistic(idx), n_resamples=resamples, vectorized=True,
                    paired=False,
                    method="percentile", confidence_level=0.95, random_state=np.random.default_rng(seed))
    low, high = res.confidence_interval
    return Interval(float(value), float(low), float(high))


def metric_interval(key: str, pred: Predictions, true: Predictions, resamples: int = RESAMPLES, seed: int = SEED
                    ) -> Interval:
    """The 95% interval of one system's metric `key` over resampled faces."""
    fn = METRICS[key]
    n = len(next(iter(true.values())))
    return _interval(lambda idx: fn(pred, true, idx), n, resamples, seed)


def difference_interval(key: str, pred_a: Predictions, pred_b: Predictions, true: Predictions,
                        resamples: int = RESAMPLES, seed: int = SEED,
                        metric: Metric | None = None) -> Interval:
    """The 95% paired interval of metric(a) - metric(b): the same resampled faces for both systems. `metric`: one
    that needs more than the answers (violation_rate's rules), else METRICS[key]."""
    fn = metric or METRICS[key]
    n = len(next(iter(true.values())))
    return _interval(lambda idx: fn(pred_a, true, idx) - fn(pred_b, true, idx), n, resamples, seed)


def verdict(diff: Interval, higher_is_better: bool = True) -> str:
    """What a paired difference (a - b, a the system a claim says is better) says about the claim."""
    if not diff.excludes_zero():
        return "not resolved at this sample size"
    ahead = diff.low > 0 if higher_is_better else diff.high < 0
    return "supported" if ahead else "contradicted"


def as_arrays(raw: dict[str, Any]) -> Predictions:
    """Predictions as stored in reports/eval/<task>.json (lists) -> arrays."""
    return {k: np.asarray(v, dtype=int) for k, v in raw.items()}
