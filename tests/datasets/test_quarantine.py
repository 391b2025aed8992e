"""Every kind of bad record lands in the quarantine with its reason; nothing is lost or crashes."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.datasets.celebamask_hq import ATTRIBUTE_FILE, MAPPING_FILE, read_celebamask_hq
from pipelines.datasets.common import REASONS, DatasetLayoutError, ReadResult
from pipelines.datasets.rafdb import LABEL_FILE, read_rafdb
from pipelines.datasets.utkface import read_utkface
from tests.conftest import SMALL


def reconcile(res: ReadResult, expected_read: int) -> None:
    assert res.read == len(res.records) + len(res.quarantined) == expected_read
    kept = {r.id for r in res.records}
    assert not kept & {q.id for q in res.quarantined}


def only(res: ReadResult, reason: str):
    assert [q.reason for q in res.quarantined] == [reason], res.quarantined
    return res.quarantined[0]


def edit_line(path: Path, lineno: int, fn) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = fn(lines[lineno - 1])
    path.write_text("\n".join(lines) + "\n")


def append(path: Path, line: str) -> None:
    with path.open("a") as fh:
        fh.write(line + "\n")


N = SMALL.celebamask_hq


# ---- CelebAMask-HQ ---------------------------------------------------------------------------------

def celeba_case(root: Path, case: str) -> tuple[str, int]:
    """Break `root` one way; returns the expected reason and the expected number of records read."""
    anno, masks = root / ATTRIBUTE_FILE, root / "CelebAMask-HQ-mask-anno" / "0"
    if case == "wrong_column_count":
        edit_line(anno, 5, lambda s: s.rsplit(" ", 1)[0])
    elif case == "label_out_of_range":
        edit_line(anno, 6, lambda s: s[:-2] + " 0")
    elif case == "duplicate_id":
        append(anno, anno.read_text().splitlines()[3])
        return case, N + 1
    elif case == "missing_image":
        (root / "CelebA-HQ-img" / "7.jpg").unlink()
    elif case == "image_without_labels":
        Image.new("RGB", (8, 8)).save(root / "CelebA-HQ-img" / f"{N}.jpg")
        return case, N + 1
    elif case == "masks_without_labels":
        Image.new("L", (SMALL.mask_size,) * 2).save(masks / f"{N:05d}_skin.png")
        return case, N + 1
    elif case == "missing_split":
        edit_line(root / MAPPING_FILE, 10, lambda s: "")
    elif case == "unreadable_image":
        (root / "CelebA-HQ-img" / "3.jpg").write_bytes(b"not a jpeg at all")
    elif case == "unreadable_mask":
        next(masks.glob("00004_*.png")).write_bytes(b"\x89PNG broken")
    elif case == "mask_size_mismatch":
        Image.new("L", (SMALL.mask_size + 1,) * 2).save(next(masks.glob("00005_skin.png")))
    elif case == "unknown_part_name":
        Image.new("L", (SMALL.mask_size,) * 2).save(masks / "00006_moustache.png")
    elif case == "mask_in_wrong_folder":
        (root / "CelebAMask-HQ-mask-anno" / "3").mkdir()
        Image.new("L", (SMALL.mask_size,) * 2).save(root / "CelebAMask-HQ-mask-anno" / "3" / "00008_hat.png")
    elif case == "unexpected_file":
        (root / "CelebA-HQ-img" / "notes.txt").write_text("hello")
        return case, N + 1
    elif case == "malformed_name":
        edit_line(anno, 9, lambda s: "seven.jpg" + s[s.index(" "):])
    return case, N


CELEBA_CASES = ["wrong_column_count", "label_out_of_range", "duplicate_id", "missing_image", "image_without_labels",
                "masks_without_labels", "missing_split", "unreadable_image", "unreadable_mask", "mask_size_mismatch",
                "unknown_part_name", "mask_in_wrong_folder", "unexpected_file"]


@pytest.mark.parametrize("case", CELEBA_CASES)
def test_celebamask_hq_quarantines(dataset_copy, case):
    root = dataset_copy("celebamask_hq")
    reason, read = celeba_case(root, case)
    res = read_celebamask_hq(str(root))
    q = only(res, reason)
    reconcile(res, read)
    assert q.detail and q.path


def test_celeba_malformed_name_is_quarantined_and_the_image_too(dataset_copy):
    root = dataset_copy("celebamask_hq")
    celeba_case(root, "malformed_name")
    res = read_celebamask_hq(str(root))
    # the renamed row is malformed, and image 7.jpg has lost its label row
    assert sorted(q.reason for q in res.quarantined) == ["image_without_labels", "malformed_name"]
    reconcile(res, N + 1)


def test_quarantine_names_file_and_line(dataset_copy):
    root = dataset_copy("celebamask_hq")
    celeba_case(root, "label_out_of_range")
    q = read_celebamask_hq(str(root)).quarantined[0]
    assert q.path.endswith(ATTRIBUTE_FILE) and q.line == 6 and "Young" in q.detail


def test_every_reason_has_a_test():
    tested = set(CELEBA_CASES) | {"malformed_name"}
    assert tested == set(REASONS)


def test_broken_header_is_a_clear_error(dataset_copy):
    root = dataset_copy("celebamask_hq")
    edit_line(root / ATTRIBUTE_FILE, 2, lambda s: s.replace("Smiling", "Smiles"))
    with pytest.raises(DatasetLayoutError, match=r"CelebAMask-HQ-attribute-anno.txt:2: .*Smiling"):
        read_celebamask_hq(str(root))


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetLayoutError, match="ingest.roots.celebamask_hq"):
        read_celebamask_hq(str(tmp_path / "nowhere"))


def test_declared_row_count_mismatch_is_noted(dataset_copy):
    root = dataset_copy("celebamask_hq")
    edit_line(root / ATTRIBUTE_FILE, 1, lambda s: "30000")
    res = read_celebamask_hq(str(root))
    assert not res.quarantined and "declares 30000" in res.notes[0]


# ---- UTKFace ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,reason", [
    ("39_1_20170116174525125.jpg.chip.jpg", "malformed_name"),  # race missing, as in the real set
    ("3x_1_0_20170116174525125.jpg.chip.jpg", "malformed_name"),
    ("117_0_0_20170116174525125.jpg.chip.jpg", "label_out_of_range"),
    ("30_2_0_20170116174525125.jpg.chip.jpg", "label_out_of_range"),
    ("30_0_5_20170116174525125.jpg.chip.jpg", "label_out_of_range"),
    ("readme.txt", "unexpected_file"),
])
def test_utkface_quarantines_bad_names(dataset_copy, name, reason):
    root = dataset_copy("utkface")
    (root / name).write_bytes(next(root.iterdir()).read_bytes())
    res = read_utkface(str(root), 0.1, 0.1)
    only(res, reason)
    reconcile(res, SMALL.utkface + 1)


def test_utkface_duplicate_and_unreadable(dataset_copy):
    root = dataset_copy("utkface")
    first, second = sorted(root.iterdir())[:2]
    (root / first.name.replace(".jpg.chip.jpg", ".jpg")).write_bytes(first.read_bytes())
    second.write_bytes(b"garbage")
    res = read_utkface(str(root), 0.1, 0.1)
    assert sorted(q.reason for q in res.quarantined) == ["duplicate_id", "unreadable_image"]
    reconcile(res, SMALL.utkface + 1)


def test_utkface_labels_and_splits(synthetic_roots):
    res = read_utkface(str(synthetic_roots["utkface"]), 0.2, 0.2)
    r = res.records[0]
    age, gender, race = (int(x) for x in r.id.split("_")[:3])
    assert (r.age, r.gender, r.race) == (age, gender, race)
    assert {x.split for x in res.records} == {"train", "val", "test"}
    again = read_utkface(str(synthetic_roots["utkface"]), 0.2, 0.2)
    assert [x.split for x in again.records] == [x.split for x in res.records]


# ---- RAF-DB ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("line,reason", [
    ("train_00002.jpg 4 extra", "wrong_column_count"),
    ("val_00001.jpg 4", "malformed_name"),
    ("train_99999.jpg 0", "label_out_of_range"),
    ("train_99998.jpg 8", "label_out_of_range"),
    ("train_99997.jpg 5", "missing_image"),
])
def test_rafdb_quarantines_bad_rows(dataset_copy, line, reason):
    root = dataset_copy("rafdb")
    label_file = root / LABEL_FILE
    if reason == "wrong_column_count":  # break an existing row instead of adding one
        lines = label_file.read_text().splitlines()
        name = lines[0].split()[0]
        lines[0] = f"{name} 4 extra"
        label_file.write_text("\n".join(lines) + "\n")
        expected = SMALL.rafdb
    else:
        append(label_file, line)
        expected = SMALL.rafdb + 1
    res = read_rafdb(str(root), 0.1)
    q = only(res, reason)
    assert q.path.endswith("list_patition_label.txt") and q.line
    reconcile(res, expected)


def test_rafdb_duplicate_unlabelled_and_unreadable(dataset_copy):
    root = dataset_copy("rafdb")
    label_file = root / LABEL_FILE
    rows = label_file.read_text().splitlines()
    append(label_file, rows[0])
    aligned = root / "basic" / "Image" / "aligned"
    Image.new("RGB", (100, 100)).save(aligned / "test_99999_aligned.jpg")
    stem = rows[1].split()[0].removesuffix(".jpg")
    (aligned / f"{stem}_aligned.jpg").write_bytes(b"\xff\xd8broken")
    res = read_rafdb(str(root), 0.1)
    assert sorted(q.reason for q in res.quarantined) == ["duplicate_id", "image_without_labels", "unreadable_image"]
    reconcile(res, SMALL.rafdb + 2)


def test_rafdb_splits_keep_the_test_prefix(synthetic_roots):
    res = read_rafdb(str(synthetic_roots["rafdb"]), 0.25)
    for r in res.records:
        assert (r.split == "test") == r.id.startswith("test_")
        assert 1 <= r.expression <= 7 and r.original and r.original.endswith(f"{r.id}.jpg")
    assert {r.split for r in res.records} == {"train", "val", "test"}


def test_celeba_records_carry_the_labels_and_masks(synthetic_roots):
    res = read_celebamask_hq(str(synthetic_roots["celebamask_hq"]))
    r = res.records[0]
    row = (synthetic_roots["celebamask_hq"] / ATTRIBUTE_FILE).read_text().splitlines()[2].split()
    assert r.attributes == [int(v) for v in row[1:]]
    assert r.masks and all(Path(m).exists() for m in r.masks)
    assert np.all([m.endswith(".png") for m in r.masks])
