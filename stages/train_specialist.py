"""train_specialist: the specialist CNN baseline (one small CNN, a head per label) on the corpus' train faces.

Same images and labels as FaceInsight and, by default, the same optimiser steps and batch as align +
finetune together; trained through the shared Ray Train loop, logged to MLflow like the other stages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipelines.specialist_training import SpecialistTrainConfig, train_specialist
from pipelines.storage import write_json_atomic
from pipelines.training.stage import storage_path
from stages.common import CorpusDir, ParamsFile, Storage, run_cli, stage, stage_config

app = typer.Typer(add_completion=False)


@app.command(help=__doc__)
@stage("train_specialist")
def main(
    params: ParamsFile = Path("params.yaml"),
    corpus: CorpusDir = Path("data/corpus"),
    out: Annotated[Path, typer.Option(help="Weights + config (DVC out).")] = Path("models/specialist"),
    metrics: Annotated[Path, typer.Option(help="Training summary (DVC metric).")] = Path(
        "metrics/train_specialist.json"),
    storage: Storage = "runs/ray",
) -> None:
    cfg, all_params = stage_config(SpecialistTrainConfig, "train_specialist", params)
    result = train_specialist(corpus, cfg, int(all_params.get("seed", 0)), out, storage_path(storage))
    write_json_atomic(metrics, result)
    print(json.dumps(result))


if __name__ == "__main__":
    run_cli(app)
