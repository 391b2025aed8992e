"""Reader for the CelebAMask-HQ layout (formats.md), local or on S3, validating as it reads."""

from __future__ import annotations

import re
from collections import Counter

from model.labels import CELEBA_ATTRIBUTES, MASK_PARTS
from pipelines.datasets.common import (
    DatasetLayoutError,
    QuarantineLog,
    ReadResult,
    Record,
    check_files,
    md5,
    parse_int,
)
from pipelines.storage import Store

DATASET = "celebamask_hq"
ATTRIBUTE_FILE = "CelebAMask-HQ-attribute-anno.txt"
MAPPING_FILE = "CelebA-HQ-to-CelebA-mapping.txt"
IMAGE_DIR = "CelebA-HQ-img"
MASK_DIR = "CelebAMask-HQ-mask-anno"
IMAGE_NAME = re.compile(r"^(\d+)\.jpg$")
MASK_NAME = re.compile(r"^(\d+)/(\d{5})_([A-Za-z_]+)\.png$")
# CelebA's official partition by original file number (list_eval_partition.txt).
SPLIT_BOUNDS = ((162770, "train"), (182637, "val"), (202599, "test"))


def split_of_orig_file(number: int) -> str | None:
    for upper, split in SPLIT_BOUNDS:
        if 1 <= number <= upper:
            return split
    return None


def parse_attribute_file(text: str, path: str,
                         log: QuarantineLog) -> tuple[dict[str, tuple[list[int], int]], int, int]:
    """{idx: (40 values, line number)}, the declared and the actual row count; bad rows go to `log`."""
    lines = text.splitlines()
    if len(lines) < 2:
        raise DatasetLayoutError(path, 1, "expected a row-count line and an attribute-names line",
                                 "Check that this is CelebAMask-HQ-attribute-anno.txt")
    declared = parse_int(lines[0].strip())
    if declared is None:
        raise DatasetLayoutError(path, 1, f"line 1 must be the row count, got {lines[0][:40]!r}",
                                 "Restore the file's first line (e.g. '30000')")
    names = lines[1].split()
    if tuple(names) != CELEBA_ATTRIBUTES:
        missing = [n for n in CELEBA_ATTRIBUTES if n not in names]
        raise DatasetLayoutError(path, 2, f"the attribute names differ from CelebA's 40 (missing: {missing[:5]})",
                                 "Line 2 must list the 40 CelebA attributes in file order")
    rows: dict[str, tuple[list[int], int]] = {}
    for lineno, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        name = fields[0]
        key = IMAGE_NAME.match(name).group(1) if IMAGE_NAME.match(name) else name
        if len(fields) != len(CELEBA_ATTRIBUTES) + 1:
            log.add(key, path, "wrong_column_count", f"{len(fields)} fields, expected 41", lineno)
            continue
        values = [parse_int(v) for v in fields[1:]]
        bad = [(CELEBA_ATTRIBUTES[k], fields[k + 1]) for k, v in enumerate(values) if v not in (-1, 1)]
        if bad:
            log.add(key, path, "label_out_of_range", f"{bad[0][0]}={bad[0][1]!r}, expected -1 or 1", lineno)
            continue
        if not IMAGE_NAME.match(name):
            log.add(key, path, "malformed_name", f"{name!r} is not '<idx>.jpg'", lineno)
            continue
        if key in rows:
            log.add(f"{key}@{lineno}", path, "duplicate_id", f"{name} already on line {rows[key][1]}", lineno)
            continue
        rows[key] = (values, lineno)  # type: ignore[assignment]
    return rows, declared, sum(1 for line in lines[2:] if line.split())


def parse_mapping_file(text: str, path: str) -> dict[str, str]:
    """{idx: split} from CelebA-HQ-to-CelebA-mapping.txt; rows that do not parse give no split."""
    lines = text.splitlines()
    if not lines or lines[0].split() != ["idx", "orig_idx", "orig_file"]:
        raise DatasetLayoutError(path, 1, "expected the header 'idx orig_idx orig_file'",
                                 "Check that this is CelebA-HQ-to-CelebA-mapping.txt")
    splits = {}
    for line in lines[1:]:
        fields = line.split()
        if len(fields) != 3:
            continue
        number = parse_int(fields[2].split(".")[0])
        split = split_of_orig_file(number) if number is not None else None
        if split is not None and parse_int(fields[0]) is not None:
            splits[str(int(fields[0]))] = split
    return splits


