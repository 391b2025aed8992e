"""DVC stage `build_corpus`: the instruction corpus as Parquet shards, built with Ray Data.

    python -m stages.build_corpus [--params params.yaml]

Reads the manifest, composes or predicts (face parser) each face's 19-class map, writes LLaVA-style
QA records from pipelines/corpus/templates.yaml per split under data/corpus/, with the quarantine
table beside them. Runs on the local Ray instance, or on the cluster RAY_ADDRESS names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import pyarrow.parquet as pq
import typer

from pipelines.corpus.build import CorpusConfig, build_corpus
from pipelines.corpus.templates import TEMPLATES_FILE, Templates
from pipelines.datasets.common import read_manifest
from pipelines.ray_runtime import init_ray
from pipelines.storage import write_json_atomic
from stages.common import KnowledgeFile, ParamsFile, run_cli, stage, stage_config

app = typer.Typer(add_completion=False)


@app.command(help=__doc__)
@stage("build_corpus")
def main(
    params: ParamsFile = Path("params.yaml"),
    manifest: Annotated[Path, typer.Option(help="The ingest output folder.")] = Path("data/manifest"),
    knowledge: KnowledgeFile = Path("data/knowledge/knowledge.json"),
    parser: Annotated[Path, typer.Option(help="train_parser's model folder.")] = Path("models/parser"),
    templates: Annotated[Path, typer.Option(help="The QA templates.")] = TEMPLATES_FILE,
    out: Annotated[Path, typer.Option(help="Corpus shards + quarantine (DVC out).")] = Path("data/corpus"),
    metrics: Annotated[Path, typer.Option(help="Counts, parity, throughput (DVC metric).")] = Path(
        "metrics/corpus.json"),
) -> None:
    cfg, all_params = stage_config(CorpusConfig, "build_corpus", params)
    if not knowledge.exists():
        raise FileNotFoundError(f"{knowledge}: not found; run `dvc repro mine_knowledge` first")
    facts = json.loads(knowledge.read_text())
    init_ray(dashboard=cfg.dashboard)
    records = read_manifest(manifest / "manifest.parquet")
    ingest_quarantine = pq.read_table(manifest / "quarantine.parquet")
    result = build_corpus(records, ingest_quarantine, facts, parser, cfg, int(all_params.get("seed", 0)), out,
                          Templates.load(templates, knowledge=facts))
    write_json_atomic(metrics, result)
    print(json.dumps({"records_total": result["records_total"], "throughput": result["throughput"],
                      "parser_parity_miou": {s: v["miou"] for s, v in result["parser_parity"].items()}}))


if __name__ == "__main__":
    run_cli(app)
