"""The Hugging Face adapter on tiny random LLaVA-1.5-style and Qwen2-VL-style models saved to disk."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.evaluation.evaluate import EvalConfig, evaluate_task
from pipelines.evaluation.hf_adapter import AdapterError, HFImageTextModel

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} {% else %}"
    "ASSISTANT: {{ message['content'][0]['text'] }}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tokenizer(special: list[str], **roles):
    """A byte-level BPE trained here on question text: no hub download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = QUESTIONS * 20 + ["yes", "no", "smiling", "neutral", "happy", "assistant", "user"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=special,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **roles)
    fast.add_special_tokens({"additional_special_tokens": [s for s in special if s not in roles.values()]})
    return fast


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    torch.manual_seed(0)
    tok = tokenizer(["<pad>", "<s>", "</s>", "<image>"], pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, pad_token_id=tok.pad_token_id,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, vision_feature_layer=-1,
                         image_token_index=tok.convert_tokens_to_ids("<image>"))
    folder = tmp_path_factory.mktemp("tiny-llava")
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    image = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    # num_additional_image_tokens=1: CLIP's CLS token, which "default" feature selection then drops
    LlavaProcessor(image_processor=image, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                   chat_template=LLAVA_TEMPLATE, num_additional_image_tokens=1).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_qwen2vl(tmp_path_factory):
    """Saved piece by piece: Qwen2VLProcessor itself cannot be built without torchvision (its video half)."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    torch.manual_seed(0)
    tok = tokenizer(QWEN_SPECIAL, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]},
                         bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    folder = tmp_path_factory.mktemp("tiny-qwen2vl")
    Qwen2VLForConditionalGeneration(config).save_pretrained(folder)
    image = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 56, patch_size=14, merge_size=2,
                                     temporal_patch_size=2)
    image.processor_class = "Qwen2VLProcessor"
    image.save_pretrained(folder)
    tok.chat_template = QWEN_TEMPLATE
    tok.save_pretrained(folder)
    return folder


def faces(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, 48, 48, 3), dtype=np.uint8)


QUESTIONS = ["Is this person smiling? Answer yes or no.", "What is the expression of this face?",
             "How old is this person?"]


@pytest.mark.parametrize("which", ["tiny_llava", "tiny_qwen2vl"])
def test_adapter_asks_a_saved_model_with_its_own_prompt_format(which, request):
    folder = request.getfixturevalue(which)
    model = HFImageTextModel.load(folder)
    prompt = model.prompts([QUESTIONS[0]])[0]
    assert QUESTIONS[0] in prompt
    assert ("<image>" in prompt) if which == "tiny_llava" else ("<|vision_start|><|image_pad|>" in prompt)
    images = faces(3)
    batch = model.answer(images, QUESTIONS, max_new_tokens=4)
    assert len(batch) == 3 and all(isinstance(a, str) for a in batch)
    assert model.answer(images, QUESTIONS, max_new_tokens=4) == batch  # greedy: the same answers again
    # left padding: an answer does not depend on the longer prompts batched beside it
    assert [model.answer(images[k:k + 1], QUESTIONS[k:k + 1], max_new_tokens=4)[0] for k in range(3)] == batch


def test_a_folder_that_is_not_a_model_is_named(tmp_path):
    with pytest.raises(AdapterError, match=str(tmp_path)):
        HFImageTextModel.load(tmp_path)


def eval_corpus(root):
    """Attribute faces in the corpus format: 8 train faces (for the majority class) and 5 test faces."""
    from pipelines.corpus.records import RECORD_SCHEMA, RecordPlan, encode_png, face_records
    from pipelines.corpus.templates import Templates
    from pipelines.knowledge import KnowledgeConfig, mine_knowledge

    rng = np.random.default_rng(3)
    knowledge = mine_knowledge(rng.random((300, 40)) < 0.35, KnowledgeConfig(min_support=10, min_expected=3))
    templates = Templates.load(knowledge=knowledge)
    for split, n in (("train", 8), ("test", 5)):
        rows = []
        for k in range(n):
            face = {"id": f"{split}{k}", "dataset": "celebamask_hq", "split": split,
                    "image_png": encode_png(faces(1, k)[0]), "map_png": encode_png(np.zeros((48, 48), np.uint8)),
                    "map_source": "parser", "regions": [], "attributes": list(np.where(rng.random(40) < .3, 1, -1)),
                    "age": None, "gender": None, "race": None, "expression": None}
            rows += face_records(face, templates, RecordPlan(questions_per_record=2), seed=0)
        (root / split).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), root / split / "part-00000.parquet")
    return root, knowledge


def test_evaluate_puts_a_hugging_face_model_in_the_results_table(tiny_llava, tmp_path):
    from pipelines.evaluation.report import results_markdown

    corpus, knowledge = eval_corpus(tmp_path / "corpus")
    cfg = EvalConfig(batch_size=16, max_new_tokens=3, hf_models={"tiny-llava": str(tiny_llava)})
    result = evaluate_task("attributes", corpus, None, knowledge, cfg)
    row = result["systems"]["hf_tiny-llava"]
    assert result["faces"] == 5 and 0 <= row["summary"]["mean_balanced_accuracy"] <= 1
    assert row["path"] == str(tiny_llava) and row["examples"][0]["question"] in result["questions"]
    table = results_markdown({"attributes": result}, {}, 0, None, (False, ["x"]), False)
    assert "| Hugging Face MLLM `tiny-llava` (image only, same prompts) |" in table
    with pytest.raises(ValueError, match="hf_models.bad name"):
        EvalConfig(hf_models={"bad name": "x"})
