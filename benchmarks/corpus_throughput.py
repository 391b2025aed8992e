"""Corpus build throughput: the Ray Data pipeline vs one process running the same functions vs the bare ceiling.

    python benchmarks/corpus_throughput.py [--faces 1500] [--manifest data/manifest] [--parser models/parser]

Needs the outputs of `dvc repro train_parser` (manifest, knowledge.json, the parser). Takes the same
faces (the first N of each dataset, in manifest order) three ways:
  ray      build_corpus() on a local Ray instance (started before the clock), shards written
  single   a plain loop: load_batch -> ParseMaps -> encode_batch -> write_group, one process
  ceiling  bare decode + encode: decode the image and every mask file, resize, encode the image PNG
Prints faces/s (records/s where records are made) and the ratios the issue sets goals for:
ray / single (goal >= 1.6 on 2 cores) and ray / (ceiling x cores) (goal >= 0.5).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipelines.corpus.build import (
    CorpusConfig,
    ParseMaps,
    build_corpus,
    encode_batch,
    load_batch,
    manifest_rows,
    parser_payload,
    write_group,
)
from pipelines.corpus.records import encode_png
from pipelines.corpus.templates import Templates
from pipelines.ingest import read_manifest
from pipelines.storage import read_url


def subset(manifest: Path, per_dataset: int):
    records = read_manifest(manifest / "manifest.parquet")
    by_dataset = defaultdict(list)
    for r in records:
        by_dataset[r.dataset].append(r)
    return [r for d in ("celebamask_hq", "utkface", "rafdb") for r in by_dataset[d][:per_dataset]]


def run_single(records, cfg: CorpusConfig, parser: Path, knowledge: dict, seed: int, out: Path) -> int:
    rows = manifest_rows(records, cfg)
    parse = ParseMaps(parser_payload(parser), cfg.image_size, cfg.parser_threads)
    groups: dict[tuple, list[pa.Table]] = defaultdict(list)
    for k in range(0, len(rows), cfg.batch_size):
        chunk = rows[k:k + cfg.batch_size]
        batch = {key: np.array([r[key] for r in chunk]) for key in chunk[0]}
        encoded = encode_batch(parse(load_batch(batch, cfg.image_size)))
        table = pa.table({key: list(v) if v.dtype == object else v.tolist() for key, v in encoded.items()
                          if key != "confusion"} | {"confusion": [list(c) for c in encoded["confusion"]]})
        for split, shard in {(s, int(h)) for s, h in zip(encoded["split"], encoded["shard"], strict=True)}:
            mask = pa.array([s == split and int(h) == shard for s, h in zip(encoded["split"], encoded["shard"],
                                                                             strict=True)])
            groups[(split, shard)].append(table.filter(mask))
    templates = Templates.load(knowledge=knowledge)
    records_written = 0
    for tables in groups.values():
        summary = write_group(pa.concat_tables(tables), str(out), templates.data, knowledge,
                              asdict(cfg.records), seed)
        records_written += summary["records"][0].as_py()
    return records_written


def run_ceiling(records, size: int) -> None:
    for r in records:
        with Image.open(io.BytesIO(read_url(r.image))) as img:
            encode_png(np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR)))
        for url in r.masks or []:
            with Image.open(io.BytesIO(read_url(url))) as img:
                np.asarray(img.convert("L"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=1500, help="faces per dataset (default 1500)")
    ap.add_argument("--manifest", type=Path, default=Path("data/manifest"))
    ap.add_argument("--knowledge", type=Path, default=Path("data/knowledge/knowledge.json"))
    ap.add_argument("--parser", type=Path, default=Path("models/parser"))
    ap.add_argument("--parser-actors", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    records = subset(args.manifest, args.faces)
    knowledge = json.loads(args.knowledge.read_text())
    cfg = CorpusConfig(parser_actors=args.parser_actors, batch_size=args.batch_size)
    cores = os.cpu_count() or 1
    print(f"{len(records)} faces ({args.faces} per dataset at most), corpus {cfg.image_size} px, {cores} cores")

    start = time.perf_counter()
    run_ceiling(records, cfg.image_size)
    ceiling = len(records) / (time.perf_counter() - start)
    print(f"ceiling  {ceiling:8.1f} faces/s   (bare decode of image + masks, resize, PNG encode; 1 process)")

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        n_single = run_single(records, cfg, args.parser, knowledge, 1, Path(tmp))
        wall = time.perf_counter() - start
        single = len(records) / wall
        print(f"single   {single:8.1f} faces/s   {n_single / wall:8.1f} records/s   (same functions, one process)")

    from pipelines.ray_runtime import init_ray

    init_ray()
    quarantine = pq.read_table(args.manifest / "quarantine.parquet")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        metrics = build_corpus(records, quarantine, knowledge, args.parser, cfg, 1, Path(tmp) / "corpus")
        wall = time.perf_counter() - start
    ray_rate = len(records) / wall
    print(f"ray      {ray_rate:8.1f} faces/s   {metrics['records_total'] / wall:8.1f} records/s   "
          f"(Ray Data, {args.parser_actors} parser actor(s))")
    print(f"ray / single            = {ray_rate / single:5.2f}x   (goal >= 1.6)")
    print(f"ray / (ceiling x cores) = {ray_rate / (ceiling * cores):5.2f}    (goal >= 0.5)")


if __name__ == "__main__":
    main()
