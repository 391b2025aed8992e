"""The `build_corpus` pipeline on Ray Data: manifest -> faces -> label maps -> QA records -> Parquet shards.

    from_arrow(one table per (split, shard))      faces assigned to shards by a hash of their id
      .map_batches(ShardBuilder, ActorPoolStrategy, batch_size=None)
          per shard, in one actor call: read + decode + resize each image, compose the ground-truth
          map from its masks, run the parser (loaded once per actor) where there are no masks or the
          split is evaluated, region statistics, PNG bytes, QA records, one Parquet file
      .take_all()                                   one summary row per shard: counts, quarantine, parity

The shard is the unit of work, so no shuffle groups records into files and a shard's bytes depend
only on its faces (rows sorted, random choices seeded per face): two runs write identical bytes.
On a remote cluster (pipelines/cluster.py) the manifest's images must be URLs or on shared storage (checked
before any work), and the actors write their shards to the cluster storage; the driver then fetches them
into the DVC output folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from model.labels import PARSING_CLASSES
from pipelines.cluster import placement
from pipelines.corpus.records import (
    RECORD_SCHEMA,
    RecordPlan,
    encode_png,
    face_records,
    load_face,
    region_stats,
    scene_facts,
)
from pipelines.corpus.templates import Templates
from pipelines.datasets.common import SPLITS, Record
from pipelines.images import resize_map
from pipelines.ingest import QUARANTINE_SCHEMA
from pipelines.storage import atomic_dir, filesystem, remove_tree

log = logging.getLogger(__name__)
NUM_CLASSES = len(PARSING_CLASSES)
PARSER_BATCH = 32


@dataclass(frozen=True)
class CorpusConfig:
    """params.yaml: build_corpus."""

    image_size: int = 64  # image and map side in the corpus (the model's input resolution)
    parser_splits: tuple[str, ...] = ("val", "test")  # maps come from the parser here even where masks exist
    # of the train faces with masks outside parser_splits, this share (fixed per face) gets the parser's map anyway:
    # the models then see both the crisp shapes of ground truth and the maps the test gives (what the parser misses)
    parser_train_share: float = 0.0
    records: RecordPlan = field(default_factory=RecordPlan)
    faces_per_shard: int = 250  # one Parquet file holds about this many faces (and is one unit of Ray work)
    workers: int = 2  # Ray actors that load, parse and encode faces (each loads the parser once); ~ cores
    parser_threads: int = 1  # torch threads per parser actor
    max_quarantine_share: float = 0.05  # faces that fail to load, per dataset, before the stage fails
    dashboard: bool = False  # start the Ray dashboard (local Ray only)

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"build_corpus.image_size must be >= 8, got {self.image_size}")
        if set(self.parser_splits) - set(SPLITS):
            raise ValueError(f"build_corpus.parser_splits must be among {SPLITS}, got {self.parser_splits}")
        if not 0.0 <= self.parser_train_share <= 1.0:
            raise ValueError(f"build_corpus.parser_train_share must be in [0, 1], got {self.parser_train_share}")
        if min(self.faces_per_shard, self.workers, self.parser_threads) < 1:
            raise ValueError("build_corpus: faces_per_shard, workers, parser_threads must be >= 1")


# -- rows and stages --------------------------------------------------------------------------------------

def shard_of(face_id: str, shards: int) -> int:
    return zlib.crc32(face_id.encode()) % shards


def manifest_rows(records: list[Record], cfg: CorpusConfig) -> list[dict[str, Any]]:
    """Flat scalar columns (no nulls, no ragged lists) so every Ray block has one schema."""
    per_split = Counter(r.split for r in records)
    shards = {s: max(1, math.ceil(n / cfg.faces_per_shard)) for s, n in per_split.items()}
    return [{
        "dataset": r.dataset, "id": r.id, "split": r.split, "shard": shard_of(f"{r.dataset}/{r.id}", shards[r.split]),
        "image": r.image, "masks": "\n".join(r.masks or []), "label_file": r.label_file or "",
        "label_line": r.label_line or 0,
        "attributes": "".join("1" if v > 0 else "0" for v in r.attributes) if r.attributes else "",
        "age": -1 if r.age is None else r.age, "gender": -1 if r.gender is None else r.gender,
        "race": -1 if r.race is None else r.race, "expression": -1 if r.expression is None else r.expression,
        "needs_parser": not r.masks or r.split in cfg.parser_splits or (
            r.split == "train" and parser_drawn(f"{r.dataset}/{r.id}", cfg.parser_train_share)),
    } for r in records]


def parser_drawn(face: str, share: float) -> bool:
    """Whether a train face is one of the `share` that get the parser's map: a hash of its id, so stable."""
    return zlib.crc32(f"parser:{face}".encode()) / 2 ** 32 < share


