"""Generation on a model built to loop: it stops at the stop token and never repeats a phrase."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from model.faceinsight import FaceInsight, loop_tokens
from tests.model.conftest import SMALL


class LoopingLM(nn.Module):
    """The real tiny LM's embeddings, but logits that say `cycle` over and over, then the stop token."""

    def __init__(self, llm: nn.Module, cycle: list[int], stop: int, stop_after: int):
        super().__init__()
        self.inner, self.cycle, self.stop, self.stop_after = llm, cycle, stop, stop_after
        self.calls = 0

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, inputs_embeds, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False,
                logits_to_keep=0):
        vocab = self.inner.config.vocab_size
        # a fixed ranking of every other token below the favourite: what a ban falls back to; never stop early
        logits = torch.linspace(0.0, 1.0, vocab).repeat(inputs_embeds.shape[0], 1, 1)
        logits[:, -1, self.stop] = -1.0
        token = self.stop if self.calls >= self.stop_after else self.cycle[self.calls % len(self.cycle)]
        logits[:, -1, token] = 10.0
        self.calls += 1
        return CausalLMOutputWithPast(logits=logits, past_key_values=None)


def test_loop_tokens():
    assert loop_tokens([1, 2, 3, 1, 2], 12) == [3]  # 1 2 3 1 2 3 would say "1 2 3" twice in a row
    assert loop_tokens([7, 1, 2, 3, 9, 1, 2], 12) == []  # said again later, not in a row: allowed
    assert loop_tokens([5, 6, 5], 12) == [6] and loop_tokens([1, 2, 3, 1, 2], 2) == []


def _adjacent_repeat(seq: list[int], longest: int = 12) -> bool:
    return any(seq[i:i + k] == seq[i + k:i + 2 * k] for k in range(2, longest + 1) for i in range(len(seq) - 2 * k + 1))


def test_generation_stops_and_does_not_repeat_a_phrase(tokenizer, knowledge):
    # no answer pointer: the stand-in LM has no hidden states for its gate
    cfg = dataclasses.replace(SMALL, alignment=dataclasses.replace(SMALL.alignment, answer_pointer=False))
    model = FaceInsight(cfg, tokenizer, knowledge).eval()
    stop = sorted(model.chat.stop_ids(tokenizer))[0]
    ids = [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ("has", "big", "nose")]
    model.llm = LoopingLM(model.llm, ids, stop, stop_after=20)
    prompt = model.chat.prompt(tokenizer, "Describe this face.", model.image_tokens, model.seg_tokens)
    images = torch.zeros(1, 3, SMALL.vision.image_size, SMALL.vision.image_size)
    maps = torch.zeros(1, SMALL.seg.image_size, SMALL.seg.image_size, dtype=torch.long)
    looped = model.generate([prompt], images, maps, max_new_tokens=40, max_loop=0)[0]
    assert len(looped) == 20 and looped[:6] == ids * 2  # the model does loop, and stops when it says stop
    model.llm.calls = 0
    out = model.generate([prompt], images, maps, max_new_tokens=40)[0]
    assert len(out) == 20 and stop not in out
    assert _adjacent_repeat(looped) and not _adjacent_repeat(out), out  # no phrase said twice in a row
    assert np.isin(ids, out).all()  # what it says is still what the model ranks first, where allowed
