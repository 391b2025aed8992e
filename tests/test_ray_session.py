"""`python -m pipelines.ray_session CMD`: CMD's Ray stages share one instance that ends with CMD."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil

from pipelines.ray_session import SESSION_ENV, main

# what a Ray stage does: join through init_ray, run a task, and say where it ran
STAGE = textwrap.dedent("""
    import json, os, sys
    import psutil, ray
    from pipelines.ray_runtime import init_ray
    init_ray()
    node = ray.get(ray.remote(lambda: ray.get_runtime_context().get_node_id()).remote())
    folder = os.environ.get("FACEINSIGHT_RAY_SESSION")
    # the instance's processes now: those naming its folder, and theirs (the agents rename their command lines)
    heads = [p for p in psutil.process_iter(["cmdline"]) if folder in " ".join(p.info["cmdline"] or [])]
    pids = [p.pid for h in heads for p in [h, *h.children(recursive=True)] if p.pid != os.getpid()]
    with open(sys.argv[1], "a") as fh:
        fh.write(json.dumps({"gcs": ray.get_runtime_context().gcs_address, "node": node, "session": folder,
                             "pids": pids}) + "\\n")
""")


def _session(command: str, tmp_path: Path, env: dict | None = None, unset: tuple[str, ...] = ()
             ) -> subprocess.CompletedProcess:
    """`command` in a session, outside any cluster or session of this process; `unset`: prefixes of variables
    the command must not have."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("RAY_ADDRESS", SESSION_ENV) and not (unset and k.startswith(unset))}
    return subprocess.run([sys.executable, "-m", "pipelines.ray_session", "bash", "-c", command], cwd=tmp_path,
                          env=base | (env or {}), capture_output=True, text=True, timeout=300)


def test_the_stages_of_a_session_share_one_instance_that_stops_with_it(tmp_path):
    assert SESSION_ENV in STAGE
    (tmp_path / "stage.py").write_text(STAGE)
    # two stages one after the other, then the command's own exit code
    out = _session(f"{sys.executable} stage.py seen.jsonl && {sys.executable} stage.py seen.jsonl && exit 3",
                   tmp_path)
    assert out.returncode == 3, out.stdout[-2000:] + out.stderr[-2000:]
    seen = [json.loads(line) for line in (tmp_path / "seen.jsonl").read_text().splitlines()]
    assert len(seen) == 2 and seen[0]["gcs"] == seen[1]["gcs"] and seen[0]["node"] == seen[1]["node"], seen
    folder = seen[0]["session"]
    assert folder and not Path(folder).exists()  # the session's folder (Ray's temp dir) is gone
    port = seen[0]["gcs"].rsplit(":", 1)[1]
    cmdlines = [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])]
    left = [c for c in cmdlines if folder in c or f"gcs_server_port={port}" in c]
    assert left == []  # none of the instance's processes outlives the command
    alive = [p for p in seen[0]["pids"] if _running(p)]
    assert len(seen[0]["pids"]) > 3 and alive == [], alive  # ... nor any it started (the raylet's agents)


def test_a_fresh_machine_without_a_ray_token_gets_one_and_the_stages_join(tmp_path):
    # a new user's machine: no ~/.ray/auth_token, and `ray start --head` only reads one (a local ray.init makes it)
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "stage.py").write_text(STAGE)
    out = _session(f"{sys.executable} stage.py seen.jsonl", tmp_path, env={"HOME": str(home), "RAY_AUTH_MODE": "token"},
                   unset=("RAY_AUTH_TOKEN",))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert len((home / ".ray" / "auth_token").read_text().strip()) >= 32
    assert json.loads((tmp_path / "seen.jsonl").read_text())["gcs"]


def _running(pid: int) -> bool:
    """Whether the process runs (a zombie waits only to be reaped; one that ends while asked has ended)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_command_that_needs_no_ray_starts_none(tmp_path):
    out = _session(f'echo "${SESSION_ENV}"', tmp_path)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    folder = Path(out.stdout.strip())
    assert folder.name.startswith("fi-ray-") and not folder.exists()


def test_a_cluster_address_is_left_to_the_command(tmp_path):
    out = _session(f'echo "[${SESSION_ENV}] $RAY_ADDRESS"', tmp_path, env={"RAY_ADDRESS": "10.0.0.1:6379"})
    assert out.returncode == 0 and out.stdout.strip() == "[] 10.0.0.1:6379", out.stdout + out.stderr


def test_without_a_command_it_explains_itself(capsys):
    assert main([]) == 2
    assert "dvc repro" in capsys.readouterr().out
    assert main(["--help"]) == 0
