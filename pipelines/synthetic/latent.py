"""The latent model behind synthetic faces: demographics, expression and the 40 CelebA attributes.

Sampling is sequential. Each attribute is a logistic model over earlier factors,
    p(attr) = gate * sigmoid(bias + sum(effect * feature)),
where `gate` encodes the hard rules (a beard needs an adult man; at most one hair colour; Bald
excludes Bangs and hair texture; Straight excludes Wavy) so no sample can break them, and `effects`
encode the soft correlations (Male raises beard odds and lowers lipstick odds; age raises grey hair
and bags under the eyes; ...). Each bias is calibrated by bisection on a fixed calibration sample of
the CelebA-like population so that the attribute's marginal matches CelebA's. A few attributes are
derived, not sampled: Smiling is the Happiness expression, No_Beard is the absence of every beard
kind, Young is age < 40, and Attractive is a documented score of drawn factors (see `_attractive`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from model.labels import CELEBA_ATTRIBUTES, EXPRESSIONS, UTK_RACES

# CelebA's attribute marginals (share of +1 labels), the targets of the calibration.
CELEBA_MARGINALS: dict[str, float] = {
    "5_o_Clock_Shadow": 0.111, "Arched_Eyebrows": 0.267, "Attractive": 0.513, "Bags_Under_Eyes": 0.205,
    "Bald": 0.022, "Bangs": 0.152, "Big_Lips": 0.241, "Big_Nose": 0.235, "Black_Hair": 0.239,
    "Blond_Hair": 0.148, "Blurry": 0.051, "Brown_Hair": 0.205, "Bushy_Eyebrows": 0.142, "Chubby": 0.058,
    "Double_Chin": 0.047, "Eyeglasses": 0.065, "Goatee": 0.063, "Gray_Hair": 0.042, "Heavy_Makeup": 0.387,
    "High_Cheekbones": 0.455, "Male": 0.417, "Mouth_Slightly_Open": 0.483, "Mustache": 0.042,
    "Narrow_Eyes": 0.115, "No_Beard": 0.835, "Oval_Face": 0.284, "Pale_Skin": 0.043, "Pointy_Nose": 0.277,
    "Receding_Hairline": 0.080, "Rosy_Cheeks": 0.066, "Sideburns": 0.057, "Smiling": 0.482,
    "Straight_Hair": 0.208, "Wavy_Hair": 0.320, "Wearing_Earrings": 0.189, "Wearing_Hat": 0.048,
    "Wearing_Lipstick": 0.472, "Wearing_Necklace": 0.123, "Wearing_Necktie": 0.073, "Young": 0.774,
}


# Attributes the renderer has no picture of: Attractive is a score of other factors (ATTRACTIVE_SCORE),
# seen only through them. Every other attribute is drawn (geometry.py, render.py).
LATENT_ATTRIBUTES: tuple[str, ...] = ("Attractive",)
DRAWN_ATTRIBUTES: tuple[str, ...] = tuple(a for a in CELEBA_ATTRIBUTES if a not in LATENT_ATTRIBUTES)


@dataclass(frozen=True)
class AttributeSpec:
    name: str
    gate: tuple[str, ...] = ()  # features that must be 1; a leading "!" means must be 0
    effects: dict[str, float] = field(default_factory=dict)


# Order matters: an attribute may gate on or depend on any earlier one.
ATTRIBUTE_SPECS: tuple[AttributeSpec, ...] = (
    AttributeSpec("Mouth_Slightly_Open", effects={
        "expr_Happiness": 1.0, "expr_Surprise": 3.0, "expr_Fear": 2.0, "expr_Disgust": 0.5,
        "expr_Sadness": -0.5, "expr_Neutral": -0.8}),
    AttributeSpec("Chubby", effects={"weight": 2.0, "Male": 0.5, "age_z": 0.5}),
    AttributeSpec("Double_Chin", effects={"weight": 1.8, "Chubby": 1.5, "age_z": 0.8}),
    AttributeSpec("Oval_Face", effects={"weight": -0.8, "Chubby": -3.0, "female": 0.4}),
    AttributeSpec("Big_Nose", effects={"Male": 1.2, "age_z": 0.4, "weight": 0.3}),
    AttributeSpec("Pointy_Nose", effects={"female": 0.8, "Big_Nose": -1.0, "race_White": 0.3}),
    AttributeSpec("Big_Lips", effects={"female": 0.3, "race_Black": 1.5}),
    AttributeSpec("Narrow_Eyes", effects={"race_Asian": 1.5, "Smiling": 0.6}),
    AttributeSpec("Bags_Under_Eyes", effects={"age_z": 1.2, "Male": 0.8, "Young": -0.5}),
    AttributeSpec("Arched_Eyebrows", effects={"female": 2.0, "grooming": 0.6}),
    AttributeSpec("Bushy_Eyebrows", effects={"Male": 1.5, "Arched_Eyebrows": -1.0}),
    AttributeSpec("Pale_Skin", effects={"race_White": 1.0, "race_Asian": 0.5, "race_Black": -4.0,
                                        "race_Indian": -2.0}),
    AttributeSpec("Rosy_Cheeks", effects={"female": 1.5, "Pale_Skin": 1.0, "grooming": 0.5}),
    AttributeSpec("Heavy_Makeup", gate=("adult", "female"), effects={"grooming": 1.2, "Young": 0.5}),
    AttributeSpec("Wearing_Lipstick", gate=("adult",), effects={
        "female": 4.5, "Heavy_Makeup": 3.0, "grooming": 0.5}),
    AttributeSpec("High_Cheekbones", effects={"Smiling": 2.5, "female": 0.6, "weight": -0.5}),
    AttributeSpec("Bald", gate=("adult", "Male"), effects={"age_z": 1.8}),
    AttributeSpec("Wearing_Hat", gate=("!Bald",), effects={"Male": 0.3}),
    AttributeSpec("Receding_Hairline", gate=("!Bald",), effects={"Male": 1.0, "age_z": 1.0}),
    AttributeSpec("Bangs", gate=("!Bald",), effects={"female": 1.2, "Young": 0.5, "Receding_Hairline": -2.0}),
    # Hair colours: one at most, by gating each on the ones before.
    AttributeSpec("Gray_Hair", gate=("!Bald", "!kid"), effects={"age_z": 3.0}),
    AttributeSpec("Blond_Hair", gate=("!Bald", "!Gray_Hair"), effects={
        "race_White": 2.5, "female": 1.5, "race_Black": -3.0, "race_Asian": -3.0, "race_Indian": -3.0}),
    AttributeSpec("Black_Hair", gate=("!Bald", "!Gray_Hair", "!Blond_Hair"), effects={
        "race_Black": 2.5, "race_Asian": 2.5, "race_Indian": 2.0, "race_White": -0.5}),
    AttributeSpec("Brown_Hair", gate=("!Bald", "!Gray_Hair", "!Blond_Hair", "!Black_Hair"), effects={
        "race_White": 0.5}),
    AttributeSpec("Straight_Hair", gate=("!Bald",), effects={"race_Asian": 1.0, "race_Black": -2.0, "Male": -0.3}),
    AttributeSpec("Wavy_Hair", gate=("!Bald", "!Straight_Hair"), effects={"female": 1.5, "race_Black": -1.0}),
    # Beards: adult men only; No_Beard is derived from these three.
    AttributeSpec("Goatee", gate=("adult", "Male"), effects={"age_z": 0.3}),
    AttributeSpec("Mustache", gate=("adult", "Male"), effects={"Goatee": 3.0}),
    AttributeSpec("5_o_Clock_Shadow", gate=("adult", "Male"), effects={"Goatee": -1.0, "Mustache": -1.0}),
    AttributeSpec("Sideburns", gate=("adult", "Male", "!Bald"), effects={"Goatee": 1.5, "Mustache": 1.0}),
    AttributeSpec("Eyeglasses", effects={"age_z": 1.0, "Male": 0.8}),
    AttributeSpec("Wearing_Earrings", effects={"female": 3.5, "grooming": 0.5}),
    AttributeSpec("Wearing_Necklace", effects={"female": 2.5, "grooming": 0.5}),
    AttributeSpec("Wearing_Necktie", gate=("adult",), effects={"Male": 3.5, "age_z": 0.5}),
    AttributeSpec("Blurry"),
)

# Attractive: a fixed score of visible factors; its threshold is calibrated to CelebA's 51.3%.
ATTRACTIVE_SCORE: dict[str, float] = {
    "Young": 1.0, "female": 0.8, "Heavy_Makeup": 0.6, "High_Cheekbones": 0.5, "Oval_Face": 0.4,
    "Arched_Eyebrows": 0.4, "Smiling": 0.3, "Chubby": -1.0, "Bags_Under_Eyes": -0.6, "Blurry": -0.8,
    "Double_Chin": -0.5, "Big_Nose": -0.4, "Gray_Hair": -0.3,
    # continuous drawn factors (face age cues, face width) break ties in the score
    "age_z": -0.3, "weight": -0.2,
}


@dataclass(frozen=True)
class Population:
    """Who a dataset shows: demographics and expressions (the attributes follow the latent model)."""

    male_share: float
    # (lo, hi, weight) age bins per gender; ages uniform inside a bin
    female_ages: tuple[tuple[int, int, float], ...]
    male_ages: tuple[tuple[int, int, float], ...]
    race_probs: tuple[float, ...]
    expression_probs: tuple[float, ...]

    def __post_init__(self) -> None:
        if not 0.0 <= self.male_share <= 1.0:
            raise ValueError(f"male_share must be in [0, 1], got {self.male_share}")
        if len(self.race_probs) != len(UTK_RACES) or len(self.expression_probs) != len(EXPRESSIONS):
            raise ValueError("race_probs needs 5 entries and expression_probs 7")


# CelebA: celebrities, mostly young adults, mostly White, smiling or neutral.
CELEBA_POPULATION = Population(
    male_share=0.417,
    female_ages=((17, 39, 0.85), (40, 75, 0.15)),
    male_ages=((17, 39, 0.675), (40, 80, 0.325)),
    race_probs=(0.78, 0.08, 0.08, 0.03, 0.03),
    expression_probs=(0.05, 0.02, 0.02, 0.482, 0.03, 0.02, 0.378),
)
# UTKFace: ages 0-116 with many children and elders; its published race shares.
UTKFACE_POPULATION = Population(
    male_share=0.52,
    female_ages=((1, 4, 0.10), (5, 15, 0.08), (16, 40, 0.55), (41, 60, 0.17), (61, 90, 0.093), (91, 116, 0.007)),
    male_ages=((1, 4, 0.10), (5, 15, 0.08), (16, 40, 0.50), (41, 60, 0.20), (61, 90, 0.113), (91, 116, 0.007)),
    race_probs=(0.42, 0.19, 0.145, 0.17, 0.075),
    expression_probs=(0.05, 0.02, 0.02, 0.45, 0.04, 0.02, 0.40),
)
# RAF-DB basic: in-the-wild expressions with its published class shares.
RAFDB_POPULATION = Population(
    male_share=0.45,
    female_ages=((3, 15, 0.08), (16, 40, 0.67), (41, 70, 0.25)),
    male_ages=((3, 15, 0.08), (16, 40, 0.62), (41, 75, 0.30)),
    race_probs=(0.77, 0.07, 0.15, 0.005, 0.005),
    expression_probs=(0.1055, 0.0231, 0.0572, 0.3884, 0.1604, 0.0565, 0.2089),
)

CALIBRATION_SEED = 20250421  # fixed: the generative model is the same whatever seed a user picks
CALIBRATION_SIZE = 40000


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _sample_demographics(pop: Population, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    male = rng.random(n) < pop.male_share
    age = np.empty(n, dtype=np.int64)
    for is_male, bins in ((True, pop.male_ages), (False, pop.female_ages)):
        idx = np.flatnonzero(male == is_male)
        weights = np.array([w for _, _, w in bins], dtype=float)
        which = rng.choice(len(bins), size=idx.size, p=weights / weights.sum())
        lo = np.array([b[0] for b in bins])[which]
        hi = np.array([b[1] for b in bins])[which]
        age[idx] = lo + np.floor(rng.random(idx.size) * (hi - lo + 1)).astype(np.int64)
    race = rng.choice(len(UTK_RACES), size=n, p=np.asarray(pop.race_probs) / sum(pop.race_probs))
    expression = rng.choice(len(EXPRESSIONS), size=n,
                            p=np.asarray(pop.expression_probs) / sum(pop.expression_probs))
    features: dict[str, np.ndarray] = {
        "Male": male.astype(float), "female": (~male).astype(float),
        "age": age.astype(float), "age_z": (age - 35.0) / 15.0,
        "adult": (age >= 16).astype(float), "kid": (age < 13).astype(float),
        "Young": (age < 40).astype(float),
        "race": race.astype(float), "expression": expression.astype(float),
        "Smiling": (expression == EXPRESSIONS.index("Happiness")).astype(float),
        # Free latents: body weight and grooming style, both standard normal.
        "weight": rng.standard_normal(n), "grooming": rng.standard_normal(n),
    }
    for k, name in enumerate(UTK_RACES):
        features[f"race_{name}"] = (race == k).astype(float)
    for k, name in enumerate(EXPRESSIONS):
        features[f"expr_{name}"] = (expression == k).astype(float)
    return features


def _gate(spec: AttributeSpec, f: dict[str, np.ndarray]) -> np.ndarray:
    gate = np.ones_like(f["Male"])
    for cond in spec.gate:
        gate = gate * ((1.0 - f[cond[1:]]) if cond.startswith("!") else f[cond])
    return gate


def _linear(effects: dict[str, float], f: dict[str, np.ndarray]) -> np.ndarray:
    return sum((w * f[name] for name, w in effects.items()), start=np.zeros_like(f["Male"]))


def _calibrate_bias(target: float, gate: np.ndarray, linear: np.ndarray) -> float:
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if float(np.mean(gate * _sigmoid(mid + linear))) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _attractive_score(f: dict[str, np.ndarray]) -> np.ndarray:
    return _linear(ATTRACTIVE_SCORE, f)


def _run(pop: Population, n: int, rng: np.random.Generator,
         biases: dict[str, float] | None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Sample n faces; with biases=None, calibrate each bias on this sample as it goes."""
    f = _sample_demographics(pop, n, rng)
    learned: dict[str, float] = {}
    for spec in ATTRIBUTE_SPECS:
        gate, linear = _gate(spec, f), _linear(spec.effects, f)
        if biases is None:
            learned[spec.name] = _calibrate_bias(CELEBA_MARGINALS[spec.name], gate, linear)
        bias = learned[spec.name] if biases is None else biases[spec.name]
        f[spec.name] = (gate * (rng.random(n) < _sigmoid(bias + linear))).astype(float)
    f["No_Beard"] = 1.0 - np.maximum.reduce([f["Goatee"], f["Mustache"], f["5_o_Clock_Shadow"]])
    score = _attractive_score(f)
    if biases is None:
        learned["Attractive"] = float(np.quantile(score, 1.0 - CELEBA_MARGINALS["Attractive"]))
    threshold = learned["Attractive"] if biases is None else biases["Attractive"]
    f["Attractive"] = (score > threshold).astype(float)
    return f, learned


