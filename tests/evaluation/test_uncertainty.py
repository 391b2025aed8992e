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
