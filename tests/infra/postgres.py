"""A throwaway PostgreSQL server on 127.0.0.1 from Debian's binaries, for tests; None where none is installed."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipelines.ray_session import free_port


def postgres_bin() -> Path | None:
    """The folder of initdb/pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


@contextmanager
def postgres_server(database: str) -> Iterator[str]:
    """Yields `postgresql://postgres@127.0.0.1:<port>/<database>` (trust auth, loopback only)."""
    bindir = postgres_bin()
    assert bindir, "no PostgreSQL binaries"
    # PostgreSQL refuses to run as root: as root, run it as the `postgres` user Debian's package creates
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data = Path(tempfile.mkdtemp(prefix="faceinsight-pg-"))  # not under pytest's root-only tmp folder
    if as_user:
        shutil.chown(data, "postgres")
    port = free_port()

    def pg(*args: str) -> None:
        out = subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"{args[0]}: {out.stdout[-1500:]}{out.stderr[-1500:]}"

    try:
        pg(str(bindir / "initdb"), "-D", str(data / "db"), "-U", "postgres", "-A", "trust", "--no-sync")
        pg(str(bindir / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "server.log"), "-w", "start",
           "-o", f"-h 127.0.0.1 -p {port} -k {data}")
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        yield f"postgresql://postgres@127.0.0.1:{port}/{database}"
    finally:
        if (data / "db" / "postmaster.pid").exists():
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "-w", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(data, ignore_errors=True)
