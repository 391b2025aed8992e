"""DVC stage `finetune_task@<task>`: the paper's fine-tuned setting. A further short LoRA pass of the
registered model on one task's own train split (attributes, age_gender_race or expression), through the
same trainer; `evaluate@<task>` reports it beside the training-free model.

    python -m stages.finetune_task --task expression [--params params.yaml]

Ray Train on the local Ray instance or the cluster RAY_ADDRESS names; MLflow run from rank 0. The result
is an output of the pipeline, not a registry version: `champion` is judged on the multi-task model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from model.labels import TASKS
from pipelines.config import load_params
from pipelines.training.stage import print_summary, storage_path, train_stage
from stages.common import CorpusDir, KnowledgeFile, ParamsFile, Storage, TokenizerDir, run_cli, stage

app = typer.Typer(add_completion=False)


@app.command(help=__doc__)
@stage("finetune_task@{task}")
def main(
    task: Annotated[str, typer.Option(help=f"One of {', '.join(TASKS)}.")],
    params: ParamsFile = Path("params.yaml"),
    corpus: CorpusDir = Path("data/corpus"),
    tokenizer: TokenizerDir = Path("models/tokenizer"),
    knowledge: KnowledgeFile = Path("data/knowledge/knowledge.json"),
    init: Annotated[Path, typer.Option(help="finetune's output (the multi-task model).")] = Path("models/faceinsight"),
    out: Annotated[Path, typer.Option(help="Default models/finetune_task/<task> (DVC out).")] = None,
    metrics: Annotated[Path, typer.Option(help="Default metrics/train_finetune_task/<task>.json.")] = None,
    history: Annotated[Path, typer.Option(help="Default plots/train/finetune_task_<task>.json.")] = None,
    storage: Storage = "runs/ray",
) -> None:
    if task not in TASKS:
        raise ValueError(f"--task {task!r}: use one of {', '.join(TASKS)}")
    result = train_stage(
        f"finetune_task-{task}", load_params(params), corpus, tokenizer, knowledge, init,
        out or Path("models/finetune_task") / task, metrics or Path("metrics/train_finetune_task") / f"{task}.json",
        history or Path("plots/train") / f"finetune_task_{task}.json", storage_path(storage),
        section="finetune_task", overrides={"tasks": [task]})
    print_summary(result)


if __name__ == "__main__":
    run_cli(app)
