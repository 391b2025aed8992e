"""model/encoders.py: the tiny towers' blocks attend the same way whichever attention kind computes it."""

from __future__ import annotations

import json

import pytest
import torch

from model.config import FaceInsightConfig, SegEncoderConfig, VisionConfig
from model.encoders import Block


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
    saved = FaceInsightConfig().to_dict()
    del saved["vision"]["attention"], saved["seg"]["attention"]  # a config saved before the field existed
    path = tmp_path / "config.json"
    path.write_text(json.dumps(saved))
    loaded = FaceInsightConfig.load(path)
    assert loaded.vision.attention == "sdpa" and loaded.seg.attention == "sdpa"
