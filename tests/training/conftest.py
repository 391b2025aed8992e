"""A small corpus in the real shard format, shared by the training tests."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.corpus.records import RECORD_SCHEMA, RecordPlan, encode_png, face_records
from pipelines.corpus.templates import Templates
from pipelines.knowledge import KnowledgeConfig, mine_knowledge


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict:
    """A small corpus in the real shard format: 48 faces whose image brightness says whether they smile."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    table = rng.random((300, 40)) < 0.35
    knowledge = mine_knowledge(table, KnowledgeConfig(min_support=10, min_expected=3))
    templates = Templates.load(knowledge=knowledge)
    rows = []
    for k in range(48):
        attrs = np.where(table[k], 1, -1)
        image = np.full((32, 32, 3), 220 if attrs[31] > 0 else 30, np.uint8)  # Smiling <=> a bright image
        face = {"id": str(k), "dataset": "celebamask_hq", "split": "train", "image_png": encode_png(image),
                "map_png": encode_png(rng.integers(0, 19, (32, 32), dtype=np.uint8)), "map_source": "ground_truth",
                "regions": [], "attributes": list(attrs), "age": None, "gender": None, "race": None,
                "expression": None}
        rows += face_records(face, templates, RecordPlan(questions_per_record=4), seed=0)
    random.Random(0).shuffle(rows)
    (root / "train").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), root / "train" / "part-00000.parquet")
    from model.tokenizer import train_tokenizer

    tok = train_tokenizer((t["value"] for r in rows for t in r["conversations"]), vocab_size=500)
    tok.save_pretrained(str(root / "tokenizer"))
    (root / "knowledge.json").write_text(json.dumps(knowledge))
    return {"root": root, "knowledge": knowledge, "knowledge_file": root / "knowledge.json",
            "tokenizer": root / "tokenizer", "records": len(rows)}


