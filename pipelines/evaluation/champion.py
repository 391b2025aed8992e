"""The registry gate acted on: the report's verdict (evaluation/report.gate) decides whether MLflow's `champion`
alias moves to the registered version. Its own module, so training (which registers versions) does not depend on
how results are judged and written."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipelines.evaluation.gate import against_champion, gate
from pipelines.evaluation.report import ReportConfig
from pipelines.tracking import EVAL_ANSWERS_ARTIFACT, MODEL_NAME


def judge_champion(results: dict[str, dict[str, Any]], cfg: ReportConfig, registry: Path, tracking_uri: str
                   ) -> tuple[bool, list[str], dict[str, Any] | None]:
    """The registry gate: (moved, reasons, the registered version's entry). The version `registry` names becomes
    `champion` when its numbers clear `cfg.gate`, beat the majority class and beat the current champion's (read
    from that version's run, where evaluate logged them with its per-face answers: paired face by face)."""
    if not Path(registry).exists():
        return False, [f"{registry}: no registered version to promote"], None
    entry = json.loads(Path(registry).read_text())
    client = MlflowClient(tracking_uri)
    with refused_access_named(tracking_uri):
        numbers = alias_metrics(client, "champion")
        champion = None
        # MLflow gives the alias' version as an int, registry/faceinsight.json as a string; a version that already
        # is the champion (a rerun of the report after an ablation row was retrained, say) is judged on the
        # thresholds alone
        held = bool(numbers) and str(numbers["_version"]) == str(entry["version"])
        if numbers and not held:
            version, run_id = str(numbers.pop("_version")), numbers.pop("_run_id")
            champion = against_champion(results, sorted(cfg.gate), version, numbers,
                                        logged_answers(client, run_id, sorted(results)))
        passed, reasons = gate(results, cfg, champion)
        if passed:
            promote(client, entry["version"])
        # what made the version (commit, CPU, dtype), for the report: numbers differ between machines
        tags = client.get_run(entry["run_id"]).data.tags if entry.get("run_id") else {}
        entry = entry | {"provenance": {k: v for k, v in tags.items() if k.startswith(("git.", "host.", "train."))}}
        if champion and champion.lines:
            entry["against_champion"] = {"version": champion.version, "lines": champion.lines,
                                         "unpaired": champion.unpaired}
        entry["held_champion"] = held
    return passed, reasons, entry


@contextmanager
def refused_access_named(tracking_uri: str) -> Iterator[None]:
    """An MLflow that refuses this user (401: no or wrong credentials, 403: no permission) becomes one line that
    says so and what to set, not a traceback nor, worse, a champion judged as absent."""
    try:
        yield
    except MlflowException as exc:
        status = exc.get_http_status_code()
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        if status == 401:
            raise RuntimeError(f"MLflow at {tracking_uri} refused the login of "
                               f"{repr(user) if user else 'an anonymous client'} (401): set MLFLOW_TRACKING_USERNAME "
                               "and MLFLOW_TRACKING_PASSWORD to the pipeline's user") from None
        if status == 403:
            raise RuntimeError(f"MLflow at {tracking_uri}: user {user!r} may not change the registered model "
                               f"{MODEL_NAME!r} (403): run as the pipeline's user, or have an admin grant this one "
                               "MANAGE on it") from None
        raise


def alias_metrics(client, alias: str, prefix: str = "eval.", system: str = "faceinsight") -> dict[str, float] | None:
    """The evaluation numbers ("task.metric") of the version `alias` points at, or None if no version has it."""
    try:
        version = client.get_model_version_by_alias(MODEL_NAME, alias)
    except MlflowException as exc:
        if exc.get_http_status_code() in (401, 403):  # refused, not absent: the caller names it
            raise
        return None
    out = {}
    for key, value in client.get_run(version.run_id).data.metrics.items():
        parts = key.split(".")  # eval.<task>.<system>.<metric>
        if key.startswith(prefix) and len(parts) == 4 and parts[2] == system:
            out[f"{parts[1]}.{parts[3]}"] = value
    return out | {"_version": version.version, "_run_id": version.run_id}


def logged_answers(client, run_id: str, tasks: list[str]) -> dict[str, dict[str, Any]]:
    """Per task, the per-face answers evaluate logged on a version's run (tracking.EVAL_ANSWERS_ARTIFACT); a task
    without them (a version evaluated before they were logged) is absent."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in tasks:
            try:
                path = client.download_artifacts(run_id, EVAL_ANSWERS_ARTIFACT.format(task=task), tmp)
            except (MlflowException, OSError) as exc:
                if isinstance(exc, MlflowException) and exc.get_http_status_code() in (401, 403):
                    raise  # refused, not absent: the caller names it
                continue
            out[task] = json.loads(Path(path).read_text())
    return out


def promote(client, version: str, alias: str = "champion") -> None:
    client.set_registered_model_alias(MODEL_NAME, alias, version)
