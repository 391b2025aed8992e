"""A 2-node Ray cluster on this machine (`ray start --head` + `ray start --address`): one training worker per node."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.ray_cluster import two_node_cluster, without_ray_address

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


def test_training_runs_one_worker_per_node(corpus, tmp_path):
    env = {**without_ray_address(), "PYTHONPATH": str(REPO)}
    with two_node_cluster(env) as head:
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