def read_celebamask_hq(root: str, decode_images: bool = True) -> ReadResult:
    store = Store(root)
    for rel in (ATTRIBUTE_FILE, MAPPING_FILE):
        if not store.exists(rel):
            raise DatasetLayoutError(store.url(rel), None, "file not found",
                                     f"Point ingest.roots.celebamask_hq at the folder that holds {rel}")
    log = QuarantineLog(DATASET)
    attr_path = store.url(ATTRIBUTE_FILE)
    rows, declared, actual = parse_attribute_file(store.read_text(ATTRIBUTE_FILE), attr_path, log)
    splits = parse_mapping_file(store.read_text(MAPPING_FILE), store.url(MAPPING_FILE))
    notes = []
    if declared != actual:
        notes.append(f"{attr_path}: line 1 declares {declared} rows, the file has {actual}")

    images: dict[str, str] = {}
    image_files = store.list(IMAGE_DIR)
    for rel in image_files:
        m = IMAGE_NAME.match(rel[len(IMAGE_DIR) + 1:])
        if m:
            images[str(int(m.group(1)))] = rel
        else:
            log.add(f"file:{rel}", store.url(rel), "unexpected_file", "not '<idx>.jpg'")

    masks: dict[str, dict[str, str]] = {}
    mask_files = store.list(MASK_DIR)
    for rel in mask_files:
        m = MASK_NAME.match(rel[len(MASK_DIR) + 1:])
        if not m:
            log.add(f"file:{rel}", store.url(rel), "unexpected_file", "not '<k>/<idx:05d>_<part>.png'")
            continue
        folder, idx, part = int(m.group(1)), str(int(m.group(2))), m.group(3)
        if part not in MASK_PARTS:
            log.add(idx, store.url(rel), "unknown_part_name", f"part {part!r} is not one of the 18 parts")
        elif folder != int(idx) // 2000:
            log.add(idx, store.url(rel), "mask_in_wrong_folder", f"expected folder {int(idx) // 2000}")
        masks.setdefault(idx, {})[part] = rel

    for idx in set(images) - set(rows):
        log.add(idx, store.url(images[idx]), "image_without_labels", f"no row for {idx}.jpg in {ATTRIBUTE_FILE}")
    for idx in set(masks) - set(rows) - set(images):
        log.add(idx, store.url(next(iter(masks[idx].values()))), "masks_without_labels",
                f"{len(masks[idx])} mask files, no label row or image")
    candidates = []
    for idx, (_, lineno) in rows.items():
        if idx in log:
            continue
        if idx not in images:
            log.add(idx, attr_path, "missing_image", f"{IMAGE_DIR}/{idx}.jpg not found", lineno)
        elif idx not in splits:
            log.add(idx, attr_path, "missing_split", f"no row for idx {idx} in {MAPPING_FILE}", lineno)
        else:
            candidates.append(idx)

    checks = check_files(store, image_files, [images[i] for i in candidates], decode_images, "check images")
    mask_rels = [rel for i in candidates for rel in masks.get(i, {}).values()]
    # On S3 without decoding, masks are trusted by their ETags like images (no size check until the corpus build).
    mask_checks = check_files(store, mask_files, mask_rels, decode_images, "check masks")
    sizes = Counter(c.dims for c in mask_checks.values() if c.dims)
    mask_size = sizes.most_common(1)[0][0] if sizes else None

    records = []
    for idx in sorted(candidates, key=int):
        values, lineno = rows[idx]
        image = checks[images[idx]]
        if image.error:
            log.add(idx, store.url(images[idx]), "unreadable_image", image.error, None)
            continue
        parts = masks.get(idx, {})
        bad = next((rel for rel in parts.values() if mask_checks[rel].error), None)
        if bad:
            log.add(idx, store.url(bad), "unreadable_mask", mask_checks[bad].error or "", None)
            continue
        wrong = next((rel for rel in parts.values() if mask_checks[rel].dims not in (None, mask_size)), None)
        if wrong:
            log.add(idx, store.url(wrong), "mask_size_mismatch",
                    f"{mask_checks[wrong].dims}, the dataset's masks are {mask_size}", None)
            continue
        ordered = [parts[p] for p in MASK_PARTS if p in parts]
        records.append(Record(
            dataset=DATASET, id=idx, split=splits[idx], image=store.url(images[idx]),
            image_bytes=image.size, image_checksum=image.checksum,
            masks=[store.url(r) for r in ordered],
            masks_checksum=md5("".join(f"{r}={mask_checks[r].checksum};" for r in ordered).encode())
            if ordered else None,
            attributes=values, label_file=attr_path, label_line=lineno,
        ))
    return ReadResult(DATASET, records, sorted(log.entries.values(), key=lambda q: q.id), notes)
