"""Corpus shards -> fixed-length training examples, decoded and tokenised in the Ray Data pipeline.

Workers receive ready tensors (get_dataset_shard); nothing is decoded or tokenised in the train loop.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from model.chat import CHAT_TEMPLATES, IGNORE
from model.knowledge_modules import ANSWER_CLASSES, gender_from_attributes
from model.tokenizer import load_encoder_tokenizer
from pipelines.corpus.reader import shard_files
from pipelines.images import decode_image
from pipelines.storage import arrow_filesystem, local_copy


class CorpusEncoder:
    """Ray Data callable (one tokenizer per worker process): records -> input_ids, labels, images, maps."""

    def __init__(self, tokenizer_dir: str, chat_template: str, image_tokens: int, seg_tokens: int, max_tokens: int,
                 image_size: int, seg_size: int):
        self.tokenizer = load_encoder_tokenizer(local_copy(tokenizer_dir))
        self.chat = CHAT_TEMPLATES[chat_template]
        self.image_tokens, self.seg_tokens, self.max_tokens = image_tokens, seg_tokens, max_tokens
        self.image_size, self.seg_size = image_size, seg_size
        self.pad = self.tokenizer.pad_token_id or 0

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        rows = batch.to_pylist()
        n, length = len(rows), self.max_tokens
        ids = np.full((n, length), self.pad, np.int32)
        labels = np.full((n, length), IGNORE, np.int32)
        mask = np.zeros((n, length), np.int8)
        truncated = np.zeros(n, np.int64)
        encoded = self.chat.encode_many(self.tokenizer, [row["conversations"] for row in rows], self.image_tokens,
                                        self.seg_tokens)
        for k, (tokens, targets) in enumerate(encoded):
            truncated[k] = max(0, len(tokens) - length)
            tokens, targets = tokens[:length], targets[:length]
            ids[k, :len(tokens)], labels[k, :len(targets)], mask[k, :len(tokens)] = tokens, targets, 1
        attributes = np.array([(row["labels"]["attributes"] or [-1] * 40) for row in rows], np.int8)
        answers = {f"{t}_label": np.array([-1 if row["labels"][t] is None else row["labels"][t] for row in rows],
                                          np.int8) for t in ANSWER_CLASSES}
        unknown = answers["gender_label"] < 0  # CelebA faces: gender from the Male attribute
        answers["gender_label"][unknown] = [gender_from_attributes(row["labels"]["attributes"])
                                            for row, u in zip(rows, unknown, strict=True) if u]
        return {**answers, "input_ids": ids, "labels": labels, "attention_mask": mask, "truncated": truncated,
                "image": np.stack([decode_image(row["image"], self.image_size) for row in rows]),
                "seg_map": np.stack([decode_image(row["seg_map"], self.seg_size, "L") for row in rows]),
                "attribute_labels": attributes}


@functools.lru_cache(maxsize=4)
def _encoder(frozen_kwargs: tuple[tuple[str, Any], ...]) -> CorpusEncoder:
    return CorpusEncoder(**dict(frozen_kwargs))


def encode_batch(batch: pa.Table, **encoder: Any) -> dict[str, np.ndarray]:
    """CorpusEncoder as a Ray Data task: Ray's already-running worker processes take it, where an actor pool
    started a fresh process per actor first (the 320-record dataset step of a 10-step align took 12.8 s with it,
    9.4 s as tasks, on 2 cores); the tokenizer is loaded once per worker process and kept."""
    return _encoder(tuple(sorted(encoder.items())))(batch)


RECORD_COLUMNS = ["task", "kind", "conversations", "labels", "image", "seg_map"]


def _split_files(split_dir: str | Path) -> tuple[list[str], Any]:
    """The split's shard files as its pyarrow filesystem names them, and that filesystem (None: the default)."""
    files = shard_files(split_dir)
    filesystem, _ = arrow_filesystem(files[0])
    if filesystem is not None:
        files = [arrow_filesystem(f)[1] for f in files]
    return files, filesystem


