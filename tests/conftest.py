"""Shared fixtures: small synthetic datasets rendered once per test session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.ray_session import free_port
from pipelines.synthetic.writers import SyntheticConfig, write_synthetic

# `make test` runs two pytest workers on a 2-core machine, and each starts Ray workers and stage processes beside the
# other's: one OpenMP thread per process, or torch's threads (one per core in every process) wait on each other. A
# small model's 400 steps: 0.9 s alone on 2 threads, 9.7-10.6 s for each of two such processes at once; 1.6 s alone on
# one thread, 1.5 s for each of two (benchmarks/thread_contention.py). Set before torch is imported; subprocesses
# inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "torch" in sys.modules:  # imported already (a plugin): its pool is sized
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parents[1]
SEED = 1234
# Default image and mask sizes (small parts must stay visible at these), few faces.
SMALL = SyntheticConfig(celebamask_hq=200, utkface=60, rafdb=60, utkface_size=96, rafdb_size=128, defects=0,
                        workers=2)


# `make test` runs the suite on two pytest-xdist workers, one test module at a time on one worker, so a module's
# fixtures are built once (`-n 2 --dist loadfile --no-loadscope-reorder`; pytest 9 ignores the `xdist_group` marker
# that did this before: xdist renames an item's `_nodeid`, which pytest 9 no longer reads, so every test went on its
# own and module fixtures such as an `align` pass were built on both workers). The modules start longest first (the
# seconds of a suite run, beside each other), so the last to start are short ones and both workers end together.
FIRST = ("tests/test_dvc_pipeline.py",  # ~480 s
         "tests/test_dvc_cluster.py",  # ~450 s
         "tests/training/test_training.py",  # ~480 s
         "tests/training/test_tracking_outage.py",  # ~270 s
         "tests/evaluation/test_report.py",  # ~100 s
         "tests/infra/test_mlflow_auth.py",  # ~90 s
         "tests/test_parser_training.py",  # ~90 s
         "tests/corpus/test_build.py",  # ~65 s
         "tests/training/test_variants.py",  # ~50 s
         "tests/infra/test_mlflow_deployment.py",  # ~45 s
         "tests/model/test_specialist.py",  # ~35 s
         "tests/test_storage_s3.py")  # ~35 s


def pytest_collection_modifyitems(config, items) -> None:
    """The modules of FIRST first, in its order; the rest as collected."""
    items.sort(key=lambda item: next((k for k, path in enumerate(FIRST) if item.nodeid.startswith(path + "::")),
                                     len(FIRST)))


@pytest.fixture(scope="session")
def synthetic_roots(tmp_path_factory) -> dict[str, Path]:
    """Clean synthetic datasets (no crafted defects). Read-only: copy before changing."""
    return write_synthetic(tmp_path_factory.mktemp("synthetic"), SEED, SMALL)


@pytest.fixture
def dataset_copy(synthetic_roots, tmp_path):
    """A writable copy of one synthetic dataset: dataset_copy('utkface') -> Path."""
    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(synthetic_roots[name], target)
        return target
    return copy


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API server (moto_server) on loopback, with dummy credentials in the environment."""
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole session (it costs ~2.5 GB and seconds to start)."""
    import ray

    from pipelines.ray_runtime import init_ray

    os.environ.pop("RAY_ADDRESS", None)
    init_ray()
    yield ray
    ray.shutdown()