def load_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    loaded = [load_face({"image": str(image), "masks": str(masks).split("\n") if masks else []}, size)
              for image, masks in zip(batch["image"], batch["masks"], strict=True)]
    out = dict(batch)
    for key in ("image_array", "gt_map", "has_gt", "error_reason", "error_detail"):
        out[key] = np.stack([f[key] for f in loaded]) if key in ("image_array", "gt_map") else \
            np.array([f[key] for f in loaded])
    return out


class ShardBuilder:
    """Ray Data actor: one block in = one shard's faces; loads, parses, encodes, writes one Parquet file.

    The parser is loaded once per actor. Everything per face happens in this one stage on purpose:
    the shard is the unit of work, so no shuffle is needed to group records into files, and a shard's
    bytes depend only on its faces (rows sorted, random choices seeded per face), never on scheduling.
    """

    def __init__(self, parser: dict[str, Any], size: int, threads: int, out_dir: str, templates: dict,
                 knowledge: dict, plan: dict, seed: int):
        import torch

        from model.face_parser import parser_from_bytes

        torch.set_num_threads(threads)
        self.model = parser_from_bytes(parser["config"], parser["weights"])
        self.size, self.out_dir, self.seed = size, out_dir, seed
        self.templates = Templates(templates, knowledge)
        self.plan = RecordPlan(**plan)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        began, start = time.time(), time.perf_counter()
        faces = encode_batch(self.parse(load_batch(batch, self.size)))
        out = write_shard(faces, self.out_dir, self.templates, self.plan, self.seed)
        out["began"] = np.array([began])
        out["seconds"] = np.array([time.perf_counter() - start])
        out["worker"] = np.array([f"{ray_node_ip()}:{os.getpid()}"])
        return out

    def parse(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["gt_map"])
        wanted = [k for k in range(n) if batch["needs_parser"][k] and not batch["error_reason"][k]]
        maps = batch["gt_map"].copy()
        sources = np.array(["ground_truth" if batch["has_gt"][k] else "none" for k in range(n)], dtype=object)
        confusions = np.zeros((n, NUM_CLASSES * NUM_CLASSES), np.int64)
        parser_size = self.model.cfg.image_size
        # fixed chunks of a shard's fixed, ordered faces: the same inputs always form the same batches
        for start in range(0, len(wanted), PARSER_BATCH):
            chunk = wanted[start:start + PARSER_BATCH]
            images = np.stack([batch["image_array"][k] if parser_size == self.size
                               else _resize_rgb(batch["image_array"][k], parser_size) for k in chunk])
            for k, label in zip(chunk, self.model.parse(images), strict=True):
                label = resize_map(label, self.size)
                if batch["has_gt"][k]:
                    idx = batch["gt_map"][k].reshape(-1).astype(np.int64) * NUM_CLASSES + label.reshape(-1)
                    confusions[k] = np.bincount(idx, minlength=NUM_CLASSES * NUM_CLASSES)
                maps[k] = label
                sources[k] = "parser"
        return {**{k: v for k, v in batch.items() if k != "gt_map"}, "map": maps, "map_source": sources,
                "confusion": confusions}


def _resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def encode_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """PNG bytes and region statistics; the raw arrays are dropped here."""
    out = {k: v for k, v in batch.items() if k not in ("image_array", "map")}
    out["image_png"] = [encode_png(a) for a in batch["image_array"]]
    out["map_png"] = [encode_png(m) for m in batch["map"]]
    out["regions"] = [region_stats(m) for m in batch["map"]]
    out["scene"] = [json.dumps(scene_facts(a, m)) for a, m in zip(batch["image_array"], batch["map"], strict=True)]
    return out


