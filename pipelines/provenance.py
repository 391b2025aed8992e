"""What produced a run, as MLflow tags: the code (git), the DVC stage and the hashes of what it read, the machine.

The git and DVC tags are resolved on the driver, where the checkout is (a Ray worker on another node has none), and
handed to the workers in the train loop's config; the machine tags are read by the worker that trains, since the
driver's CPU says nothing about the node a worker landed on.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NO_GIT = "(not a git checkout)"
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def _git(root: Path, *args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=10,
                              cwd=root).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def git_commit(root: Path = ROOT) -> str:
    """HEAD of the checkout this code runs from (not of the working directory: a Ray worker's is its session
    folder, where every stage run was once tagged `unknown`)."""
    return _git(root, "rev-parse", "HEAD") or NO_GIT


def stage_deps(stage: str, root: Path = ROOT) -> tuple[dict[str, str], set[str]]:
    """DVC's own hash of each dependency of `stage` as it is now (md5, or md5.dir for a folder): what dvc.lock
    records for this run once the stage ends. Computed by DVC's code, so the two agree; params are logged as
    MLflow params instead. Also which of them another stage writes (dvc.lock pins those, not git)."""
    from dvc.repo import Repo

    path, _, name = stage.rpartition(":")  # DVC_STAGE: "name", or "sub/dvc.yaml:name" for a nested dvc.yaml
    with Repo(str(root)) as repo:  # the target is named by path: collect() reads it relative to the cwd
        (found,) = repo.stage.collect(f"{root / (path or 'dvc.yaml')}:{name}")
        hashes = {dep.def_path: dep.get_hash() for dep in found.deps}  # each dep hashed once
        outs = {str(out.def_path) for other in repo.index.stages for out in other.outs}
    deps = {path: str(h.value) for path, h in hashes.items() if h.name != "params"}
    return deps, {d for d in deps if any(o == d or o.startswith(f"{d}/") or d.startswith(f"{o}/") for o in outs)}


def code_tags(root: Path = ROOT) -> dict[str, str]:
    """git.commit, git.dirty (a dependency of this stage, dvc.yaml or params.yaml differs from the commit; outside
    dvc repro, any tracked file), dvc.repro, dvc.stage and dvc.dep.<path> per dependency."""
    commit = git_commit(root)
    stage = os.environ.get("DVC_STAGE")
    # dvc.stage only under dvc repro (DVC_STAGE); a stage module run by hand keeps the name its code gives the run
    tags = {"git.commit": commit, "dvc.repro": "true" if stage else "false"} | ({"dvc.stage": stage} if stage else {})
    deps: dict[str, str] = {}
    produced: set[str] = set()
    try:
        deps, produced = stage_deps(stage, root) if stage else ({}, set())
    except Exception as err:  # noqa: BLE001 - an audit tag that could not be made must not stop the training
        tags["dvc.deps"] = f"(not hashed: {type(err).__name__}: {err})"[:500]
    tags |= {f"dvc.dep.{path}": value for path, value in deps.items()}
    if commit != NO_GIT:
        # the stage's own inputs, not the whole tree: dvc repro rewrites dvc.lock and git-tracked metrics as it goes,
        # and the inputs an earlier stage of the run wrote (a git-tracked registry file, metrics) are its products
        paths = [*(set(deps) - produced), "dvc.yaml", "params.yaml"] if stage else []
        changed = _git(root, "status", "--porcelain", "--untracked-files=no", "--", *paths)
        tags["git.dirty"] = "true" if changed else "false"
        if changed:
            tags["git.dirty_paths"] = " ".join(line.split(maxsplit=1)[-1] for line in changed.splitlines())[:5000]
    return tags


def host_tags(use_gpu: bool = False) -> dict[str, str]:
    """The machine a process runs on: CPU model and its bf16 support (training's dtype and speed follow it), GPU."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    tags = {"host.name": platform.node(), "host.cpu": model,
            "host.cpu_bf16": ",".join(f for f in BF16_FLAGS if f in flags) or "none", "host.gpu": "none"}
    if use_gpu:
        import torch

        if torch.cuda.is_available():
            tags["host.gpu"] = torch.cuda.get_device_name(0)
    return tags
