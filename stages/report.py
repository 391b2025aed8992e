"""report: reports/results.md (systems x tasks, the paper's claims checked) and the `champion` gate.

Reads every reports/eval/<task>.json. FaceInsight becomes `champion` in the MLflow registry when its
numbers clear `report.gate` in params.yaml, beat the majority class, and beat the current champion's
numbers (read from that version's run, where evaluate logged them); otherwise the report says why not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipelines.evaluation.evaluate import TASKS
from pipelines.evaluation.report import ReportConfig, gate, results_markdown
from pipelines.storage import atomic_path, write_json_atomic
from pipelines.tracking import tracking_uri
from stages.common import run_stage, stage_config

app = typer.Typer(add_completion=False)


@app.command(help=__doc__)
def main(
    params: Annotated[Path, typer.Option(help="The params file (section `report`).")] = Path("params.yaml"),
    evals: Annotated[Path, typer.Option(help="evaluate@<task>'s full results.")] = Path("reports/eval"),
    corpus_metrics: Annotated[Path, typer.Option(help="build_corpus' metrics.")] = Path("metrics/corpus.json"),
    registry: Annotated[Path, typer.Option(help="The registered version (finetune).")] = Path(
        "registry/faceinsight.json"),
    out: Annotated[Path, typer.Option(help="The results table.")] = Path("reports/results.md"),
    metrics: Annotated[Path, typer.Option(help="Gate outcome (DVC metric).")] = Path("metrics/report.json"),
) -> None:
    def body() -> None:
        cfg, all_params = stage_config(ReportConfig, "report", params)
        results = {}
        for task in TASKS:
            path = evals / f"{task}.json"
            if not path.exists():
                raise FileNotFoundError(f"{path}: missing; run `dvc repro evaluate@{task}`")
            results[task] = json.loads(path.read_text())
        entry = json.loads(registry.read_text()) if registry.exists() else None
        champion, moved, client = None, False, None
        if entry is not None:
            from mlflow import MlflowClient

            from pipelines.registry import alias_metrics

            client = MlflowClient(tracking_uri())
            champion = alias_metrics(client, "champion")
            if champion and champion.pop("_version") == entry["version"]:
                champion = None  # this version already is the champion: judge it on the thresholds alone
        passed, reasons = gate(results, cfg, champion)
        if entry is None:
            passed, reasons = False, [f"{registry}: no registered version to promote"]
        if passed and client is not None:
            from pipelines.registry import promote

            promote(client, entry["version"])
            moved = True
        corpus = {}
        if corpus_metrics.exists():
            c = json.loads(corpus_metrics.read_text())
            corpus = {f"{dataset} {split}": n for dataset, splits in c.get("faces", {}).items()
                      for split, n in sorted(splits.items())}  # faces per dataset and split
            corpus["records"] = c.get("records_total")
        with atomic_path(out) as tmp:
            tmp.write_text(results_markdown(results, corpus, int(all_params.get("seed", 0)), entry, (passed, reasons),
                                            moved))
        write_json_atomic(metrics, {"champion": moved, "version": entry and entry["version"], "reasons": reasons})
        print(out.read_text())

    run_stage("report", body)


if __name__ == "__main__":
    app()
