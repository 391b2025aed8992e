"""Local paths and s3:// URLs behind one small interface (fsspec underneath).

S3 endpoints and credentials come from the standard AWS environment (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_PROFILE, an instance profile, ...), never from files in this repository.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import fsspec


def is_remote(url: str) -> bool:
    return "://" in str(url) and not str(url).startswith("file://")


def _s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _s3_options() -> dict:
    endpoint = _s3_endpoint()
    return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}


class StorageUnavailable(RuntimeError):
    """A remote store that did not answer (endpoint down, network, credentials refused) after the S3 client's
    own retries. The stage stops: a file it could not read is not a bad file, so nothing is quarantined for it."""


@contextmanager
def answering(url: str) -> Iterator[None]:
    """Turns a remote store's failure (anything but a missing file) into one StorageUnavailable that names the
    endpoint, the object and what to do."""
    try:
        yield
    except FileNotFoundError:
        raise
    except Exception as exc:
        if not is_remote(url):
            raise
        raise unavailable(url, exc) from exc


def unavailable(url: str, exc: BaseException) -> StorageUnavailable:
    endpoint = (_s3_endpoint() or "AWS's default endpoint") if str(url).startswith("s3://") else "its server"
    return StorageUnavailable(
        f"{url}: the object store at {endpoint} did not answer ({type(exc).__name__}: {exc}). Nothing was written "
        "and nothing was quarantined for it; check that the endpoint is up and reachable from here "
        "(AWS_ENDPOINT_URL, credentials), then rerun the stage.")


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem that serves `url`, and the path inside it."""
    url = str(url)
    options = _s3_options() if url.startswith("s3://") else {}
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs, path.rstrip("/")


@dataclass(frozen=True)
class StoredFile:
    path: str  # as the user would name it: a local path or an s3:// URL
    size: int
    etag: str | None  # S3's entity tag when listed from S3


class Store:
    """A dataset root: list its files, read them, and name them the way the user did."""

    def __init__(self, root: str):
        self.root = str(root).rstrip("/")
        self.fs, self.base = filesystem(self.root)
        self.remote = is_remote(self.root)

    def url(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def rel(self, fs_path: str) -> str:
        return fs_path[len(self.base) + 1:] if fs_path.startswith(self.base + "/") else fs_path

    def exists(self, rel: str = "") -> bool:
        with answering(self.url(rel) if rel else self.root):
            return self.fs.exists(f"{self.base}/{rel}" if rel else self.base)

    def list(self, rel: str = "", recursive: bool = True) -> dict[str, StoredFile]:
        """Files under `rel`, keyed by their path relative to the root; empty when `rel` is absent."""
        path = f"{self.base}/{rel}".rstrip("/")
        self.fs.invalidate_cache(path)  # a listing must see the bucket as it is now, not as it was cached
        with answering(self.url(rel).rstrip("/")):
            if not self.fs.exists(path):
                return {}
            if recursive:
                infos = self.fs.find(path, detail=True)
            else:
                infos = {i["name"]: i for i in self.fs.ls(path, detail=True) if i["type"] == "file"}
        out = {}
        for name, info in infos.items():
            if info.get("type", "file") != "file":
                continue
            etag = info.get("ETag") or info.get("etag")
            out[self.rel(name)] = StoredFile(self.url(self.rel(name)), int(info.get("size") or 0),
                                             etag.strip('"') if etag else None)
        return out

    def read_bytes(self, rel: str) -> bytes:
        with answering(self.url(rel)):
            return self.fs.cat_file(f"{self.base}/{rel}")

    def read_many(self, rels: list[str]) -> dict[str, bytes]:
        """Read many files at once (concurrent requests on S3). A file gone since the listing reads as empty (the
        caller quarantines it); a store that does not answer raises StorageUnavailable."""
        paths = [f"{self.base}/{rel}" for rel in rels]
        with answering(self.url(rels[0]) if rels else self.root):
            data = self.fs.cat(paths, on_error="return")
        out = {}
        for rel, path in zip(rels, paths, strict=True):
            value = data.get(path)
            if isinstance(value, BaseException) and not isinstance(value, FileNotFoundError):
                raise unavailable(self.url(rel), value) from value
            out[rel] = value if isinstance(value, bytes) else b""
        return out

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")


def read_url(url: str) -> bytes:
    fs, path = filesystem(url)
    with answering(url):
        return fs.cat_file(path)


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary sibling of `path` (same suffix) to write to; renamed onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to a temporary name, then rename: a crash never leaves a half-written file."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """A fresh temporary sibling of directory `final` (not yet created) to fill; moved onto `final` only
    when the block succeeds, removed when it fails, so `final` is always the old whole or the new whole."""
    final = Path(final)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished temporary directory into place (the old one goes only once the new one is whole)."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def upload_dir(local: Path, url: str) -> None:
    """Copy a local directory tree to a local path or s3:// URL."""
    fs, path = filesystem(url)
    files = sorted(p for p in local.rglob("*") if p.is_file())
    targets = [f"{path}/{file.relative_to(local).as_posix()}" for file in files]
    if not is_remote(url):
        for target in targets:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
    fs.put([str(f) for f in files], targets)  # one batched call: concurrent uploads on S3


def local_copy(path_or_url: str | Path) -> Path:
    """A local path for a file or folder a stage handed to this worker: itself, or (a URL) a download
    cached per machine, so the many actors of one node fetch it once."""
    text = str(path_or_url)
    if not is_remote(text):
        return Path(text)
    fs, base = filesystem(text)
    cache = Path(tempfile.gettempdir()) / "faceinsight-staged" / hashlib.sha256(text.encode()).hexdigest()[:20]
    target = cache / Path(base).name
    if (cache / ".complete").exists():
        return target
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="fetch-", dir=cache.parent))
    try:
        if fs.isfile(base):
            fs.get_file(base, str(tmp / Path(base).name))
        else:
            for remote in fs.find(base):
                local = tmp / Path(base).name / remote[len(base) + 1:]
                local.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(remote, str(local))
        (tmp / ".complete").write_text(text)
        try:
            tmp.rename(cache)
        except OSError:  # another actor on this node finished first: use its copy
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def arrow_filesystem(url: str):
    """(pyarrow filesystem or None, path) for Ray's readers and Ray Train: for s3:// with AWS_ENDPOINT_URL
    (MinIO, moto, ...) an explicit S3 filesystem that carries its endpoint to every worker."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not url.startswith("s3://") or not endpoint:
        return None, url
    from pyarrow import fs

    scheme, _, host = endpoint.partition("://")
    filesystem = fs.S3FileSystem(endpoint_override=host, scheme=scheme,
                                 access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
                                 secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
                                 region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    return filesystem, url.removeprefix("s3://")


def remove_tree(url: str) -> None:
    fs, base = filesystem(url)
    if fs.exists(base):
        fs.rm(base, recursive=True)
