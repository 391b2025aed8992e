"""The team MLflow of infra/mlflow behind MLflow's basic-auth app, run here for real through its own launcher
(infra/mlflow/serve.sh): PostgreSQL for runs, registry and users (SQLite where none is installed), S3 artifacts
(moto_server), credentials only from the environment. Who may move `champion`: the pipeline's user, nobody else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import ExitStack

import pytest

from pipelines.ray_session import free_port
from tests.conftest import REPO
from tests.infra.postgres import postgres_bin, postgres_server
from tests.training.mlflow_server import AUTH_ADMIN, AUTH_SECRET_KEY, auth_mlflow_server, session_commands

pytestmark = pytest.mark.slow

SERVE = REPO / "infra" / "mlflow" / "serve.sh"
USERS = {"pipeline": "pipeline-pass-0001", "viewer": "viewer-pass-00001"}

# One client, as a Ray worker or a user's shell is: the tracking URI and, maybe, a user in the environment.
PIPELINE = """
import json, sys, mlflow
from mlflow import MlflowClient
uri = sys.argv[1]
mlflow.set_tracking_uri(uri)
mlflow.set_experiment("faceinsight")

class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input

with mlflow.start_run(run_name="finetune") as run:
    mlflow.log_param("recipe", "finetune")
    mlflow.log_metric("eval.expression.faceinsight.uar", 0.7)
    info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), registered_model_name="faceinsight",
                                   pip_requirements=["mlflow"])  # named: inferring them loads the model once more
MlflowClient(uri).set_registered_model_alias("faceinsight", "champion", info.registered_model_version)
print(json.dumps({"run_id": run.info.run_id, "version": str(info.registered_model_version)}))
"""

# Everything a user might try against the pipeline's run and model, as each identity in turn (argv: the URI, the run,
# then a JSON list of [user, password] pairs, user null for none): what answered, or the HTTP status refused. One
# process for all of them: MLflow's client reads the user from the environment at each request, as a new process would.
PROBE = """
import json, os, sys
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
uri, run_id = sys.argv[1], sys.argv[2]

def attempt(fn):
    try:
        return ["ok", fn()]
    except MlflowException as exc:
        return ["refused", exc.get_http_status_code()]

found = []
for user, password in json.loads(sys.argv[3]):
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        os.environ.pop(name, None)
    if user:
        os.environ.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password)
    client = MlflowClient(uri)
    found.append({
        "read_run": attempt(lambda: client.get_run(run_id).data.params["recipe"]),
        "read_champion": attempt(lambda: client.get_model_version_by_alias("faceinsight", "champion").version),
        "register_version": attempt(lambda: client.create_model_version("faceinsight", "runs:/" + run_id + "/model",
                                                                        run_id).version),
        "move_champion": attempt(lambda: client.set_registered_model_alias("faceinsight", "champion", "1")),
        "delete_run": attempt(lambda: client.delete_run(run_id)),
    })
