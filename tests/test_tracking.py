"""MLflow tracking: every stage run names the commit that made it, wherever the process runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipelines.tracking import git_commit, start_stage_run

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
    with start_stage_run(uri, "align", commit="0123abcd" * 5) as run:
        run_id = run.info.run_id
    tags = MlflowClient(uri).get_run(run_id).data.tags
    assert tags["git.commit"] == "0123abcd" * 5 and tags["dvc.stage"] == "align"
    parent = MlflowClient(uri).get_run(tags["mlflow.parentRunId"]).data.tags
    assert parent["pipeline.commit"] == "0123abcd" * 5
