"""DVC stage `ingest`: render the synthetic datasets (or locate the real ones), validate, write the manifest.

    python -m stages.ingest [--params params.yaml]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipelines.ingest import IngestConfig, IngestPaths, run_ingest
from stages.common import ParamsFile, run_cli, stage, stage_config

app = typer.Typer(add_completion=False)
DEFAULT = IngestPaths()


@app.command(help=__doc__)
@stage("ingest")
def main(
    params: ParamsFile = Path("params.yaml"),
    raw: Annotated[Path, typer.Option(help="Where synthetic data is rendered (DVC out).")] = DEFAULT.raw,
    manifest: Annotated[Path, typer.Option(help="Manifest + quarantine tables (DVC out).")] = DEFAULT.manifest,
    metrics: Annotated[Path, typer.Option(help="Counts per dataset, split and reason (DVC metric).")] = DEFAULT.metrics,
    contact_sheet: Annotated[Path, typer.Option(help="Faces beside parsing maps (DVC plot).")] = DEFAULT.contact_sheet,
) -> None:
    cfg, all_params = stage_config(IngestConfig, "ingest", params)
    result = run_ingest(cfg, int(all_params.get("seed", 0)), IngestPaths(raw, manifest, metrics, contact_sheet))
    print(json.dumps(result["total"]), "->", manifest)


if __name__ == "__main__":
    run_cli(app)
