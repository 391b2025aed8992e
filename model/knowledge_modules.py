"""Facial-knowledge alignment: the co-occurrence graph network (ML-GCN) and the logical-constraint loss.

Inputs come from `knowledge.json` (pipelines/knowledge.py): the normalised graph D^-1/2 A' D^-1/2
and the rule list. Both become buffers, so a checkpoint carries the knowledge it was trained with.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from model.labels import CELEBA_ATTRIBUTES

EXCLUSION, IMPLICATION = 0, 1


class CooccurrenceGraph(nn.Module):
    """Two graph-convolution layers turn attribute text embeddings into one classifier per attribute.

    H1 = LeakyReLU(A E W1), C = A H1 W2, logits = v C^T for a pooled visual feature v (ML-GCN).
    """

    def __init__(self, adjacency: torch.Tensor, text_dim: int, hidden: int, visual_dim: int):
        super().__init__()
        self.register_buffer("adjacency", adjacency.float().clone())
        self.w1 = nn.Linear(text_dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, visual_dim, bias=False)

    def classifiers(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        """(N, text_dim) -> (N, visual_dim)."""
        text_embeddings = text_embeddings.to(self.w1.weight.dtype)
        a = self.adjacency.to(text_embeddings.dtype)
        h = F.leaky_relu(a @ self.w1(text_embeddings), 0.2)
        return a @ self.w2(h)

    def forward(self, text_embeddings: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """(N, text_dim), (B, visual_dim) -> logits (B, N)."""
        return visual @ self.classifiers(text_embeddings).to(visual.dtype).T


def rules_tensor(rules: list[dict[str, Any]]) -> torch.Tensor:
    """knowledge.json rules -> (R, 3) long tensor of (kind, a, b)."""
    index = {name: i for i, name in enumerate(CELEBA_ATTRIBUTES)}
    rows = [(EXCLUSION if r["kind"] == "exclusion" else IMPLICATION, index[r["a"]], index[r["b"]]) for r in rules]
    return torch.tensor(rows, dtype=torch.long).reshape(-1, 3)


def constraint_loss(probs: torch.Tensor, rules: torch.Tensor) -> torch.Tensor:
    """Mean over faces and rules of p_a * p_b (exclusions) and p_a * (1 - p_b) (implications).

    Zero exactly when the predictions obey every rule with hard 0/1 probabilities; its gradient
    lowers p_a and p_b for a violated exclusion, lowers p_a and raises p_b for a violated implication.
    """
    if rules.numel() == 0:
        return probs.sum() * 0.0
    kind, a, b = rules[:, 0], rules[:, 1], rules[:, 2]
    pa, pb = probs[:, a], probs[:, b]
    penalty = torch.where(kind == EXCLUSION, pa * pb, pa * (1 - pb))
    return penalty.mean()


def masked_bce(logits: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-label BCE over faces that have attribute labels (rows of -1 are faces without them); `pos_weight`
    (per attribute, negatives / positives) makes a rare attribute's positives count as much as its negatives."""
    known = labels >= 0
    if not known.any():
        return logits.sum() * 0.0
    per = F.binary_cross_entropy_with_logits(logits, labels.clamp(min=0).to(logits.dtype), reduction="none",
                                             pos_weight=None if pos_weight is None else pos_weight.to(logits.dtype))
    return (per * known).sum() / known.sum()


def attribute_pos_weight(counts: list[int] | None, n_train: int | None, max_weight: float = 20.0) -> torch.Tensor:
    """negatives / positives per attribute from knowledge.json's label counts (1 where unknown), clipped."""
    if counts is None or not n_train:
        return torch.ones(len(CELEBA_ATTRIBUTES))
    pos = torch.tensor(counts, dtype=torch.float32)
    weight = torch.where(pos > 0, (n_train - pos) / pos.clamp(min=1), torch.ones_like(pos))
    return weight.clamp(1 / max_weight, max_weight)
