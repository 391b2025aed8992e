"""A real `mlflow server` on 127.0.0.1 for tests; stopped with its worker children, by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipelines.ray_session import free_port

# MLflow's job runner and its Huey consumers, a Python process each that imports MLflow, serve GenAI jobs the pipeline
# never starts: off for every plain test server, as infra/mlflow/serve.sh has it (~240 CPU-seconds a suite before)
NO_JOB_RUNNER = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@contextmanager
def mlflow_server(root: Path, backend: str | None = None, artifacts: str | None = None,
                  env: dict[str, str] | None = None) -> Iterator[str]:
    """Defaults: SQLite and an artifact folder under `root`; `backend`/`artifacts` name others (postgresql://, s3://)."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with serving(server_command(root, port, backend, artifacts), root / "server.log", port,
                 NO_JOB_RUNNER | (env or {})) as url:
        yield url


def server_command(root: Path, port: int, backend: str | None = None, artifacts: str | None = None) -> list[str]:
    exe = Path(sys.executable).with_name("mlflow")
    return [str(exe), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", backend or f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", artifacts or str(root / "artifacts"), "--serve-artifacts"]


@contextmanager
def serving(command: list[str], log: Path, port: int, env: dict[str, str] | None = None) -> Iterator[str]:
    """Runs `command` (an MLflow server on 127.0.0.1:`port`) in its own session until /health answers; yields its
    URL; stops it and every child it started."""
    proc = start(command, log, port, env)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def start(command: list[str], log: Path, port: int, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`command` started in its own session, once http://127.0.0.1:`port`/health answers."""
    venv_bin = str(Path(sys.executable).parent)  # `mlflow` of this environment for scripts that call it by name
    full_env = {**os.environ, **(env or {})}
    full_env["PATH"] = f"{venv_bin}{os.pathsep}{full_env.get('PATH', '')}"
    proc = subprocess.Popen(command, stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True,
                            env=full_env)
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            return proc
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                stop(proc)
                raise RuntimeError(f"mlflow server did not start: {log.read_text()[-2000:]}") from None
            time.sleep(0.5)


def session_commands(url: str) -> list[str]:
    """The command line of every process in the session of the server listening at `url` (started by `start`: the
    server, its workers and whatever they launched)."""
    import psutil

    port = int(url.rsplit(":", 1)[1])
    listener = next((c.pid for c in psutil.net_connections("tcp") if c.laddr.port == port and c.pid
                     and c.status == psutil.CONN_LISTEN), None)
    assert listener is not None, f"nothing listens on port {port}"
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getsid(proc.pid) == os.getsid(listener):
                found.append(" ".join(proc.cmdline()))
    return found


def stop(proc: subprocess.Popen) -> None:
    """The server and every child it started (its own session: the signal reaches nothing else)."""
    if proc.poll() is None:  # it may have died at start-up
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class RestartableServer:
    """`mlflow server` on one port and one store, which a test stops (workers and all) and starts again."""

    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> RestartableServer:
        self.proc = start(server_command(self.root, self.port), self.root / "server.log", self.port, NO_JOB_RUNNER)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


AUTH_ADMIN = ("admin", "admin-pass-for-tests-only")
AUTH_SECRET_KEY = "csrf-key-for-tests-only"


@contextmanager
def auth_mlflow_server(root: Path, users: dict[str, str], backend: str | None = None, artifacts: str | None = None,
                       env: dict[str, str] | None = None) -> Iterator[str]:
    """The team deployment's launcher (infra/mlflow/serve.sh: MLflow's basic-auth app) on 127.0.0.1, SQLite and an
    artifact folder under `root` unless named; its admin creates `users` (name: password), who read everything
    (default permission READ) and change what they create."""
    import requests

    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    serve = Path(__file__).resolve().parents[2] / "infra" / "mlflow" / "serve.sh"
    server_env = {"MLFLOW_BACKEND_STORE_URI": backend or f"sqlite:///{root / 'mlflow.db'}",
                  "MLFLOW_ARTIFACTS": artifacts or str(root / "artifacts"), "MLFLOW_HOST": "127.0.0.1",
                  "MLFLOW_PORT": str(port), "MLFLOW_AUTH_ADMIN_USERNAME": AUTH_ADMIN[0],
                  "MLFLOW_AUTH_ADMIN_PASSWORD": AUTH_ADMIN[1], "MLFLOW_FLASK_SERVER_SECRET_KEY": AUTH_SECRET_KEY,
                  **(env or {})}
    with serving(["bash", str(serve), "--workers", "1"], root / "server.log", port, server_env) as url:
        for name, password in users.items():
            done = requests.post(f"{url}/api/2.0/mlflow/users/create", json={"username": name, "password": password},
                                 auth=AUTH_ADMIN, timeout=30)
            assert done.status_code == 200, done.text
        yield url
