"""The `build_corpus` pipeline on Ray Data: manifest -> faces -> label maps -> QA records -> Parquet shards.

    from_items(manifest rows)                       flat scalar columns, shard assigned by id hash
      .map_batches(load_batch)                      read + decode + resize image, compose GT map (tasks)
      .map_batches(ParseMaps, ActorPoolStrategy)    parser where there are no masks or the split is
                                                    evaluated; model loaded once per actor
      .map_batches(encode_batch)                    region statistics, PNG bytes (tasks)
      .materialize()
      .filter(ok).groupby([split, shard]).map_groups(write_group)   records + one Parquet file per shard

Nothing here names a local path a remote worker could not see except the shard output directory
and the image URLs of the manifest (use s3:// for both on a multi-node cluster). Row order inside
a shard is sorted and every random choice is seeded per face, so two runs write identical bytes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
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
from pipelines.corpus.records import (
    RECORD_SCHEMA,
    RecordPlan,
    encode_png,
    face_records,
    load_face,
    region_stats,
    resize_map,
)
from pipelines.corpus.templates import Templates
from pipelines.datasets.common import SPLITS, Record
from pipelines.storage import filesystem, replace_dir

log = logging.getLogger(__name__)
NUM_CLASSES = len(PARSING_CLASSES)


@dataclass(frozen=True)
class CorpusConfig:
    """params.yaml: build_corpus."""

    image_size: int = 64  # image and map side in the corpus (the model's input resolution)
    parser_splits: tuple[str, ...] = ("val", "test")  # maps come from the parser here even where masks exist
    records: RecordPlan = field(default_factory=RecordPlan)
    faces_per_shard: int = 1000  # one Parquet file per split holds about this many faces
    batch_size: int = 32  # faces per Ray Data batch
    parser_actors: int = 1  # actor pool size for the parser (each loads the model once)
    parser_threads: int = 1  # torch threads per parser actor
    max_quarantine_share: float = 0.05  # faces that fail to load, per dataset, before the stage fails
    dashboard: bool = False  # start the Ray dashboard (local Ray only)

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"build_corpus.image_size must be >= 8, got {self.image_size}")
        if set(self.parser_splits) - set(SPLITS):
            raise ValueError(f"build_corpus.parser_splits must be among {SPLITS}, got {self.parser_splits}")
        if min(self.faces_per_shard, self.batch_size, self.parser_actors, self.parser_threads) < 1:
            raise ValueError("build_corpus: faces_per_shard, batch_size, parser_actors, parser_threads must be >= 1")


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
        "needs_parser": not r.masks or r.split in cfg.parser_splits,
    } for r in records]


def load_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    loaded = [load_face({"image": str(image), "masks": str(masks).split("\n") if masks else []}, size)
              for image, masks in zip(batch["image"], batch["masks"], strict=True)]
    out = dict(batch)
    for key in ("image_array", "gt_map", "has_gt", "error_reason", "error_detail"):
        out[key] = np.stack([f[key] for f in loaded]) if key in ("image_array", "gt_map") else \
            np.array([f[key] for f in loaded])
    return out


class ParseMaps:
    """Ray Data actor: the face parser, loaded once, makes the map of every face that needs one."""

    def __init__(self, parser: dict[str, Any], size: int, threads: int = 1):
        import torch

        from model.face_parser import parser_from_bytes

        torch.set_num_threads(threads)
        self.model = parser_from_bytes(parser["config"], parser["weights"])
        self.size = size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parser_size = self.model.cfg.image_size
        maps, sources, confusions = [], [], []
        for image, gt, has_gt, needs, err in zip(batch["image_array"], batch["gt_map"], batch["has_gt"],
                                                 batch["needs_parser"], batch["error_reason"], strict=True):
            confusion = np.zeros(NUM_CLASSES * NUM_CLASSES, np.int64)
            if err or not needs:
                maps.append(gt)
                sources.append("ground_truth" if has_gt else "none")
            else:
                small = image if image.shape[0] == parser_size else _resize_rgb(image, parser_size)
                # one image at a time: a map must not depend on which faces share its batch
                label = resize_map(self.model.parse(small[None])[0], self.size)
                maps.append(label)
                sources.append("parser")
                if has_gt:
                    idx = gt.reshape(-1).astype(np.int64) * NUM_CLASSES + label.reshape(-1)
                    confusion = np.bincount(idx, minlength=NUM_CLASSES * NUM_CLASSES)
            confusions.append(confusion)
        return {**{k: v for k, v in batch.items() if k != "gt_map"}, "map": np.stack(maps),
                "map_source": np.array(sources), "confusion": np.stack(confusions)}


def _resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def encode_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """PNG bytes and region statistics; the raw arrays are dropped here."""
    out = {k: v for k, v in batch.items() if k not in ("image_array", "map")}
    out["image_png"] = np.array([encode_png(a) for a in batch["image_array"]], dtype=object)
    out["map_png"] = np.array([encode_png(m) for m in batch["map"]], dtype=object)
    out["regions"] = np.array([json.dumps(region_stats(m)) for m in batch["map"]])
    return out


def _face(row: dict[str, Any]) -> dict[str, Any]:
    """A written-out face row back into the manifest's label conventions."""
    attrs = row["attributes"]
    return {**row, "attributes": [1 if c == "1" else -1 for c in attrs] if attrs else None,
            "regions": json.loads(row["regions"]),
            **{k: (None if int(row[k]) < 0 else int(row[k])) for k in ("age", "gender", "race", "expression")}}


