"""MLflow tracking: where runs go, and one way to open them (rank 0 of a Ray Train run, or a driver)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipelines.provenance import git_commit

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
EXPERIMENT = "faceinsight"
MODEL_NAME = "faceinsight"  # the registered model: versions, and the `candidate` / `champion` aliases


# How MLflow's client retries a request that gets no answer (its defaults: 7 retries, the wait doubling from 2 s, a
# few minutes in all): the driver's settings travel to the training workers, which log from processes of their own.
RETRY_ENV = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
             "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "MLFLOW_HTTP_REQUEST_TIMEOUT")


class TrackingUnavailable(RuntimeError):
    """The MLflow server did not answer within the client's retries: the stage stops with this one message."""


def retry_settings() -> dict[str, str]:
    """The MLflow client's retry settings this process has (RETRY_ENV), to hand to workers."""
    return {k: os.environ[k] for k in RETRY_ENV if os.environ.get(k)}


def unreachable(exc: BaseException) -> bool:
    """Whether an MLflow client error means the server did not answer (down, restarting, the network), not that it
    refused the request (a bad value, a permission): MLflow wraps the connection error it gave up on."""
    import requests

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, requests.ConnectionError | requests.Timeout | requests.exceptions.RetryError
                      | ConnectionError | TimeoutError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextmanager
def reaching(uri: str, then: Callable[[], str]) -> Iterator[None]:
    """An MLflow call; a server that does not answer becomes TrackingUnavailable, ending with `then()` (where the
    caller stands and what to do)."""
    try:
        yield
    except Exception as exc:
        if not unreachable(exc):
            raise
        from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES

        raise TrackingUnavailable(
            f"the MLflow tracking server at {uri} did not answer (MLflow's client gave up after "
            f"MLFLOW_HTTP_REQUEST_MAX_RETRIES={MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()} retries: {type(exc).__name__}); "
            f"{then()}") from exc


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the local SQLite store, made absolute so Ray workers find the same file."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


def tracking_store_path(uri: str) -> str | None:
    """The local file or folder behind a sqlite:/// or file: store; None for a server (http://...)."""
    from urllib.parse import urlparse

    if uri.startswith("sqlite:///"):
        return uri[len("sqlite:///"):]  # sqlite:////abs/x.db -> /abs/x.db
    if uri.startswith("file:"):
        return urlparse(uri).path
    return None if "://" in uri else uri


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


def local_artifact_root(uri: str) -> str | None:
    """Where a local SQLite store keeps the experiment's artifacts: `mlartifacts/<experiment>` beside its database,
    as `mlflow server` keeps them beside its own. MLflow's default, ./mlruns, is relative to the process that creates
    the experiment, and that is a Ray Train worker, whose working directory is a temporary folder of Ray's session:
    every run's artifacts and the registered models went there. None for a server (it decides) or a file: store (its
    artifacts are inside it already)."""
    if not uri.startswith("sqlite:///"):
        return None
    return str(Path(tracking_store_path(uri)).resolve().parent / "mlartifacts" / EXPERIMENT)


def experiment_id(client, uri: str) -> str:
    """The pipeline's experiment, created where `local_artifact_root` says if it does not exist yet."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment:
        return experiment.experiment_id
    try:
        return client.create_experiment(EXPERIMENT, artifact_location=local_artifact_root(uri))
    except MlflowException:  # another stage's worker created it in between
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            raise
        return experiment.experiment_id


def pipeline_run_id(uri: str, commit: str | None = None) -> str:
    """The parent run of this pipeline state (one per git commit): found by its tag, or created."""
    from mlflow import MlflowClient

    commit = commit or git_commit()
    client = MlflowClient(uri)
    experiment = experiment_id(client, uri)
    found = client.search_runs([experiment], filter_string=f"tags.`pipeline.commit` = '{commit}'",
                               max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment, run_name=f"pipeline@{commit[:8]}",
                            tags={"pipeline.commit": commit, "git.commit": commit})
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def start_stage_run(uri: str, stage: str, run_id: str | None = None, tags: Mapping[str, str] | None = None,
                    commit: str | None = None):
    """A stage's run, a child of the pipeline run; `run_id` reopens a run (a restarted training). `commit` and
    `tags` (pipelines/provenance.py): the driver's, handed to a worker that may run where there is no checkout."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=experiment_id(mlflow.MlflowClient(uri), uri))
    mlflow.set_system_metrics_sampling_interval(2)  # CPU, memory, (GPU) every 2 s: stages are minutes long
    if run_id:
        return mlflow.start_run(run_id=run_id, log_system_metrics=True)
    commit = commit or git_commit()
    return mlflow.start_run(run_name=stage, parent_run_id=pipeline_run_id(uri, commit), log_system_metrics=True,
                            tags={"dvc.stage": stage, "git.commit": commit, **(tags or {})})


# the registered version's run keeps FaceInsight's per-face answers of each task here: a later version's registry
# gate pairs its own answers with them face by face (pipelines/evaluation/champion.py)
EVAL_ANSWERS_ARTIFACT = "eval/{task}.json"
GATED_SYSTEM = "faceinsight"


def log_eval_metrics(task: str, result: dict[str, Any], registry: Path, tracking_uri: str) -> str | None:
    """evaluate@<task>'s headline numbers, and the 95% bootstrap interval beside each, on the registered
    version's run (eval.<task>.<system>.<metric>[.ci95_low|high]), with FaceInsight's per-face answers as the
    artifact EVAL_ANSWERS_ARTIFACT; the run id, or None where there is none."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    if not Path(registry).exists():
        return None
    run_id = json.loads(Path(registry).read_text())["run_id"]
    now = int(time.time() * 1000)
    metrics = [Metric(f"eval.{task}.{system}.{key}", float(value), now, 0)
               for system, s in result["systems"].items() for key, value in s["summary"].items() if value is not None]
    metrics += [Metric(f"eval.{task}.{system}.{key}.ci95_{end}", float(ci[end]), now, 0)
                for system, s in result["systems"].items() for key, ci in s.get("intervals", {}).items()
                for end in ("low", "high") if ci[end] == ci[end]]
    client = MlflowClient(tracking_uri)
    try:
        client.get_run(run_id)
    except Exception as exc:  # a registry entry from another machine's store: say so, do not fail the stage
        print(f"[evaluate] MLflow run {run_id} of {registry} is not in this tracking store ({type(exc).__name__}); "
              "metrics not logged there")
        return None
    client.log_batch(run_id, metrics=metrics)
    if GATED_SYSTEM in result["systems"] and "face_keys" in result:
        client.log_dict(run_id, eval_answers(result), EVAL_ANSWERS_ARTIFACT.format(task=task))
    return run_id


def eval_answers(result: dict[str, Any]) -> dict[str, Any]:
    """What of an evaluation a later registry gate pairs with: the faces, their labels, FaceInsight's answers."""
    return {"task": result["task"], "split": result["split"], "face_keys": result["face_keys"],
            "truth": result["truth"], "predictions": result["systems"][GATED_SYSTEM]["predictions"]}
