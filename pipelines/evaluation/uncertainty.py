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
from pipelines.evaluation.metrics import UNREAD, attribute_metrics, classification_metrics, rule_violations

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


def _balanced_accuracy(pred: Predictions, true: Predictions, idx: np.ndarray) -> float:
    p = np.stack([pred[n][idx] for n in CELEBA_ATTRIBUTES], axis=1)
    t = np.stack([true[n][idx] for n in CELEBA_ATTRIBUTES], axis=1)
    return attribute_metrics(p, t)["mean_balanced_accuracy"]


def _accuracy(target: str) -> Callable[[Predictions, Predictions, np.ndarray], float]:
    return lambda pred, true, idx: float((pred[target][idx] == true[target][idx]).mean())


def _uar(target: str, names) -> Callable[[Predictions, Predictions, np.ndarray], float]:
    return lambda pred, true, idx: classification_metrics(pred[target][idx], true[target][idx], names)["uar"]


def _mae(pred: Predictions, true: Predictions, idx: np.ndarray) -> float:
    p, t = pred["age"][idx], true["age"][idx]
    read = p != UNREAD
    return float(np.abs(p[read] - t[read]).mean()) if read.any() else float("nan")


def violation_rate(rules: np.ndarray) -> Callable[[Predictions, Predictions, np.ndarray], float]:
    """The share of faces whose 40 answers break one of `rules` ((R, 3): knowledge_modules.rules_tensor) on a subset
    of faces (metrics.rule_violations)."""
    def rate(pred: Predictions, true: Predictions, idx: np.ndarray) -> float:
        return rule_violations(np.stack([pred[n][idx] for n in CELEBA_ATTRIBUTES], axis=1), rules)["violation_rate"]
    return rate


# "task.metric" -> the metric on a subset of face indices
METRICS: dict[str, Callable[[Predictions, Predictions, np.ndarray], float]] = {
    "attributes.mean_balanced_accuracy": _balanced_accuracy,
    "age_gender_race.gender_accuracy": _accuracy("gender"),
    "age_gender_race.race_accuracy": _accuracy("race"),
    "age_gender_race.age_mae": _mae,
    "expression.uar": _uar("expression", EXPRESSIONS),
    "expression.war": _accuracy("expression"),
}


def _interval(statistic: Callable[[np.ndarray], float], n: int, resamples: int, seed: int) -> Interval:
    value = statistic(np.arange(n))
    if n < 2:
        return Interval(value, value, value)
    res = bootstrap((np.arange(n),), statistic, n_resamples=resamples, vectorized=False, paired=False,
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
                        metric: Callable[[Predictions, Predictions, np.ndarray], float] | None = None) -> Interval:
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
