"""Write synthetic faces in the exact on-disk layouts of CelebAMask-HQ, UTKFace and RAF-DB basic.

Each face is rendered from its own random stream `default_rng([seed, dataset, index])`, so the
output is byte-identical for a seed whatever the number of workers or the order they finish in.
"""

from __future__ import annotations

import datetime as dt
import io
import multiprocessing as mp
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from model.labels import CELEBA_ATTRIBUTES
from pipelines.synthetic.latent import (
    CELEBA_POPULATION,
    RAFDB_POPULATION,
    UTKFACE_POPULATION,
    FaceFactors,
    sample_faces,
)
from pipelines.synthetic.render import Difficulty, render_face

DATASET_CODE = {"celebamask_hq": 0, "utkface": 1, "rafdb": 2}
# CelebA's official partition by original file number.
CELEBA_SPLIT_RANGES = {"train": (1, 162770), "val": (162771, 182637), "test": (182638, 202599)}
RAFDB_ALIGNED_SIZE = 100
RAFDB_ALIGN_BOX = (0.14, 0.1, 0.86, 0.82)  # the face crop the aligned set shows, in image widths


@dataclass(frozen=True)
class SyntheticConfig:
    """How much synthetic data to render and how hard it is (params.yaml: ingest.synthetic)."""

    celebamask_hq: int = 3000
    utkface: int = 1500
    rafdb: int = 1500
    image_size: int = 256  # CelebA-HQ-img side (the real set: 1024)
    mask_size: int = 128  # mask side (the real set: 512, half the image)
    utkface_size: int = 200
    rafdb_size: int = 256
    celeba_split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    rafdb_test_share: float = 0.2
    defects: int = 3  # crafted bad records per dataset, so the quarantine path runs on every default run
    workers: int = 2
    difficulty: Difficulty = field(default_factory=Difficulty)

    def __post_init__(self) -> None:
        for name in ("celebamask_hq", "utkface", "rafdb", "defects"):
            if getattr(self, name) < 0:
                raise ValueError(f"ingest.synthetic.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("image_size", "mask_size", "utkface_size", "rafdb_size", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"ingest.synthetic.{name} must be >= 1, got {getattr(self, name)}")
        if len(self.celeba_split) != 3 or abs(sum(self.celeba_split) - 1) > 1e-6 or min(self.celeba_split) < 0:
            raise ValueError(f"ingest.synthetic.celeba_split must be 3 shares summing to 1, got {self.celeba_split}")
        if not 0 < self.rafdb_test_share < 1:
            raise ValueError(f"ingest.synthetic.rafdb_test_share must be in (0, 1), got {self.rafdb_test_share}")


def face_rng(seed: int, dataset: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, DATASET_CODE[dataset], index])


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG")
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# ---- per-face jobs, run in worker processes ----------------------------------------------------

