"""Checkpoints of the small single-file models (face parser, specialist CNN): safetensors + a JSON config."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def save_small(path: str | Path, model_type: str, cfg: Any, weights: dict[str, torch.Tensor]) -> None:
    """No pickle: the weights as safetensors, the dataclass config as JSON tagged with `model_type`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path / WEIGHTS_FILE))
    (path / CONFIG_FILE).write_text(json.dumps({"model_type": model_type, **asdict(cfg)}, indent=2) + "\n")


def read_small_config(path: str | Path, stage: str) -> dict[str, Any]:
    """The config mapping (without `model_type`); a clear error naming the stage that makes it when absent."""
    path = Path(path)
    if not (path / WEIGHTS_FILE).exists():
        raise FileNotFoundError(f"{path}: no {WEIGHTS_FILE}; train one with `dvc repro {stage}`")
    return json.loads((path / CONFIG_FILE).read_text())
