import numpy as np
import pytest

from model.labels import ATTRIBUTE_INDEX, CELEBA_ATTRIBUTES, EXPRESSIONS
from pipelines.synthetic.latent import (
    CELEBA_MARGINALS,
    CELEBA_POPULATION,
    UTKFACE_POPULATION,
    Population,
    calibrated_biases,
    sample_faces,
)

HAIR_COLOURS = ["Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair"]


@pytest.fixture(scope="module")
def celeba_labels() -> np.ndarray:
    faces = sample_faces(CELEBA_POPULATION, 20000, np.random.default_rng(99))
    return np.array([f.label_vector() for f in faces]) == 1


def col(labels: np.ndarray, name: str) -> np.ndarray:
    return labels[:, ATTRIBUTE_INDEX[name]]


def test_marginals_close_to_celeba(celeba_labels):
    observed = celeba_labels.mean(axis=0)
    for name, share in zip(CELEBA_ATTRIBUTES, observed, strict=True):
        # No_Beard is derived from three sampled beards, so it gets a wider band.
        tol = 0.03 if name == "No_Beard" else 0.015
        assert abs(share - CELEBA_MARGINALS[name]) < tol, (name, share, CELEBA_MARGINALS[name])


def test_majority_baseline_near_celebas(celeba_labels):
    p = celeba_labels.mean(axis=0)
    assert abs(np.maximum(p, 1 - p).mean() - 0.80) < 0.01


def test_hard_rules_never_broken(celeba_labels):
    no_beard = col(celeba_labels, "No_Beard")
    for beard in ("Goatee", "Mustache", "5_o_Clock_Shadow"):
        assert not (no_beard & col(celeba_labels, beard)).any(), beard
    bald = col(celeba_labels, "Bald")
    for hair in ("Bangs", "Straight_Hair", "Wavy_Hair"):
        assert not (bald & col(celeba_labels, hair)).any(), hair
    colours = np.stack([col(celeba_labels, c) for c in HAIR_COLOURS], 1).sum(1)
    assert colours.max() <= 1
    assert not (col(celeba_labels, "Straight_Hair") & col(celeba_labels, "Wavy_Hair")).any()


def conditional(labels, target, given, value=True):
    mask = col(labels, given) == value
    return col(labels, target)[mask].mean()


def test_documented_correlations(celeba_labels):
    L = celeba_labels
    assert conditional(L, "Goatee", "Male") > 0.1 > conditional(L, "Goatee", "Male", False)
    assert conditional(L, "Wearing_Lipstick", "Male") < 0.1 < 0.6 < conditional(L, "Wearing_Lipstick", "Male", False)
    assert conditional(L, "Gray_Hair", "Young") < conditional(L, "Gray_Hair", "Young", False)
    assert conditional(L, "High_Cheekbones", "Smiling") > conditional(L, "High_Cheekbones", "Smiling", False)
    assert conditional(L, "Mustache", "Goatee") > 3 * conditional(L, "Mustache", "Goatee", False)


def test_smiling_is_the_happiness_expression():
    faces = sample_faces(CELEBA_POPULATION, 500, np.random.default_rng(3))
    for f in faces:
        assert f.attributes["Smiling"] == (EXPRESSIONS[f.expression] == "Happiness")
        assert f.attributes["Young"] == (f.age < 40)


def test_same_seed_same_faces_and_calibration_is_fixed():
    a = sample_faces(UTKFACE_POPULATION, 50, np.random.default_rng(5))
    b = sample_faces(UTKFACE_POPULATION, 50, np.random.default_rng(5))
    assert a == b
    assert calibrated_biases() is calibrated_biases()


def test_children_get_no_beard_or_makeup():
    faces = sample_faces(UTKFACE_POPULATION, 3000, np.random.default_rng(8))
    kids = [f for f in faces if f.age < 16]
    assert len(kids) > 100
    for f in kids:
        assert f.attributes["No_Beard"] and not f.attributes["Heavy_Makeup"] and not f.attributes["Bald"]


def test_population_validates():
    with pytest.raises(ValueError, match="male_share"):
        Population(1.5, ((1, 2, 1.0),), ((1, 2, 1.0),), (0.2,) * 5, (1 / 7,) * 7)
