"""The team MLflow deployment of infra/mlflow, run here for real: `mlflow server` with a PostgreSQL backend
store (Debian's package; SQLite where none is installed) and an S3 artifact store (moto_server) behind
`--serve-artifacts`, used by clients that hold no S3 credentials, as Ray workers do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import ExitStack

import boto3
import pytest

from tests.conftest import REPO
from tests.infra.postgres import postgres_bin, postgres_server
from tests.training.mlflow_server import mlflow_server

pytestmark = pytest.mark.slow

# A worker's view: the tracking URI only. It logs a run, an artifact and a registered model.
CLIENT = """
import json, sys, mlflow
from mlflow import MlflowClient
uri, artifact = sys.argv[1], sys.argv[2]
mlflow.set_tracking_uri(uri)

class Doubler(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input * 2

with mlflow.start_run(run_name="probe") as run:
    mlflow.log_param("recipe", "finetune")
    for step, loss in enumerate([3.0, 2.0, 1.5]):
        mlflow.log_metric("loss", loss, step=step)
    mlflow.log_artifact(artifact, "reports")
    info = mlflow.pyfunc.log_model(name="model", python_model=Doubler(), registered_model_name="probe")
MlflowClient(uri).set_registered_model_alias("probe", "champion", info.registered_model_version)
print(json.dumps({"run_id": run.info.run_id, "artifact_uri": run.info.artifact_uri}))
"""

READER = """
import json, sys, mlflow, pandas as pd
uri, run_id = sys.argv[1], sys.argv[2]
mlflow.set_tracking_uri(uri)
local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="reports/results.md")
model = mlflow.pyfunc.load_model("models:/probe@champion")
print(json.dumps({"text": open(local).read(), "pred": model.predict(pd.DataFrame({"x": [1.5]}))["x"].tolist(),
                  "loss": [m.value for m in mlflow.MlflowClient(uri).get_metric_history(run_id, "loss")]}))
"""


def without_s3_credentials() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith("AWS_") and k not in ("MLFLOW_S3_ENDPOINT_URL", "MLFLOW_TRACKING_URI")}


def python(script: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300,
                          env=without_s3_credentials(), cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_mlflow_with_postgres_and_s3_artifacts_serves_clients_without_s3_credentials(s3_server, tmp_path):
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="mlflow-artifacts")
    report = tmp_path / "results.md"
    report.write_text("| system | accuracy |\n| FaceInsight | 0.9 |\n")
    with ExitStack() as stack:
        if postgres_bin():
            backend = stack.enter_context(postgres_server("mlflow"))
        else:  # the fallback; the server log says which store ran
            backend = f"sqlite:///{tmp_path / 'mlflow.db'}"
        url = stack.enter_context(mlflow_server(tmp_path / "server", backend=backend,
                                                artifacts="s3://mlflow-artifacts/mlflow",
                                                env={"MLFLOW_S3_ENDPOINT_URL": s3_server}))
        logged = python(CLIENT, url, str(report))
        assert logged["artifact_uri"].startswith("mlflow-artifacts:/")  # proxied: the client never sees S3
        read = python(READER, url, logged["run_id"])

        assert read["text"] == report.read_text() and read["pred"] == [3.0] and read["loss"] == [3.0, 2.0, 1.5]
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="mlflow-artifacts").get("Contents", [])]
        assert any(k.endswith("reports/results.md") for k in keys)  # the bytes live in the S3 store
        assert any(k.endswith("MLmodel") for k in keys)
        if backend.startswith("postgresql://"):  # the run and the registry live in PostgreSQL
            import psycopg

            with psycopg.connect(backend) as conn, conn.cursor() as cur:
                cur.execute("SELECT name, status FROM runs WHERE run_uuid = %s", (logged["run_id"],))
                assert cur.fetchone() == ("probe", "FINISHED")
                cur.execute("SELECT alias, version FROM registered_model_aliases WHERE name = 'probe'")
                assert cur.fetchone() == ("champion", 1)
