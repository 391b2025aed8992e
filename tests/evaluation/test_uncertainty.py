"""Paired-bootstrap intervals on hand-made predictions: one must exclude zero, one must contain it."""

from __future__ import annotations

import numpy as np

from model.labels import CELEBA_ATTRIBUTES
from pipelines.evaluation.uncertainty import difference_interval, metric_interval, verdict


def _gender(n: int, right_share: float, rng: np.random.Generator) -> tuple[dict, dict]:
    truth = rng.integers(0, 2, n)
    pred = np.where(rng.random(n) < right_share, truth, 1 - truth)
    return {"gender": pred}, {"gender": truth}


def test_a_clear_gap_excludes_zero_and_a_tie_contains_it():
    rng = np.random.default_rng(0)
    good, truth = _gender(400, 0.95, rng)
    coin = {"gender": rng.integers(0, 2, 400)}
    gap = difference_interval("age_gender_race.gender_accuracy", good, coin, truth, resamples=1000)
    assert gap.low > 0.3 and gap.excludes_zero() and verdict(gap) == "supported"
    assert verdict(difference_interval("age_gender_race.gender_accuracy", coin, good, truth)) == "contradicted"
    # two systems that differ on one face in 400: no finding
    twin = {"gender": good["gender"].copy()}
    twin["gender"][0] = 1 - twin["gender"][0]
    tie = difference_interval("age_gender_race.gender_accuracy", good, twin, truth)
    assert tie.low <= 0 <= tie.high and verdict(tie) == "not resolved at this sample size"
    # one system's own interval holds its value and narrows with more faces
    one = metric_interval("age_gender_race.gender_accuracy", good, truth)
    assert one.low <= one.value <= one.high and 0.9 < one.value < 1.0
    more, truth_more = _gender(4000, 0.95, rng)
    assert metric_interval("age_gender_race.gender_accuracy", more, truth_more).half_width < one.half_width


def test_intervals_are_seeded_and_paired():
    rng = np.random.default_rng(1)
    truth = {n: rng.integers(0, 2, 120) for n in CELEBA_ATTRIBUTES}
    a = {n: np.where(rng.random(120) < 0.8, t, 1 - t) for n, t in truth.items()}
    key = "attributes.mean_balanced_accuracy"
    first = difference_interval(key, a, a, truth, resamples=200)
    assert first.low == first.high == 0.0  # a system against itself differs on no resample
    b = {n: np.where(rng.random(120) < 0.6, t, 1 - t) for n, t in truth.items()}
    assert difference_interval(key, a, b, truth, resamples=200) == difference_interval(key, a, b, truth, resamples=200)


def test_each_metric_on_a_batch_of_resamples_is_metrics_py_on_the_resampled_answers_bit_for_bit():
    """The bootstrap computes each metric for all resamples at once from how often each face was drawn; every value
    must be what metrics.py gives on that resample's arrays, exactly (few faces: classes absent from some
    resamples, unread answers, a resample with no age read)."""
    from model.knowledge_modules import EXCLUSION, IMPLICATION
    from model.labels import EXPRESSIONS
    from pipelines.evaluation.metrics import (
        UNREAD,
        age_metrics,
        attribute_metrics,
        classification_metrics,
        rule_violations,
    )
    from pipelines.evaluation.uncertainty import METRICS, violation_rate

    rng = np.random.default_rng(3)
    n = 9
    truth = {name: rng.integers(0, 2, n) for name in CELEBA_ATTRIBUTES}
    truth |= {"gender": rng.integers(0, 2, n), "race": rng.integers(0, 5, n), "age": rng.integers(1, 90, n),
              "expression": rng.integers(0, 3, n)}  # 3 of the 7 expressions
    pred = {k: np.where(rng.random(n) < 0.7, v, rng.integers(UNREAD, 2, n)) for k, v in truth.items()}
    pred["age"] = np.where(np.arange(n) < 2, truth["age"] + rng.integers(-9, 9, n), UNREAD)  # two faces read
    rows = rng.integers(0, n, (300, n))
    rules = np.array([[IMPLICATION, 0, 1], [EXCLUSION, 2, 3]])
    attrs = lambda labels, i: np.stack([labels[name][i] for name in CELEBA_ATTRIBUTES], axis=1)  # noqa: E731
    expected = {
        "attributes.mean_balanced_accuracy": lambda i: attribute_metrics(attrs(pred, i), attrs(truth, i))[
            "mean_balanced_accuracy"],
        "age_gender_race.gender_accuracy": lambda i: float((pred["gender"][i] == truth["gender"][i]).mean()),
        "age_gender_race.race_accuracy": lambda i: float((pred["race"][i] == truth["race"][i]).mean()),
        "age_gender_race.age_mae": lambda i: age_metrics(pred["age"][i], truth["age"][i], [[1, 90, "all"]])["mae"],
        "expression.uar": lambda i: classification_metrics(pred["expression"][i], truth["expression"][i],
                                                           EXPRESSIONS)["uar"],
        "expression.war": lambda i: float((pred["expression"][i] == truth["expression"][i]).mean()),
        "violations": lambda i: rule_violations(attrs(pred, i), rules)["violation_rate"],
    }
    metrics = METRICS | {"violations": violation_rate(rules)}
    assert any(np.isnan(METRICS["age_gender_race.age_mae"](pred, truth, rows)))  # some resamples read no age
    for key, reference in expected.items():
        batch = metrics[key](pred, truth, rows)
        want = [float("nan") if v is None else v for v in map(reference, rows)]
        assert np.array_equal(batch, want, equal_nan=True), key
        assert metrics[key](pred, truth, rows[0]) == batch[0] or np.isnan(batch[0])  # one resample: a float
