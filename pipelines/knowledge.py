"""Facial attribute knowledge mined from training labels: co-occurrence, the ML-GCN graph, logical rules.

knowledge.json (schema_version 1):
    attributes      the 40 names, the order of every matrix below
    n_train         number of training faces the statistics come from
    counts          n_i, faces with attribute i
    cooccurrence    M[i][j], faces with both i and j (M[i][i] = n_i)
    conditional     P[i][j] = p(j | i) = M[i][j] / n_i (0 where n_i = 0); not symmetric
    graph           tau, omega, and three 40x40 matrices:
                      binary      A[i][j] = 1 if P[i][j] >= tau (i != j)
                      reweighted  A'[i][j] = omega * A[i][j] / sum_k A[i][k] off the diagonal,
                                  A'[i][i] = 1 - omega (1 for an attribute with no neighbour)
                      normalized  D^-1/2 A' D^-1/2 with D = diag(row sums of A'), what the GCN uses
    class_counts    {gender: [male, female], race: [5], expression: [7]}: train faces per class of the single-label
                    tasks (UTKFace's gender plus CelebA's from Male; UTKFace's race; RAF-DB's expression), the
                    answer heads' class weights
    rules           [{kind, a, b, source, support, confidence, violations, text}]
                      kind "exclusion": a and b never hold together; "implication": a implies b
                      source "given" (domain knowledge) or "mined" (no counter-example in the labels)
                      support: faces with a; confidence: share of them that obey the rule;
                      violations: training faces that break it (real labels do; they are reported,
                      never dropped)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from model.labels import ATTRIBUTE_INDEX, CELEBA_ATTRIBUTES, EXPRESSIONS, UTK_GENDERS, UTK_RACES

HAIR_COLOURS = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")
# Deterministic relationships that hold by definition of the attributes.
GIVEN_EXCLUSIONS: tuple[tuple[str, str], ...] = (
    ("No_Beard", "Goatee"), ("No_Beard", "Mustache"), ("No_Beard", "5_o_Clock_Shadow"),
    ("Bald", "Bangs"), ("Bald", "Straight_Hair"), ("Bald", "Wavy_Hair"), ("Straight_Hair", "Wavy_Hair"),
    *itertools.combinations(HAIR_COLOURS, 2),
)
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class KnowledgeConfig:
    """params.yaml: mine_knowledge."""

    tau: float = 0.4  # p(j|i) at or above it makes an edge i -> j
    omega: float = 0.25  # share of a node's weight given to its neighbours (ML-GCN's p)
    min_support: int = 30  # faces with the antecedent before a rule may be mined
    min_expected: float = 10.0  # counter-examples expected under independence before their absence counts
    min_confidence: float = 1.0  # 1.0: mine only rules with no counter-example (full support)

    def __post_init__(self) -> None:
        if not 0 < self.tau <= 1:
            raise ValueError(f"mine_knowledge.tau must be in (0, 1], got {self.tau}")
        if not 0 <= self.omega <= 1:
            raise ValueError(f"mine_knowledge.omega must be in [0, 1], got {self.omega}")
        if self.min_support < 1 or self.min_expected <= 0:
            raise ValueError("mine_knowledge.min_support must be >= 1 and min_expected > 0")
        if not 0.5 < self.min_confidence <= 1:
            raise ValueError(f"mine_knowledge.min_confidence must be in (0.5, 1], got {self.min_confidence}")


def cooccurrence(labels: np.ndarray) -> np.ndarray:
    """M = Y^T Y for a 0/1 label matrix Y (faces x attributes)."""
    y = labels.astype(np.int64)
    return y.T @ y


def conditional_probabilities(m: np.ndarray) -> np.ndarray:
    counts = np.diag(m).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(counts[:, None] > 0, m / counts[:, None], 0.0)
    return p


def knowledge_graph(p: np.ndarray, tau: float, omega: float) -> dict[str, np.ndarray]:
    """The ML-GCN adjacency: binarise at tau, re-weight, self-loops, symmetric normalisation."""
    n = p.shape[0]
    binary = (p >= tau).astype(float)
    np.fill_diagonal(binary, 0.0)
    degree = binary.sum(axis=1, keepdims=True)
    reweighted = np.where(degree > 0, omega * binary / np.maximum(degree, 1e-12), 0.0)
    reweighted[np.arange(n), np.arange(n)] = np.where(degree[:, 0] > 0, 1.0 - omega, 1.0)
    d = reweighted.sum(axis=1) ** -0.5
    normalized = d[:, None] * reweighted * d[None, :]
    return {"binary": binary, "reweighted": reweighted, "normalized": normalized}


@dataclass(frozen=True)
class Rule:
    kind: str  # "exclusion" | "implication"
    a: str
    b: str
    source: str  # "given" | "mined"
    support: int
    confidence: float
    violations: int

    def text(self) -> str:
        a, b = self.a.replace("_", " "), self.b.replace("_", " ")
        if self.kind == "exclusion":
            return f"{a} and {b} never hold together"
        return f"{a} implies {b}"


def _rule(kind: str, a: str, b: str, source: str, y: np.ndarray) -> Rule:
    ya, yb = y[:, ATTRIBUTE_INDEX[a]].astype(bool), y[:, ATTRIBUTE_INDEX[b]].astype(bool)
    violations = int((ya & yb).sum() if kind == "exclusion" else (ya & ~yb).sum())
    support = int(ya.sum())
    return Rule(kind, a, b, source, support, round(1 - violations / support, 6) if support else 1.0, violations)


def mine_rules(labels: np.ndarray, cfg: KnowledgeConfig) -> list[Rule]:
    """Given rules (with their violations) plus exclusions and implications that hold in the labels.

    A rule is mined when its forbidden cell (a and b for an exclusion, a and not b for a ⇒ b) has a
    share of at most 1 - min_confidence of the antecedent's faces, while independence would put at least
    `min_expected` faces there: an absence that chance cannot explain.
    """
    y = labels.astype(bool)
    n = len(y)
    rules = [_rule("exclusion", a, b, "given", y) for a, b in GIVEN_EXCLUSIONS]
    given = {frozenset((r.a, r.b)) for r in rules}
    if n == 0:
        return rules
    counts = y.sum(axis=0)
    both = cooccurrence(y)
    names = CELEBA_ATTRIBUTES
    for i, j in itertools.combinations(range(len(names)), 2):  # exclusions: symmetric
        if frozenset((names[i], names[j])) in given or min(counts[i], counts[j]) < cfg.min_support:
            continue
        expected = counts[i] * counts[j] / n
        if expected >= cfg.min_expected and both[i, j] <= (1 - cfg.min_confidence) * min(counts[i], counts[j]):
            rules.append(_rule("exclusion", names[i], names[j], "mined", y))
    for i, j in itertools.permutations(range(len(names)), 2):  # implications i => j
        if frozenset((names[i], names[j])) in given or counts[i] < cfg.min_support:
            continue
        broken = counts[i] - both[i, j]
        expected = counts[i] * (n - counts[j]) / n
        if expected >= cfg.min_expected and broken <= (1 - cfg.min_confidence) * counts[i]:
            rules.append(_rule("implication", names[i], names[j], "mined", y))
    return rules


def mine_knowledge(labels: np.ndarray, cfg: KnowledgeConfig) -> dict:
    """All of knowledge.json from a 0/1 (or -1/1) training label matrix."""
    y = (np.asarray(labels) > 0).astype(np.int64)
    m = cooccurrence(y)
    p = conditional_probabilities(m)
    graph = knowledge_graph(p, cfg.tau, cfg.omega)
    rules = mine_rules(y, cfg)
    return {
        "schema_version": SCHEMA_VERSION,
        "attributes": list(CELEBA_ATTRIBUTES),
        "n_train": int(len(y)),
        "counts": np.diag(m).tolist(),
        "cooccurrence": m.tolist(),
        "conditional": np.round(p, 6).tolist(),
        "graph": {"tau": cfg.tau, "omega": cfg.omega,
                  **{k: np.round(v, 6).tolist() for k, v in graph.items()}},
        "rules": [{"kind": r.kind, "a": r.a, "b": r.b, "source": r.source, "support": r.support,
                   "confidence": r.confidence, "violations": r.violations, "text": r.text()} for r in rules],
    }


def class_counts(records, attributes: np.ndarray) -> dict[str, list[int]]:
    """Train faces per class from manifest records (gender 0 male / 1 female, race 0..4, expression = RAF-DB
    label - 1) and the CelebA faces' 0/1 attribute matrix, whose Male gives their gender."""
    def count(values: list[int], n: int) -> list[int]:
        return np.bincount(np.asarray(values, dtype=np.int64), minlength=n)[:n].tolist()

    celeba_gender = [0 if m else 1 for m in np.asarray(attributes)[:, ATTRIBUTE_INDEX["Male"]] > 0]
    return {"gender": count([r.gender for r in records if r.gender is not None] + celeba_gender, len(UTK_GENDERS)),
            "race": count([r.race for r in records if r.race is not None], len(UTK_RACES)),
            "expression": count([r.expression - 1 for r in records if r.expression is not None], len(EXPRESSIONS))}


