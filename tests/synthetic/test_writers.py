"""Format fidelity: the synthetic sets parse by formats.md's rules, names and headers exactly."""

import filecmp
import re

import numpy as np
from PIL import Image

from model.labels import CELEBA_ATTRIBUTES, MASK_PARTS
from pipelines.datasets.celebamask_hq import split_of_orig_file
from pipelines.synthetic.writers import SyntheticConfig, write_celebamask_hq, write_rafdb, write_utkface
from tests.conftest import SEED, SMALL


def test_celebamask_hq_files(synthetic_roots):
    root = synthetic_roots["celebamask_hq"]
    lines = (root / "CelebAMask-HQ-attribute-anno.txt").read_text().splitlines()
    assert lines[0] == str(SMALL.celebamask_hq)
    assert lines[1].split() == list(CELEBA_ATTRIBUTES)
    for i, row in enumerate(lines[2:]):
        assert row.startswith(f"{i}.jpg  "), row[:12]  # two spaces after the name, as in the real file
        fields = row.split()
        assert len(fields) == 41 and set(fields[1:]) <= {"-1", "1"}
    mapping = (root / "CelebA-HQ-to-CelebA-mapping.txt").read_text().splitlines()
    assert mapping[0] == "idx orig_idx orig_file"
    splits = []
    for i, row in enumerate(mapping[1:]):
        idx, orig_idx, orig_file = row.split()
        assert int(idx) == i and orig_file == f"{int(orig_idx) + 1:06d}.jpg"
        splits.append(split_of_orig_file(int(orig_idx) + 1))
    assert set(splits) == {"train", "val", "test"}
    assert splits.count("train") > splits.count("val")
    images = sorted((root / "CelebA-HQ-img").iterdir(), key=lambda p: int(p.stem))
    assert [p.name for p in images] == [f"{i}.jpg" for i in range(SMALL.celebamask_hq)]
    with Image.open(images[0]) as img:
        assert img.size == (SMALL.image_size,) * 2 and img.mode == "RGB" and img.format == "JPEG"
    name = re.compile(r"^(\d+)/(\d{5})_([a-z_]+)\.png$")
    masks = [p.relative_to(root / "CelebAMask-HQ-mask-anno").as_posix()
             for p in (root / "CelebAMask-HQ-mask-anno").rglob("*.png")]
    assert masks
    for rel in masks:
        m = name.match(rel)
        assert m, rel
        assert int(m.group(1)) == int(m.group(2)) // 2000 and m.group(3) in MASK_PARTS
    with Image.open(root / "CelebAMask-HQ-mask-anno" / masks[0]) as mask:
        assert mask.size == (SMALL.mask_size,) * 2


def test_utkface_names(synthetic_roots):
    names = [p.name for p in synthetic_roots["utkface"].iterdir()]
    assert len(names) == SMALL.utkface
    pattern = re.compile(r"^(\d+)_([01])_([0-4])_(\d{17})\.jpg\.chip\.jpg$")
    ages = []
    for n in names:
        m = pattern.match(n)
        assert m, n
        ages.append(int(m.group(1)))
    assert max(ages) <= 116 and min(ages) >= 0 and np.std(ages) > 10
    assert len({n.split("_")[3] for n in names}) == len(names)  # timestamps unique


def test_rafdb_layout(synthetic_roots):
    root = synthetic_roots["rafdb"] / "basic"
    rows = (root / "EmoLabel" / "list_patition_label.txt").read_text().splitlines()
    assert len(rows) == SMALL.rafdb
    prefixes = set()
    for row in rows:
        name, label = row.split()
        assert re.match(r"^(train|test)_\d{5}\.jpg$", name) and 1 <= int(label) <= 7
        prefixes.add(name.split("_")[0])
        stem = name.removesuffix(".jpg")
        assert (root / "Image" / "original" / name).exists()
        with Image.open(root / "Image" / "aligned" / f"{stem}_aligned.jpg") as img:
            assert img.size == (100, 100)
    assert prefixes == {"train", "test"}


def test_same_seed_gives_byte_identical_files_whatever_the_worker_count(tmp_path):
    one = SyntheticConfig(celebamask_hq=24, utkface=10, rafdb=10, image_size=96, mask_size=48, workers=1)
    two = SyntheticConfig(**{**one.__dict__, "workers": 2})
    for cfg, out in ((one, tmp_path / "a"), (two, tmp_path / "b")):
        write_celebamask_hq(out / "c", SEED, cfg)
        write_utkface(out / "u", SEED, cfg)
        write_rafdb(out / "r", SEED, cfg)
    cmp = filecmp.dircmp(tmp_path / "a", tmp_path / "b")

    def same(d: filecmp.dircmp) -> bool:
        return not (d.left_only or d.right_only or d.diff_files or d.funny_files) and all(
            same(sub) for sub in d.subdirs.values())
    assert same(cmp)
    files = [p for p in (tmp_path / "a").rglob("*") if p.is_file()]
    assert all(p.read_bytes() == (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes() for p in files)
    # a different seed gives different faces
    write_utkface(tmp_path / "c", SEED + 1, one)
    names = sorted(p.name for p in (tmp_path / "a" / "u").iterdir())
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) != names
