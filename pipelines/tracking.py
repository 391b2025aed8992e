"""MLflow tracking: where runs go, and one way to open them (rank 0 of a Ray Train run, or a driver)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
EXPERIMENT = "faceinsight"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the local SQLite store, made absolute so Ray workers find the same file."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}} -> {'a.b': '1'}: MLflow params are flat strings."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)[:6000]
    return out


@contextmanager
def mlflow_run(uri: str, run_name: str, stage: str, params: Mapping[str, Any],
               tags: Mapping[str, str] | None = None) -> Iterator[Any]:
    """Open a run in the pipeline's experiment with the stage's params and the git commit as tags."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name=run_name, tags={"dvc.stage": stage, "git.commit": git_commit(),
                                                   **(tags or {})}) as run:
        mlflow.log_params(flatten(params))
        yield run