def _face(faces: dict[str, Any], k: int) -> dict[str, Any]:
    """Face k of an encoded batch, in the manifest's label conventions."""
    attrs = str(faces["attributes"][k])
    return {"id": str(faces["id"][k]), "dataset": str(faces["dataset"][k]), "split": str(faces["split"][k]),
            "image_png": faces["image_png"][k], "map_png": faces["map_png"][k],
            "map_source": str(faces["map_source"][k]), "regions": faces["regions"][k],
            "scene": json.loads(str(faces["scene"][k])),
            "attributes": [1 if c == "1" else -1 for c in attrs] if attrs else None,
            **{key: (None if int(faces[key][k]) < 0 else int(faces[key][k]))
               for key in ("age", "gender", "race", "expression")}}


def write_shard(faces: dict[str, Any], out_dir: str, templates: Templates, plan: RecordPlan,
                seed: int) -> dict[str, np.ndarray]:
    """One shard's records, sorted, as one Parquet file; returns one summary row for the driver."""
    n = len(faces["id"])
    # a seeded hash order, not (dataset, id): a shard's faces come in a fixed order that mixes the datasets,
    # so the first records of a split (a training `limit`, a shuffle buffer's window) hold every task
    ok = sorted((k for k in range(n) if not faces["error_reason"][k]),
                key=lambda k: (zlib.crc32(f"{seed}:{faces['dataset'][k]}/{faces['id'][k]}".encode()),
                               str(faces["dataset"][k]), str(faces["id"][k])))
    rows = [rec for k in ok for rec in face_records(_face(faces, k), templates, plan, seed)]
    split, shard = str(faces["split"][0]), int(faces["shard"][0])
    rel = f"{split}/part-{shard:05d}.parquet"
    fs, base = filesystem(out_dir)
    fs.makedirs(f"{base}/{split}", exist_ok=True)
    with fs.open(f"{base}/{rel}", "wb") as fh:
        pq.write_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), fh, compression="zstd",
                       row_group_size=1024)
    counts = Counter(f"map_source/{faces['map_source'][k]}" for k in ok)
    for rec in rows:
        counts[f"records/{rec['task']}/{rec['kind']}"] += 1
        counts[f"turns/{rec['kind']}"] += len(rec["turns"])
        for turn in rec["turns"]:
            counts[f"templates/{turn['template']}"] += 1
    bad = [{"dataset": str(faces["dataset"][k]), "id": str(faces["id"][k]), "path": str(faces["image"][k]),
            "line": int(faces["label_line"][k]) or None, "reason": str(faces["error_reason"][k]),
            "detail": str(faces["error_detail"][k])} for k in range(n) if faces["error_reason"][k]]
    parity = np.sum([faces["confusion"][k] for k in ok if faces["map_source"][k] == "parser"
                     and faces["has_gt"][k]], axis=0, dtype=np.int64).reshape(-1)
    return {"file": np.array([rel]), "split": np.array([split]), "faces": np.array([len(ok)]),
            "records": np.array([len(rows)]), "counts": np.array([json.dumps(dict(sorted(counts.items())))]),
            "quarantined": np.array([json.dumps(bad)]),
            "parity_faces": np.array([sum(1 for k in ok if faces["map_source"][k] == "parser"
                                          and faces["has_gt"][k])]),
            "parity": (parity if parity.size == NUM_CLASSES ** 2 else np.zeros(NUM_CLASSES ** 2, np.int64))[None]}


# -- the driver -----------------------------------------------------------------------------------------

def parser_payload(parser_dir: Path) -> dict[str, Any]:
    """The parser as bytes, so actors on any node get it from the object store, not from a local path."""
    from model.face_parser import CONFIG_FILE, WEIGHTS_FILE

    if not (parser_dir / WEIGHTS_FILE).exists():
        raise FileNotFoundError(f"{parser_dir}: no {WEIGHTS_FILE}; run `dvc repro train_parser` first")
    return {"config": json.loads((parser_dir / CONFIG_FILE).read_text()),
            "weights": (parser_dir / WEIGHTS_FILE).read_bytes()}


