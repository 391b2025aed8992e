"""The smoke pipeline's Ray stages with everything on S3, driven by `dvc repro` through RAY_ADDRESS on a 2-node cluster.

Real local stand-ins for the cloud: moto_server is S3 (raw data, the cluster storage that holds staged
inputs, corpus scratch and Ray Train runs, MLflow's artifact store, the DVC remote); `mlflow server
--serve-artifacts` is the tracking server, behind MLflow's basic-auth app as a team runs it (the pipeline's user
and password only in the driver's environment: the nodes get them from the job, and no MLflow param, tag or
artifact may hold them); the second Ray node registers at 127.0.0.2, so to the pipeline it is another machine and
no stage may hand it a path of this one.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import yaml

from pipelines.storage import upload_dir
from pipelines.synthetic.writers import SyntheticConfig, write_synthetic
from tests.conftest import REPO, SEED
from tests.ray_cluster import cluster_env, two_node_cluster
from tests.smoke_repo import HANG_GUARD_S, SMOKE, commit, git, run, smoke_repo
from tests.training.mlflow_server import AUTH_ADMIN, auth_mlflow_server

pytestmark = pytest.mark.slow

RAY_STAGES = {"train_parser": "parser.json", "align": "train_align.json", "finetune": "train_finetune.json",
              "train_specialist": "train_specialist.json"}
TARGETS = ("finetune", "train_specialist")  # with their upstream: every stage Ray runs on both nodes


def on_s3(params: dict, roots: dict[str, str]) -> None:
    params["ingest"].update(source="real", roots=roots)
    params["build_corpus"]["workers"] = 2
    for stage in RAY_STAGES:  # one training worker per node: 2 CPUs each, 2 per node
        params[stage].update(num_workers=2, cpus_per_worker=2)
    # what the second node takes part in is the same at any step count: few steps (each a gradient exchange between
    # the nodes) and one checkpoint at the end (each goes to S3); the smoke DAG test checks that align learns
    params["align"].update(max_steps=4, visual_steps=2, checkpoint_every=6)


PIPELINE_USER = ("pipeline", "pipeline-pass-for-tests-only")


def credential_leaks(uri: str, secrets: tuple[str, ...], scratch: Path) -> list[str]:
    """Every param, tag and artifact of every run on the server that holds one of `secrets`."""
    import mlflow
    from mlflow import MlflowClient

    client, found = MlflowClient(uri), []
    for experiment in client.search_experiments():
        for r in client.search_runs([experiment.experiment_id], max_results=1000):
            fields = {**{f"param {k}": v for k, v in r.data.params.items()},
                      **{f"tag {k}": v for k, v in r.data.tags.items()}}
            found += [f"{r.info.run_name}: {name}" for name, v in fields.items() if any(s in v for s in secrets)]
            local = Path(mlflow.artifacts.download_artifacts(run_id=r.info.run_id, artifact_path="",
                                                             dst_path=str(scratch / r.info.run_id), tracking_uri=uri))
            found += [f"{r.info.run_name}: artifact {f.relative_to(local)}" for f in local.rglob("*")
                      if f.is_file() and any(s.encode() in f.read_bytes() for s in secrets)]
    return found


def checksums(root: Path, rels: list[str]) -> dict[str, str]:
    out = {}
    for rel in rels:
        path = root / rel
        for file in sorted([path] if path.is_file() else (p for p in path.rglob("*") if p.is_file())):
            out[file.relative_to(root).as_posix()] = hashlib.sha256(file.read_bytes()).hexdigest()
    return out


def lock_outs(repo: Path) -> list[str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return sorted({o["path"] for stage in lock["stages"].values() for o in stage.get("outs", [])})


def test_dvc_repro_on_a_two_node_cluster_with_everything_on_s3(s3_server, tmp_path, monkeypatch):
    s3 = boto3.client("s3", endpoint_url=s3_server)
    for bucket in ("raw", "cluster", "mlflow-artifacts", "dvc-remote"):
        s3.create_bucket(Bucket=bucket)
    local = write_synthetic(tmp_path / "render", SEED, SyntheticConfig(**SMOKE, defects=0, workers=2))
    roots = {}
    for name, folder in local.items():
        upload_dir(folder, f"s3://raw/{folder.name}")
        roots[name] = f"s3://raw/{folder.name}"
    repo = smoke_repo(tmp_path / "repo", lambda p: on_s3(p, roots))

    # the nodes' own environment: the code, and S3's endpoint and keys (an instance profile in the cloud)
    node_env = {**cluster_env(), "PYTHONPATH": str(REPO)}
    with two_node_cluster(node_env, second_ip="127.0.0.2") as head, \
            auth_mlflow_server(tmp_path / "mlflow", dict([PIPELINE_USER]), artifacts="s3://mlflow-artifacts/mlflow",
                               env={"MLFLOW_S3_ENDPOINT_URL": s3_server}) as tracking:
        env = {**node_env, "RAY_ADDRESS": head, "MLFLOW_TRACKING_URI": tracking,
               "MLFLOW_TRACKING_USERNAME": PIPELINE_USER[0], "MLFLOW_TRACKING_PASSWORD": PIPELINE_USER[1]}

        # without cluster storage the first Ray stage stops at start-up and names what the far node can't see
        failed = subprocess.run([sys.executable, "-m", "dvc", "repro", "build_corpus"], cwd=repo, env=env,
                                capture_output=True, text=True, timeout=HANG_GUARD_S)
        said = failed.stderr[-3000:]
        assert failed.returncode != 0
        assert "exist only here" in said and "FACEINSIGHT_CLUSTER_STORAGE" in said, said
        assert "127.0.0.2" in said and "Traceback" not in said, said
        assert not (repo / "models" / "parser").exists()  # nothing half-written

        env["FACEINSIGHT_CLUSTER_STORAGE"] = "s3://cluster/faceinsight"
        # the stages the second node takes part in (Ray Data, Ray Train) and what they need; the rest of the DAG
        # (the per-task passes, the variant, evaluation, the report) runs in the local smoke DAG test
        out = run([sys.executable, "-m", "dvc", "repro", *TARGETS], repo, env=env)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", PIPELINE_USER[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PIPELINE_USER[1])
        leaks = credential_leaks(tracking, (PIPELINE_USER[1], AUTH_ADMIN[1]), tmp_path / "scan")
    assert all(f"Running stage '{stage}'" in out for stage in RAY_STAGES) and "Running stage 'report'" not in out
    assert not leaks, leaks

    manifest = json.loads((repo / "metrics" / "ingest.json").read_text())
    assert manifest["total"]["kept"] == sum(SMOKE[k] for k in ("celebamask_hq", "utkface", "rafdb"))
    corpus = json.loads((repo / "metrics" / "corpus.json").read_text())
    assert corpus["throughput"]["nodes"] == 2  # the corpus actors ran on both nodes
    for stage, metrics in RAY_STAGES.items():
        counts = json.loads((repo / "metrics" / metrics).read_text())
        assert counts["workers"] == 2 and counts["nodes"] == 2, stage  # one training worker per node
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="cluster", MaxKeys=5000).get("Contents", [])}
    assert any(k.startswith("faceinsight/staged/") and k.endswith("/tokenizer.json") for k in keys)
    assert any(k.startswith("faceinsight/ray/align-") for k in keys)  # Ray Train's runs on S3
    assert not any(k.startswith("faceinsight/scratch/") for k in keys)  # the corpus scratch was cleared
    artifacts = [o["Key"] for o in s3.list_objects_v2(Bucket="mlflow-artifacts").get("Contents", [])]
    assert any(k.endswith("MLmodel") for k in artifacts)  # the registered model's files are on S3

    # DVC remote on S3: push, then a fresh clone pulls the same bytes
    run([sys.executable, "-m", "dvc", "remote", "add", "-d", "store", "s3://dvc-remote/cache"], repo)
    run([sys.executable, "-m", "dvc", "remote", "modify", "store", "endpointurl", s3_server], repo)
    commit(repo, "pipeline state")
    run([sys.executable, "-m", "dvc", "push"], repo)
    outs = lock_outs(repo)
    assert {"data/corpus", "models/faceinsight", "models/parser"} <= set(outs)
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    assert not (clone / "data" / "corpus").exists()
    run([sys.executable, "-m", "dvc", "pull", "--with-deps", *TARGETS], clone)
    assert checksums(clone, outs) == checksums(repo, outs)
    status = run([sys.executable, "-m", "dvc", "status", "--with-deps", *TARGETS], clone)
    assert "up to date" in status