def write_group(group: pa.Table, out_dir: str, templates: dict, knowledge: dict, plan: dict,
                seed: int) -> pa.Table:
    """Records of one (split, shard): sorted, written as one Parquet file; returns its counts."""
    tpl = Templates(templates, knowledge)
    faces = sorted(group.drop_columns(["confusion"]).to_pylist(), key=lambda r: (r["dataset"], r["id"]))
    rows = [rec for face in faces for rec in face_records(_face(face), tpl, RecordPlan(**plan), seed)]
    split, shard = faces[0]["split"], int(faces[0]["shard"])
    rel = f"{split}/part-{shard:05d}.parquet"
    fs, base = filesystem(out_dir)
    fs.makedirs(f"{base}/{split}", exist_ok=True)
    with fs.open(f"{base}/{rel}", "wb") as fh:
        pq.write_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), fh, compression="zstd",
                       row_group_size=1024)
    counts = Counter()
    for rec in rows:
        counts[f"records/{rec['task']}/{rec['kind']}"] += 1
        counts[f"turns/{rec['kind']}"] += len(rec["turns"])
        for turn in rec["turns"]:
            counts[f"templates/{turn['template']}"] += 1
    return pa.table({"file": [rel], "split": [split], "faces": [len(faces)], "records": [len(rows)],
                     "counts": [json.dumps(dict(sorted(counts.items())))]})


# -- the driver -----------------------------------------------------------------------------------------

def parser_payload(parser_dir: Path) -> dict[str, Any]:
    """The parser as bytes, so actors on any node get it from the object store, not from a local path."""
    from model.face_parser import CONFIG_FILE, WEIGHTS_FILE

    if not (parser_dir / WEIGHTS_FILE).exists():
        raise FileNotFoundError(f"{parser_dir}: no {WEIGHTS_FILE}; run `dvc repro train_parser` first")
    return {"config": json.loads((parser_dir / CONFIG_FILE).read_text()),
            "weights": (parser_dir / WEIGHTS_FILE).read_bytes()}


def face_dataset(rows: list[dict[str, Any]], cfg: CorpusConfig, parser: dict[str, Any]):
    """The lazy Ray Data pipeline up to encoded faces."""
    import ray

    blocks = max(2, math.ceil(len(rows) / (cfg.batch_size * 2)))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    ds = ds.map_batches(load_batch, fn_kwargs={"size": cfg.image_size}, batch_size=cfg.batch_size)
    ds = ds.map_batches(ParseMaps, fn_constructor_kwargs={"parser": parser, "size": cfg.image_size,
                                                          "threads": cfg.parser_threads},
                        batch_size=cfg.batch_size, compute=ray.data.ActorPoolStrategy(size=cfg.parser_actors))
    return ds.map_batches(encode_batch, batch_size=cfg.batch_size)


def parity_scores(confusion: np.ndarray, faces: int) -> dict[str, Any]:
    from pipelines.parser_training import segmentation_scores

    scores = segmentation_scores(confusion.reshape(NUM_CLASSES, NUM_CLASSES))
    return {"faces": faces, "miou": round(scores["miou"], 6), "pixel_accuracy": round(scores["pixel_accuracy"], 6),
            "iou": scores["iou"]}


def build_corpus(records: list[Record], ingest_quarantine: pa.Table, knowledge: dict[str, Any], parser_dir: Path,
                 cfg: CorpusConfig, seed: int, out_dir: Path, templates: Templates | None = None) -> dict[str, Any]:
    """Build the corpus into `out_dir` (via a temporary sibling renamed at the end); returns the metrics."""
    start = time.perf_counter()
    templates = templates or Templates.load(knowledge=knowledge)
    if not records:
        raise ValueError("the manifest holds no records; run `dvc repro ingest` first")
    rows = manifest_rows(records, cfg)
    faces = face_dataset(rows, cfg, parser_payload(parser_dir)).materialize()

    bad = faces.filter(lambda r: r["error_reason"] != "").select_columns(
        ["dataset", "id", "image", "label_line", "error_reason", "error_detail"]).take_all()
    check_failures(bad, Counter(r["dataset"] for r in rows), cfg.max_quarantine_share)
    parity = faces.filter(lambda r: r["map_source"] == "parser" and r["has_gt"]).select_columns(
        ["split", "confusion"]).take_all()
    sources = Counter(r["map_source"] for r in faces.select_columns(["map_source"]).take_all())

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        shards, quarantine = write_corpus(faces, bad, ingest_quarantine, tmp, templates, knowledge, cfg, seed)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written stays behind
        raise
    replace_dir(tmp, out_dir)
    wall = time.perf_counter() - start
    where = f"cluster {os.environ['RAY_ADDRESS']}" if os.environ.get("RAY_ADDRESS") else "local"
    return corpus_metrics(shards, rows, quarantine, parity, sources, wall, where)


