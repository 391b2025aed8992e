"""One local Ray instance shared by every stage of a command (`make run`'s `dvc repro`).

    python -m pipelines.ray_session dvc repro [ARGS...]

A stage that starts Ray itself pays for `ray.init` (GCS, raylet, the autoscaler monitor) and for Ray's shutdown at
its exit, and the default DAG has 15+ Ray stages. In a session the first stage that needs Ray starts a head
(`ray start --head` in the session's own folder), the later ones join it as they would join a cluster's head, and
the head stops when the command ends, however it ends. A command with nothing to run starts nothing (a no-op
`make run` stays a no-op). Where RAY_ADDRESS is set (a cluster), the command runs as it is; `dvc repro` without
this wrapper still works: each stage then starts and stops an instance of its own.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

SESSION_ENV = "FACEINSIGHT_RAY_SESSION"  # the session's folder: the head's address file and Ray's temp dir
AUTH_MODE_ENV = "RAY_AUTH_MODE"


def session_address() -> str | None:
    """The session's head (started here if no stage has started it yet), or None outside a session."""
    folder = os.environ.get(SESSION_ENV)
    if not folder or os.environ.get("RAY_ADDRESS"):
        return None
    _token_auth_unless_set()
    address_file = Path(folder) / "address"
    if address_file.exists():
        return address_file.read_text().strip()
    _token_for_a_new_instance()
    address = _start_head(Path(folder))
    partial = address_file.with_suffix(".partial")  # written whole, then renamed: a reader never sees half of it
    partial.write_text(address)
    partial.replace(address_file)
    return address


def _token_auth_unless_set() -> None:
    """Token authentication, as a local ray.init() has it, for the head and every stage alike. Ray reads the mode
    into its config when it is imported: set here after the import, the config is read again (as ray.init does)."""
    if os.environ.get(AUTH_MODE_ENV) is None:
        os.environ[AUTH_MODE_ENV] = "token"
        from ray._raylet import Config

        Config.initialize("")


def _token_for_a_new_instance() -> None:
    """The token a new local instance needs, generated (in ~/.ray/auth_token) where there is none, as a local
    ray.init() does: `ray start` only reads one, so on a fresh machine the head would refuse to start."""
    from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled

    ensure_token_if_auth_enabled(None, create_token_if_missing=True)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now ("": on every interface), for a server about to start."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _start_head(folder: Path) -> str:
    from ray._private.services import get_node_ip_address

    port = free_port("")  # the GCS listens on every interface
    ray = Path(sys.executable).with_name("ray")
    command = [str(ray), "start", "--head", "--port", str(port), "--include-dashboard", "false",
               "--disable-usage-stats", "--temp-dir", str(folder / "ray")]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"could not start the run's Ray instance ({' '.join(command)}), exit {out.returncode}:\n"
                           f"{(out.stdout + out.stderr)[-3000:]}\nRun `dvc repro` without pipelines.ray_session "
                           f"(each stage then starts Ray itself), or set RAY_ADDRESS to a running cluster.")
    return f"{get_node_ip_address()}:{port}"


def stop_processes_mentioning(*markers: str, grace: float = 1.0) -> int:
    """Terminate, then after `grace` seconds kill, every process whose command line names one of `markers` (a Ray
    instance's own temp folder, its GCS port): that instance's processes only, never another Ray on the machine.
    The grace is ray.shutdown()'s own for each process of a local instance: the GCS and the raylet answer SIGTERM
    with a drain that outlasts 15 s when nothing is left to drain. How many processes there were."""
    import psutil

    found: dict[int, psutil.Process] = {}  # by PID: a child may also name a marker itself
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.pid != os.getpid() and any(m in cmdline for m in markers):
            found[proc.pid] = proc
            try:  # and what they started: the raylet's agents rename themselves (`ray::DashboardAgent`)
                found |= {child.pid: child for child in proc.children(recursive=True) if child.pid != os.getpid()}
            except psutil.NoSuchProcess:
                pass
    mine = list(found.values())
    for proc in mine:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(mine, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    return len(mine)


def run_in_session(command: list[str]) -> int:
    """`command`'s exit code, its Ray stages sharing one instance that ends with it."""
    if os.environ.get("RAY_ADDRESS"):
        return subprocess.call(command)
    folder = Path(tempfile.mkdtemp(prefix="fi-ray-"))  # short: Ray's socket paths under it must stay < 108 bytes
    env = dict(os.environ) | {SESSION_ENV: str(folder)}  # token auth: each stage's session_address sets it
    try:
        proc = subprocess.Popen(command, env=env)
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:  # Ctrl-C reached the command too (one process group): let it stop first
                continue
    finally:
        if (folder / "ray").exists():  # a stage started the head (or began to)
            stop_processes_mentioning(str(folder))
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    command = list(sys.argv[1:] if argv is None else argv)
    if not command or command[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if command else 2
    return run_in_session(command)


if __name__ == "__main__":
    sys.exit(main())
