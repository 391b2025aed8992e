import numpy as np
import pytest

from model.knowledge_modules import EXCLUSION, IMPLICATION
from model.labels import ATTRIBUTE_INDEX
from pipelines.evaluation.metrics import UNREAD, age_metrics, attribute_metrics, classification_metrics, rule_violations


def test_attribute_metrics_by_hand():
    truth = np.zeros((4, 40), dtype=int)
    truth[:, 0] = [1, 1, 0, 0]
    pred = truth.copy()
    pred[:, 0] = [1, 0, 0, UNREAD]  # one missed positive, one unread negative
    out = attribute_metrics(pred, truth)
    a = out["per_attribute"]["5_o_Clock_Shadow"]
    assert a["accuracy"] == pytest.approx(0.5)
    assert a["balanced_accuracy"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert a["f1"] == pytest.approx(2 * 1 / (2 * 1 + 0 + 1))
    # the other 39 attributes: all-negative truth, all right; F1 undefined there, so macro-F1 is attribute 0's
    assert out["mean_accuracy"] == pytest.approx((0.5 + 39) / 40)
    assert out["macro_f1"] == pytest.approx(2 / 3) and out["unread"] == 1


def test_rule_violations_by_hand():
    male, lipstick, goatee = ATTRIBUTE_INDEX["Male"], ATTRIBUTE_INDEX["Wearing_Lipstick"], ATTRIBUTE_INDEX["Goatee"]
    rules = np.array([[EXCLUSION, male, lipstick], [IMPLICATION, goatee, male]])
    pred = np.zeros((4, 40), dtype=int)
    pred[0, [male, lipstick]] = 1          # breaks the exclusion
    pred[1, goatee] = 1                    # breaks the implication
    pred[2, [goatee, male]] = 1            # consistent
    pred[3, goatee], pred[3, male] = 1, UNREAD  # not judged
    out = rule_violations(pred, rules)
    assert out["violation_rate"] == pytest.approx(2 / 4)
    assert [r["violations"] for r in out["per_rule"]] == [1, 1]


def test_classification_metrics_by_hand():
    names = ("a", "b", "c")
    truth = np.array([0, 0, 0, 1, 2])
    pred = np.array([0, 0, 1, 1, UNREAD])
    out = classification_metrics(pred, truth, names)
    assert out["accuracy"] == pytest.approx(3 / 5)
    assert out["uar"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    # F1: a 2*2/(4+0+1)=0.8, b 2/(2+1+0)=2/3, c 0
    assert out["macro_f1"] == pytest.approx((0.8 + 2 / 3 + 0) / 3)
    assert out["confusion"]["matrix"] == [[2, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]]


def test_age_metrics_by_hand():
    groups = [[0, 9, "kid"], [10, 59, "adult"], [60, 116, "senior"]]
    out = age_metrics(np.array([30, 5, UNREAD]), np.array([40, 12, 70]), groups)
    assert out["mae"] == pytest.approx((10 + 7) / 2) and out["unread"] == 1
    assert out["age_group_accuracy"] == pytest.approx(1 / 3)
