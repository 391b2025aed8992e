"""A 2-node Ray cluster on this machine (`ray start --head` + `ray start --address`): one training worker per node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.slow

DRIVER = """
import json, sys
from pathlib import Path
import ray
from pipelines.training.faceinsight_task import TrainConfig, TrainInputs, run_training
from tests.training.test_training import MODEL, CFG
import dataclasses
corpus = json.loads(sys.argv[1])
inputs = TrainInputs(corpus=Path(corpus["root"]), tokenizer_dir=Path(corpus["tokenizer"]),
                     knowledge=corpus["knowledge"], model=MODEL)
cfg = dataclasses.replace(CFG, num_workers=2, cpus_per_worker=2, max_steps=4, checkpoint_every=4)
result = run_training("align", cfg, inputs, 0, Path(sys.argv[2]) / "model", sys.argv[2] + "/ray")
print(json.dumps({"steps": result["steps"], "workers": result["workers"], "nodes": result["nodes"],
                  "cluster_nodes": len([n for n in ray.nodes() if n["Alive"]])}))
"""


def ray_cmd(*args: str, env: dict) -> None:
    exe = Path(sys.executable).with_name("ray")
    out = subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=180)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


def test_training_runs_one_worker_per_node(corpus, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    env["RAY_AUTH_MODE"] = "disabled"  # a throwaway loopback cluster: no token to hand to the second node
    from ray._private.services import get_node_ip_address

    ip = get_node_ip_address()
    head = f"{ip}:{port}"
    try:
        temp = f"/tmp/ray_2node_{port}"  # not the session's /tmp/ray
        ray_cmd("start", "--head", "--port", str(port), "--num-cpus", "2",
                "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp, env=env)
        ray_cmd("start", "--address", head, "--num-cpus", "2",
                "--disable-usage-stats", "--temp-dir", temp, env=env)
        spec = json.dumps({"root": str(corpus["root"]), "tokenizer": str(corpus["tokenizer"]),
                           "knowledge": corpus["knowledge"]})
        done = subprocess.run([sys.executable, "-c", DRIVER, spec, str(tmp_path)], capture_output=True, text=True,
                              env={**env, "RAY_ADDRESS": head,
                                   "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
                              cwd=REPO, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert report["cluster_nodes"] == 2 and report["steps"] == 4
        assert report["workers"] == 2 and report["nodes"] == 2  # the two training workers ran on different nodes
    finally:
        stop_cluster(ip, port)


def stop_cluster(ip: str, port: int) -> None:
    """End only this cluster's processes (found by its GCS port), never the session's own Ray instance."""
    import psutil

    mine = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if f"{ip}:{port}" in cmdline or f"gcs_server_port={port}" in cmdline or f"ray_2node_{port}" in cmdline:
            mine.append(proc)
    for proc in mine:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(mine, timeout=15)
    for proc in alive:
        proc.kill()
