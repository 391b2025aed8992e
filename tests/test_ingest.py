"""The ingest stage end to end on small data: manifest, quarantine, metrics, the failure path."""

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.config import build
from pipelines.datasets.celebamask_hq import ATTRIBUTE_FILE
from pipelines.datasets.common import read_manifest
from pipelines.ingest import (
    DatasetRoots,
    IngestConfig,
    IngestPaths,
    QuarantineThresholdExceeded,
    run_ingest,
)
from pipelines.synthetic.writers import SyntheticConfig
from tests.conftest import SEED

TINY = SyntheticConfig(celebamask_hq=40, utkface=30, rafdb=30, image_size=96, mask_size=48, utkface_size=64,
                       rafdb_size=96, defects=3, workers=2)


def paths(tmp: Path) -> IngestPaths:
    return IngestPaths(tmp / "raw", tmp / "manifest", tmp / "metrics" / "ingest.json", tmp / "plots" / "sheet.png")


def test_synthetic_ingest_writes_manifest_quarantine_metrics_and_sheet(tmp_path):
    p = paths(tmp_path)
    metrics = run_ingest(IngestConfig(synthetic=TINY, max_quarantine_share=0.2, contact_sheet_faces=4), SEED, p)
    records = read_manifest(p.manifest / "manifest.parquet")
    quarantine = pq.read_table(p.manifest / "quarantine.parquet").to_pylist()
    # celeba: one extra label row without image; utk: three extra files; raf: two extra rows + one image
    assert metrics["total"]["read"] == len(records) + len(quarantine) == (40 + 1) + (30 + 3) + (30 + 3)
    assert len(quarantine) == 9
    assert {q["reason"] for q in quarantine} >= {"missing_image", "unreadable_image", "mask_size_mismatch",
                                                 "malformed_name", "label_out_of_range", "image_without_labels"}
    on_disk = json.loads(p.metrics.read_text())
    assert on_disk == metrics
    celeba = metrics["datasets"]["celebamask_hq"]
    assert sum(celeba["splits"].values()) == celeba["kept"]
    assert all(Path(r.image).exists() for r in records)
    assert p.contact_sheet.exists() and p.contact_sheet.stat().st_size > 10_000
    assert not list(tmp_path.glob("*.tmp"))


def test_ingest_is_byte_identical_across_runs(tmp_path, monkeypatch):
    """Two runs in the same place with the same seed give the same bytes: images, masks, tables, metrics."""
    monkeypatch.chdir(tmp_path)
    cfg = IngestConfig(synthetic=TINY, max_quarantine_share=0.2, contact_sheet_faces=2)
    rel = paths(Path("out"))
    run_ingest(cfg, SEED, rel)
    shutil.copytree("out", "first")
    run_ingest(cfg, SEED, rel)
    files = sorted(p.relative_to("first") for p in Path("first").rglob("*") if p.is_file())
    assert len(files) > 500
    assert sorted(p.relative_to("out") for p in Path("out").rglob("*") if p.is_file()) == files
    for f in files:
        assert (Path("first") / f).read_bytes() == (Path("out") / f).read_bytes(), f


def test_too_many_bad_records_fail_and_leave_no_manifest(tmp_path, synthetic_roots):
    root = tmp_path / "celeba"
    shutil.copytree(synthetic_roots["celebamask_hq"], root)
    anno = root / ATTRIBUTE_FILE
    lines = anno.read_text().splitlines()
    for k in range(2, 30):  # break 28 of 200 rows (14%)
        lines[k] = lines[k].rsplit(" ", 1)[0]
    anno.write_text("\n".join(lines) + "\n")
    roots = DatasetRoots(celebamask_hq=str(root), utkface=str(synthetic_roots["utkface"]),
                         rafdb=str(synthetic_roots["rafdb"]))
    p = paths(tmp_path / "out")
    with pytest.raises(QuarantineThresholdExceeded) as err:
        run_ingest(IngestConfig(source="real", roots=roots, max_quarantine_share=0.05), SEED, p)
    message = str(err.value)
    assert "celebamask_hq: 28 of 200" in message and "wrong_column_count" in message
    assert f"{anno}:3" in message and "max_quarantine_share" in message
    assert not p.manifest.exists() and not p.metrics.exists()


def test_real_source_reads_the_given_roots(tmp_path, synthetic_roots):
    roots = DatasetRoots(**{k: str(v) for k, v in synthetic_roots.items()})
    p = paths(tmp_path)
    metrics = run_ingest(IngestConfig(source="real", roots=roots), SEED, p)
    assert metrics["total"]["quarantined"] == 0 and metrics["total"]["kept"] == 200 + 60 + 60
    assert json.loads((p.raw / "SOURCE.json").read_text())["source"] == "real"


def test_config_from_params_refuses_unknown_keys():
    cfg = build(IngestConfig, {"source": "synthetic", "synthetic": {"utkface": 5, "difficulty": {"noise": 1}}},
                "ingest")
    assert cfg.synthetic.utkface == 5 and cfg.synthetic.difficulty.noise == 1.0
    with pytest.raises(ValueError, match=r"ingest.synthetic: unknown key\(s\) \['faces'\]"):
        build(IngestConfig, {"synthetic": {"faces": 5}}, "ingest")
    with pytest.raises(ValueError, match="ingest.source"):
        build(IngestConfig, {"source": "web"}, "ingest")
