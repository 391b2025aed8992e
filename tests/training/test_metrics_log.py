"""pipelines/training/loop.MetricsLog: rank 0's step metrics reach MLflow in batches, each step once, none lost."""

from __future__ import annotations

import pytest

from pipelines.training.loop import MetricsLog


def test_step_metrics_reach_mlflow_in_one_batch_each_step_once_and_a_failed_send_keeps_them(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("loop")).info.run_id
    log = MetricsLog(uri, run_id, every_s=3600)

    def history(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))

    for step in (1, 2, 3):
        log.add({"loss": 1.0 / step, "lr": 0.1}, step)
    assert not log.due() and history("loss") == []  # held until the interval passes or a checkpoint flushes
    log.flush()
    assert history("loss") == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))] and len(history("lr")) == 3
    log.flush()  # nothing pending: nothing sent twice
    assert len(history("loss")) == 3

    log.add({"loss": 0.25}, 4)
    sent = log.client.log_batch
    monkeypatch.setattr(log.client, "log_batch", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("down")))
    with pytest.raises(ConnectionError):
        log.flush()
    monkeypatch.setattr(log.client, "log_batch", sent)
    log.add({"loss": 0.2}, 5)
    log.flush()  # the step the failed send held, and the next
    assert [s for s, _ in history("loss")] == [1, 2, 3, 4, 5]
    assert MetricsLog(uri, run_id, every_s=0).due()