def _celeba_job(args: tuple[Path, int, SyntheticConfig, int, FaceFactors]) -> None:
    root, seed, cfg, i, face = args
    out = render_face(face, face_rng(seed, "celebamask_hq", i), cfg.image_size, cfg.mask_size, cfg.difficulty)
    _write(root / "CelebA-HQ-img" / f"{i}.jpg", _jpeg(out.image, cfg.difficulty.jpeg_quality))
    folder = root / "CelebAMask-HQ-mask-anno" / str(i // 2000)
    for part, mask in out.masks.items():
        _write(folder / f"{i:05d}_{part}.png", _png(mask))


def _utk_job(args: tuple[Path, int, SyntheticConfig, int, FaceFactors, str]) -> None:
    root, seed, cfg, i, face, name = args
    out = render_face(face, face_rng(seed, "utkface", i), cfg.utkface_size, None, cfg.difficulty)
    _write(root / name, _jpeg(out.image, cfg.difficulty.jpeg_quality))


def _raf_job(args: tuple[Path, int, SyntheticConfig, int, FaceFactors, str]) -> None:
    root, seed, cfg, i, face, stem = args
    out = render_face(face, face_rng(seed, "rafdb", i), cfg.rafdb_size, None, cfg.difficulty)
    q = cfg.difficulty.jpeg_quality
    _write(root / "basic" / "Image" / "original" / f"{stem}.jpg", _jpeg(out.image, q))
    _write(root / "basic" / "Image" / "aligned" / f"{stem}_aligned.jpg", _jpeg(rafdb_aligned(out.image), q))


def rafdb_aligned(image: Image.Image) -> Image.Image:
    """The aligned set's view of an original: the face crop, at 100 x 100."""
    box = tuple(round(c * image.width) for c in RAFDB_ALIGN_BOX)
    return image.crop(box).resize((RAFDB_ALIGNED_SIZE, RAFDB_ALIGNED_SIZE), Image.BILINEAR)


def _run_jobs(fn: Callable, jobs: list, workers: int, desc: str) -> None:
    if workers <= 1 or len(jobs) < 8:
        for job in tqdm(jobs, desc=desc, unit="face", mininterval=2):
            fn(job)
        return
    # fork: workers inherit the imported modules; no torch is loaded in this process.
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
        for _ in tqdm(pool.map(fn, jobs, chunksize=16), total=len(jobs), desc=desc, unit="face", mininterval=2):
            pass


# ---- the three datasets --------------------------------------------------------------------------

def _celeba_mapping(n: int, split_shares: Iterable[float], rng: np.random.Generator) -> list[tuple[int, int]]:
    """(orig_idx, split index) per face; orig file numbers fall in CelebA's official split ranges."""
    names = list(CELEBA_SPLIT_RANGES)
    which = rng.choice(3, size=n, p=np.asarray(list(split_shares)))
    orig = np.empty(n, dtype=np.int64)
    for k, name in enumerate(names):
        lo, hi = CELEBA_SPLIT_RANGES[name]
        idx = np.flatnonzero(which == k)
        numbers = lo + rng.choice(hi - lo + 1, size=idx.size, replace=False)
        orig[idx] = np.sort(numbers)  # the real mapping is roughly ordered; sorting keeps it readable
    return [(int(orig[i]) - 1, int(which[i])) for i in range(n)]


def write_celebamask_hq(root: Path, seed: int, cfg: SyntheticConfig) -> None:
    n = cfg.celebamask_hq
    faces = sample_faces(CELEBA_POPULATION, n, np.random.default_rng([seed, 0, 10**6]))
    mapping = _celeba_mapping(n, cfg.celeba_split, np.random.default_rng([seed, 0, 10**6 + 1]))
    root.mkdir(parents=True, exist_ok=True)
    lines = [str(n), " ".join(CELEBA_ATTRIBUTES)]
    lines += [f"{i}.jpg  " + " ".join(str(v) for v in face.label_vector()) for i, face in enumerate(faces)]
    (root / "CelebAMask-HQ-attribute-anno.txt").write_text("\n".join(lines) + "\n")
    rows = ["idx orig_idx orig_file"] + [f"{i} {o} {o + 1:06d}.jpg" for i, (o, _) in enumerate(mapping)]
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(rows) + "\n")
    (root / "CelebA-HQ-img").mkdir(exist_ok=True)
    (root / "CelebAMask-HQ-mask-anno").mkdir(exist_ok=True)
    _run_jobs(_celeba_job, [(root, seed, cfg, i, f) for i, f in enumerate(faces)], cfg.workers,
              "render CelebAMask-HQ")
    if cfg.defects:
        _celeba_defects(root, n, cfg)


def utk_timestamps(n: int, rng: np.random.Generator) -> list[str]:
    """Unique yyyymmddHHMMSSFFF stamps, increasing, as the real file names carry."""
    start = dt.datetime(2017, 1, 4, 9, 0, 0)
    ms = np.cumsum(rng.integers(1_000, 60_000_000, size=n))
    return [(start + dt.timedelta(milliseconds=int(m))).strftime("%Y%m%d%H%M%S%f")[:17] for m in ms]


def write_utkface(root: Path, seed: int, cfg: SyntheticConfig) -> None:
    n = cfg.utkface
    faces = sample_faces(UTKFACE_POPULATION, n, np.random.default_rng([seed, 1, 10**6]))
    stamps = utk_timestamps(n, np.random.default_rng([seed, 1, 10**6 + 1]))
    names = [f"{f.age}_{0 if f.male else 1}_{f.race}_{s}.jpg.chip.jpg" for f, s in zip(faces, stamps, strict=True)]
    root.mkdir(parents=True, exist_ok=True)
    _run_jobs(_utk_job, [(root, seed, cfg, i, f, names[i]) for i, f in enumerate(faces)], cfg.workers,
              "render UTKFace")
    if cfg.defects:
        _utk_defects(root, cfg)


