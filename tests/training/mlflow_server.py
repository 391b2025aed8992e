"""A real `mlflow server` on 127.0.0.1 for tests; stopped with its worker children, by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import free_port


@contextmanager
def mlflow_server(root: Path, backend: str | None = None, artifacts: str | None = None,
                  env: dict[str, str] | None = None) -> Iterator[str]:
    """Defaults: SQLite and an artifact folder under `root`; `backend`/`artifacts` name others (postgresql://, s3://)."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    exe = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [str(exe), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", backend or f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", artifacts or str(root / "artifacts"), "--serve-artifacts"],
        stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    log = (root / "server.log").read_text()[-2000:]
                    raise RuntimeError(f"mlflow server did not start: {log}") from None
                time.sleep(0.5)
        yield url
    finally:
        # its own session: the signal reaches the server and its worker children, nothing else
        if proc.poll() is None:  # it may have died at start-up
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