def shard_blocks(rows: list[dict[str, Any]]) -> list[pa.Table]:
    """One Arrow table per (split, shard), in a fixed order: each becomes exactly one Ray block."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["split"], row["shard"]), []).append(row)
    return [pa.Table.from_pylist(groups[key]) for key in sorted(groups)]


def ray_node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


def shard_summaries(rows: list[dict[str, Any]], cfg: CorpusConfig, parser: dict[str, Any], out_dir: str,
                    templates: Templates, knowledge: dict, seed: int) -> list[dict[str, Any]]:
    """The Ray Data pipeline: shard blocks -> ShardBuilder actors (batch = whole block) -> summaries."""
    import ray

    ds = ray.data.from_arrow(shard_blocks(rows))
    ds = ds.map_batches(
        ShardBuilder, batch_size=None,  # None: the whole block, i.e. exactly one shard per call
        fn_constructor_kwargs={"parser": parser, "size": cfg.image_size, "threads": cfg.parser_threads,
                               "out_dir": str(out_dir), "templates": templates.data, "knowledge": knowledge,
                               "plan": asdict(cfg.records), "seed": seed},
        compute=ray.data.ActorPoolStrategy(size=cfg.workers))
    return ds.take_all()


def parity_scores(confusion: np.ndarray, faces: int) -> dict[str, Any]:
    from pipelines.parser_training import segmentation_scores

    scores = segmentation_scores(confusion.reshape(NUM_CLASSES, NUM_CLASSES))
    return {"faces": faces, "miou": round(scores["miou"], 6), "pixel_accuracy": round(scores["pixel_accuracy"], 6),
            "iou": scores["iou"]}


def build_corpus(records: list[Record], ingest_quarantine: pa.Table, knowledge: dict[str, Any], parser_dir: Path,
                 cfg: CorpusConfig, seed: int, out_dir: Path, templates: Templates | None = None) -> dict[str, Any]:
    """Build the corpus into `out_dir` (via a temporary sibling renamed at the end); returns the metrics."""
    start, began = time.perf_counter(), time.time()
    templates = templates or Templates.load(knowledge=knowledge)
    if not records:
        raise ValueError("the manifest holds no records; run `dvc repro ingest` first")
    rows = manifest_rows(records, cfg)
    where = placement()
    where.require_files("build_corpus", "manifest images and masks",
                        (p for r in records for p in (r.image, *(r.masks or []))))
    scratch = where.scratch("build_corpus")  # None: the actors write straight into the output folder
    with atomic_dir(out_dir) as tmp:
        tmp.mkdir()
        try:
            shards = sorted(shard_summaries(rows, cfg, parser_payload(parser_dir), scratch or str(tmp.resolve()),
                                            templates, knowledge, seed), key=lambda s: s["file"])
            if scratch:
                fetch_shards(scratch, [str(s["file"]) for s in shards], tmp)
        finally:
            if scratch:
                remove_tree(scratch)
        bad = sorted((b for s in shards for b in json.loads(s["quarantined"])), key=lambda b: (b["dataset"], b["id"]))
        check_failures(bad, Counter(r["dataset"] for r in rows), cfg.max_quarantine_share)
        quarantine = pa.concat_tables([
            ingest_quarantine.cast(QUARANTINE_SCHEMA).append_column(
                "stage", pa.array(["ingest"] * len(ingest_quarantine), pa.string())),
            pa.Table.from_pylist(bad, schema=QUARANTINE_SCHEMA).append_column(
                "stage", pa.array(["build_corpus"] * len(bad), pa.string())),
        ])
        pq.write_table(quarantine, tmp / "quarantine.parquet")
        (tmp / "shards.json").write_text(json.dumps(
            [{k: s[k] for k in ("file", "split", "faces", "records")} for s in shards], indent=2) + "\n")
    wall = time.perf_counter() - start
    busy = Counter()
    for shard in shards:
        busy[shard["worker"]] += float(shard["seconds"])
    timing = {"wall_s": round(wall, 2), "startup_s": round(min(float(s["began"]) for s in shards) - began, 2),
              "workers": len(busy), "busiest_worker_s": round(max(busy.values()), 2),
              "nodes": len({w.rsplit(":", 1)[0] for w in busy})}
    log.info("corpus written: %d shards, %d faces: %s", len(shards), len(rows), timing)
    timing["ray"] = f"cluster {os.environ['RAY_ADDRESS']}" if os.environ.get("RAY_ADDRESS") else "local"
    return corpus_metrics(shards, rows, quarantine, timing)


def fetch_shards(scratch: str, files: list[str], local: Path) -> None:
    """The shards remote actors wrote to the cluster storage, into the local output folder."""
    fs, base = filesystem(scratch)
    for rel in files:
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(f"{base}/{rel}", str(local / rel))


class CorpusQuarantineExceeded(RuntimeError):
    pass


def check_failures(bad: list[dict[str, Any]], per_dataset: Counter, max_share: float) -> None:
    by_dataset = Counter(b["dataset"] for b in bad)
    problems = []
    for name, count in sorted(by_dataset.items()):
        if count / per_dataset[name] > max_share:
            example = next(b for b in bad if b["dataset"] == name)
            problems.append(f"{name}: {count} of {per_dataset[name]} faces failed to load, e.g. "
                            f"{example['reason']}: {example['detail']}")
    if problems:
        raise CorpusQuarantineExceeded(
            "\n".join(problems) + "\nThe files changed since `ingest` verified them: re-run `dvc repro ingest`, "
            "or raise build_corpus.max_quarantine_share.")


def corpus_metrics(shards: list[dict], rows: list[dict], quarantine: pa.Table, timing: dict) -> dict[str, Any]:
    records: dict[str, dict[str, dict[str, int]]] = {}
    turns: Counter = Counter()
    templates: Counter = Counter()
    sources: Counter = Counter()
    for shard in shards:
        for key, n in json.loads(shard["counts"]).items():
            head, rest = key.split("/", 1)
            if head == "records":
                task, kind = rest.split("/")
                split_counts = records.setdefault(shard["split"], {}).setdefault(task, {})
                split_counts[kind] = split_counts.get(kind, 0) + n
            elif head == "turns":
                turns[rest] += n
            elif head == "map_source":
                sources[rest] += n
            else:
                templates[rest] += n
    faces = Counter((r["dataset"], r["split"]) for r in rows)
    q = quarantine.to_pylist()
    total_records = sum(s["records"] for s in shards)
    parity_by_split = {}
    for split in SPLITS:
        mine = [s for s in shards if s["split"] == split and s["parity_faces"]]
        if mine:
            parity_by_split[split] = parity_scores(np.sum([np.asarray(s["parity"]) for s in mine], axis=0),
                                                   sum(int(s["parity_faces"]) for s in mine))
    return {
        "faces": {d: {s: faces[(d, s)] for s in SPLITS} for d in sorted({d for d, _ in faces})},
        "faces_written": sum(s["faces"] for s in shards),
        "records": records,
        "records_total": total_records,
        "turns_by_kind": dict(sorted(turns.items())),
        "templates_used": len(templates),
        "templates_by_use": dict(sorted(templates.items())),
        "map_source": dict(sorted(sources.items())),
        "quarantined": {stage: dict(sorted(Counter(x["reason"] for x in q if x["stage"] == stage).items()))
                        for stage in ("ingest", "build_corpus")},
        # the parser's maps against the ground truth on the faces that have both (mIoU at corpus size)
        "parser_parity": parity_by_split,
        "shards": len(shards),
        # end to end (start-up included), and steady state: faces over the busiest worker's busy time
        "throughput": {**timing, "faces_per_s": round(len(rows) / timing["wall_s"], 2),
                       "records_per_s": round(total_records / timing["wall_s"], 2),
                       "steady_faces_per_s": round(len(rows) / timing["busiest_worker_s"], 2)},
    }