def corpus_dataset(split_dir: str | Path, encoder: dict[str, Any], max_records: int = 0,
                   kinds: tuple[str, ...] = (), workers: int = 0, tasks: tuple[str, ...] = ()):
    """A Ray Dataset of encoded training examples from one split folder, in a fixed order; `workers`: the most
    encoding tasks at once (0: as many as the cluster has CPUs)."""
    import ray
    from ray.data.expressions import col

    files, filesystem = _split_files(split_dir)
    ds = ray.data.read_parquet(files, filesystem=filesystem).select_columns(
        RECORD_COLUMNS)  # pushed into the scan, as the filters
    # expressions, not Python lambdas: Ray Data pushes them into the Parquet scan, so the rows of other
    # tasks are dropped as they are read instead of being turned into Python dicts first
    if tasks:
        ds = ds.filter(expr=col("task").is_in(list(tasks)))
    if kinds:
        ds = ds.filter(expr=col("kind").is_in(list(kinds)))
    if max_records:
        ds = ds.limit(max_records)
    return ds.map_batches(encode_batch, fn_kwargs=encoder, batch_format="pyarrow", batch_size=64,
                          concurrency=workers or None)


def encode_records(split_dir: str | Path, encoder: dict[str, Any], max_records: int, kinds: tuple[str, ...] = (),
                   tasks: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The first `max_records` records of a split (after the filters), encoded in this process: no Ray (a stage
    runs it while Ray starts). For a pass that reads few records: Ray Data's read and encode tasks cost ~13 s of
    worker start-up before the first of them (benchmarks/RESULTS.md, a pass's timeline), the driver encodes ~1,000
    records a second."""
    import pyarrow.parquet as pq

    files, filesystem = _split_files(split_dir)
    batches, left = [], max_records
    for path in files:
        table = pq.read_table(path, columns=RECORD_COLUMNS, filesystem=filesystem, filters=_filters(kinds, tasks))
        table = table.slice(0, left) if max_records else table
        batches += [encode_batch(table.slice(k, 64), **encoder) for k in range(0, table.num_rows, 64)]
        left -= table.num_rows
        if max_records and left <= 0:
            break
    if not batches:
        raise ValueError(f"{split_dir}: no records of tasks {list(tasks) or 'any'} and kinds {list(kinds) or 'any'}; "
                         "check the stage's `tasks` / `kinds` params, or rerun `dvc repro build_corpus`")
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}


def count_records(split_dir: str | Path, kinds: tuple[str, ...] = (), tasks: tuple[str, ...] = ()) -> int:
    """The split's records of these kinds and tasks (empty: all), read from the two short columns alone."""
    import pyarrow.parquet as pq

    files, filesystem = _split_files(split_dir)
    return sum(pq.read_table(path, columns=["task", "kind"], filesystem=filesystem,
                             filters=_filters(kinds, tasks)).num_rows for path in files)


def _filters(kinds: tuple[str, ...], tasks: tuple[str, ...]) -> list[tuple] | None:
    """The Parquet filters that keep these record kinds and tasks (empty: all)."""
    return [(name, "in", list(values)) for name, values in (("task", tasks), ("kind", kinds)) if values] or None


def driver_encoded_dataset(encoded: dict[str, np.ndarray]):
    """`encode_records`' rows as the same dataset as `corpus_dataset(...).materialize()` (same records, order,
    encoding, and one block as Ray Data writes up to 128 MiB, ~6,800 tiny-preset records: the same batches come out
    of a seeded local shuffle). `from_blocks`, not `from_arrow`: the block's metadata is read here, where the table
    is, not by a Ray task (one more worker process to start, ~2 s of CPU, before the pass's own)."""
    import ray
    from ray.data.block import BlockAccessor

    return ray.data.from_blocks([BlockAccessor.batch_to_block(encoded)])


def encoder_kwargs(model_cfg, tokenizer_dir: str, image_tokens: int, seg_tokens: int, max_tokens: int) -> dict:
    return {"tokenizer_dir": tokenizer_dir, "chat_template": model_cfg.llm.chat_template,
            "image_tokens": image_tokens, "seg_tokens": seg_tokens, "max_tokens": max_tokens,
            "image_size": model_cfg.vision.image_size, "seg_size": model_cfg.seg.image_size}


def knowledge_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; run `dvc repro mine_knowledge` first")
    return json.loads(path.read_text())