@functools.lru_cache(maxsize=1)
def calibrated_biases() -> dict[str, float]:
    """Biases that make the CelebA-like population match CelebA's marginals (deterministic, cached)."""
    _, biases = _run(CELEBA_POPULATION, CALIBRATION_SIZE, np.random.default_rng(CALIBRATION_SEED), None)
    return biases


@dataclass(frozen=True)
class FaceFactors:
    """What one synthetic face is: the labels every format writes, and the latents that shape it."""

    attributes: dict[str, bool]
    age: int
    male: bool
    race: int
    expression: int  # index into EXPRESSIONS (RAF-DB label = expression + 1)
    weight: float
    grooming: float

    def label_vector(self) -> list[int]:
        """The 40 attributes in file order as CelebA's -1/1 values."""
        return [1 if self.attributes[name] else -1 for name in CELEBA_ATTRIBUTES]


def sample_faces(pop: Population, n: int, rng: np.random.Generator) -> list[FaceFactors]:
    """Sample n faces of a population with the calibrated latent model."""
    f, _ = _run(pop, n, rng, calibrated_biases())
    return [
        FaceFactors(
            attributes={name: bool(f[name][i]) for name in CELEBA_ATTRIBUTES},
            age=int(f["age"][i]), male=bool(f["Male"][i]), race=int(f["race"][i]),
            expression=int(f["expression"][i]), weight=float(f["weight"][i]),
            grooming=float(f["grooming"][i]),
        )
        for i in range(n)
    ]
