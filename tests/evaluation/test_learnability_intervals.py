"""benchmarks/learnability.py's figures with intervals: its vectorised balanced accuracy is the report's, its
intervals narrow with more faces, and a target reads met or missed only where the whole interval says so."""

from __future__ import annotations

import numpy as np

from benchmarks.learnability import balanced_accuracies, face_intervals, judge, unweighted_recall
from pipelines.evaluation.metrics import attribute_metrics


def test_balanced_accuracy_on_all_faces_is_the_reports_also_where_a_class_is_missing():
    rng = np.random.default_rng(0)
    truth = (rng.random((120, 40)) < 0.2).astype(int)
    truth[:, 3] = 0  # no positive face: its recall on negatives alone, as attribute_metrics has it
    pred = np.where(rng.random((120, 40)) < 0.7, truth, 1 - truth)
    mine = balanced_accuracies(pred, truth, np.arange(120))
    report = attribute_metrics(pred, truth)["per_attribute"]
    assert np.allclose(mine, [v["balanced_accuracy"] for v in report.values()])
    # many resamples at once: (40, resamples), each the figure on its own faces
    idx = rng.integers(0, 120, (5, 120))
    assert balanced_accuracies(pred, truth, idx).shape == (40, 5)
    assert np.isclose(balanced_accuracies(pred, truth, idx)[7, 2], balanced_accuracies(pred, truth, idx[2])[7])


def test_uar_is_the_mean_recall_over_the_classes_present():
    truth = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 0, 1, 1, 0, 2, 2])
    assert np.isclose(unweighted_recall(pred, truth, np.arange(8)), (0.75 + 0.5 + 1.0) / 3)


def test_an_interval_holds_its_value_and_narrows_with_more_faces():
    rng = np.random.default_rng(1)
    widths = []
    for n in (60, 2000):
        truth = rng.integers(0, 2, n)
        pred = np.where(rng.random(n) < 0.8, truth, 1 - truth)
        value, low, high = face_intervals(lambda idx, p=pred, t=truth: (p[idx] == t[idx]).mean(-1)[None], n)
        assert low[0] < value[0] < high[0]
        widths.append(high[0] - low[0])
    assert widths[1] < widths[0] / 3


def test_a_target_is_met_or_missed_only_by_the_whole_interval():
    assert judge("drawn_min", (0.75, 0.71, 0.79)) == "met"
    assert judge("drawn_min", (0.64, 0.58, 0.69)) == "MISSED"
    assert judge("drawn_min", (0.72, 0.66, 0.78)) == "not resolved at this sample size"
    # age: lower is better
    assert judge("age_mae", (6.5, 6.1, 6.9)) == "met"
    assert judge("age_mae", (7.3, 7.1, 7.6)) == "MISSED"
    assert judge("age_mae", (7.0, 6.6, 7.4)) == "not resolved at this sample size"


def test_none_below_is_judged_on_each_attributes_own_interval(monkeypatch):
    """Two drawn attributes near the line, each unresolved on its own: the minimum reads not resolved, where a
    bootstrap of the minimum itself would read it missed (each resample picks its unluckiest attribute)."""
    import torch

    import benchmarks.learnability as learnability

    rng = np.random.default_rng(2)
    n = 300
    truth = (rng.random((n, 40)) < 0.3).astype(int)
    pred = np.where(rng.random((n, 40)) < 0.97, truth, 1 - truth)
    for k in (0, 1):  # ~0.72 each, an interval of ~+-0.05
        pred[:, k] = np.where(rng.random(n) < 0.72, truth[:, k], 1 - truth[:, k])
    monkeypatch.setattr(learnability, "DRAWN_ATTRIBUTES", learnability.CELEBA_ATTRIBUTES[:2])

    class Fixed:
        def predict(self, images):
            return {"attributes": pred}

    labels = {k: torch.full((n,), -1) for k in ("gender", "race", "age", "expression")}
    data = {"image": torch.zeros((n, 3, 2, 2), dtype=torch.uint8), "attributes": torch.from_numpy(truth), **labels}
    s = learnability.scores(Fixed(), data, resamples=300)
    own = [s["per_attribute"][a] for a in learnability.CELEBA_ATTRIBUTES[:2]]
    assert s["drawn_min"] == (min(o[0] for o in own), min(o[1] for o in own), min(o[2] for o in own))
    assert all(judge("drawn_min", o) == "not resolved at this sample size" for o in own)
    assert judge("drawn_min", s["drawn_min"]) == "not resolved at this sample size"
