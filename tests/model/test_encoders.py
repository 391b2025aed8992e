"""The tiny models' attention kinds (model/encoders.py, model/config.py): the same attention, however computed."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from model.config import FaceInsightConfig, LLMConfig, SegEncoderConfig, VisionConfig, model_config
from model.encoders import Block
from model.faceinsight import build_llm


def test_eager_attention_is_the_fused_kernels_attention_values_and_gradients():
    torch.manual_seed(0)
    fused, eager = Block(64, 4, "sdpa"), Block(64, 4, "eager")
    eager.load_state_dict(fused.state_dict())
    x = torch.randn(3, 20, 64, requires_grad=True)
    y1, y2 = fused(x), eager(x)
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)
    g1 = torch.autograd.grad(y1.square().sum(), [x, *fused.parameters()])
    g2 = torch.autograd.grad(y2.square().sum(), [x, *eager.parameters()])
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as training runs it where the CPU has bf16
        torch.testing.assert_close(fused(x).float(), eager(x).float(), rtol=0.05, atol=0.05)


def test_the_attention_kind_is_checked_and_older_checkpoints_load_as_they_were_trained(tmp_path):
    with pytest.raises(ValueError, match="vision.attention"):
        VisionConfig(attention="flash")
    with pytest.raises(ValueError, match="seg.attention"):
        SegEncoderConfig(attention="flash")
    with pytest.raises(ValueError, match="llm.attention"):
        LLMConfig(attention="flash")
    saved = FaceInsightConfig().to_dict()
    del saved["vision"]["attention"], saved["seg"]["attention"], saved["llm"]["attention"]  # saved before the fields
    path = tmp_path / "config.json"
    path.write_text(json.dumps(saved))
    loaded = FaceInsightConfig.load(path)
    assert loaded.vision.attention == loaded.seg.attention == loaded.llm.attention == "sdpa"


def test_the_tiny_lm_answers_the_same_with_eager_attention():
    torch.manual_seed(0)
    cfg = FaceInsightConfig()
    fused = build_llm(cfg, 300)
    eager = build_llm(dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, attention="eager")), 300)
    eager.load_state_dict(fused.state_dict())
    assert eager.config._attn_implementation == "eager" and fused.config._attn_implementation == "sdpa"
    ids = torch.randint(0, 300, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # a padded sequence
    a = fused(input_ids=ids, attention_mask=mask).logits
    b = eager(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(a[0], b[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a[1, :8], b[1, :8], rtol=1e-4, atol=1e-4)


def test_the_tiny_preset_computes_attention_eagerly_and_the_7b_preset_with_the_fused_kernel():
    tiny, big = model_config({"preset": "tiny"}), model_config({"preset": "llava15-7b"})
    assert tiny.vision.attention == tiny.seg.attention == tiny.llm.attention == "eager"
    assert big.seg.attention == big.llm.attention == "sdpa"
    assert model_config({"preset": "tiny", "llm": {"attention": "sdpa"}}).llm.attention == "sdpa"  # params override
