"""Tokenizers: `tiny` trains a byte-level BPE on the corpus text; real presets use the LLM's own.

Visual placeholders are never vocabulary entries: the chat template puts the sentinel ids
IMAGE_TOKEN_ID / SEG_TOKEN_ID in `input_ids`, and the model overwrites their embeddings with
visual tokens (one masked assignment). So a pretrained LLM's vocabulary and embeddings stay as
they are, and a checkpoint never has to carry a resized embedding matrix.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

IMAGE_TOKEN_ID = -200  # LLaVA's IMAGE_TOKEN_INDEX
SEG_TOKEN_ID = -201
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
ROLE_TOKENS = ("<|user|>", "<|assistant|>", "<|end|>")


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE trained on `texts`, wrapped as PreTrainedTokenizerFast with the chat's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=[*SPECIAL_TOKENS.values(), *ROLE_TOKENS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, additional_special_tokens=list(ROLE_TOKENS),
                                   clean_up_tokenization_spaces=False, **SPECIAL_TOKENS)


def load_tokenizer(path: str | Path):
    """A saved tokenizer (ours or a pretrained LLM's), from a directory or a Hugging Face id."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:  # Llama-family tokenizers ship without one
        tok.pad_token = tok.unk_token or tok.eos_token
    return tok


# tokenizer classes whose whole encoding is tokenizer.json's (transformers' fast wrapper around the Rust backend)
BACKEND_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


class BackendTokenizer:
    """A saved fast tokenizer's Rust backend (`tokenizers`) with the interface encoding needs: called on a text or a
    list of texts it gives `{"input_ids": ...}` as transformers' wrapper does, and the special tokens' ids. The
    same ids as load_tokenizer's (the wrapper calls the same backend), without importing transformers."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.backend.no_truncation()  # the wrapper turns both off unless a call asks for them
        self.backend.no_padding()
        config = json.loads((path / "tokenizer_config.json").read_text())
        ids = {name: self._id(config.get(name)) for name in SPECIAL_TOKENS}
        self.bos_token_id, self.eos_token_id, self.unk_token_id = ids["bos_token"], ids["eos_token"], ids["unk_token"]
        self.pad_token_id = ids["pad_token"] if ids["pad_token"] is not None else \
            (self.unk_token_id if self.unk_token_id is not None else self.eos_token_id)  # as load_tokenizer's

    def _id(self, token: str | dict | None) -> int | None:
        content = token.get("content") if isinstance(token, dict) else token
        return self.backend.token_to_id(content) if content else None

    def __call__(self, text: str | list[str], add_special_tokens: bool = True) -> dict[str, list]:
        if isinstance(text, str):
            return {"input_ids": self.backend.encode(text, add_special_tokens=add_special_tokens).ids}
        return {"input_ids": [e.ids for e in self.backend.encode_batch(text, add_special_tokens=add_special_tokens)]}


def load_encoder_tokenizer(path: str | Path):
    """The tokenizer that encodes training records: a saved fast tokenizer's backend alone (BackendTokenizer; the
    stage's driver and every Ray Data encoding process skip transformers' import, ~0.8 s each on 2 cores), any other
    (a Hugging Face id, a slow tokenizer) load_tokenizer's."""
    folder = Path(path)
    config = folder / "tokenizer_config.json"
    if (folder / "tokenizer.json").is_file() and config.is_file() and \
            json.loads(config.read_text()).get("tokenizer_class") in BACKEND_CLASSES:
        return BackendTokenizer(folder)
    return load_tokenizer(path)
