"""Where Ray's workers can see a stage's files.

On a local cluster (every node at the driver's address) a path on this machine is fine. On a remote one
(RAY_ADDRESS names machines elsewhere) a worker sees only URLs (s3://...) and shared mounts, so a stage
stages its local inputs to the cluster storage and refuses, at start-up, any path a worker could not open:

    FACEINSIGHT_CLUSTER_STORAGE=s3://bucket/faceinsight   inputs staged under it, Ray Train runs under it
    FACEINSIGHT_SHARED_PATHS=/mnt/efs:/fsx                mounts every node has at the same path
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pipelines.ray_runtime import init_ray
from pipelines.storage import filesystem, is_remote, upload_dir

log = logging.getLogger(__name__)

STORAGE_ENV = "FACEINSIGHT_CLUSTER_STORAGE"
SHARED_ENV = "FACEINSIGHT_SHARED_PATHS"


class UnreachablePathError(RuntimeError):
    """A stage would hand a remote worker a path that exists only on this machine."""


@dataclass(frozen=True)
class ClusterView:
    driver_ip: str
    node_ips: tuple[str, ...]

    @property
    def local(self) -> bool:
        return all(ip == self.driver_ip for ip in self.node_ips)


def cluster_view() -> ClusterView:
    """The running cluster's alive nodes as the driver sees them (ray.init() must have run)."""
    import ray

    ips = tuple(sorted({n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}))
    return ClusterView(ray.util.get_node_ip_address(), ips)


def _content_hash(local: Path) -> str:
    """Of a file or a folder's files (names and bytes): staging is content-addressed, so reruns reuse it."""
    h = hashlib.sha256()
    files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    for file in files:
        h.update(file.relative_to(local if local.is_dir() else local.parent).as_posix().encode() + b"\0")
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:20]


@dataclass
class Placement:
    """What a stage may hand to Ray workers, for one cluster."""

    view: ClusterView
    storage: str = ""  # a URL every node reaches; "" = none
    shared: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, view: ClusterView | None = None) -> Placement:
        storage = os.environ.get(STORAGE_ENV, "").rstrip("/")
        if storage and not is_remote(storage) and not storage.startswith("/"):
            raise ValueError(f"{STORAGE_ENV}={storage}: give a URL (s3://bucket/prefix) or an absolute shared path")
        shared = tuple(str(Path(p).resolve()) for p in os.environ.get(SHARED_ENV, "").split(":") if p)
        return cls(view or cluster_view(), storage, shared)

    @property
    def remote(self) -> bool:
        return not self.view.local

    def reachable(self, path: str | Path) -> bool:
        text = str(path)
        if is_remote(text) or not self.remote:
            return True
        resolved = str(Path(text).resolve())
        return any(resolved == s or resolved.startswith(s.rstrip("/") + "/") for s in self.shared)

    def require(self, stage: str, paths: Mapping[str, str | Path | None]) -> None:
        """Fail before any work starts, naming every path a worker would not see and what to do."""
        bad = {name: str(p) for name, p in paths.items() if p and not self.reachable(p)}
        if not bad:
            return
        lines = "\n".join(f"  {name}: {p}" for name, p in bad.items())
        raise UnreachablePathError(
            f"{stage}: RAY_ADDRESS names a cluster with nodes at {', '.join(self.view.node_ips)} (this machine is "
            f"{self.view.driver_ip}), but these paths exist only here, where its workers cannot read them:\n{lines}\n"
            f"Put them on S3 (raw data: `ingest.roots` as s3:// URLs; MLflow: MLFLOW_TRACKING_URI=http://<server>), "
            f"set {STORAGE_ENV}=s3://<bucket>/<prefix> so the stage stages its inputs there, or mount shared storage "
            f"at the same path on every node and list it in {SHARED_ENV}.")

    def require_files(self, stage: str, what: str, paths: Iterable[str]) -> None:
        """`require` for many files (a manifest's images): names a few and counts the rest."""
        bad = [p for p in paths if p and not self.reachable(p)]
        if bad:
            more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
            self.require(stage, {f"{what}{more}": "\n    ".join(bad[:3])})

    def hand(self, stage: str, what: str, local: Path) -> str:
        """The name under which workers open `local` (a file or folder): itself where they see it, else a
        content-addressed copy in the cluster storage (uploaded once)."""
        if self.reachable(local):
            return str(Path(local).resolve()) if not is_remote(str(local)) else str(local)
        if not self.storage:
            self.require(stage, {what: local})
        local = Path(local)
        url = f"{self.storage}/staged/{_content_hash(local)}/{local.name}"
        fs, base = filesystem(url)
        marker = f"{base}.complete"  # written last: a half-finished upload is never taken as staged
        if not fs.exists(marker):
            log.info("%s: staging %s (%s) to %s", stage, what, local, url)
            if local.is_file():
                fs.put_file(str(local), base)
            else:
                upload_dir(local, url)
            with fs.open(marker, "wb") as fh:
                fh.write(b"ok")
        return url

    def scratch(self, stage: str) -> str | None:
        """A fresh folder URL remote workers can write to, or None where they can write to this machine."""
        if not self.remote:
            return None
        if not self.storage:
            raise UnreachablePathError(
                f"{stage}: its workers write files, and the cluster's nodes ({', '.join(self.view.node_ips)}) cannot "
                f"write to this machine; set {STORAGE_ENV}=s3://<bucket>/<prefix>")
        return f"{self.storage}/scratch/{stage}-{uuid.uuid4().hex[:12]}"

    def train_storage(self, stage: str, storage: str) -> str:
        """Ray Train's storage: as given where every node (and the driver) reaches it, else under the
        cluster storage."""
        if self.reachable(storage):
            return storage if is_remote(storage) else str(Path(storage).resolve())
        if self.storage:
            return f"{self.storage}/ray"
        self.require(stage, {"Ray Train storage (--storage)": storage})
        return storage


def placement() -> Placement:
    """The placement for the cluster this process is connected to (starts/joins Ray if needed)."""
    init_ray()
    return Placement.from_env()
