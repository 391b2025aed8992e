"""Any Hugging Face image-text-to-text model from a folder, asked the evaluation's own questions.

    model = HFImageTextModel.load("/models/llava-1.5-7b-hf")
    model.answer(images, ["Is this person smiling? Answer yes or no."])

The processor's chat template turns each question into the model's prompt (one image, then the text), so
LLaVA-1.5-style (`<image>` expanded to patch tokens), Qwen2-VL-style (`<|image_pad|>` expanded by the image
grid) and other processors that follow the image-text-to-text API work unchanged. Weights come only from
the given folder; nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class AdapterError(ValueError):
    pass


def _image_only(cls: type) -> type:
    """`cls` without its video half. Processors like Qwen2-VL's also take a video processor, and
    transformers' video processors need torchvision; image questions do not."""

    class ImageOnly(cls):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            cls.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    ImageOnly.__name__ = ImageOnly.__qualname__ = cls.__name__
    return ImageOnly


def _processor_class(folder: Path) -> str | None:
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        path = folder / name
        if path.exists():
            found = json.loads(path.read_text()).get("processor_class")
            if found:
                return found
    return None


def load_processor(folder: Path):
    """AutoProcessor; where it fails for lack of a video stack, the same processor class without video."""
    import transformers
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        return AutoProcessor.from_pretrained(folder)
    except (AttributeError, ImportError, ValueError, TypeError) as exc:
        name = _processor_class(folder) or _processor_from_model(folder)
        cls = getattr(transformers, name or "", None)
        if cls is None:
            raise AdapterError(f"{folder}: AutoProcessor failed ({exc}) and no processor class is named there") from exc
        log.info("%s: %s without its video processor (%s)", folder, name, type(exc).__name__)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        template = folder / "chat_template.jinja"
        chat_template = template.read_text() if template.exists() else getattr(tokenizer, "chat_template", None)
        return _image_only(cls)(AutoImageProcessor.from_pretrained(folder), tokenizer, chat_template=chat_template)


def _processor_from_model(folder: Path) -> str | None:
    """The processor class of the model type (config.json), for folders that do not name it."""
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    config = folder / "config.json"
    if not config.exists():
        return None
    return PROCESSOR_MAPPING_NAMES.get(json.loads(config.read_text()).get("model_type"))


@dataclass
class HFImageTextModel:
    processor: Any
    model: Any
    name: str

    @classmethod
    def load(cls, path: str | Path, dtype: str = "auto", device: str | None = None) -> HFImageTextModel:
        import torch
        from transformers import AutoModelForImageTextToText

        folder = Path(path)
        if not (folder / "config.json").exists():
            raise AdapterError(f"{folder}: not a Hugging Face model folder (no config.json); give the folder that "
                               "save_pretrained wrote, with its processor files")
        processor = load_processor(folder)
        if getattr(processor, "chat_template", None) is None:
            raise AdapterError(f"{folder}: the processor has no chat template, so the questions cannot be put in the "
                               "model's prompt format; add chat_template.jinja")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype).to(device).eval()
        processor.tokenizer.padding_side = "left"  # batched generation: every prompt ends where answers begin
        return cls(processor, model, folder.name)

    def prompts(self, questions: list[str]) -> list[str]:
        return [self.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
            add_generation_prompt=True, tokenize=False) for q in questions]

    def answer(self, images: np.ndarray, questions: list[str], max_new_tokens: int = 12) -> list[str]:
        """Greedy answers, one per (image, question); images are uint8 HxWx3 at any size."""
        import torch
        from PIL import Image

        pictures = [Image.fromarray(np.asarray(img, np.uint8)) for img in images]
        inputs = self.processor(images=pictures, text=self.prompts(questions), return_tensors="pt", padding=True)
        inputs = inputs.to(self.model.device)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self.processor.batch_decode(new, skip_special_tokens=True)]
