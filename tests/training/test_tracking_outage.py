"""Issue 19: the MLflow server goes away during a training stage (a real `mlflow server`, stopped and started)."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from pipelines.tracking import TrackingUnavailable
from pipelines.training.loop import OUTAGE_MARKER
from tests.training.mlflow_server import RestartableServer
from tests.training.test_training import CFG, runs, train

pytestmark = pytest.mark.slow
LONG = dataclasses.replace(CFG, max_steps=40)  # room between the step that takes the server down and the last


def logged_steps(uri: str) -> list[int]:
    """The steps of `loss` the one stage run on the server has, sorted; [] before it exists or while it is down."""
    from mlflow import MlflowClient

    try:
        found = runs(uri)
        history = MlflowClient(uri).get_metric_history(found[0].info.run_id, "loss") if found else []
        return sorted(m.step for m in history)
    except Exception:
        return []


def outage(server: RestartableServer, after_step: int, down_s: float | None) -> dict:
    """Stops the server once `after_step` is logged; starts it again `down_s` later (None: leaves it down)."""
    seen: dict = {}

    def watch() -> None:
        deadline, steps = time.time() + 300, []
        while time.time() < deadline:
            steps = logged_steps(server.url)
            if steps and steps[-1] >= after_step:
                break
            time.sleep(0.2)
        seen["stopped_after"] = steps[-1] if steps else None
        server.stop()
        if down_s is not None:
            time.sleep(down_s)
            server.start()
            seen["restarted"] = True

    seen["thread"] = threading.Thread(target=watch, daemon=True)
    seen["thread"].start()
    return seen


def test_training_rides_out_an_mlflow_restart(ray_local, corpus, tmp_path, monkeypatch):
    """The client's retries (bounded: 6 here, the wait doubling from 1 s) hold a step while the server restarts;
    training then goes on in the same run and no step's metrics are lost."""
    server = RestartableServer(tmp_path / "mlflow").start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "6")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    try:
        seen = outage(server, after_step=3, down_s=3)
        result = train(corpus, tmp_path, LONG)
        seen["thread"].join(timeout=120)
        assert seen.get("restarted") and seen["stopped_after"] < LONG.max_steps  # down mid-training, then back
        assert result["steps"] == LONG.max_steps
        [run] = runs(server.url)
        assert run.info.run_id == result["mlflow_run_id"] and run.info.status == "FINISHED"
        assert logged_steps(server.url) == list(range(1, LONG.max_steps + 1))  # each step once, none lost
    finally:
        server.stop()


def test_a_longer_outage_stops_training_with_one_message_and_the_rerun_resumes_into_the_same_run(
        ray_local, corpus, tmp_path, monkeypatch):
    server = RestartableServer(tmp_path / "mlflow").start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    try:
        seen = outage(server, after_step=CFG.checkpoint_every + 2, down_s=None)  # after the first checkpoint
        with pytest.raises(TrackingUnavailable) as stopped:
            train(corpus, tmp_path, LONG)
        seen["thread"].join(timeout=60)
        said = str(stopped.value)
        assert said.startswith(f"align: the MLflow tracking server at {server.url} did not answer (MLflow's client "
                               "gave up after MLFLOW_HTTP_REQUEST_MAX_RETRIES=1 retries")
        assert "rerun the stage: it resumes from that checkpoint and logs into MLflow run" in said
        assert "\n" not in said  # run_stage prints it as one line
        # rank 0 recorded it in the Ray Train run's storage, where Ray Train's retry of the group stopped at once
        [record] = (tmp_path / "run" / "ray").rglob(OUTAGE_MARKER)
        assert f"align: {record.read_text()}" == said
        server.start()
        before = logged_steps(server.url)
        assert before and before[-1] < LONG.max_steps
        result = train(corpus, tmp_path, LONG)  # the same inputs: the same Ray Train run, resumed
        assert result["steps"] == LONG.max_steps
        assert [h["step"] for h in result["history"]] == list(range(1, LONG.max_steps + 1))
        [run] = runs(server.url)  # the resumed training logged into the run it had opened
        assert run.info.run_id == result["mlflow_run_id"] and run.info.run_id in said
        assert run.info.status == "FINISHED"
        assert set(logged_steps(server.url)) == set(range(1, LONG.max_steps + 1))
        assert not record.exists()  # the rerun's fit cleared it before its workers started
    finally:
        server.stop()
