"""Save / load FaceInsight: config + tokenizer + the trained parts as safetensors (never pickle).

What is saved: every component built from our own config (the `tiny` backbones), every component
the recipe trained, the LoRA adapter of a pretrained LLM, and the knowledge buffers. A pretrained,
frozen backbone is referenced by the path in config.json, not copied, so a checkpoint of a 7B run
holds megabytes, not gigabytes.

`Checkpointable` is mixed into FaceInsight (as transformers' PreTrainedModel is a base of its models): the
model saves and loads itself, and this module needs no import of the model's.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from model.config import FaceInsightConfig, Recipe
from model.knowledge_modules import EXCLUSION
from model.labels import CELEBA_ATTRIBUTES
from model.tokenizer import load_tokenizer

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
META_FILE = "faceinsight.json"
PREFIXES = {"vision.": "vision", "image_projector.": "projector", "seg_projector.": "projector",
            "seg_encoder.": "seg_encoder", "llm.": "llm", "cooccurrence.": "knowledge",
            "knowledge_tokens.": "knowledge", "knowledge_embedding.": "knowledge", "answer_embedding.": "knowledge"}


def component_of(key: str) -> str:
    return next((c for p, c in PREFIXES.items() if key.startswith(p)), "buffers")


def saved(model, key: str, recipe: Recipe) -> bool:
    component = component_of(key)
    if component == "vision":
        return model.cfg.vision.kind == "tiny" or recipe.vision == "full"
    if component == "llm":
        if model.cfg.llm.kind == "tiny" or recipe.llm == "full":
            return True
        return recipe.llm == "lora" and "lora_" in key
    return True


def save_pretrained(model, path: str | Path, recipe: Recipe,
                    state_dict: dict[str, torch.Tensor] | None = None) -> list[str]:
    """Write the checkpoint; returns the saved tensor names. `state_dict`: weights gathered elsewhere
    (ZeRO-3 partitions parameters, so the trainer passes the consolidated ones)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors, aliases, seen = {}, {}, {}
    for key, value in (state_dict if state_dict is not None else model.state_dict()).items():
        if not saved(model, key, recipe):
            continue
        ptr = (value.data_ptr(), value.shape, value.dtype)
        if value.numel() and ptr in seen:  # tied weights (tied embeddings, a shared projector): stored once
            aliases[key] = seen[ptr]
            continue
        seen[ptr] = key
        tensors[key] = value.detach().contiguous().cpu()
    save_file(tensors, str(path / WEIGHTS_FILE))
    model.cfg.save(path / CONFIG_FILE)
    model.tokenizer.save_pretrained(str(path))
    meta = {"format": "faceinsight", "version": 1, "recipe": asdict(recipe), "lora": model.lora_applied,
            "aliases": aliases, "referenced": {"vision": model.cfg.vision.path, "llm": model.cfg.llm.path}}
    (path / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return sorted(tensors)


def update_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """Replace or add these tensors in a saved checkpoint's weights (a value chosen after training, e.g. the attribute
    thresholds fitted on val)."""
    weights = load_file(str(Path(path) / WEIGHTS_FILE))
    weights.update({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    save_file(weights, str(Path(path) / WEIGHTS_FILE))


def knowledge_from_weights(weights: dict[str, torch.Tensor]) -> dict[str, Any] | None:
    """The knowledge buffers a checkpoint carries, in knowledge.json's shape (graph and rules)."""
    if "cooccurrence.adjacency" not in weights:
        return None
    rules = [{"kind": "exclusion" if int(k) == EXCLUSION else "implication", "a": CELEBA_ATTRIBUTES[int(a)],
              "b": CELEBA_ATTRIBUTES[int(b)]} for k, a, b in weights.get("rules", torch.zeros(0, 3)).tolist()]
    return {"graph": {"normalized": weights["cooccurrence.adjacency"].tolist()}, "rules": rules}


# buffers a checkpoint saved before they existed lacks; their initial value is what such a model decided with
# (attribute_threshold 0: present where p > 0.5)
ADDED_LATER = frozenset({"attribute_threshold"})


def from_pretrained(cls, path: str | Path):
    """Rebuild the model (of class `cls`) a checkpoint describes; outputs equal the saved model's."""
    path = Path(path)
    if not (path / WEIGHTS_FILE).exists():
        raise FileNotFoundError(f"{path}: no {WEIGHTS_FILE}; not a FaceInsight checkpoint")
    meta = json.loads((path / META_FILE).read_text())
    cfg = FaceInsightConfig.load(path / CONFIG_FILE)
    weights = load_file(str(path / WEIGHTS_FILE))
    model = cls(cfg, load_tokenizer(path), knowledge_from_weights(weights))
    if meta["lora"]:
        model.add_lora()
    missing, unexpected = model.load_state_dict(weights, strict=False)
    recipe = Recipe(**meta["recipe"])
    absent = [k for k in missing if k not in meta["aliases"] and k not in ADDED_LATER and saved(model, k, recipe)]
    if absent or unexpected:
        raise ValueError(f"{path}: checkpoint does not match its config: missing {absent[:5]}, "
                         f"unexpected {unexpected[:5]}")
    model.apply_recipe(recipe)  # trainable flags as when saved, so training can resume from here
    model.eval()
    return model


class Checkpointable:
    """`Model.from_pretrained(path)` and `model.save_pretrained(path, recipe)` for a class built as
    `cls(config, tokenizer, knowledge)` with `add_lora` and `apply_recipe`."""

    @classmethod
    def from_pretrained(cls, path: str | Path):
        return from_pretrained(cls, path)

    def save_pretrained(self, path: str | Path, recipe: Recipe,
                        state_dict: dict[str, torch.Tensor] | None = None) -> list[str]:
        return save_pretrained(self, path, recipe, state_dict)