def write_rafdb(root: Path, seed: int, cfg: SyntheticConfig) -> None:
    n = cfg.rafdb
    faces = sample_faces(RAFDB_POPULATION, n, np.random.default_rng([seed, 2, 10**6]))
    is_test = np.random.default_rng([seed, 2, 10**6 + 1]).random(n) < cfg.rafdb_test_share
    counters = {"train": 0, "test": 0}
    stems = []
    for t in is_test:
        split = "test" if t else "train"
        counters[split] += 1
        stems.append(f"{split}_{counters[split]:05d}")
    label_dir = root / "basic" / "EmoLabel"
    label_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"{stem}.jpg {face.expression + 1}" for stem, face in zip(stems, faces, strict=True)]
    (label_dir / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    _run_jobs(_raf_job, [(root, seed, cfg, i, f, stems[i]) for i, f in enumerate(faces)], cfg.workers,
              "render RAF-DB")
    if cfg.defects:
        _raf_defects(root, counters["train"], cfg)


# ---- crafted defects: the kinds of bad records the real sets have ---------------------------------

def _celeba_defects(root: Path, n: int, cfg: SyntheticConfig) -> None:
    """A label row without an image, an unreadable image, a mask of the wrong size."""
    anno = root / "CelebAMask-HQ-attribute-anno.txt"
    lines = anno.read_text().splitlines()
    lines[0] = str(n + 1)
    lines.append(f"{n}.jpg  " + " ".join(["-1"] * len(CELEBA_ATTRIBUTES)))  # no image is written for it
    anno.write_text("\n".join(lines) + "\n")
    with (root / "CelebA-HQ-to-CelebA-mapping.txt").open("a") as fh:
        fh.write(f"{n} 202598 202599.jpg\n")
    if n >= 2 and cfg.defects >= 2:
        (root / "CelebA-HQ-img" / f"{n - 1}.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    if n >= 3 and cfg.defects >= 3:
        k = n - 2
        small = np.ones((cfg.mask_size // 2, cfg.mask_size // 2), dtype=bool)
        _write(root / "CelebAMask-HQ-mask-anno" / str(k // 2000) / f"{k:05d}_skin.png", _png(small))


def _utk_defects(root: Path, cfg: SyntheticConfig) -> None:
    """Malformed names like the real set's (a field missing), and an age out of range."""
    blank = _jpeg(Image.new("RGB", (cfg.utkface_size, cfg.utkface_size), (128, 128, 128)), 90)
    names = ["39_1_20170116174525125.jpg.chip.jpg", "61_1_20170109142408075.jpg.chip.jpg",
             "130_0_0_20170117191234567.jpg.chip.jpg"][: cfg.defects]
    for name in names:
        _write(root / name, blank)


def _raf_defects(root: Path, n_train: int, cfg: SyntheticConfig) -> None:
    """A label out of range, a label row whose image is missing, an aligned image without a label."""
    label_file = root / "basic" / "EmoLabel" / "list_patition_label.txt"
    extra = [f"train_{n_train + 1:05d}.jpg 9", f"train_{n_train + 2:05d}.jpg 3"][: cfg.defects]
    blank = _jpeg(Image.new("RGB", (RAFDB_ALIGNED_SIZE,) * 2, (128, 128, 128)), 90)
    aligned = root / "basic" / "Image" / "aligned"
    if extra:
        _write(aligned / f"train_{n_train + 1:05d}_aligned.jpg", blank)
    with label_file.open("a") as fh:
        fh.write("".join(line + "\n" for line in extra))
    if cfg.defects >= 3:
        _write(aligned / f"train_{n_train + 3:05d}_aligned.jpg", blank)


DATASET_DIRS = {"celebamask_hq": "CelebAMask-HQ", "utkface": "UTKFace", "rafdb": "RAF-DB"}


def write_synthetic(root: Path, seed: int, cfg: SyntheticConfig) -> dict[str, Path]:
    """Render all three datasets under `root`; returns each dataset's root directory."""
    roots = {name: root / sub for name, sub in DATASET_DIRS.items()}
    write_celebamask_hq(roots["celebamask_hq"], seed, cfg)
    write_utkface(roots["utkface"], seed, cfg)
    write_rafdb(roots["rafdb"], seed, cfg)
    return roots
