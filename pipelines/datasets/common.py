"""What every dataset reader shares: records, the quarantine, file checks, splits."""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from pipelines.storage import Store, StoredFile, md5

SPLITS = ("train", "val", "test")

# Why a record was quarantined; one reason each, the first problem found.
REASONS = {
    "wrong_column_count": "a label row has the wrong number of fields",
    "label_out_of_range": "a label value is not one the format allows",
    "duplicate_id": "the same record id appears twice",
    "missing_image": "a label row names an image that does not exist",
    "image_without_labels": "an image has no label row",
    "masks_without_labels": "masks exist for an id with no label row or image",
    "missing_split": "no split can be assigned (no mapping row)",
    "unreadable_image": "the image file cannot be decoded",
    "unreadable_mask": "a mask file cannot be decoded",
    "mask_size_mismatch": "a mask's size differs from the dataset's mask size",
    "unknown_part_name": "a mask file names a part that is not one of the 18",
    "mask_in_wrong_folder": "a mask lies outside folder idx // 2000",
    "malformed_name": "a file name does not follow the dataset's naming scheme",
    "unexpected_file": "a file that is not part of the dataset's layout",
}


class DatasetLayoutError(ValueError):
    """The dataset as a whole cannot be read (a missing label file, a broken header)."""

    def __init__(self, path: str, line: int | None, problem: str, fix: str):
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {problem}. {fix}")


@dataclass
class Record:
    dataset: str
    id: str
    split: str
    image: str
    image_bytes: int
    image_checksum: str
    masks: list[str] = field(default_factory=list)
    masks_checksum: str | None = None
    attributes: list[int] | None = None  # CelebA's 40 values, -1/1
    age: int | None = None
    gender: int | None = None  # UTKFace: 0 male, 1 female
    race: int | None = None
    expression: int | None = None  # RAF-DB label 1..7
    label_file: str | None = None
    label_line: int | None = None
    original: str | None = None  # RAF-DB: the unaligned image


def read_manifest(path: Path | str) -> list[Record]:
    """ingest's manifest.parquet -> one Record a row (what every later stage reads; no renderer needed)."""
    return [Record(**row) for row in pq.read_table(path).to_pylist()]


@dataclass(frozen=True)
class Quarantined:
    dataset: str
    id: str
    path: str
    line: int | None
    reason: str
    detail: str


@dataclass
class ReadResult:
    dataset: str
    records: list[Record]
    quarantined: list[Quarantined]
    notes: list[str] = field(default_factory=list)  # file-level oddities worth a look, not errors

    @property
    def read(self) -> int:
        return len(self.records) + len(self.quarantined)

    def reasons(self) -> Counter:
        return Counter(q.reason for q in self.quarantined)


class QuarantineLog:
    def __init__(self, dataset: str):
        self.dataset = dataset
        self.entries: dict[str, Quarantined] = {}

    def add(self, key: str, path: str, reason: str, detail: str, line: int | None = None) -> None:
        """Quarantine record `key` with its first reason; later reasons for it are ignored."""
        if reason not in REASONS:
            raise KeyError(f"unknown quarantine reason {reason!r}")
        if key not in self.entries:
            self.entries[key] = Quarantined(self.dataset, key, path, line, reason, detail)

    def __contains__(self, key: str) -> bool:
        return key in self.entries


@dataclass(frozen=True)
class FileCheck:
    size: int
    checksum: str
    dims: tuple[int, int] | None  # (width, height) when read
    error: str | None


def check_bytes(data: bytes, decode: bool) -> FileCheck:
    """md5 checksum, image size from the header, and, if asked, a full decode."""
    checksum = f"md5:{md5(data)}"
    try:
        with Image.open(io.BytesIO(data)) as img:
            dims = img.size
            if decode:
                img.load()
    except Exception as exc:  # PIL raises many types for bad bytes; all mean the same here
        return FileCheck(len(data), checksum, None, f"{type(exc).__name__}: {exc}" if data else "empty or unreadable")
    return FileCheck(len(data), checksum, dims, None)


def check_files(store: Store, listed: dict[str, StoredFile], rels: Iterable[str], decode: bool,
                desc: str, threads: int = 8, batch: int = 256) -> dict[str, FileCheck]:
    """Check many files. On S3 without decoding, the listing's ETag is the checksum and nothing is read."""
    rels = list(rels)
    if store.remote and not decode and all(listed[r].etag for r in rels):
        return {r: FileCheck(listed[r].size, f"etag:{listed[r].etag}", None, None) for r in rels}
    out: dict[str, FileCheck] = {}
    with ThreadPoolExecutor(threads) as pool, tqdm(total=len(rels), desc=desc, unit="file", mininterval=2) as bar:
        for start in range(0, len(rels), batch):
            chunk = rels[start:start + batch]
            blobs = store.read_many(chunk) if store.remote else list(pool.map(store.read_bytes, chunk))
            if isinstance(blobs, dict):
                blobs = [blobs[r] for r in chunk]
            out.update(zip(chunk, pool.map(check_bytes, blobs, [decode] * len(blobs)), strict=True))
            bar.update(len(chunk))
    return out


def hash_split(key: str, val_share: float, test_share: float) -> str:
    """A stable split from the id alone, for datasets with no official one."""
    h = int(hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()[:8], 16) / 2**32
    return "test" if h < test_share else "val" if h < test_share + val_share else "train"


def parse_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None
