"""Corpus build throughput: the Ray Data pipeline vs one process running the same functions vs the bare ceiling.

    python benchmarks/corpus_throughput.py [--faces 1500] [--manifest data/manifest] [--parser models/parser]

Needs the outputs of `dvc repro train_parser` (manifest, knowledge.json, the parser). Takes the same
faces (the first N of each dataset, in manifest order) three ways:
  ray      build_corpus() on a local Ray instance (started before the clock), shards written
  single   a plain loop over the shards calling ShardBuilder (what each Ray actor runs), one process
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
import pyarrow.parquet as pq
from PIL import Image

from pipelines.corpus.build import (
    CorpusConfig,
    ShardBuilder,
    build_corpus,
    manifest_rows,
    parser_payload,
    shard_blocks,
)
from pipelines.corpus.records import encode_png
from pipelines.corpus.templates import Templates
from pipelines.datasets.common import read_manifest
from pipelines.storage import read_url


def subset(manifest: Path, per_dataset: int):
    records = read_manifest(manifest / "manifest.parquet")
    by_dataset = defaultdict(list)
    for r in records:
        by_dataset[r.dataset].append(r)
    return [r for d in ("celebamask_hq", "utkface", "rafdb") for r in by_dataset[d][:per_dataset]]


def run_single(records, cfg: CorpusConfig, parser: Path, knowledge: dict, seed: int, out: Path) -> int:
    """The same ShardBuilder the Ray actors run, called in a loop in this process."""
    templates = Templates.load(knowledge=knowledge)
    builder = ShardBuilder(parser_payload(parser), cfg.image_size, cfg.parser_threads, str(out), templates.data,
                           knowledge, asdict(cfg.records), seed)
    written = 0
    for block in shard_blocks(manifest_rows(records, cfg)):
        batch = {name: block.column(name).to_numpy(zero_copy_only=False) for name in block.column_names}
        written += int(builder(batch)["records"][0])
    return written


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
    ap.add_argument("--workers", type=int, default=2, help="Ray actors (build_corpus.workers)")
    ap.add_argument("--faces-per-shard", type=int, default=250)
    args = ap.parse_args()
    records = subset(args.manifest, args.faces)
    knowledge = json.loads(args.knowledge.read_text())
    cfg = CorpusConfig(workers=args.workers, faces_per_shard=args.faces_per_shard)
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
          f"(Ray Data, {args.workers} actors)")
    steady = metrics["throughput"]["steady_faces_per_s"]
    print(f"ray      {steady:8.1f} faces/s   steady state: faces / busiest actor's busy time "
          f"(start-up {metrics['throughput']['startup_s']:.1f} s excluded)")
    print(f"ray / single            = {ray_rate / single:5.2f}x end to end, {steady / single:5.2f}x steady   "
          "(goal >= 1.6)")
    print(f"ray / (ceiling x cores) = {ray_rate / (ceiling * cores):5.2f} end to end,  "
          f"{steady / (ceiling * cores):5.2f} steady    (goal >= 0.5)")


if __name__ == "__main__":
    main()
