"""The real-preset code path: a CLIP / SigLIP vision tower and a Llama LLM loaded by path (tiny random ones)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.config import RECIPES, FaceInsightConfig, LLMConfig, SegEncoderConfig, VisionConfig
from model.faceinsight import FaceInsight
from model.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def backbones(tmp_path_factory, tokenizer) -> dict[str, str]:
    """Tiny random CLIP and SigLIP towers (with image processors) and a Llama LLM + tokenizer, saved to disk."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        LlamaConfig,
        LlamaForCausalLM,
        SiglipImageProcessor,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    root = tmp_path_factory.mktemp("backbones")
    torch.manual_seed(0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8)
    CLIPVisionModel(CLIPVisionConfig(**vision)).save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "clip")
    SiglipVisionModel(SiglipVisionConfig(**vision)).save_pretrained(root / "siglip")
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "siglip")
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(root / "llama")
    tokenizer.save_pretrained(root / "llama")
    return {"clip": str(root / "clip"), "siglip": str(root / "siglip"), "llama": str(root / "llama")}


def config(kind: str, backbones: dict[str, str]) -> FaceInsightConfig:
    return FaceInsightConfig(
        vision=VisionConfig(kind=kind, path=backbones[kind], image_size=32, patch_size=8, hidden=32, heads=4,
                            conv_stem=False, feature_layer=-2),
        seg=SegEncoderConfig(image_size=32, patch_size=16, hidden=32, layers=1, heads=4),
        llm=LLMConfig(kind="pretrained", path=backbones["llama"], hidden=48, heads=4),
    )


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_pretrained_backbones_by_path(kind, backbones, knowledge, tmp_path):
    cfg = config(kind, backbones)
    model = FaceInsight(cfg, load_tokenizer(backbones["llama"]), knowledge)
    assert model.image_tokens == 16 + 1  # (32 / 8)^2 patch tokens (CLIP's class token dropped) + the knowledge token
    counts = model.apply_recipe(RECIPES["finetune"])
    assert counts["vision"] == 0 and 0 < counts["llm"] < model.parameter_counts()["llm"] // 2

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)  # the tower's own processor resizes
    pixel_values = model.preprocess(images)
    assert pixel_values.shape == (2, 3, 32, 32)
    seg = torch.randint(0, 19, (2, 32, 32))
    prompts = [model.chat.prompt(model.tokenizer, q, model.image_tokens, model.seg_tokens)
               for q in ("Is this person smiling?", "Describe this person's hair.")]
    assert model.generate(prompts, pixel_values, seg, max_new_tokens=6) == \
        model.generate(prompts, pixel_values, seg, max_new_tokens=6, use_cache=False)

    model.eval()
    ids = torch.tensor([prompts[0], prompts[0]])
    before = model(ids, pixel_values, seg).logits
    names = model.save_pretrained(tmp_path, RECIPES["finetune"])
    # the frozen pretrained backbones are referenced, not copied: no vision weights, only LoRA from the LLM
    assert not any(n.startswith("vision.") for n in names)
    assert all("lora_" in n for n in names if n.startswith("llm."))
    loaded = FaceInsight.from_pretrained(tmp_path)
    assert torch.equal(before, loaded(ids, pixel_values, seg).logits)
