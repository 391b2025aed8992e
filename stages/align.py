"""DVC stage `align`: LLaVA's stage 1. Projectors, map encoder and knowledge modules learn,
backbones stay frozen (the tiny preset, built from scratch, trains everything: recipe `full`).

    python -m stages.align [--params params.yaml]

Ray Train on the local Ray instance or the cluster RAY_ADDRESS names; MLflow run from rank 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.config import load_params
from pipelines.training.stage import print_summary, storage_path, train_stage
from stages.common import CorpusDir, KnowledgeFile, ParamsFile, Storage, TokenizerDir, run_cli, stage

app = typer.Typer(add_completion=False)


@app.command(help=__doc__)
@stage("align")
def main(
    params: ParamsFile = Path("params.yaml"),
    corpus: CorpusDir = Path("data/corpus"),
    tokenizer: TokenizerDir = Path("models/tokenizer"),
    knowledge: KnowledgeFile = Path("data/knowledge/knowledge.json"),
    out: Annotated[Path, typer.Option(help="The aligned model (DVC out).")] = Path("models/align"),
    metrics: Annotated[Path, typer.Option(help="Steps, losses (DVC metric).")] = Path("metrics/train_align.json"),
    history: Annotated[Path, typer.Option(help="Loss per step (DVC plot).")] = Path("plots/train/align.json"),
    storage: Storage = "runs/ray",
) -> None:
    result = train_stage("align", load_params(params), corpus, tokenizer, knowledge, None, out, metrics,
                         history, storage_path(storage))
    print_summary(result)


if __name__ == "__main__":
    run_cli(app)
