"""What the training stages share: params -> inputs -> training -> DVC outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from model.config import merge_overrides, model_config
from pipelines.config import build
from pipelines.storage import atomic_dir, write_json_atomic
from pipelines.training.corpus_data import knowledge_file
from pipelines.training.faceinsight_training import TrainConfig, TrainInputs, run_training
from pipelines.training.variants import ablation_budget, variant_config


def train_pass(stage: str, params: dict[str, Any], corpus: Path, tokenizer: Path, knowledge: Path,
               init_from: Path | None, out: Path, storage: str, section: str | None = None,
               overrides: dict[str, Any] | None = None, model_overrides: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    """`section` of params (default: the stage's name) with `overrides` on top, and the `model` section
    with `model_overrides` merged in, trains the model into `out`; the result holds the loss history."""
    section = section or stage
    cfg = build(TrainConfig, {**(params.get(section) or {}), **(overrides or {})}, section)
    model_params = merge_overrides(dict(params.get("model") or {}), model_overrides or {})
    resolved = model_config(model_params).to_dict()  # validated here, before Ray starts
    inputs = TrainInputs(corpus=corpus, tokenizer_dir=tokenizer, knowledge=knowledge_file(knowledge),
                         model=resolved, init_from=init_from)
    return run_training(stage, cfg, inputs, int(params.get("seed", 0)), out, storage)


def train_stage(stage: str, params: dict[str, Any], corpus: Path, tokenizer: Path, knowledge: Path,
                init_from: Path | None, out: Path, metrics: Path, history: Path, storage: str,
                section: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """One pass (train_pass), its metrics and its loss curve written as DVC outputs."""
    result = train_pass(stage, params, corpus, tokenizer, knowledge, init_from, out, storage, section, overrides)
    steps = result.pop("history")
    write_json_atomic(history, steps)
    write_json_atomic(metrics, result)
    return result


def train_variant(name: str, params: dict[str, Any], corpus: Path, tokenizer: Path, knowledge: Path, out: Path,
                  metrics: Path, history: Path, storage: str) -> dict[str, Any]:
    """A baseline or ablation (params.yaml `variants.<name>`): align then finetune as the main model does,
    with the variant's model overrides and record kinds, at the ablation budget's step counts where params.yaml
    gives one; `out`/align and `out`/model hold the checkpoints."""
    variant = variant_config(params, name)
    budget = ablation_budget(params)
    kinds = {"kinds": list(variant.kinds)} if variant.kinds else {}

    def change(section: str) -> dict[str, Any]:
        return {"model_overrides": variant.model, "overrides": {**budget[section], **kinds} or None}

    with atomic_dir(out) as tmp:  # both checkpoints or neither
        aligned = train_pass(f"variant-{name}-align", params, corpus, tokenizer, knowledge, None, tmp / "align",
                             storage, section="align", **change("align"))
        tuned = train_pass(f"variant-{name}-finetune", params, corpus, tokenizer, knowledge, tmp / "align",
                           tmp / "model", storage, section="finetune", **change("finetune"))
    # one curve across both passes, as for the main model's align + finetune
    offset = aligned["steps"]
    curve = [{**h, "pass": "align"} for h in aligned.pop("history")]
    curve += [{**h, "step": h["step"] + offset, "pass": "finetune"} for h in tuned.pop("history")]
    write_json_atomic(history, curve)
    result = {"variant": name, "label": variant.label, "model_overrides": variant.model, "kinds": list(variant.kinds),
              "ablation_budget": budget, "align": aligned, "finetune": tuned}
    write_json_atomic(metrics, result)
    return result


def storage_path(storage: str) -> str:
    """Ray Train's storage: an s3:// URL as is, a local path made absolute."""
    return storage if "://" in storage else str(Path(storage).resolve())


def print_summary(result: dict[str, Any]) -> None:
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict | list)}))
