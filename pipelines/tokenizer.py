"""The `tiny` preset's tokenizer: a byte-level BPE trained on the corpus' train-split text."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from model.tokenizer import train_tokenizer
from pipelines.storage import atomic_dir


@dataclass(frozen=True)
class TokenizerConfig:
    """params.yaml: tokenizer."""

    vocab_size: int = 2048

    def __post_init__(self) -> None:
        if self.vocab_size < 300:
            raise ValueError(f"tokenizer.vocab_size must be >= 300 (bytes + specials), got {self.vocab_size}")


def corpus_texts(corpus: Path, split: str = "train") -> Iterator[str]:
    """Every turn of every conversation of a split, in shard order."""
    files = sorted((corpus / split).glob("part-*.parquet"))
    if not files:
        raise FileNotFoundError(f"{corpus / split}: no corpus shards; run `dvc repro build_corpus` first")
    for f in files:
        for conv in pq.read_table(f, columns=["conversations"]).column("conversations").to_pylist():
            for turn in conv:
                yield turn["value"]


def build_tokenizer(corpus: Path, cfg: TokenizerConfig, out: Path) -> dict:
    """Train on the train split only (val/test text never shapes the vocabulary); save atomically."""
    tokenizer = train_tokenizer(corpus_texts(corpus), cfg.vocab_size)
    with atomic_dir(out) as tmp:
        tokenizer.save_pretrained(str(tmp))
    sample = next(corpus_texts(corpus, "val"), "")
    ids = tokenizer(sample, add_special_tokens=False)["input_ids"]
    return {"vocab_size": len(tokenizer), "requested_vocab_size": cfg.vocab_size,
            "val_sample_tokens": len(ids), "val_sample_chars": len(sample),
            "round_trip": tokenizer.decode(ids) == sample}
