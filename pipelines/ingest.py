"""The `ingest` stage's logic: render or locate the raw datasets, validate them, write the manifest."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.contact_sheet import write_contact_sheet
from pipelines.datasets.celebamask_hq import read_celebamask_hq
from pipelines.datasets.common import REASONS, SPLITS, Quarantined, ReadResult, Record
from pipelines.datasets.rafdb import read_rafdb
from pipelines.datasets.utkface import read_utkface
from pipelines.storage import atomic_dir, write_json_atomic
from pipelines.synthetic.writers import DATASET_DIRS, SyntheticConfig, write_synthetic

DATASETS = ("celebamask_hq", "utkface", "rafdb")


@dataclass(frozen=True)
class DatasetRoots:
    """Where each real dataset lives: a local path or s3://bucket/prefix (used when source: real)."""

    celebamask_hq: str = "data/real/CelebAMask-HQ"
    utkface: str = "data/real/UTKFace"
    rafdb: str = "data/real/RAF-DB"


@dataclass(frozen=True)
class IngestConfig:
    source: str = "synthetic"  # "synthetic": render the default data; "real": read `roots`
    roots: DatasetRoots = field(default_factory=DatasetRoots)
    max_quarantine_share: float = 0.05  # per dataset; above it the stage fails
    verify_images: bool = True  # decode every image (reads all bytes, also from S3)
    val_share: float = 0.1  # UTKFace (no official split) and RAF-DB's train (no official val)
    test_share: float = 0.1  # UTKFace only
    contact_sheet_faces: int = 16
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        if self.source not in ("synthetic", "real"):
            raise ValueError(f"ingest.source must be 'synthetic' or 'real', got {self.source!r}")
        if not 0 <= self.max_quarantine_share <= 1:
            raise ValueError(f"ingest.max_quarantine_share must be in [0, 1], got {self.max_quarantine_share}")
        if not (0 <= self.val_share < 1 and 0 <= self.test_share < 1 and self.val_share + self.test_share < 1):
            raise ValueError("ingest.val_share and ingest.test_share must be in [0, 1) and sum below 1")


@dataclass(frozen=True)
class IngestPaths:
    raw: Path = Path("data/raw")
    manifest: Path = Path("data/manifest")
    metrics: Path = Path("metrics/ingest.json")
    contact_sheet: Path = Path("plots/ingest/contact_sheet.png")


class QuarantineThresholdExceeded(RuntimeError):
    pass


MANIFEST_SCHEMA = pa.schema([
    ("dataset", pa.string()), ("id", pa.string()), ("split", pa.string()), ("image", pa.string()),
    ("image_bytes", pa.int64()), ("image_checksum", pa.string()), ("masks", pa.list_(pa.string())),
    ("masks_checksum", pa.string()), ("attributes", pa.list_(pa.int8())), ("age", pa.int16()),
    ("gender", pa.int8()), ("race", pa.int8()), ("expression", pa.int8()), ("label_file", pa.string()),
    ("label_line", pa.int32()), ("original", pa.string()),
])
QUARANTINE_SCHEMA = pa.schema([
    ("dataset", pa.string()), ("id", pa.string()), ("path", pa.string()), ("line", pa.int32()),
    ("reason", pa.string()), ("detail", pa.string()),
])


def manifest_table(records: list[Record]) -> pa.Table:
    return pa.Table.from_pylist([dataclasses.asdict(r) for r in records], schema=MANIFEST_SCHEMA)


def quarantine_table(entries: list[Quarantined]) -> pa.Table:
    return pa.Table.from_pylist([dataclasses.asdict(q) for q in entries], schema=QUARANTINE_SCHEMA)


def read_datasets(roots: dict[str, str], cfg: IngestConfig) -> dict[str, ReadResult]:
    return {
        "celebamask_hq": read_celebamask_hq(roots["celebamask_hq"], cfg.verify_images),
        "utkface": read_utkface(roots["utkface"], cfg.val_share, cfg.test_share, cfg.verify_images),
        "rafdb": read_rafdb(roots["rafdb"], cfg.val_share, cfg.verify_images),
    }


def check_quarantine(results: dict[str, ReadResult], max_share: float) -> None:
    """Fail, naming files, lines and reasons, when a dataset quarantines more than `max_share`."""
    problems = []
    for name, res in results.items():
        share = len(res.quarantined) / res.read if res.read else 0.0
        if res.read == 0:
            problems.append(f"{name}: no records found. Check ingest.roots.{name}.")
        elif share > max_share:
            examples = []
            for reason, count in res.reasons().most_common():
                q = next(q for q in res.quarantined if q.reason == reason)
                where = f"{q.path}:{q.line}" if q.line else q.path
                examples.append(f"  {count} x {reason} ({REASONS[reason]}), e.g. {where}: {q.detail}")
            problems.append(f"{name}: {len(res.quarantined)} of {res.read} records quarantined ({share:.1%}), "
                            f"above ingest.max_quarantine_share={max_share:.1%}:\n" + "\n".join(examples))
    if problems:
        raise QuarantineThresholdExceeded(
            "\n".join(problems) + "\nFix the files named above, or raise ingest.max_quarantine_share in "
            "params.yaml if this share of bad records is expected.")


def ingest_metrics(results: dict[str, ReadResult]) -> dict:
    out: dict = {"datasets": {}}
    for name, res in results.items():
        splits = {s: sum(r.split == s for r in res.records) for s in SPLITS}
        out["datasets"][name] = {
            "read": res.read, "kept": len(res.records), "quarantined": len(res.quarantined),
            "quarantined_share": round(len(res.quarantined) / res.read, 6) if res.read else 0.0,
            "splits": splits, "quarantined_by_reason": dict(sorted(res.reasons().items())), "notes": res.notes,
        }
    out["total"] = {k: sum(d[k] for d in out["datasets"].values()) for k in ("read", "kept", "quarantined")}
    return out


def resolve_roots(cfg: IngestConfig, seed: int, raw: Path) -> dict[str, str]:
    """Render the synthetic sets into `raw` (atomically), or record where the real ones are."""
    with atomic_dir(raw) as tmp:
        tmp.mkdir()
        if cfg.source == "synthetic":
            write_synthetic(tmp, seed, cfg.synthetic)
            roots = {name: (raw / sub).as_posix() for name, sub in DATASET_DIRS.items()}
        else:
            roots = dataclasses.asdict(cfg.roots)
        (tmp / "SOURCE.json").write_text(json.dumps({"source": cfg.source, "roots": roots}, indent=2) + "\n")
    return roots


def run_ingest(cfg: IngestConfig, seed: int, paths: IngestPaths = IngestPaths()) -> dict:
    roots = resolve_roots(cfg, seed, paths.raw)
    results = read_datasets(roots, cfg)
    check_quarantine(results, cfg.max_quarantine_share)
    records = [r for name in DATASETS for r in results[name].records]
    quarantined = [q for name in DATASETS for q in results[name].quarantined]
    # the sheet reads images (from S3 too): before any other output, so a store that stops answering leaves none
    write_contact_sheet(results["celebamask_hq"].records, paths.contact_sheet, cfg.contact_sheet_faces)
    with atomic_dir(paths.manifest) as tmp:
        tmp.mkdir()
        pq.write_table(manifest_table(records), tmp / "manifest.parquet")
        pq.write_table(quarantine_table(quarantined), tmp / "quarantine.parquet")
    metrics = ingest_metrics(results)
    write_json_atomic(paths.metrics, metrics)
    return metrics