def knowledge_metrics(knowledge: dict, labels: np.ndarray) -> dict:
    y = np.asarray(labels) > 0
    rules = knowledge["rules"]
    broken_rows = np.zeros(len(y), dtype=bool)
    for r in rules:
        ya, yb = y[:, ATTRIBUTE_INDEX[r["a"]]], y[:, ATTRIBUTE_INDEX[r["b"]]]
        broken_rows |= (ya & yb) if r["kind"] == "exclusion" else (ya & ~yb)
    binary = np.asarray(knowledge["graph"]["binary"])
    n = binary.shape[0]
    return {
        "n_train": knowledge["n_train"],
        "graph_edges": int(binary.sum()),
        "graph_density": round(float(binary.sum() / (n * (n - 1))), 6),
        "rules_given": sum(r["source"] == "given" for r in rules),
        "rules_mined": sum(r["source"] == "mined" for r in rules),
        "rule_violations": sum(r["violations"] for r in rules),
        "faces_breaking_a_rule_share": round(float(broken_rows.mean()), 6) if len(y) else 0.0,
    }


def plot_conditional(p: np.ndarray, path, title: str = "p(column | row) in the training labels") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 10.5), dpi=90)
    im = ax.imshow(p, cmap="viridis", vmin=0, vmax=1)
    ticks = range(len(CELEBA_ATTRIBUTES))
    ax.set_xticks(ticks, CELEBA_ATTRIBUTES, rotation=90, fontsize=7)
    ax.set_yticks(ticks, CELEBA_ATTRIBUTES, fontsize=7)
    ax.set_xlabel("attribute j")
    ax.set_ylabel("given attribute i")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="p(j | i)")
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
