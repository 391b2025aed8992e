"""DVC stage `mine_knowledge`: attribute co-occurrence, the ML-GCN graph and logical rules from train labels.

    python -m stages.mine_knowledge [--params params.yaml]

Only the train splits are read (CelebAMask-HQ's attributes; UTKFace's and RAF-DB's classes for the answer heads'
weights): val and test labels never shape the knowledge.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from pipelines.datasets.common import read_manifest
from pipelines.knowledge import KnowledgeConfig, class_counts, knowledge_metrics, mine_knowledge, plot_conditional
from pipelines.storage import atomic_path, write_json_atomic
from stages.common import ParamsFile, run_cli, stage, stage_config

app = typer.Typer(add_completion=False)


@app.command(help=__doc__)
@stage("mine_knowledge")
def main(
    params: ParamsFile = Path("params.yaml"),
    manifest: Annotated[Path, typer.Option(help="The ingest manifest.")] = Path("data/manifest/manifest.parquet"),
    out: Annotated[Path, typer.Option(help="knowledge.json (DVC out).")] = Path("data/knowledge/knowledge.json"),
    metrics: Annotated[Path, typer.Option(help="Graph and rule counts (DVC metric).")] = Path(
        "metrics/knowledge.json"),
    heatmap: Annotated[Path, typer.Option(help="p(j|i) heat map (DVC plot).")] = Path(
        "plots/knowledge/conditional.png"),
) -> None:
    cfg, _ = stage_config(KnowledgeConfig, "mine_knowledge", params)
    records = [r for r in read_manifest(manifest) if r.split == "train"]
    train = [r for r in records if r.dataset == "celebamask_hq"]
    if not train:
        raise ValueError(f"{manifest}: no CelebAMask-HQ train records; run `dvc repro ingest` first")
    labels = np.array([r.attributes for r in train]) > 0
    knowledge = mine_knowledge(labels, cfg) | {"class_counts": class_counts(records, labels)}
    write_json_atomic(out, knowledge)
    summary = knowledge_metrics(knowledge, labels)
    write_json_atomic(metrics, summary)
    with atomic_path(heatmap) as tmp:
        plot_conditional(np.asarray(knowledge["conditional"]), tmp)
    print(json.dumps(summary))


if __name__ == "__main__":
    run_cli(app)
