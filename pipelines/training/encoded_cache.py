"""Encoded training records kept between passes, so a pass that reads what an earlier one encoded skips the work.

The default DAG's long passes (`align`, and each variant's align at the ablation budget) encode every train record in
Ray Data before their first step (73,287 records: ~30 s on 2 cores, benchmarks/RESULTS.md, sixteenth pass); `align`
and three of the variants encode the same records the same way. The first pass writes its materialised blocks, one
Arrow IPC file each, in order; a later pass with the same key reads them back as the same blocks (~5 s), so its
seeded local shuffle yields the same batches (tests/training/test_training.py). The key is the bytes of the split and
the tokenizer, the encoder's settings, the records taken and their filters, and the code that encodes: anything else
is a fresh encoding."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines.training.corpus_data import count_records
from pipelines.training.loop import CODE_ROOTS, code_fingerprint, digest_files

log = logging.getLogger(__name__)

COMPLETE = "complete"  # written last: a folder without it is a write that did not finish
KEEP = 4  # encodings kept (the newest used); each is ~0.2 GB (lz4) for the default corpus' 73,287 train records


def encoding_key(split_dir: Path, encoder: dict[str, Any], limit: int, kinds: tuple[str, ...],
                 tasks: tuple[str, ...]) -> str:
    """What decides the encoded rows and their blocks (the tokenizer by its bytes, not by where it lies; a limit
    above the records there are, as none: `align` and the variants at the ablation budget read every record)."""
    settings = {k: v for k, v in encoder.items() if k != "tokenizer_dir"}
    rows = count_records(split_dir, kinds, tasks)
    digest = hashlib.sha256(json.dumps({"encoder": settings, "rows": min(limit, rows) if limit else rows,
                                        "kinds": list(kinds), "tasks": list(tasks)}, sort_keys=True).encode())
    digest.update(code_fingerprint(CODE_ROOTS).encode())
    for folder in (Path(split_dir), Path(encoder["tokenizer_dir"])):
        digest_files(digest, ((p.relative_to(folder).as_posix(), p) for p in sorted(folder.rglob("*")) if p.is_file()))
    return digest.hexdigest()[:16]


def cache_root(storage: str, split_dir: str, tokenizer_dir: str) -> Path | None:
    """Beside Ray Train's storage where that and the inputs are local folders (the default run); None (no cache)
    on a cluster's remote storage."""
    if any("://" in str(p) for p in (storage, split_dir, tokenizer_dir)):
        return None
    return Path(storage).parent / "encoded"


def cached_encoding(root: Path | None, key: str, encode: Callable[[], Any]):
    """The materialised dataset `encode()` makes, read from `root`/`key` where an earlier pass wrote it; else
    encoded now and written there for the next pass. The cache only saves time: a kept encoding that does not read
    is encoded again, and a write that fails (a full disk) only logs."""
    folder = root / key if root is not None else None
    if folder is not None and (folder / COMPLETE).exists():
        try:
            return _read(folder)
        except (OSError, pa.ArrowException) as exc:
            log.warning("training records: the kept encoding in %s does not read (%s); encoding again", folder, exc)
            shutil.rmtree(folder, ignore_errors=True)
    dataset = encode()
    if folder is not None:
        try:
            _write(dataset, folder)
            _prune(root)
        except (OSError, pa.ArrowException) as exc:
            log.warning("training records not kept for the next pass (%s): %s", folder, exc)
    return dataset


def _read(folder: Path):
    """The kept blocks, in order, as one dataset block each."""
    import ray

    files = sorted(folder.glob("block-*.arrow"))
    if not files:
        raise OSError(f"{folder}: no blocks")
    tables = [pa.ipc.open_file(pa.memory_map(str(f))).read_all() for f in files]
    os.utime(folder)  # recently used: kept by _prune
    log.info("training records: the encoding in %s (%d blocks)", folder, len(files))
    return ray.data.from_blocks(tables)  # their metadata read here (from_arrow starts a Ray task for it)


def _write(dataset, folder: Path) -> None:
    """One IPC file per block, in block order, into a temporary folder renamed into place when whole."""
    import ray

    tmp = folder.parent / f".{folder.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        for k, ref in enumerate(dataset.to_arrow_refs()):
            table = ray.get(ref)
            options = pa.ipc.IpcWriteOptions(compression="lz4")
            with pa.OSFile(str(tmp / f"block-{k:05d}.arrow"), "wb") as sink, \
                    pa.ipc.new_file(sink, table.schema, options=options) as writer:
                writer.write_table(table)
        (tmp / COMPLETE).write_text("ok\n")
        if folder.exists():  # a write that did not finish (no marker): replaced
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _prune(root: Path, keep: int = KEEP) -> None:
    """Keep the `keep` most recently used encodings, and no leftover of a write interrupted over an hour ago."""
    folders = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    leftovers = [p for p in folders if p.name.startswith(".") and time.time() - p.stat().st_mtime > 3600]
    for stale in leftovers + [p for p in folders if not p.name.startswith(".")][keep:]:
        shutil.rmtree(stale, ignore_errors=True)
