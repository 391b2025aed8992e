"""Tokenizers: `tiny` trains a byte-level BPE on the corpus text; real presets use the LLM's own.

Visual placeholders are never vocabulary entries: the chat template puts the sentinel ids
IMAGE_TOKEN_ID / SEG_TOKEN_ID in `input_ids`, and the model overwrites their embeddings with
visual tokens (one masked assignment). So a pretrained LLM's vocabulary and embeddings stay as
they are, and a checkpoint never has to carry a resized embedding matrix.
"""

from __future__ import annotations

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
