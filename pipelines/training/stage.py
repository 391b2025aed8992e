"""What the `align` and `finetune` stages share: params -> inputs -> training -> DVC outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.config import build
from pipelines.storage import write_json_atomic
from pipelines.training.corpus_data import knowledge_file
from pipelines.training.faceinsight_task import TrainConfig, TrainInputs, run_training


def train_stage(stage: str, params: dict[str, Any], corpus: Path, tokenizer: Path, knowledge: Path,
                init_from: Path | None, out: Path, metrics: Path, history: Path, storage: str,
                section: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """`section` of params (default: the stage's name), with `overrides` on top, trains the model."""
    from model.config import model_config

    section = section or stage
    cfg = build(TrainConfig, {**(params.get(section) or {}), **(overrides or {})}, section)
    model_params = dict(params.get("model") or {})
    resolved = model_config(model_params).to_dict()  # validated here, before Ray starts
    inputs = TrainInputs(corpus=corpus, tokenizer_dir=tokenizer, knowledge=knowledge_file(knowledge),
                         model=resolved, init_from=init_from)
    result = run_training(stage, cfg, inputs, int(params.get("seed", 0)), out, storage)
    steps = result.pop("history")
    write_json_atomic(history, steps)
    write_json_atomic(metrics, result)
    return result


def storage_path(storage: str) -> str:
    """Ray Train's storage: an s3:// URL as is, a local path made absolute."""
    return storage if "://" in storage else str(Path(storage).resolve())


def print_summary(result: dict[str, Any]) -> None:
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict | list)}))
