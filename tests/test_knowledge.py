"""Mined knowledge on hand-made label tables, where every number can be worked out on paper."""

import json

import numpy as np
import pytest

from model.labels import ATTRIBUTE_INDEX, CELEBA_ATTRIBUTES
from pipelines.knowledge import (
    GIVEN_EXCLUSIONS,
    KnowledgeConfig,
    conditional_probabilities,
    cooccurrence,
    knowledge_graph,
    knowledge_metrics,
    mine_knowledge,
    mine_rules,
)


def test_graph_on_a_three_attribute_table():
    # rows: faces; columns: attributes x, y, z
    y = np.array([[1, 1, 0], [1, 1, 0], [1, 0, 0], [0, 1, 1], [0, 0, 1]])
    m = cooccurrence(y)
    assert m.tolist() == [[3, 2, 0], [2, 3, 1], [0, 1, 2]]
    p = conditional_probabilities(m)
    np.testing.assert_allclose(p, [[1, 2 / 3, 0], [2 / 3, 1, 1 / 3], [0, 1 / 2, 1]])
    g = knowledge_graph(p, tau=0.4, omega=0.25)
    # edges: x->y (2/3), y->x (2/3), z->y (1/2); y->z is 1/3 < tau
    assert g["binary"].tolist() == [[0, 1, 0], [1, 0, 0], [0, 1, 0]]
    np.testing.assert_allclose(g["reweighted"], [[0.75, 0.25, 0], [0.25, 0.75, 0], [0, 0.25, 0.75]])
    # row sums are all 1, so D = I and the normalised graph equals the re-weighted one
    np.testing.assert_allclose(g["normalized"], g["reweighted"])


def test_graph_normalisation_with_an_isolated_node():
    p = np.array([[1.0, 0.9, 0.0], [0.1, 1.0, 0.0], [0.0, 0.0, 1.0]])
    g = knowledge_graph(p, tau=0.5, omega=0.4)
    r = g["reweighted"]
    np.testing.assert_allclose(r, [[0.6, 0.4, 0], [0, 1, 0], [0, 0, 1]])
    d = 1 / np.sqrt(r.sum(1))
    np.testing.assert_allclose(g["normalized"], d[:, None] * r * d[None, :])
    assert g["normalized"][0, 1] == pytest.approx(0.4 / np.sqrt(1.0 * 1.0))


def table(n: int, **columns) -> np.ndarray:
    y = np.zeros((n, len(CELEBA_ATTRIBUTES)), dtype=int)
    for name, rows in columns.items():
        y[rows, ATTRIBUTE_INDEX[name]] = 1
    return y


def find(rules, kind, a, b):
    return next((r for r in rules if r.kind == kind and r.a == a and r.b == b), None)


def test_rules_mined_and_violations_counted():
    n = 200
    male = np.arange(0, 100)
    goatee = np.arange(0, 40)  # all male: Goatee => Male
    makeup = np.arange(120, 180)  # all female: Heavy_Makeup excludes Male
    no_beard = np.arange(40, 200)
    smiling = np.arange(0, 200, 2)  # independent of everything
    y = table(n, Male=male, Goatee=goatee, Heavy_Makeup=makeup, No_Beard=np.r_[no_beard, [0, 1]],
              Smiling=smiling)
    rules = mine_rules(y, KnowledgeConfig(min_support=30, min_expected=10))
    imp = find(rules, "implication", "Goatee", "Male")
    assert imp and imp.source == "mined" and imp.support == 40 and imp.violations == 0
    exc = find(rules, "exclusion", "Heavy_Makeup", "Male")
    assert exc and exc.source == "mined" and exc.confidence == 1.0
    # the given rule No_Beard excludes Goatee is broken by rows 0 and 1: reported, not dropped
    given = find(rules, "exclusion", "No_Beard", "Goatee")
    assert given.source == "given" and given.violations == 2 and given.support == 162
    assert not any("Smiling" in (r.a, r.b) for r in rules if r.source == "mined")
    assert len([r for r in rules if r.source == "given"]) == len(GIVEN_EXCLUSIONS)


def test_rare_absences_are_not_mined():
    # 30 faces with Bald, 20 with Eyeglasses, never together: independence expects 30*20/400 = 1.5 < 10
    y = table(400, Bald=np.arange(0, 30), Eyeglasses=np.arange(100, 120))
    rules = mine_rules(y, KnowledgeConfig(min_support=10, min_expected=10))
    assert find(rules, "exclusion", "Bald", "Eyeglasses") is None
    assert find(mine_rules(y, KnowledgeConfig(min_support=10, min_expected=1)), "exclusion", "Bald",
                "Eyeglasses")


def test_lower_confidence_admits_noisy_rules():
    male = np.arange(0, 100)
    goatee = np.r_[np.arange(0, 49), [150]]  # one female goatee: a label error
    y = table(200, Male=male, Goatee=goatee)
    assert find(mine_rules(y, KnowledgeConfig()), "implication", "Goatee", "Male") is None
    noisy = find(mine_rules(y, KnowledgeConfig(min_confidence=0.97)), "implication", "Goatee", "Male")
    assert noisy and noisy.violations == 1 and noisy.confidence == pytest.approx(0.98)


def test_knowledge_json_and_metrics(tmp_path):
    rng = np.random.default_rng(0)
    y = (rng.random((300, 40)) < 0.3).astype(int)
    k = mine_knowledge(2 * y - 1, KnowledgeConfig())  # -1/1 labels as in the files
    text = json.dumps(k)
    assert json.loads(text)["n_train"] == 300 and k["counts"] == y.sum(0).tolist()
    assert np.asarray(k["graph"]["normalized"]).shape == (40, 40)
    metrics = knowledge_metrics(k, y)
    expected_broken = 0
    for a, b in GIVEN_EXCLUSIONS:
        expected_broken += int((y[:, ATTRIBUTE_INDEX[a]] & y[:, ATTRIBUTE_INDEX[b]]).sum())
    assert metrics["rule_violations"] >= expected_broken > 0
    assert 0 < metrics["faces_breaking_a_rule_share"] <= 1


def test_class_counts_cover_every_class_and_take_celeba_gender_from_male():
    from types import SimpleNamespace

    from pipelines.knowledge import class_counts

    utk = [SimpleNamespace(gender=g, race=r, expression=None) for g, r in ((0, 4), (1, 4), (1, 0))]
    raf = [SimpleNamespace(gender=None, race=None, expression=e) for e in (1, 7, 7)]  # RAF-DB labels 1..7
    celeba = np.zeros((4, 40), int)
    celeba[:3, ATTRIBUTE_INDEX["Male"]] = 1  # three men, one woman
    counts = class_counts(utk + raf, celeba)
    assert counts == {"gender": [1 + 3, 2 + 1], "race": [1, 0, 0, 0, 2], "expression": [1, 0, 0, 0, 0, 0, 2]}


def test_config_validates():
    with pytest.raises(ValueError, match="tau"):
        KnowledgeConfig(tau=0)
