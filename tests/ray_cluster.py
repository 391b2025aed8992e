"""A throwaway 2-node Ray cluster on this machine (`ray start --head`, then `ray start --address`).

With `second_ip` the second node registers at another loopback address (127.0.0.2): to the pipeline it is
a machine elsewhere, so stages must hand it URLs, not this machine's paths (pipelines/cluster.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipelines.ray_session import free_port, stop_processes_mentioning


def ray_cmd(*args: str, env: dict) -> None:
    exe = Path(sys.executable).with_name("ray")
    out = subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=180)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


@contextmanager
def two_node_cluster(env: dict[str, str], cpus: int = 2, second_ip: str | None = None) -> Iterator[str]:
    """Yields the head's address (for RAY_ADDRESS). `env` is both nodes' environment (from cluster_env())."""
    from ray._private.services import get_node_ip_address

    env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
    port = free_port()
    ip = get_node_ip_address()
    head = f"{ip}:{port}"
    temp = f"/tmp/ray_2node_{port}"  # not the session's /tmp/ray
    try:
        ray_cmd("start", "--head", "--port", str(port), "--num-cpus", str(cpus), "--include-dashboard", "false",
                "--disable-usage-stats", "--temp-dir", temp, env=env)
        extra = ["--node-ip-address", second_ip] if second_ip else []
        ray_cmd("start", "--address", head, "--num-cpus", str(cpus), *extra, "--disable-usage-stats",
                "--temp-dir", temp, env=env)
        yield head
    finally:
        stop_cluster(ip, port)


def stop_cluster(ip: str, port: int) -> None:
    """End only this cluster's processes (found by its GCS port and temp dir), never the session's own Ray."""
    stop_processes_mentioning(f"{ip}:{port}", f"gcs_server_port={port}", f"ray_2node_{port}")


def cluster_env() -> dict[str, str]:
    """This process's environment for the cluster's nodes and the drivers that join it.

    Token authentication off on both sides: a driver that sends no token (or expects one) where the nodes
    do not cannot get its objects to them. The session's own `ray.init()` sets RAY_AUTH_MODE=token in
    this process, so a copy of os.environ alone would start the drivers with tokens on and the nodes off:
    train_parser then failed with OwnerDiedError on the far node (the flaky runs of issue 7).
    """
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "disabled"  # a throwaway cluster: no token to hand to the second node
    return env
