"""The specialist baseline: one small CNN with a head per label (40 attributes, age, gender, race, expression).

Trained on the same face images and labels as FaceInsight, for the same number of optimiser steps, with
no language model: what a task-specific network reaches, the bar an MLLM has to clear.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from model.labels import CELEBA_ATTRIBUTES, EXPRESSIONS, UTK_GENDERS, UTK_MAX_AGE, UTK_RACES
from model.small_checkpoint import WEIGHTS_FILE, read_small_config, save_small

HEADS = {"attributes": len(CELEBA_ATTRIBUTES), "age": 1, "gender": len(UTK_GENDERS), "race": len(UTK_RACES),
         "expression": len(EXPRESSIONS)}


@dataclass(frozen=True)
class SpecialistConfig:
    image_size: int = 64
    width: int = 32  # channels of the first stage; doubled at each of the 4 stages
    groups: int = 8

    def __post_init__(self) -> None:
        if self.width % self.groups or self.image_size % 16:
            raise ValueError("specialist: width must divide by groups and image_size by 16")


class SpecialistCNN(nn.Module):
    def __init__(self, cfg: SpecialistConfig):
        super().__init__()
        self.cfg = cfg
        layers, c_in = [], 3
        for k in range(4):
            c_out = cfg.width * 2 ** k
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.GroupNorm(cfg.groups, c_out),
                       nn.ReLU(inplace=True), nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                       nn.GroupNorm(cfg.groups, c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({name: nn.Linear(c_in, n) for name, n in HEADS.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (B, 3, H, W) in [0, 1] -> logits per head (age: years / UTK_MAX_AGE)."""
        x = self.body((images - 0.5) / 0.25).mean(dim=(2, 3))
        return {name: head(x) for name, head in self.heads.items()}

    @staticmethod
    def losses(out: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """The sum of each head's loss over the faces that have that label (-1: unknown)."""
        terms: dict[str, torch.Tensor] = {}
        attrs = labels["attributes"]
        if (attrs >= 0).any():
            known = attrs >= 0
            terms["attributes"] = F.binary_cross_entropy_with_logits(out["attributes"][known], attrs[known].float())
        age = labels["age"]
        if (age >= 0).any():
            terms["age"] = F.l1_loss(out["age"][age >= 0, 0], age[age >= 0].float() / UTK_MAX_AGE)
        for name in ("gender", "race", "expression"):
            y = labels[name]
            if (y >= 0).any():
                terms[name] = F.cross_entropy(out[name][y >= 0], y[y >= 0])
        total = sum(terms.values()) if terms else out["age"].sum() * 0.0
        return total, {f"loss_{k}": v.item() for k, v in terms.items()}

    @torch.inference_mode()
    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 (B, H, W, 3) -> attributes 0/1 (B, 40), age in years, class indices."""
        self.eval()
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
        out = self(x)
        return {"attributes": (out["attributes"] > 0).int().numpy(),
                "age": (out["age"][:, 0] * UTK_MAX_AGE).round().clamp(0, UTK_MAX_AGE).int().numpy(),
                **{n: out[n].argmax(1).numpy() for n in ("gender", "race", "expression")}}


def save_specialist(model: SpecialistCNN, path: str | Path, state_dict: dict | None = None) -> None:
    save_small(path, "specialist_cnn", model.cfg, state_dict if state_dict is not None else model.state_dict())


def load_specialist(path: str | Path) -> SpecialistCNN:
    raw = {k: v for k, v in read_small_config(path, "train_specialist").items() if k != "model_type"}
    model = SpecialistCNN(SpecialistConfig(**raw))
    model.load_state_dict(load_file(str(Path(path) / WEIGHTS_FILE)))
    model.eval()
    return model
