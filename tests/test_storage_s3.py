"""Readers and ingest against a real S3 API server on loopback (moto_server)."""

import boto3
import pytest

from pipelines.datasets.celebamask_hq import read_celebamask_hq
from pipelines.datasets.common import read_manifest
from pipelines.datasets.rafdb import read_rafdb
from pipelines.datasets.utkface import read_utkface
from pipelines.ingest import DatasetRoots, IngestConfig, IngestPaths, run_ingest
from pipelines.storage import StorageUnavailable, Store, read_url, upload_dir
from pipelines.synthetic.writers import SyntheticConfig, write_synthetic
from tests.conftest import SEED
from tests.faults import Relay


@pytest.fixture(scope="module")
def local_roots(tmp_path_factory):
    """A few faces only: moto_server answers one request at a time, and masks are many small files."""
    cfg = SyntheticConfig(celebamask_hq=30, utkface=20, rafdb=20, defects=0)
    return write_synthetic(tmp_path_factory.mktemp("s3src"), SEED, cfg)


@pytest.fixture(scope="module")
def s3_roots(s3_server, local_roots):
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="faces")
    roots = {}
    for name, local in local_roots.items():
        url = f"s3://faces/raw/{local.name}"
        upload_dir(local, url)
        roots[name] = url
    return roots


def without_location(records):
    return [(r.id, r.split, r.attributes, r.age, r.gender, r.race, r.expression, len(r.masks)) for r in records]


def test_s3_listing_and_reading(s3_roots, local_roots):
    store = Store(s3_roots["utkface"])
    files = store.list()
    assert len(files) == len(list(local_roots["utkface"].iterdir()))
    rel, info = next(iter(files.items()))
    assert info.path.startswith("s3://faces/raw/UTKFace/") and info.etag
    assert read_url(info.path) == (local_roots["utkface"] / rel).read_bytes()


@pytest.mark.parametrize("verify", [True, False])
def test_readers_give_the_same_records_from_s3(s3_roots, local_roots, verify):
    local = read_celebamask_hq(str(local_roots["celebamask_hq"]))
    remote = read_celebamask_hq(s3_roots["celebamask_hq"], decode_images=verify)
    assert without_location(remote.records) == without_location(local.records)
    assert remote.records[0].image.startswith("s3://faces/raw/CelebAMask-HQ/CelebA-HQ-img/")
    prefix = "md5:" if verify else "etag:"
    assert remote.records[0].image_checksum.startswith(prefix)
    if verify:  # S3's ETag of a single-part upload is the md5: both readers agree
        assert remote.records[0].image_checksum == local.records[0].image_checksum
    assert without_location(read_utkface(s3_roots["utkface"], .1, .1, verify).records) == without_location(
        read_utkface(str(local_roots["utkface"]), .1, .1).records)
    assert without_location(read_rafdb(s3_roots["rafdb"], .1, verify).records) == without_location(
        read_rafdb(str(local_roots["rafdb"]), .1).records)


def test_s3_quarantine_names_the_s3_object(s3_server, s3_roots):
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.put_object(Bucket="faces", Key="raw/UTKFace/39_1_20170116174525125.jpg.chip.jpg", Body=b"x")
    try:
        res = read_utkface(s3_roots["utkface"], .1, .1)
        q = res.quarantined[0]
        assert q.reason == "malformed_name" and q.path == "s3://faces/raw/UTKFace/39_1_20170116174525125.jpg.chip.jpg"
    finally:
        s3.delete_object(Bucket="faces", Key="raw/UTKFace/39_1_20170116174525125.jpg.chip.jpg")


def test_ingest_from_s3_roots(s3_roots, tmp_path):
    p = IngestPaths(tmp_path / "raw", tmp_path / "manifest", tmp_path / "ingest.json", tmp_path / "sheet.png")
    run_ingest(IngestConfig(source="real", roots=DatasetRoots(**s3_roots), contact_sheet_faces=2), SEED, p)
    records = read_manifest(p.manifest / "manifest.parquet")
    assert records and all(r.image.startswith("s3://faces/raw/") for r in records)
    assert p.contact_sheet.exists()


def test_an_s3_outage_stops_ingest_with_one_message_and_a_rerun_completes(s3_server, s3_roots, tmp_path, monkeypatch):
    """Issue 19: the endpoint stops answering at the stage's start, then mid-stage: each time one message that names
    the endpoint and the object, no output written and no record quarantined for it; once it answers again the rerun
    gives the clean run's manifest."""
    relay = Relay(("127.0.0.1", int(s3_server.rsplit(":", 1)[1]))).up()
    monkeypatch.setenv("AWS_ENDPOINT_URL", relay.url)
    cfg = IngestConfig(source="real", roots=DatasetRoots(**s3_roots), contact_sheet_faces=2)

    def paths(name: str) -> IngestPaths:
        return IngestPaths(tmp_path / name / "raw", tmp_path / name / "manifest", tmp_path / name / "ingest.json",
                           tmp_path / name / "sheet.png")

    clean = run_ingest(cfg, SEED, paths("clean"))
    served = relay.bytes_back
    relay.down()
    said = rf"s3://faces/raw/\S+: the object store at {relay.url} did not answer .* rerun the stage"
    with pytest.raises(StorageUnavailable, match=said) as at_start:
        run_ingest(cfg, SEED, paths("run"))
    before = relay.bytes_back
    relay.cut_after = before + served // 2  # half of what a whole run reads
    relay.up()
    with pytest.raises(StorageUnavailable, match=said) as mid_stage:
        run_ingest(cfg, SEED, paths("run"))
    assert not relay.is_up and relay.bytes_back > before  # it answered for a while, then stopped
    for failure in (at_start, mid_stage):
        assert "\n" not in str(failure.value) and isinstance(failure.value, RuntimeError)  # run_stage's one line
    run = paths("run")
    outputs = (run.manifest, run.metrics, run.contact_sheet, run.manifest.with_name("manifest.tmp"))
    assert not any(p.exists() for p in outputs)

    relay.cut_after = 0
    relay.up()
    assert run_ingest(cfg, SEED, run) == clean  # counts, splits, reasons: nothing was quarantined for the outage
    manifest = "manifest.parquet"
    assert read_manifest(run.manifest / manifest) == read_manifest(paths("clean").manifest / manifest)
    relay.down()
