"""DVC stage `train_parser`: a face parser for the images that have no masks (Ray Train), with mIoU / F1.

    python -m stages.train_parser [--params params.yaml]

Trains on the CelebAMask-HQ train split, reports val and test scores; the model lands in models/parser.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipelines.datasets.common import read_manifest
from pipelines.parser_training import ParserTrainConfig, train_parser
from pipelines.storage import write_json_atomic
from stages.common import ParamsFile, Storage, run_cli, stage, stage_config

app = typer.Typer(add_completion=False)


@app.command(help=__doc__)
@stage("train_parser")
def main(
    params: ParamsFile = Path("params.yaml"),
    manifest: Annotated[Path, typer.Option(help="The ingest manifest.")] = Path("data/manifest/manifest.parquet"),
    out: Annotated[Path, typer.Option(help="Parser weights + config (DVC out).")] = Path("models/parser"),
    metrics: Annotated[Path, typer.Option(help="mIoU and per-class F1 (DVC metric).")] = Path("metrics/parser.json"),
    storage: Storage = "runs/ray",
) -> None:
    cfg, all_params = stage_config(ParserTrainConfig, "train_parser", params)
    result = train_parser(read_manifest(manifest), cfg, int(all_params.get("seed", 0)), out, storage)
    write_json_atomic(metrics, result)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}))


if __name__ == "__main__":
    run_cli(app)
