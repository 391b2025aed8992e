"""MLflow tracking: every stage run names the commit that made it, wherever the process runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipelines.provenance import NO_GIT, code_tags, git_commit, host_tags
from pipelines.tracking import start_stage_run

ROOT = Path(__file__).resolve().parents[1]


def test_git_commit_is_the_checkouts_not_the_working_directorys(tmp_path, monkeypatch):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    monkeypatch.chdir(tmp_path)  # a Ray worker's working directory is its session folder, outside the checkout
    assert git_commit() == head and len(head) == 40


def test_a_stage_run_carries_the_commit_it_is_handed(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    handed = {"dvc.stage": "train_variant@no_map", "dvc.dep.model": "ab" * 16 + ".dir", "git.dirty": "false"}
    with start_stage_run(uri, "variant-no_map-align", commit="0123abcd" * 5, tags=handed) as run:
        run_id = run.info.run_id
    tags = MlflowClient(uri).get_run(run_id).data.tags
    assert tags["git.commit"] == "0123abcd" * 5 and handed.items() <= tags.items()
    parent = MlflowClient(uri).get_run(tags["mlflow.parentRunId"]).data.tags
    assert parent["pipeline.commit"] == "0123abcd" * 5


def test_a_local_store_keeps_artifacts_beside_its_database_whatever_the_working_directory(tmp_path, monkeypatch):
    """A Ray Train worker opens the stage's run from a temporary folder of Ray's session: the experiment it creates,
    its runs' artifacts and the models registered from them must still live beside the store, not in that folder."""
    import mlflow
    from mlflow import MlflowClient

    store = tmp_path / "repo"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    worker_folder = tmp_path / "ray_session" / "artifacts" / "train_parser-0"
    worker_folder.mkdir(parents=True)
    monkeypatch.chdir(worker_folder)
    with start_stage_run(uri, "train_parser", commit="0123abcd" * 5) as run:
        mlflow.log_text("checkpoint", "model/weights.txt")
        run_id = run.info.run_id
    artifact_uri = MlflowClient(uri).get_run(run_id).info.artifact_uri
    assert artifact_uri.startswith(str(store / "mlartifacts" / "faceinsight")), artifact_uri
    assert (store / "mlartifacts" / "faceinsight" / run_id / "artifacts" / "model" / "weights.txt").exists()
    assert not (worker_folder / "mlruns").exists()
    monkeypatch.chdir(tmp_path)  # a later stage from elsewhere finds the same experiment
    with start_stage_run(uri, "align", commit="0123abcd" * 5) as again:
        assert again.info.experiment_id == run.info.experiment_id


def _sh(cwd: Path, *cmd: str) -> str:
    return subprocess.run(list(cmd), cwd=cwd, check=True, capture_output=True, text=True).stdout


def test_code_tags_hash_a_stages_deps_as_dvc_lock_records_them_and_say_when_its_inputs_are_dirty(tmp_path,
                                                                                                  monkeypatch):
    """The tags a training stage's run gets (resolved on the driver): DVC's own hashes of the stage's deps, equal to
    what dvc.lock writes for the same run; git.dirty only for the stage's own inputs."""
    import sys

    import yaml

    (tmp_path / "a.txt").write_text("a\n")
    (tmp_path / "b.txt").write_text("not a dependency\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "x.txt").write_text("x\n")
    (tmp_path / "made.txt").write_text("made\n")  # an earlier stage's git-tracked output
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "make": {"cmd": "echo made > made.txt", "outs": [{"made.txt": {"cache": False}}]},
        "copy": {"cmd": "cp a.txt out.txt", "deps": ["a.txt", "folder", "made.txt"], "outs": ["out.txt"]}}}))
    _sh(tmp_path, "git", "init", "-q")
    _sh(tmp_path, sys.executable, "-m", "dvc", "init", "-q")
    _sh(tmp_path, "git", "add", "-A")
    _sh(tmp_path, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    monkeypatch.setenv("DVC_STAGE", "copy")
    tags = code_tags(tmp_path)
    assert tags["git.commit"] == _sh(tmp_path, "git", "rev-parse", "HEAD").strip()
    assert tags["dvc.stage"] == "copy" and tags["dvc.repro"] == "true"
    assert tags["git.dirty"] == "false" and "git.dirty_paths" not in tags
    _sh(tmp_path, sys.executable, "-m", "dvc", "repro", "-q")
    locked = yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]["copy"]["deps"]
    assert {f"dvc.dep.{d['path']}": d["md5"] for d in locked} == {k: v for k, v in tags.items()
                                                                   if k.startswith("dvc.dep.")}
    assert tags["dvc.dep.folder"].endswith(".dir")

    (tmp_path / "b.txt").write_text("changed, but no input of the stage\n")
    assert code_tags(tmp_path)["git.dirty"] == "false"
    (tmp_path / "made.txt").write_text("rewritten by the run's earlier stage\n")  # a product, not uncommitted code
    assert code_tags(tmp_path)["git.dirty"] == "false"
    (tmp_path / "a.txt").write_text("changed\n")
    dirty = code_tags(tmp_path)
    assert dirty["git.dirty"] == "true" and dirty["git.dirty_paths"] == "a.txt"
    assert dirty["dvc.dep.a.txt"] != tags["dvc.dep.a.txt"]

    monkeypatch.delenv("DVC_STAGE")  # a stage module run by hand says so, and the whole tree decides dirtiness
    by_hand = code_tags(tmp_path)
    assert by_hand["dvc.repro"] == "false" and "dvc.stage" not in by_hand and by_hand["git.dirty"] == "true"
    assert not any(k.startswith("dvc.dep.") for k in by_hand)
    (tmp_path / "plain").mkdir()  # no checkout at all: said so
    _sh(tmp_path / "plain", "git", "init", "-q")
    assert code_tags(tmp_path / "plain")["git.commit"] == NO_GIT


def test_host_tags_name_the_cpu_and_its_bf16_support():
    tags = host_tags()
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), []) if Path("/proc/cpuinfo").exists() else []
    assert tags["host.cpu"] and tags["host.gpu"] == "none"
    assert tags["host.cpu_bf16"] == (",".join(f for f in ("amx_bf16", "avx512_bf16") if f in flags) or "none")


def test_a_retried_worker_group_stops_at_once_at_the_outage_its_first_attempt_met(tmp_path):
    """Ray Train retries a worker group whatever failed it. After rank 0 has met an MLflow outage, the retry raises
    the recorded message before it builds anything (not after the client's retries a second time); `fit` clears
    the record before each fit, so a rerun goes on."""
    from pipelines.tracking import TrackingUnavailable
    from pipelines.training.loop import _record_outage, clear_outage, train_loop_per_worker

    config = {"storage_path": str(tmp_path / "ray"), "run_name": "align-0123"}
    said = "the MLflow tracking server at http://127.0.0.1:9 did not answer; align stopped at step 7"
    _record_outage(config, said)
    with pytest.raises(TrackingUnavailable) as stopped:
        train_loop_per_worker(config)  # it holds no learner: a worker that went on would fail on that instead
    assert str(stopped.value) == said
    clear_outage(config["storage_path"], config["run_name"])
    with pytest.raises(KeyError, match="learner"):  # no record left: the worker goes on to read its config
        train_loop_per_worker(config)
