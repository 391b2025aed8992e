"""What the shared train loop asks of a model family: a Learner subclass per family."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from pipelines.config import build
from pipelines.training.loop import LoopConfig
from pipelines.training.schedule import Phase


class Learner:
    """Built on every worker from the loop config; `config["train"]` is the stage's params section. Its methods get
    `module`, the model's own nn.Module (parameters, saving, its own methods), and where they run the forward pass
    that trains, `wrapped`: the same module as DDP or a DeepSpeed engine sees it (gradients sync through it)."""

    config_class: ClassVar[type[LoopConfig]] = LoopConfig
    artifact_path: ClassVar[str] = "checkpoint"  # where the final weights go among the MLflow run's artifacts

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.cfg = build(self.config_class, config["train"], config["stage"])
        self.phase = "main"  # the loop sets the phase of the step being taken (phases())

    def phases(self, module: torch.nn.Module, steps: int) -> list[Phase]:
        """The run's phases, in order; `steps` is what max_steps / epochs give; one unless a learner adds some."""
        return [Phase("main", 0, steps)]

    def build(self) -> torch.nn.Module:
        """The model, fresh or from the run's starting point (before any resume)."""
        raise NotImplementedError

    def param_groups(self, module: torch.nn.Module) -> list[dict[str, Any]]:
        """[{"params": [...], "base_lr": float, "name": str}]: each group gets its own warm-up + cosine LR."""
        params = [p for p in module.parameters() if p.requires_grad]
        return [{"params": params, "base_lr": self.cfg.lr, "name": "main"}]

    def trainable(self, module: torch.nn.Module) -> dict[str, int]:
        return {"all": sum(p.numel() for p in module.parameters() if p.requires_grad)}

    def logged_params(self, module: torch.nn.Module) -> dict[str, Any]:
        """Beyond the stage's params section: what MLflow should record of the model."""
        return {}

    def loss(self, wrapped, module: torch.nn.Module, batch: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, float], int]:
        """(loss to backpropagate, named terms to log, tokens or samples counted for throughput)."""
        raise NotImplementedError

    def save(self, module: torch.nn.Module, path: Path, weights: dict[str, torch.Tensor] | None) -> None:
        """Write the model to `path`; `weights` (ZeRO-3's gathered state) replaces module's own where given."""
        raise NotImplementedError

    def load(self, module: torch.nn.Module, path: Path) -> None:
        raise NotImplementedError

    def evaluate(self, wrapped, module: torch.nn.Module, final: bool) -> dict[str, Any]:
        """At each checkpoint, on every rank: numbers join the step's metrics, the whole dict the trainer state."""
        return {}
