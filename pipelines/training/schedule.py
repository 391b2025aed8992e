"""The learning-rate schedule every trainer here uses (the parser's, align's and finetune's)."""

from __future__ import annotations

import math
from dataclasses import dataclass


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up, then cosine decay to 5% of the base rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@dataclass(frozen=True)
class Phase:
    """A run's stretch of optimiser steps [start, start + steps) with its own warm-up + cosine and loss."""

    name: str
    start: int
    steps: int

    @property
    def end(self) -> int:
        return self.start + self.steps

    def lr(self, step: int, warmup: int, base: float) -> float:
        """The LR of run step `step` (0-based): this phase's own warm-up and cosine, counted from its start."""
        return lr_at(step - self.start, self.steps, warmup, base)


def phase_at(phases: list[Phase], step: int) -> Phase:
    """The phase that optimiser step `step` (0-based) belongs to; past the end, the last."""
    return next((p for p in phases if p.start <= step < p.end), phases[-1])
