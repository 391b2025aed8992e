"""Reader for RAF-DB basic: `basic/EmoLabel/list_patition_label.txt` (sic) and the aligned images."""

from __future__ import annotations

import re

from model.labels import EXPRESSIONS
from pipelines.datasets.common import (
    DatasetLayoutError,
    QuarantineLog,
    ReadResult,
    Record,
    check_files,
    hash_split,
    parse_int,
)
from pipelines.storage import Store

DATASET = "rafdb"
LABEL_FILE = "basic/EmoLabel/list_patition_label.txt"  # the misspelling is the real file name
ALIGNED_DIR = "basic/Image/aligned"
ORIGINAL_DIR = "basic/Image/original"
NAME = re.compile(r"^(train|test)_(\d+)\.jpg$")
ALIGNED = re.compile(r"^(.+)_aligned\.jpg$")


def read_rafdb(root: str, val_share: float, decode_images: bool = True) -> ReadResult:
    """RAF-DB has train and test only; `val_share` of train (by a stable hash of the id) becomes val."""
    store = Store(root)
    if not store.exists(LABEL_FILE):
        raise DatasetLayoutError(store.url(LABEL_FILE), None, "file not found",
                                 "Point ingest.roots.rafdb at the folder that contains basic/")
    log = QuarantineLog(DATASET)
    label_path = store.url(LABEL_FILE)
    rows: dict[str, tuple[int, int, str]] = {}
    for lineno, line in enumerate(store.read_text(LABEL_FILE).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        key = fields[0].removesuffix(".jpg")
        if len(fields) != 2:
            log.add(key, label_path, "wrong_column_count", f"{len(fields)} fields, expected 2", lineno)
            continue
        m = NAME.match(fields[0])
        if not m:
            log.add(key, label_path, "malformed_name", f"{fields[0]!r} is not train_NNNNN.jpg / test_NNNNN.jpg",
                    lineno)
            continue
        label = parse_int(fields[1])
        if label is None or not 1 <= label <= len(EXPRESSIONS):
            log.add(key, label_path, "label_out_of_range", f"label {fields[1]!r}, expected 1..7", lineno)
            continue
        if key in rows:
            log.add(f"{key}@{lineno}", label_path, "duplicate_id", f"already on line {rows[key][1]}", lineno)
            continue
        rows[key] = (label, lineno, m.group(1))

    aligned_files = store.list(ALIGNED_DIR)
    originals = store.list(ORIGINAL_DIR)
    aligned: dict[str, str] = {}
    for rel in aligned_files:
        m = ALIGNED.match(rel[len(ALIGNED_DIR) + 1:])
        if m:
            aligned[m.group(1)] = rel
        else:
            log.add(f"file:{rel}", store.url(rel), "unexpected_file", "not '<name>_aligned.jpg'")
    for key in set(aligned) - set(rows):
        log.add(key, store.url(aligned[key]), "image_without_labels", f"no row in {LABEL_FILE}")
    present = []
    for key, (_, lineno, _) in rows.items():
        if key not in aligned:
            log.add(key, label_path, "missing_image", f"{ALIGNED_DIR}/{key}_aligned.jpg not found", lineno)
        elif key not in log:
            present.append(key)
    checks = check_files(store, aligned_files, [aligned[k] for k in present], decode_images, "check RAF-DB")
    records = []
    for key in sorted(present):
        label, lineno, split = rows[key]
        check = checks[aligned[key]]
        if check.error:
            log.add(key, store.url(aligned[key]), "unreadable_image", check.error)
            continue
        if split == "train":
            split = "val" if hash_split(key, val_share, 0.0) == "val" else "train"
        original = f"{ORIGINAL_DIR}/{key}.jpg"
        records.append(Record(
            dataset=DATASET, id=key, split=split, image=store.url(aligned[key]), image_bytes=check.size,
            image_checksum=check.checksum, expression=label, label_file=label_path, label_line=lineno,
            original=store.url(original) if original in originals else None,
        ))
    return ReadResult(DATASET, records, sorted(log.entries.values(), key=lambda q: q.id))
