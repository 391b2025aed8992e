"""The registry gate acted on: the report's verdict (evaluation/report.gate) decides whether MLflow's `champion`
alias moves to the registered version. Its own module, so training (which registers versions) does not depend on
how results are judged and written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipelines.evaluation.report import ReportConfig, gate
from pipelines.tracking import MODEL_NAME


def judge_champion(results: dict[str, dict[str, Any]], cfg: ReportConfig, registry: Path, tracking_uri: str
                   ) -> tuple[bool, list[str], dict[str, Any] | None]:
    """The registry gate: (moved, reasons, the registered version's entry). The version `registry` names becomes
    `champion` when its numbers clear `cfg.gate`, beat the majority class and beat the current champion's (read
    from that version's run, where evaluate logged them)."""
    if not Path(registry).exists():
        return False, [f"{registry}: no registered version to promote"], None
    entry = json.loads(Path(registry).read_text())
    client = MlflowClient(tracking_uri)
    champion = alias_metrics(client, "champion")
    if champion and champion.pop("_version") == entry["version"]:
        champion = None  # this version already is the champion: judge it on the thresholds alone
    passed, reasons = gate(results, cfg, champion)
    if passed:
        promote(client, entry["version"])
    return passed, reasons, entry


def alias_metrics(client, alias: str, prefix: str = "eval.", system: str = "faceinsight") -> dict[str, float] | None:
    """The evaluation numbers ("task.metric") of the version `alias` points at, or None if no version has it."""
    try:
        version = client.get_model_version_by_alias(MODEL_NAME, alias)
    except MlflowException:
        return None
    out = {}
    for key, value in client.get_run(version.run_id).data.metrics.items():
        parts = key.split(".")  # eval.<task>.<system>.<metric>
        if key.startswith(prefix) and len(parts) == 4 and parts[2] == system:
            out[f"{parts[1]}.{parts[3]}"] = value
    return out | {"_version": version.version}


def promote(client, version: str, alias: str = "champion") -> None:
    client.set_registered_model_alias(MODEL_NAME, alias, version)
