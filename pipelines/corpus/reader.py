"""Reading the corpus back: its shard files, and its faces one row each (training, validation, evaluation)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.storage import Store


def shard_files(split_dir: str | Path) -> list[str]:
    """The shard files of one split folder (a local path or a URL), sorted."""
    files = sorted(info.path for rel, info in Store(str(split_dir)).list(recursive=False).items()
                   if rel.startswith("part-") and rel.endswith(".parquet"))
    if not files:
        raise FileNotFoundError(f"{split_dir}: no corpus shards; run `dvc repro build_corpus` first")
    return files


def load_faces(corpus: Path, split: str, task: str, max_faces: int = 0, required: bool = True
               ) -> list[dict[str, Any]]:
    """One row per face of the task in the split (image, parsing map, labels), in a fixed order that does not
    follow the ids (UTKFace ids start with the age: a capped sample must not be the youngest faces)."""
    faces: dict[str, dict[str, Any]] = {}
    try:
        paths = shard_files(Path(corpus) / split)
    except FileNotFoundError:
        if required:
            raise
        return []  # a corpus without this split (a training corpus with no val faces)
    for path in paths:
        table = pq.read_table(path, columns=["face_id", "task", "image", "seg_map", "map_source", "labels"])
        table = table.filter(pc.equal(table["task"], task))
        # a face has a record per question kind (~6): its first row alone becomes Python objects
        _, first = np.unique(table["face_id"].to_numpy(zero_copy_only=False), return_index=True)
        for row in table.take(np.sort(first)).to_pylist():
            faces.setdefault(row["face_id"], row)
    rows = [faces[k] for k in sorted(faces, key=lambda k: hashlib.sha1(k.encode()).hexdigest())]
    if not rows and required:
        raise ValueError(f"{corpus}/{split}: no {task} faces; check build_corpus")
    return rows[:max_faces] if max_faces else rows