print(json.dumps(found))
"""

# The report stage's gate (judge_champion under run_stage, as `python -m stages.report` runs it).
REPORT = """
import json, sys
from pathlib import Path
from pipelines.evaluation.champion import judge_champion
from pipelines.evaluation.report import ReportConfig
from stages.common import run_stage
uri, version, folder = sys.argv[1], sys.argv[2], Path(sys.argv[3])
(folder / "faceinsight.json").write_text(json.dumps({"version": version}))
# no thresholds: the gate passes, so the stage goes on to move `champion`
run_stage("report", lambda: judge_champion({}, ReportConfig(gate={}), folder / "faceinsight.json", uri))
"""


def client_env(user: str | None, password: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    if user:
        env.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password or USERS.get(user, ""))
    return env


def python(script: str, env: dict[str, str], *args: str) -> dict | list:
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def server_env(backend: str) -> dict[str, str]:
    return {"MLFLOW_BACKEND_STORE_URI": backend, "MLFLOW_ARTIFACTS": "s3://mlflow-artifacts/mlflow",
            "MLFLOW_AUTH_ADMIN_PASSWORD": AUTH_ADMIN[1], "MLFLOW_FLASK_SERVER_SECRET_KEY": AUTH_SECRET_KEY,
            "MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(free_port())}


@pytest.mark.parametrize("unsafe, says", [
    ({"MLFLOW_AUTH_ADMIN_PASSWORD": ""}, "set MLFLOW_AUTH_ADMIN_PASSWORD"),
    ({"MLFLOW_AUTH_ADMIN_PASSWORD": "password1234"}, "old public default"),
    ({"MLFLOW_AUTH_ADMIN_PASSWORD": "short"}, "12 or more characters"),
    ({"MLFLOW_FLASK_SERVER_SECRET_KEY": ""}, "set MLFLOW_FLASK_SERVER_SECRET_KEY"),
])
def test_the_server_refuses_to_start_without_safe_credentials(unsafe, says, tmp_path):
    env = {**os.environ, **server_env(f"sqlite:///{tmp_path / 'mlflow.db'}"), **unsafe}
    done = subprocess.run(["bash", str(SERVE)], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2 and says in done.stderr
    assert not (tmp_path / "mlflow.db").exists()  # it stopped before touching any store


def test_only_the_pipelines_user_registers_versions_and_moves_champion(s3_server, tmp_path):
    import boto3

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="mlflow-artifacts")
    with ExitStack() as stack:
        if postgres_bin():
            backend = stack.enter_context(postgres_server("mlflow"))
        else:  # the server log says which store ran
            backend = f"sqlite:///{tmp_path / 'mlflow.db'}"
        url = stack.enter_context(auth_mlflow_server(tmp_path, USERS, backend, "s3://mlflow-artifacts/mlflow",
                                                     {"MLFLOW_S3_ENDPOINT_URL": s3_server}))

        served = session_commands(url)
        logged = python(PIPELINE, client_env("pipeline"), url)
        # the pipeline's own user last: it deletes the run
        identities = [("viewer", USERS["viewer"]), (None, None), ("pipeline", "not-the-password"),
                      ("pipeline", USERS["pipeline"])]
        viewer, anonymous, wrong, pipeline = python(PROBE, client_env(None), url, logged["run_id"],
                                                    json.dumps(identities))
        reports = {who: subprocess.run([sys.executable, "-c", REPORT, url, logged["version"], str(tmp_path)],
                                       capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
                   for who, env in (("wrong", client_env("pipeline", "not-the-password")),
                                    ("viewer", client_env("viewer")))}
        # the README's rotation: the user changes its own password; the old one stops working at once
        import requests

        new = "pipeline-pass-rotated"
        rotated = requests.patch(f"{url}/api/2.0/mlflow/users/update-password", auth=("pipeline", USERS["pipeline"]),
                                 json={"username": "pipeline", "password": new,
                                       "current_password": USERS["pipeline"]}, timeout=30)
        old_login = requests.get(f"{url}/api/2.0/mlflow/experiments/search?max_results=1",
                                 auth=("pipeline", USERS["pipeline"]), timeout=30)
        new_login = requests.get(f"{url}/api/2.0/mlflow/experiments/search?max_results=1", auth=("pipeline", new),
                                 timeout=30)

    # the server and its worker, without MLflow's job runner and its consumers (serve.sh turns them off)
    assert any("uvicorn" in c for c in served) and not [c for c in served if "mlflow.server.jobs" in c], served
    assert viewer["read_run"] == ["ok", "finetune"] and viewer["read_champion"] == ["ok", logged["version"]]
    for action in ("register_version", "move_champion", "delete_run"):
        assert viewer[action] == ["refused", 403], action
    assert all(result == ["refused", 401] for result in anonymous.values()), anonymous
    assert all(result == ["refused", 401] for result in wrong.values()), wrong
    assert pipeline["register_version"][0] == "ok" and pipeline["move_champion"] == ["ok", None]
    assert pipeline["delete_run"] == ["ok", None]
    for who, says in (("wrong", "refused the login of 'pipeline' (401): set MLFLOW_TRACKING_USERNAME"),
                      ("viewer", "user 'viewer' may not change the registered model 'faceinsight' (403)")):
        done = reports[who]
        message = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 1 and len(message) == 1 and says in message[0], done.stderr[-2000:]
    assert rotated.status_code == 200 and old_login.status_code == 401 and new_login.status_code == 200
    log = (tmp_path / "server.log").read_text()
    for secret in (AUTH_ADMIN[1], AUTH_SECRET_KEY, *USERS.values()):
        assert secret not in log