def write_corpus(faces, bad: list[dict], ingest_quarantine: pa.Table, tmp: Path, templates: Templates,
                 knowledge: dict, cfg: CorpusConfig, seed: int) -> tuple[list[dict], pa.Table]:
    """Shards (distributed, one task per split and shard), then the quarantine and the shard index."""
    from pipelines.ingest import QUARANTINE_SCHEMA

    groups = len({(r["split"], r["shard"]) for r in faces.select_columns(["split", "shard"]).take_all()})
    # one shuffle partition per shard file: Ray's default (200) is far too many tasks for a few files
    ok = faces.filter(lambda r: r["error_reason"] == "")
    written = ok.groupby(["split", "shard"], num_partitions=groups).map_groups(
        write_group, batch_format="pyarrow",
        fn_kwargs={"out_dir": str(tmp.resolve()), "templates": templates.data, "knowledge": knowledge,
                   "plan": asdict(cfg.records), "seed": seed}).take_all()
    build_q = pa.Table.from_pylist([{"dataset": b["dataset"], "id": b["id"], "path": b["image"],
                                     "line": int(b["label_line"]) or None, "reason": b["error_reason"],
                                     "detail": b["error_detail"]} for b in sorted(bad, key=lambda b: b["id"])],
                                   schema=QUARANTINE_SCHEMA)
    quarantine = pa.concat_tables([
        ingest_quarantine.cast(QUARANTINE_SCHEMA).append_column(
            "stage", pa.array(["ingest"] * len(ingest_quarantine), pa.string())),
        build_q.append_column("stage", pa.array(["build_corpus"] * len(build_q), pa.string())),
    ])
    pq.write_table(quarantine, tmp / "quarantine.parquet")
    shards = sorted(written, key=lambda w: w["file"])
    (tmp / "shards.json").write_text(json.dumps(
        [{k: w[k] for k in ("file", "split", "faces", "records")} for w in shards], indent=2) + "\n")
    return shards, quarantine


class CorpusQuarantineExceeded(RuntimeError):
    pass


def check_failures(bad: list[dict[str, Any]], per_dataset: Counter, max_share: float) -> None:
    by_dataset = Counter(b["dataset"] for b in bad)
    problems = []
    for name, count in sorted(by_dataset.items()):
        if count / per_dataset[name] > max_share:
            example = next(b for b in bad if b["dataset"] == name)
            problems.append(f"{name}: {count} of {per_dataset[name]} faces failed to load, e.g. "
                            f"{example['error_reason']}: {example['error_detail']}")
    if problems:
        raise CorpusQuarantineExceeded(
            "\n".join(problems) + "\nThe files changed since `ingest` verified them: re-run `dvc repro ingest`, "
            "or raise build_corpus.max_quarantine_share.")


def corpus_metrics(shards: list[dict], rows: list[dict], quarantine: pa.Table, parity: list[dict],
                   sources: Counter, wall: float, where: str) -> dict[str, Any]:
    records: dict[str, dict[str, dict[str, int]]] = {}
    turns: Counter = Counter()
    templates: Counter = Counter()
    for shard in shards:
        for key, n in json.loads(shard["counts"]).items():
            head, rest = key.split("/", 1)
            if head == "records":
                task, kind = rest.split("/")
                split_counts = records.setdefault(shard["split"], {}).setdefault(task, {})
                split_counts[kind] = split_counts.get(kind, 0) + n
            elif head == "turns":
                turns[rest] += n
            else:
                templates[rest] += n
    faces = Counter((r["dataset"], r["split"]) for r in rows)
    q = quarantine.to_pylist()
    total_records = sum(s["records"] for s in shards)
    parity_by_split = {}
    for split in SPLITS:
        mats = [np.asarray(p["confusion"]) for p in parity if p["split"] == split]
        if mats:
            parity_by_split[split] = parity_scores(np.sum(mats, axis=0), len(mats))
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
        "throughput": {"wall_s": round(wall, 2), "faces_per_s": round(len(rows) / wall, 2),
                       "records_per_s": round(total_records / wall, 2), "ray": where},
    }
