"""report: reports/results.md (systems x tasks, the paper's claims checked) and the `champion` gate.

Reads every reports/eval/<task>.json. FaceInsight becomes `champion` in the MLflow registry when its
numbers clear `report.gate` in params.yaml, beat the majority class, and beat the current champion's
numbers (read from that version's run, where evaluate logged them); otherwise the report says why not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from model.labels import TASKS
from pipelines.evaluation.champion import judge_champion
from pipelines.evaluation.report import ReportConfig, corpus_summary, read_evals, results_markdown
from pipelines.storage import atomic_path, write_json_atomic
from pipelines.tracking import tracking_uri
from stages.common import ParamsFile, RegistryFile, run_cli, stage, stage_config

app = typer.Typer(add_completion=False)


@app.command(help=__doc__)
@stage("report")
def main(
    params: ParamsFile = Path("params.yaml"),
    evals: Annotated[Path, typer.Option(help="evaluate@<task>'s full results.")] = Path("reports/eval"),
    corpus_metrics: Annotated[Path, typer.Option(help="build_corpus' metrics.")] = Path("metrics/corpus.json"),
    registry: RegistryFile = Path("registry/faceinsight.json"),
    out: Annotated[Path, typer.Option(help="The results table.")] = Path("reports/results.md"),
    metrics: Annotated[Path, typer.Option(help="Gate outcome (DVC metric).")] = Path("metrics/report.json"),
) -> None:
    cfg, all_params = stage_config(ReportConfig, "report", params)
    results = read_evals(evals, TASKS)
    moved, reasons, entry = judge_champion(results, cfg, registry, tracking_uri())
    with atomic_path(out) as tmp:
        tmp.write_text(results_markdown(results, corpus_summary(corpus_metrics), int(all_params.get("seed", 0)),
                                        entry, (moved, reasons), moved))
    write_json_atomic(metrics, {"champion": moved, "version": entry and entry["version"], "reasons": reasons})
    print(out.read_text())


if __name__ == "__main__":
    run_cli(app)
