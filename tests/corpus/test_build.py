"""The Ray Data corpus build on small synthetic data: shards, quarantine, splits, determinism, failure."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from model.face_parser import FaceParser, FaceParserConfig, save_parser
from pipelines.corpus.build import CorpusConfig, CorpusQuarantineExceeded, build_corpus
from pipelines.corpus.records import RecordPlan
from pipelines.corpus.templates import TEMPLATES_FILE
from pipelines.ingest import IngestConfig, quarantine_table, read_datasets
from pipelines.knowledge import KnowledgeConfig, mine_knowledge

pytestmark = pytest.mark.slow
CFG = CorpusConfig(records=RecordPlan(questions_per_record=10, knowledge_turns=3, balance_yes_no=False),
                   faces_per_shard=80)


@pytest.fixture(scope="module")
def inputs(synthetic_roots, tmp_path_factory):
    """Manifest records of the small synthetic sets, two UTKFace images broken after ingest, a parser."""
    tmp = tmp_path_factory.mktemp("corpus_inputs")
    import shutil

    utk = tmp / "utkface"
    shutil.copytree(synthetic_roots["utkface"], utk)
    roots = {k: str(v) for k, v in synthetic_roots.items()} | {"utkface": str(utk)}
    results = read_datasets(roots, IngestConfig())
    records = [r for name in ("celebamask_hq", "utkface", "rafdb") for r in results[name].records]
    quarantine = quarantine_table([q for res in results.values() for q in res.quarantined])
    utk_records = [r for r in records if r.dataset == "utkface"]
    Path(utk_records[0].image).write_bytes(b"not a jpeg any more")
    Path(utk_records[1].image).unlink()
    parser = tmp / "parser"
    torch_seed_model = FaceParser(FaceParserConfig())
    save_parser(torch_seed_model, parser)
    train = np.array([r.attributes for r in records if r.dataset == "celebamask_hq" and r.split == "train"]) > 0
    knowledge = mine_knowledge(train, KnowledgeConfig(min_support=10, min_expected=3))
    return {"records": records, "quarantine": quarantine, "parser": parser, "knowledge": knowledge,
            "broken": {utk_records[0].id: "unreadable_image", utk_records[1].id: "missing_image"}}


def read_split(out: Path, split: str) -> list[dict]:
    return [row for f in sorted((out / split).glob("*.parquet")) for row in pq.read_table(f).to_pylist()]


def build(inputs: dict, out: Path) -> dict:
    return build_corpus(inputs["records"], inputs["quarantine"], inputs["knowledge"], inputs["parser"], CFG, 7, out)


@pytest.fixture(scope="module")
def clean(ray_local, inputs, tmp_path_factory) -> tuple[Path, dict]:
    """One build of the inputs, nothing going wrong: its folder and metrics."""
    out = tmp_path_factory.mktemp("clean") / "corpus"
    return out, build(inputs, out)


def assert_same_files(first: Path, second: Path) -> list[Path]:
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
    return files


def test_build_writes_shards_quarantine_and_is_byte_identical(ray_local, inputs, clean, tmp_path):
    (first, metrics), second = clean, tmp_path / "b" / "corpus"
    build(inputs, second)
    files = assert_same_files(first, second)
    assert any(str(f).startswith("train/part-") for f in files) and Path("quarantine.parquet") in files
    assert not first.with_name("corpus.tmp").exists()

    # every manifest face is in the corpus or in the quarantine, with its reason
    quarantine = pq.read_table(first / "quarantine.parquet").to_pylist()
    built = {q["id"]: q["reason"] for q in quarantine if q["stage"] == "build_corpus"}
    assert built == inputs["broken"]
    rows = {s: read_split(first, s) for s in ("train", "val", "test")}
    faces = {(r["dataset"], r["face_id"]) for split in rows.values() for r in split}
    assert faces | {("utkface", i) for i in built} == {(r.dataset, r.id) for r in inputs["records"]}
    assert metrics["faces_written"] == len(faces) and metrics["records_total"] == sum(map(len, rows.values()))

    # splits: no face and no image in two splits; each face's records carry its manifest split
    split_of = {(r.dataset, r.id): r.split for r in inputs["records"]}
    for split, recs in rows.items():
        assert all(split_of[(r["dataset"], r["face_id"])] == split for r in recs)
    images = {s: {r["image"] for r in recs} for s, recs in rows.items()}

    # a shard's faces are mixed across datasets, not grouped (a training `limit` takes its first records)
    for shard in sorted((first / "train").glob("*.parquet")):
        datasets = pq.read_table(shard, columns=["dataset"]).column("dataset").to_pylist()
        runs = [d for k, d in enumerate(datasets) if k == 0 or d != datasets[k - 1]]  # one per unbroken stretch
        assert len(runs) > 3 * len(set(datasets)), (shard.name, runs)
    assert not (images["train"] & images["val"] or images["train"] & images["test"] or images["val"] & images["test"])

    # maps: ground truth only on CelebAMask-HQ train; the parser everywhere else
    sources = Counter((r["dataset"], r["split"], r["map_source"]) for recs in rows.values() for r in recs)
    assert {(d, s) for d, s, m in sources if m == "ground_truth"} == {("celebamask_hq", "train")}
    for split in ("val", "test"):
        assert metrics["parser_parity"][split]["faces"] == sum(
            1 for r in inputs["records"] if r.dataset == "celebamask_hq" and r.split == split)
        assert 0 <= metrics["parser_parity"][split]["miou"] <= 1
    assert "train" not in metrics["parser_parity"]

    # records decode at the corpus resolution; the CelebA face gets 4 yes/no chunks of 10 = all 40 attributes
    sample = next(r for r in rows["train"] if r["dataset"] == "celebamask_hq")
    with Image.open(io.BytesIO(sample["image"])) as img, Image.open(io.BytesIO(sample["seg_map"])) as seg:
        assert img.size == seg.size == (CFG.image_size, CFG.image_size) and seg.mode == "L"
        assert np.asarray(seg).max() < 19
    kinds = Counter(r["kind"] for r in rows["train"] if r["face_id"] == sample["face_id"]
                    and r["dataset"] == "celebamask_hq")
    assert kinds["yes_no"] == 4 and kinds["open"] == kinds["description"] == kinds["generic"] == 1
    generic = next(r for r in rows["train"] if r["face_id"] == sample["face_id"] and r["kind"] == "generic")
    said = {t["target"]: t["value"] for t in generic["turns"]}
    colours = yaml.safe_load(TEMPLATES_FILE.read_text())["generic"]["colours"]
    assert said["scene:background"] in colours and said.get("scene:brightness", "bright") in ("bright", "dark")
    assert 0 <= int(said.get("scene:level", 0)) <= 99
    yes_no = {t.removeprefix("scene:"): v for t, v in said.items() if "=" in t}
    assert sorted(yes_no.values()) == ["no", "yes"]  # one true and one false question about the photo
    topic, asked = next(t for t, v in yes_no.items() if v == "yes").split("=")
    assert said.get(f"scene:{topic}", asked) == asked  # the true one asks what the open answer said
    assert metrics["records"]["train"]["attributes"]["yes_no"] == 4 * sum(
        1 for r in inputs["records"] if r.dataset == "celebamask_hq" and r.split == "train")


def test_too_many_broken_faces_fail_and_leave_the_old_corpus(ray_local, inputs, tmp_path):
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "old.txt").write_text("the previous corpus")
    strict = CorpusConfig(max_quarantine_share=0.0)
    with pytest.raises(CorpusQuarantineExceeded, match="utkface: 2 of .* unreadable_image|missing_image"):
        build_corpus(inputs["records"], inputs["quarantine"], inputs["knowledge"], inputs["parser"], strict, 7, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]
    assert (out / "old.txt").read_text() == "the previous corpus"


def test_a_worker_process_killed_mid_build_changes_nothing(ray_local, inputs, clean, tmp_path):
    """Issue 19: SIGKILL to a ShardBuilder actor's process while it builds a shard. Ray Data restarts the actor and
    retries its shard (Ray Data's actor defaults: max_restarts=-1, max_task_retries=-1); the corpus is the clean
    build's, byte for byte, so its record counts and content hashes too."""
    import os
    import signal
    import threading
    import time

    import psutil

    def busy_shard_builder() -> psutil.Process | None:
        for proc in psutil.process_iter(["pid", "cmdline"]):  # Ray titles an actor's process after its class
            title = " ".join(proc.info["cmdline"] or [])
            if "ShardBuilder" in title and ".submit" in title:  # busy with a shard, not starting up
                return proc
        return None

    out, built, killed = tmp_path / "killed" / "corpus", {}, False
    for _attempt in range(3):  # a build can end before a busy actor is seen (a fast machine): build again
        built.clear()
        thread = threading.Thread(target=lambda: built.update(metrics=build(inputs, out)), daemon=True)
        thread.start()
        victim = None
        while victim is None and thread.is_alive():
            victim = busy_shard_builder()
            time.sleep(0.05)
        if victim is not None and thread.is_alive():
            os.kill(victim.pid, signal.SIGKILL)
            killed = True
        thread.join(timeout=600)
        if killed:
            break
    assert killed, "no ShardBuilder actor was seen building a shard in three builds"
    assert "metrics" in built, "the build did not complete after the kill (see the log above)"
    assert_same_files(clean[0], out)
    assert {k: v for k, v in built["metrics"].items() if k != "throughput"} == {
        k: v for k, v in clean[1].items() if k != "throughput"}


def test_a_share_of_the_train_faces_gets_the_parsers_map_and_always_the_same_ones():
    from pipelines.corpus.build import manifest_rows
    from pipelines.datasets.common import Record

    records = [Record("celebamask_hq", f"{k}", "train", f"{k}.jpg", 1, "x", masks=[f"{k}_hair.png"])
               for k in range(400)]
    records += [Record("celebamask_hq", "v1", "val", "v1.jpg", 1, "x", masks=["v1_hair.png"]),
                Record("utkface", "u1", "train", "u1.jpg", 1, "x")]  # no masks: always the parser

    def parsed(share: float) -> set[str]:
        rows = manifest_rows(records, CorpusConfig(parser_train_share=share))
        return {f"{r['dataset']}/{r['id']}" for r in rows if r["needs_parser"]}

    assert parsed(0.0) == {"celebamask_hq/v1", "utkface/u1"}
    assert len(parsed(1.0)) == len(records)
    half = parsed(0.5) - parsed(0.0)
    assert 160 < len(half) < 240 and half == parsed(0.5) - parsed(0.0)  # about half, and the same faces each time
    assert half <= parsed(0.7)  # a larger share keeps the faces a smaller one drew
    with pytest.raises(ValueError, match="parser_train_share"):
        CorpusConfig(parser_train_share=1.5)
