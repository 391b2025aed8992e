"""What a stage may hand to Ray workers: pipelines/cluster.py against a real S3 API server (moto_server)."""

from __future__ import annotations

import boto3
import pytest

from pipelines.cluster import STORAGE_ENV, ClusterView, Placement, UnreachablePathError
from pipelines.storage import local_copy
from pipelines.tracking import tracking_store_path

LOCAL = ClusterView("10.0.0.1", ("10.0.0.1",))
REMOTE = ClusterView("10.0.0.1", ("10.0.0.1", "10.0.0.7"))


def test_a_local_cluster_takes_any_path_a_remote_one_only_urls_and_shared_mounts(tmp_path):
    assert LOCAL.local and not REMOTE.local
    assert Placement(LOCAL).reachable(tmp_path / "x")
    remote = Placement(REMOTE, shared=(str(tmp_path / "efs"),))
    assert remote.reachable("s3://bucket/raw/img.jpg")
    assert remote.reachable(tmp_path / "efs" / "corpus") and remote.reachable(tmp_path / "efs")
    assert not remote.reachable(tmp_path / "efs2" / "corpus")  # a prefix of the name is not a mount
    assert not remote.reachable(tmp_path / "data")


def test_the_start_up_error_names_every_path_and_the_ways_out(tmp_path):
    remote = Placement(REMOTE)
    with pytest.raises(UnreachablePathError) as err:
        remote.require("align", {"corpus": tmp_path / "corpus", "ok": "s3://b/x", "unset": None})
    text = str(err.value)
    assert text.startswith("align: RAY_ADDRESS names a cluster with nodes at 10.0.0.1, 10.0.0.7")
    assert f"corpus: {tmp_path / 'corpus'}" in text and "s3://b/x" not in text and "unset" not in text
    assert STORAGE_ENV in text and "FACEINSIGHT_SHARED_PATHS" in text
    images = [f"/data/raw/{k}.jpg" for k in range(5)] + ["s3://b/ok.jpg"]
    with pytest.raises(UnreachablePathError, match=r"manifest images \(and 2 more\)"):
        remote.require_files("build_corpus", "manifest images", images)
    with pytest.raises(UnreachablePathError, match="cannot write to this machine"):
        remote.scratch("build_corpus")
    with pytest.raises(UnreachablePathError, match=r"Ray Train storage \(--storage\): runs/ray"):
        remote.train_storage("align", "runs/ray")
    Placement(LOCAL).require("align", {"corpus": tmp_path / "corpus"})  # no error on a local cluster
    assert Placement(LOCAL).scratch("build_corpus") is None


def test_a_local_mlflow_store_is_a_path_a_server_is_not():
    assert tracking_store_path("sqlite:////work/mlflow.db") == "/work/mlflow.db"
    assert tracking_store_path("file:///work/mlruns") == "/work/mlruns"
    assert tracking_store_path("http://10.0.0.1:5000") is None
    with pytest.raises(UnreachablePathError, match="/work/mlflow.db"):
        Placement(REMOTE).require("align", {"MLflow store": tracking_store_path("sqlite:////work/mlflow.db")})


def test_inputs_are_staged_once_by_content_and_fetched_back_whole(s3_server, tmp_path, monkeypatch):
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="cluster")
    monkeypatch.setenv(STORAGE_ENV, "s3://cluster/fi")
    where = Placement.from_env(REMOTE)
    tok = tmp_path / "tokenizer"
    (tok / "sub").mkdir(parents=True)
    (tok / "tokenizer.json").write_text('{"vocab": 1}')
    (tok / "sub" / "extra.bin").write_bytes(bytes(range(256)))
    url = where.hand("align", "tokenizer", tok)
    assert url.startswith("s3://cluster/fi/staged/") and url.endswith("/tokenizer")
    assert where.hand("align", "tokenizer", tok) == url  # the same bytes: the same place, not uploaded again
    fetched = local_copy(url)
    assert fetched.name == "tokenizer" and fetched != tok
    assert (fetched / "tokenizer.json").read_text() == '{"vocab": 1}'
    assert (fetched / "sub" / "extra.bin").read_bytes() == bytes(range(256))
    (tok / "tokenizer.json").write_text('{"vocab": 2}')
    assert where.hand("align", "tokenizer", tok) != url  # changed bytes: a new staging
    assert where.train_storage("align", "runs/ray") == "s3://cluster/fi/ray"
    assert where.scratch("build_corpus").startswith("s3://cluster/fi/scratch/build_corpus-")
    assert Placement.from_env(LOCAL).hand("align", "tokenizer", tok) == str(tok.resolve())
