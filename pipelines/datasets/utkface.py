"""Reader for UTKFace: labels live in the file name `[age]_[gender]_[race]_[timestamp].jpg(.chip.jpg)`."""

from __future__ import annotations

import re

from model.labels import UTK_GENDERS, UTK_MAX_AGE, UTK_RACES
from pipelines.datasets.common import (
    DatasetLayoutError,
    QuarantineLog,
    ReadResult,
    Record,
    check_files,
    hash_split,
)
from pipelines.storage import Store

DATASET = "utkface"
IMAGE_SUFFIX = re.compile(r"\.jpg(\.chip\.jpg)?$", re.IGNORECASE)


def parse_utk_name(name: str) -> tuple[tuple[int, int, int] | None, str]:
    """(age, gender, race), or None and why the name is malformed or out of range."""
    stem = IMAGE_SUFFIX.sub("", name)
    fields = stem.split("_")
    if len(fields) != 4:
        return None, f"malformed_name:{len(fields)} fields in {stem!r}, expected age_gender_race_timestamp"
    if not all(f.isdigit() for f in fields):
        return None, f"malformed_name:non-numeric field in {stem!r}"
    age, gender, race = (int(f) for f in fields[:3])
    if not 0 <= age <= UTK_MAX_AGE:
        return None, f"label_out_of_range:age {age} outside 0..{UTK_MAX_AGE}"
    if gender >= len(UTK_GENDERS):
        return None, f"label_out_of_range:gender {gender}, expected 0 (male) or 1 (female)"
    if race >= len(UTK_RACES):
        return None, f"label_out_of_range:race {race}, expected 0..4"
    return (age, gender, race), ""


def read_utkface(root: str, val_share: float, test_share: float, decode_images: bool = True) -> ReadResult:
    store = Store(root)
    if not store.exists():
        raise DatasetLayoutError(root, None, "folder not found", "Point ingest.roots.utkface at the image folder")
    log = QuarantineLog(DATASET)
    files = store.list(recursive=False)
    labelled: dict[str, tuple[str, tuple[int, int, int]]] = {}
    for rel in sorted(files):
        if not IMAGE_SUFFIX.search(rel):
            log.add(f"file:{rel}", store.url(rel), "unexpected_file", "not a .jpg")
            continue
        key = IMAGE_SUFFIX.sub("", rel)
        labels, why = parse_utk_name(rel)
        if labels is None:
            reason, detail = why.split(":", 1)
            log.add(key, store.url(rel), reason, detail)
        elif key in labelled:
            log.add(f"{key}@{rel}", store.url(rel), "duplicate_id", f"same id as {labelled[key][0]}")
        else:
            labelled[key] = (rel, labels)
    checks = check_files(store, files, [rel for rel, _ in labelled.values()], decode_images, "check UTKFace")
    records = []
    for key, (rel, (age, gender, race)) in sorted(labelled.items()):
        check = checks[rel]
        if check.error:
            log.add(key, store.url(rel), "unreadable_image", check.error)
            continue
        records.append(Record(
            dataset=DATASET, id=key, split=hash_split(key, val_share, test_share), image=store.url(rel),
            image_bytes=check.size, image_checksum=check.checksum, age=age, gender=gender, race=race,
        ))
    return ReadResult(DATASET, records, sorted(log.entries.values(), key=lambda q: q.id))
