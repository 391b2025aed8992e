"""The paper's metrics, on label arrays. Unreadable answers are -1: wrong for every accuracy, and counted."""

from __future__ import annotations

from typing import Any

import numpy as np

from model.knowledge_modules import EXCLUSION, IMPLICATION
from model.labels import CELEBA_ATTRIBUTES
from pipelines.synthetic.latent import DRAWN_ATTRIBUTES

UNREAD = -1


def _f1(pred: np.ndarray, truth: np.ndarray, positive: int) -> float | None:
    tp = int(((pred == positive) & (truth == positive)).sum())
    fp = int(((pred == positive) & (truth != positive)).sum())
    fn = int(((pred != positive) & (truth == positive)).sum())
    return None if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def _mean(values: list[float | None]) -> float:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else 0.0


def attribute_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """pred, truth: (faces, 40); pred 0/1 or UNREAD. Per attribute: accuracy, balanced accuracy
    (mean of the recall on positives and on negatives, over the classes the test set has) and F1 of the
    positive class (undefined, and left out of the macro mean, when neither truth nor prediction has one)."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    per: dict[str, dict[str, float | None]] = {}
    for k, name in enumerate(CELEBA_ATTRIBUTES):
        p, t = pred[:, k], truth[:, k]
        recalls = [float((p[t == c] == c).mean()) for c in (0, 1) if (t == c).any()]
        per[name] = {"accuracy": float((p == t).mean()), "balanced_accuracy": _mean(recalls), "f1": _f1(p, t, 1),
                     "positives": int(t.sum())}
    return {"mean_accuracy": _mean([v["accuracy"] for v in per.values()]),
            "mean_balanced_accuracy": _mean([v["balanced_accuracy"] for v in per.values()]),
            # the synthetic data's latent attributes (Attractive) have no picture: the mean over the drawn ones
            "mean_balanced_accuracy_drawn": _mean([v["balanced_accuracy"] for k, v in per.items()
                                                   if k in DRAWN_ATTRIBUTES]),
            "macro_f1": _mean([v["f1"] for v in per.values()]),
            "unread": int((pred == UNREAD).sum()), "faces": len(pred), "per_attribute": per}


def _rule_hits(pred: np.ndarray, rules: np.ndarray) -> np.ndarray:
    """(rules, faces) bool: which faces break each rule (kind, a, b). An implication a -> b is broken by a and not b,
    an exclusion by a and b; a rule is judged only where both answers were read."""
    hits = []
    for kind, a, b in rules:
        pa, pb = pred[:, a], pred[:, b]
        if kind == IMPLICATION:
            hits.append((pa == 1) & (pb == 0))
        elif kind == EXCLUSION:
            hits.append((pa == 1) & (pb == 1))
        else:
            raise ValueError(f"unknown rule kind {kind}")
    return np.array(hits, dtype=bool).reshape(len(hits), len(pred))


def faces_breaking_a_rule(pred: np.ndarray, rules: np.ndarray) -> np.ndarray:
    """(faces,) bool: the faces whose predicted labels break at least one of `rules` (kind, a, b)."""
    return _rule_hits(np.asarray(pred), np.asarray(rules, dtype=int).reshape(-1, 3)).any(axis=0)


def rule_violations(pred: np.ndarray, rules: np.ndarray) -> dict[str, Any]:
    """Share of faces whose predicted labels break at least one rule (kind, a, b), and each rule's count."""
    pred, rules = np.asarray(pred), np.asarray(rules, dtype=int).reshape(-1, 3)
    hits = _rule_hits(pred, rules)  # each rule judged once: the share and the counts read the same hits
    per_rule = [{"kind": "implication" if kind == IMPLICATION else "exclusion", "a": CELEBA_ATTRIBUTES[a],
                 "b": CELEBA_ATTRIBUTES[b], "violations": int(hit.sum())}
                for (kind, a, b), hit in zip(rules, hits, strict=True)]
    return {"violation_rate": float(hits.any(axis=0).mean()) if len(pred) else 0.0, "rules": len(per_rule),
            "per_rule": per_rule}


def classification_metrics(pred: np.ndarray, truth: np.ndarray, names: tuple[str, ...] | list[str]
                           ) -> dict[str, Any]:
    """Accuracy (WAR), mean per-class recall over the classes the test set has (UAR), macro-F1 over the
    classes seen in truth or prediction, and the confusion matrix (rows truth; a last column of unread)."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    n = len(names)
    confusion = np.zeros((n, n + 1), dtype=int)
    for p, t in zip(pred, truth, strict=True):
        confusion[t, p if 0 <= p < n else n] += 1
    recalls = {names[c]: float(confusion[c, c] / confusion[c].sum()) for c in range(n) if confusion[c].sum()}
    return {"accuracy": float((pred == truth).mean()) if len(pred) else 0.0,
            "uar": _mean(list(recalls.values())),
            "macro_f1": _mean([_f1(pred, truth, c) for c in range(n)]),
            "per_class_recall": recalls, "unread": int((pred == UNREAD).sum()), "faces": len(pred),
            "confusion": {"labels": list(names), "matrix": confusion.tolist()}}


def age_metrics(pred: np.ndarray, truth: np.ndarray, groups: list) -> dict[str, Any]:
    """Age MAE over the answers that gave a number (how many did not is reported beside it), and
    age-group accuracy with an unread answer wrong. groups: templates' [first, last, name] rows."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    read = pred != UNREAD

    def group(age: int) -> int:
        return next((k for k, (lo, hi, _) in enumerate(groups) if lo <= age <= hi), UNREAD)

    pred_group = np.array([group(a) if r else UNREAD for a, r in zip(pred, read, strict=True)])
    true_group = np.array([group(a) for a in truth])
    return {"mae": float(np.abs(pred[read] - truth[read]).mean()) if read.any() else None,
            "age_group_accuracy": float((pred_group == true_group).mean()) if len(pred) else 0.0,
            "unread": int((~read).sum()), "faces": len(pred)}
