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


def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-label BCE over faces that have attribute labels (rows of -1 are faces without them)."""
    known = labels >= 0
    if not known.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[known], labels[known].to(logits.dtype))
