"""The specialist baseline: one small CNN with a head per label (40 attributes, age, gender, race, expression).

Trained on the same face images and labels as FaceInsight, for the same number of optimiser steps, with
no language model: what a task-specific network reaches, the bar an MLLM has to clear. Its age head is FaceInsight's:
one class a year (0 to 99+), soft ordinal targets, the median class decided.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from model.knowledge_modules import (
    AGE_SIGMA,
    AGE_WORDS,
    answer_value,
    attribute_pos_weight,
    balanced_thresholds,
    label_classes,
    median_class,
    ordinal_targets,
)
from model.labels import CELEBA_ATTRIBUTES, EXPRESSIONS, UTK_GENDERS, UTK_RACES
from model.small_checkpoint import WEIGHTS_FILE, read_small_config, save_small

# age: one class a year, as FaceInsight's answer head (an L1 regression on years / 116 stayed near the median age's
# error in the learnability runs: benchmarks/RESULTS.md, 2026-12-02)
HEADS = {"attributes": len(CELEBA_ATTRIBUTES), "age": len(AGE_WORDS), "gender": len(UTK_GENDERS),
         "race": len(UTK_RACES), "expression": len(EXPRESSIONS)}


@dataclass(frozen=True)
class SpecialistConfig:
    image_size: int = 64
    width: int = 32  # channels of the first stage; doubled at each of the 4 stages
    groups: int = 8
    # batch: BatchNorm (running statistics in eval); group: GroupNorm, `groups` groups. BatchNorm learned far faster
    # in the same 3 minutes (learnability.py, RESULTS.md 2026-12-05: drawn mean 0.72 -> 0.81, expression 0.74 -> 0.94)
    norm: str = "batch"

    def __post_init__(self) -> None:
        if self.width % self.groups or self.image_size % 16:
            raise ValueError("specialist: width must divide by groups and image_size by 16")
        if self.norm not in ("group", "batch"):
            raise ValueError(f"specialist: norm must be group or batch, got {self.norm!r}")

    def normalise(self, channels: int) -> nn.Module:
        return nn.GroupNorm(self.groups, channels) if self.norm == "group" else nn.BatchNorm2d(channels)


class SpecialistCNN(nn.Module):
    def __init__(self, cfg: SpecialistConfig):
        super().__init__()
        self.cfg = cfg
        layers, c_in = [], 3
        for k in range(4):
            c_out = cfg.width * 2 ** k
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), cfg.normalise(c_out),
                       nn.ReLU(inplace=True), nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                       cfg.normalise(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({name: nn.Linear(c_in, n) for name, n in HEADS.items()})
        # per-attribute decision threshold on the logit, chosen on val (fit_thresholds); saved with the weights
        self.register_buffer("attribute_threshold", torch.zeros(HEADS["attributes"]))
        # NHWC: the CPU's convolutions (oneDNN) run it faster, and a uint8 NHWC batch permuted is already laid out so
        self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (B, 3, H, W) in [0, 1] -> logits per head (age: one class a year, 0 to 99+)."""
        x = self.body(((images - 0.5) / 0.25).contiguous(memory_format=torch.channels_last)).mean(dim=(2, 3))
        return {name: head(x) for name, head in self.heads.items()}

    @staticmethod
    def balance_weights(labels: dict[str, torch.Tensor], max_weight: float = 20.0) -> dict[str, torch.Tensor]:
        """Loss weights from the train labels, so rare classes count as much as common ones: per attribute
        pos_weight = negatives / positives, per class of gender, race and expression n / (classes x count)."""
        attrs = labels["attributes"]
        attrs = attrs[attrs[:, 0] >= 0]
        weights = {"attributes": attribute_pos_weight(attrs.sum(0).tolist(), len(attrs), max_weight)}
        for name in ("gender", "race", "expression"):
            y = labels[name][labels[name] >= 0]
            counts = torch.bincount(y, minlength=HEADS[name]).float()
            weights[name] = torch.where(counts > 0, len(y) / (HEADS[name] * counts.clamp(min=1)),
                                        torch.ones_like(counts)).clamp(1 / max_weight, max_weight)
        return weights

    @staticmethod
    def losses(out: dict[str, torch.Tensor], labels: dict[str, torch.Tensor],
               weights: dict[str, torch.Tensor] | None = None, attribute_weight: float = 1.0
               ) -> tuple[torch.Tensor, dict[str, float]]:
        """The sum of each head's loss over the faces that have that label (-1: unknown); `weights`
        (balance_weights) re-weights rare positives and classes; `attribute_weight` multiplies the attribute BCE."""
        weights = weights or {}
        terms: dict[str, torch.Tensor] = {}
        attrs = labels["attributes"]
        if (attrs >= 0).any():
            rows = attrs[:, 0] >= 0
            pw = weights.get("attributes")
            terms["attributes"] = attribute_weight * F.binary_cross_entropy_with_logits(
                out["attributes"][rows], attrs[rows].float(), pos_weight=pw)
        age = label_classes("age", labels["age"])
        if (age >= 0).any():  # ordered classes: a neighbouring year is less wrong than a far one
            soft = ordinal_targets(age[age >= 0], HEADS["age"], AGE_SIGMA)
            terms["age"] = F.cross_entropy(out["age"][age >= 0].float(), soft)
        for name in ("gender", "race", "expression"):
            y = labels[name]
            if (y >= 0).any():
                terms[name] = F.cross_entropy(out[name][y >= 0], y[y >= 0], weight=weights.get(name))
        total = sum(terms.values()) if terms else out["age"].sum() * 0.0
        return total, {f"loss_{k}": v.item() for k, v in terms.items()}

    def _on_uint8(self, images: np.ndarray) -> dict[str, torch.Tensor]:
        """The logits of uint8 (B, H, W, 3) images."""
        return self(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0)

    @torch.inference_mode()
    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 (B, H, W, 3) -> attributes 0/1 (B, 40), age in years, class indices."""
        self.eval()
        out = self._on_uint8(images)
        return {"attributes": (out["attributes"] > self.attribute_threshold).int().numpy(),
                "age": answer_value("age", median_class(out["age"]).numpy()),
                **{n: out[n].argmax(1).numpy() for n in ("gender", "race", "expression")}}

    @torch.inference_mode()
    def fit_thresholds(self, images: np.ndarray, attributes: np.ndarray, min_count: int = 5) -> np.ndarray:
        """Per attribute, the logit threshold that maximises balanced accuracy on these (val) faces; 0 where
        val has fewer than `min_count` positives or negatives (too few to choose from). Returns them."""
        self.eval()
        known = attributes[:, 0] >= 0
        images, truth = images[known], attributes[known]
        logits = np.concatenate([self._on_uint8(images[k:k + 256])["attributes"].numpy()
                                 for k in range(0, len(images), 256)])
        out = balanced_thresholds(logits, truth, min_count)
        self.attribute_threshold.copy_(torch.from_numpy(out))
        return out


def save_specialist(model: SpecialistCNN, path: str | Path, state_dict: dict | None = None) -> None:
    save_small(path, "specialist_cnn", model.cfg, state_dict if state_dict is not None else model.state_dict())


def load_specialist(path: str | Path) -> SpecialistCNN:
    raw = {k: v for k, v in read_small_config(path, "train_specialist").items() if k != "model_type"}
    raw.setdefault("norm", "group")  # written before the config named it: GroupNorm was the only one
    model = SpecialistCNN(SpecialistConfig(**raw))
    model.load_state_dict(load_file(str(Path(path) / WEIGHTS_FILE)))
    model.eval()
    return model
