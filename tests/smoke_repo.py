"""A temporary copy of this repository with smoke-sized params, committed in a fresh git repository."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from tests.conftest import REPO

# the default's 5% val / test shares would leave 40 faces with one or none to evaluate on
SMOKE = {"celebamask_hq": 40, "utkface": 20, "rafdb": 20, "image_size": 128, "mask_size": 64,
         "utkface_size": 64, "rafdb_size": 96, "celeba_split": [0.8, 0.1, 0.1], "rafdb_test_share": 0.2}


SMOKE_VISUAL_STEPS = 4


def smoke_params(params: dict) -> dict:
    params["ingest"]["synthetic"].update(SMOKE)
    params["ingest"]["max_quarantine_share"] = 0.2  # the 3 crafted defects are a big share of 20 faces
    params["train_parser"].update(epochs=2, batch_size=16, min_val_miou=0.0)
    params["build_corpus"].update(faces_per_shard=25)
    for stage, steps in (("align", 16), ("finetune", 4), ("finetune_task", 4)):
        params[stage].update(max_steps=steps, batch_size=8, lr=0.003, warmup_steps=2, checkpoint_every=8)
    params["align"]["visual_steps"] = SMOKE_VISUAL_STEPS  # the heads-only phase runs too
    params["train_specialist"].update(max_steps=12, batch_size=8, warmup_steps=2, checkpoint_every=12)
    # `make test` runs the two DAG tests side by side on a 2-core machine: one thread per training worker each, as
    # every test process has (tests/conftest.py; the stages set their own count, the default's two are for a DAG alone)
    for stage in ("train_parser", "align", "finetune", "finetune_task", "train_specialist"):
        params[stage]["torch_threads"] = 1
    # one variant runs the train_variant -> evaluate -> report path; each costs two Ray Train runs
    params["variants"] = {"no_map": params["variants"]["no_map"]}
    params["ablation_budget"] = {}  # at the smoke's own steps, no reference row to train (dvc.yaml names the key)
    return params


def smoke_repo(dst: Path, edit: Callable[[dict], None] | None = None) -> Path:
    """Tracked and new (not ignored) files, no pipeline state (dvc.lock, metrics, registry); params made
    smoke-sized, then `edit`ed."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        src = REPO / rel
        if src.is_file() and not rel.startswith(("metrics/", "dvc.lock", "registry/")):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            (dst / rel).write_bytes(src.read_bytes())
    params = smoke_params(yaml.safe_load((dst / "params.yaml").read_text()))
    if edit:
        edit(params)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(dst, "init", "-q")
    commit(dst, "smoke")
    return dst


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def commit(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message)


# a guard against a hang, not a speed target: CI's 2-core machines differ up to 3x in speed (a smoke DAG took 508 s on
# one and over 900 s on another beside the other xdist worker), and speed is measured in benchmarks/, never here
HANG_GUARD_S = 2700


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = HANG_GUARD_S) -> str:
    """Run with the venv's tools first on PATH; fail with the tail of the output."""
    base = env if env is not None else dict(os.environ)
    env = {**base, "PATH": f"{Path(sys.executable).parent}:{base.get('PATH', os.environ['PATH'])}"}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr
