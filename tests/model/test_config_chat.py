"""Config validation and the chat template."""

from __future__ import annotations

import dataclasses
import json

import pytest

from model.chat import CHAT_TEMPLATES, IGNORE
from model.config import PRESETS, FaceInsightConfig, LLMConfig, Recipe, VisionConfig
from model.tokenizer import IMAGE_TOKEN_ID, SEG_TOKEN_ID


def test_invalid_fields_are_named():
    with pytest.raises(ValueError, match=r"model.vision.patch_size"):
        VisionConfig(image_size=64, patch_size=7)
    with pytest.raises(ValueError, match=r"model.llm.path"):
        LLMConfig(kind="pretrained")
    with pytest.raises(ValueError, match=r"recipe.vision.*lora applies to the LLM only"):
        Recipe(vision="lora")
    with pytest.raises(ValueError, match=r"model.vision: unknown key\(s\) \['hiden'\]"):
        FaceInsightConfig.from_dict({"vision": {"hiden": 3}})


def test_config_round_trips_through_json(tmp_path):
    for preset in PRESETS.values():
        preset.save(tmp_path / "config.json")
        assert FaceInsightConfig.load(tmp_path / "config.json") == preset
    changed = FaceInsightConfig.from_dict({"use_seg_map": False, "llm": {"lora_targets": ["q_proj"]}})
    assert not changed.use_seg_map and changed.llm.lora_targets == ("q_proj",)
    assert dataclasses.replace(changed, use_seg_map=True).use_seg_map


def test_encode_labels_only_answers(tokenizer, conversations):
    chat = CHAT_TEMPLATES["tiny"]
    conv = conversations[0]
    ids, labels = chat.encode(tokenizer, conv, image_tokens=5, seg_tokens=3)
    assert len(ids) == len(labels)
    assert ids.count(IMAGE_TOKEN_ID) == 5 and ids.count(SEG_TOKEN_ID) == 3
    first = ids.index(IMAGE_TOKEN_ID)
    assert ids[first:first + 8] == [IMAGE_TOKEN_ID] * 5 + [SEG_TOKEN_ID] * 3  # image tokens, then map tokens
    answers = [t["value"] + chat.end for t in conv if t["from"] == "gpt"]
    spans, current = [], []
    for i, lab in zip(ids, labels, strict=True):
        if lab == IGNORE:
            if current:
                spans.append(current)
            current = []
        else:
            assert lab == i
            current.append(i)
    spans += [current] if current else []
    assert [tokenizer.decode(s) for s in spans] == answers


def test_encode_many_renders_each_conversation(tokenizer, conversations):
    """One batched tokenizer call for many conversations gives each its own text, as encoding it alone does."""
    chat = CHAT_TEMPLATES["tiny"]
    convs = conversations[:6]
    many = chat.encode_many(tokenizer, convs, image_tokens=4, seg_tokens=2)
    assert many == [chat.encode(tokenizer, c, image_tokens=4, seg_tokens=2) for c in convs]
    for conv, (ids, _) in zip(convs, many, strict=True):
        rendered = "<s>" + "".join(
            f"{chat.user}{t['value'].replace('<image>', '')}{chat.end}{chat.separator}" if t["from"] == "human"
            else f"{chat.assistant}{t['value']}{chat.end}{chat.separator}" for t in conv)
        assert tokenizer.decode([i for i in ids if i >= 0]) == rendered
        assert ids.count(IMAGE_TOKEN_ID) == 4 * sum("<image>" in t["value"] for t in conv)
    assert chat.encode_many(tokenizer, [], image_tokens=4) == []


def test_prompt_round_trips_to_the_rendered_text(tokenizer):
    chat = CHAT_TEMPLATES["tiny"]
    ids = chat.prompt(tokenizer, "Is this person smiling?", image_tokens=4)
    text = tokenizer.decode([i for i in ids if i >= 0])
    assert text == "<s><|user|>\nIs this person smiling?<|end|>\n<|assistant|>"
    assert ids.count(IMAGE_TOKEN_ID) == 4 and SEG_TOKEN_ID not in ids
    assert chat.stop_ids(tokenizer) == {tokenizer.convert_tokens_to_ids("<|end|>"), tokenizer.eos_token_id}


@pytest.mark.parametrize("overrides", [{}, {"use_seg_map": False}, {"alignment": {"knowledge_tokens": "per_attribute"}},
                                       {"alignment": {"knowledge_tokens": "none"}},
                                       {"alignment": {"use_cooccurrence": False, "use_constraints": False}},
                                       {"vision": {"patch_size": 16}, "seg": {"patch_size": 8}}])
def test_visual_token_counts_from_the_config_are_the_models(overrides, tokenizer, knowledge):
    """The training driver counts a prompt's visual tokens from the config, without building the model."""
    from model.config import model_config
    from model.faceinsight import FaceInsight

    cfg = model_config(overrides)
    model = FaceInsight(cfg, tokenizer, knowledge)
    assert cfg.visual_token_counts() == (model.image_tokens, model.seg_tokens)


def test_records_encode_to_the_same_ids_without_transformers(tokenizer, conversations, tmp_path):
    """The saved tokenizer's backend alone (what record encoding loads) gives load_tokenizer's ids for whole
    conversations, bare texts with or without the special tokens, and the same special ids; a tokenizer of any
    other class falls back to load_tokenizer."""
    from model.tokenizer import BackendTokenizer, load_encoder_tokenizer, load_tokenizer

    tokenizer.save_pretrained(tmp_path)
    full, backend = load_tokenizer(tmp_path), load_encoder_tokenizer(tmp_path)
    assert isinstance(backend, BackendTokenizer)
    chat = CHAT_TEMPLATES["tiny"]
    assert chat.encode_many(backend, conversations, 4, 2) == chat.encode_many(full, conversations, 4, 2)
    texts = ["<|user|>Is this person smiling?<|end|>\n", "  odd   spacing, ünïcode and </s> inside", "x"]
    for special in (True, False):
        assert backend(texts, add_special_tokens=special) == {"input_ids": full(texts, add_special_tokens=special)[
            "input_ids"]}
        assert backend(texts[0], add_special_tokens=special)["input_ids"] == \
            full(texts[0], add_special_tokens=special)["input_ids"]
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(backend, name) == getattr(full, name), name
    assert chat.stop_ids(backend) == chat.stop_ids(full)

    config = tmp_path / "tokenizer_config.json"
    config.write_text(config.read_text().replace(json.loads(config.read_text())["tokenizer_class"], "LlamaTokenizer"))
    assert not isinstance(load_encoder_tokenizer(tmp_path), BackendTokenizer)
