"""DVC stage `finetune`: LLaVA's stage 2. LoRA on the LLM plus the projectors, from align's
checkpoint; registers the result in MLflow's model registry (alias `candidate`).

    python -m stages.finetune [--params params.yaml]

Ray Train on the local Ray instance or the cluster RAY_ADDRESS names; MLflow run from rank 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.config import load_params
from pipelines.storage import write_json_atomic
from pipelines.tracking import tracking_uri
from pipelines.training.stage import print_summary, storage_path, train_stage
from stages.common import CorpusDir, KnowledgeFile, ParamsFile, Storage, TokenizerDir, run_cli, stage

app = typer.Typer(add_completion=False)


@app.command(help=__doc__)
@stage("finetune")
def main(
    params: ParamsFile = Path("params.yaml"),
    corpus: CorpusDir = Path("data/corpus"),
    tokenizer: TokenizerDir = Path("models/tokenizer"),
    knowledge: KnowledgeFile = Path("data/knowledge/knowledge.json"),
    init: Annotated[Path, typer.Option(help="align's output.")] = Path("models/align"),
    parser: Annotated[Path, typer.Option(help="train_parser's output (bundled with the registered model).")] = Path(
        "models/parser"),
    out: Annotated[Path, typer.Option(help="The fine-tuned model (DVC out).")] = Path("models/faceinsight"),
    metrics: Annotated[Path, typer.Option(help="Steps, losses (DVC metric).")] = Path("metrics/train_finetune.json"),
    history: Annotated[Path, typer.Option(help="Loss per step (DVC plot).")] = Path("plots/train/finetune.json"),
    registry: Annotated[Path, typer.Option(help="Registered version and URI (DVC out).")] = Path(
        "registry/faceinsight.json"),
    storage: Storage = "runs/ray",
) -> None:
    from pipelines.registry import register

    result = train_stage("finetune", load_params(params), corpus, tokenizer, knowledge, init, out, metrics,
                         history, storage_path(storage))
    entry = register(out, result["mlflow_run_id"], tracking_uri(), parser if parser.exists() else None)
    write_json_atomic(registry, entry)
    print_summary(result | {"registered": entry["version_uri"]})


if __name__ == "__main__":
    run_cli(app)
