"""Baselines and ablations that FaceInsight is compared with: the same two training passes (align, then
finetune) with one thing changed. params.yaml: `variants`, one entry per `train_variant@<name>` stage
(dvc.yaml iterates over the section, so a new entry is a new stage and a new row of the results table).

`ablation_budget` may give every variant's passes fewer steps than FaceInsight's own (the issue allows an ablation
table at a smaller budget only beside FaceInsight retrained at that budget): the variant named `reference`, with no
change, is that retrained FaceInsight, and the report judges the ablations against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.config import merge_overrides, model_config
from pipelines.config import build


@dataclass(frozen=True)
class VariantConfig:
    """One variant: its row label, overrides of params.yaml `model`, and the record kinds it trains on."""

    label: str
    model: dict[str, Any] = field(default_factory=dict)  # merged into `model`, e.g. {use_seg_map: false}
    kinds: tuple[str, ...] = ()  # both passes train on these record kinds only; empty: FaceInsight's (PHOTO_KINDS)

    def __post_init__(self) -> None:
        if not self.label.strip():
            raise ValueError("variants.<name>.label: give the results table's row name")


# the variant that changes nothing: FaceInsight retrained at the ablation budget, the row the ablations are judged by
REFERENCE = "reference"
# the passes a variant trains, and what of them the ablation budget may change: how long they train, not how
BUDGET_PASSES = ("align", "finetune")
BUDGET_KEYS = frozenset({"visual_steps", "max_steps", "warmup_steps", "checkpoint_every"})


def ablation_budget(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """params.yaml `ablation_budget`, validated: per pass (align, finetune), the step counts every variant's pass
    trains with instead of that section's own; empty where absent (the variants then train as FaceInsight did)."""
    raw = params.get("ablation_budget") or {}
    if not isinstance(raw, dict) or set(raw) - set(BUDGET_PASSES):
        raise ValueError(f"params.yaml ablation_budget: give step counts under {' / '.join(BUDGET_PASSES)}, "
                         f"got {raw!r}")
    out = {}
    for name in BUDGET_PASSES:
        section = raw.get(name) or {}
        if not isinstance(section, dict):
            raise ValueError(f"params.yaml ablation_budget.{name}: give step counts by name (e.g. max_steps: 300), "
                             f"got {section!r}")
        wrong = set(section) - BUDGET_KEYS
        if wrong:
            raise ValueError(f"params.yaml ablation_budget.{name}: {', '.join(sorted(wrong))} would change how the "
                             f"variants train, not how long; it may set {', '.join(sorted(BUDGET_KEYS))}")
        out[name] = dict(section)
    return out


def variant_configs(params: dict[str, Any]) -> dict[str, VariantConfig]:
    """params.yaml `variants`, validated: each model override makes a valid model."""
    out = {}
    for name, section in (params.get("variants") or {}).items():
        cfg = build(VariantConfig, section, f"variants.{name}")
        try:
            model_config(merge_overrides(dict(params.get("model") or {}), cfg.model))
        except ValueError as exc:
            raise ValueError(f"params.yaml variants.{name}.model: {exc}") from None
        out[name] = cfg  # its kinds are checked where the passes are built (TrainConfig)
    if out and any(ablation_budget(params).values()) and REFERENCE not in out:
        raise ValueError(f"params.yaml ablation_budget trains the variants for fewer steps than FaceInsight: keep the "
                         f"`{REFERENCE}` variant (FaceInsight retrained at that budget, the row they are judged "
                         f"against) in `variants`, or set `ablation_budget: {{}}`")
    return out


def variant_config(params: dict[str, Any], name: str) -> VariantConfig:
    variants = variant_configs(params)
    if name not in variants:
        raise ValueError(f"variant {name!r} is not in params.yaml `variants` ({', '.join(variants) or 'empty'})")
    return variants[name]


def trained_variants(params: dict[str, Any], folder: Path) -> dict[str, tuple[str, Path]]:
    """name -> (label, model folder) of every variant params.yaml lists; each must have been trained."""
    out = {}
    for name, variant in variant_configs(params).items():
        model_dir = folder / name / "model"
        if not model_dir.exists():
            raise FileNotFoundError(f"{model_dir}: variant {name!r} is not trained; run `dvc repro "
                                    f"train_variant@{name}` (or remove it from params.yaml `variants`)")
        out[name] = (variant.label, model_dir)
    return out
