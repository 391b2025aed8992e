"""FaceInsight's configuration: one typed dataclass per component, validated at construction.

Fields are grouped by component (vision_*, seg_*, projector_*, llm_*, alignment) as nanoVLM does.
A config is saved as config.json beside every checkpoint and rebuilt from it, or from a
params.yaml section (`FaceInsightConfig.from_dict`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from model.labels import ANSWER_TASKS, CELEBA_ATTRIBUTES, PARSING_CLASSES

VISION_KINDS = ("tiny", "clip", "siglip")
LLM_KINDS = ("tiny", "pretrained")
PROJECTOR_TYPES = ("linear", "mlp2x_gelu", "mlp3x_gelu")
TRAIN_MODES = ("frozen", "full", "lora")
KNOWLEDGE_TOKENS = ("per_attribute", "pooled", "none")
# how the tiny models' transformer blocks attend: torch's fused kernel, or plain ops (model/encoders.py; transformers'
# "eager" for the tiny LM)
ATTENTION_KINDS = ("sdpa", "eager")
COMPONENTS = ("vision", "seg_encoder", "projector", "llm", "knowledge")


def _check(cond: bool, name: str, message: str) -> None:
    if not cond:
        raise ValueError(f"model.{name}: {message}")


@dataclass(frozen=True)
class VisionConfig:
    kind: str = "tiny"  # tiny: built from this config; clip / siglip: pretrained from `path`
    path: str = ""  # Hugging Face id or local directory (clip / siglip)
    image_size: int = 64
    patch_size: int = 8  # tiny: after the conv stem, one token per patch
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    conv_stem: bool = True  # tiny: two strided 3x3 convolutions before the patch projection
    # tiny, conv_stem: 3x3 convolutions added at each resolution of the stem (0: the two strided ones only) and the
    # first resolution's width (doubled at each stride; 0: hidden // 4): a small CNN body under the transformer
    stem_depth: int = 0
    stem_width: int = 0
    feature_layer: int = -1  # which hidden layer's patch tokens feed the projector (LLaVA-1.5: -2)
    attention: str = "sdpa"  # tiny: its blocks' attention, one of ATTENTION_KINDS

    def __post_init__(self) -> None:
        _check(self.kind in VISION_KINDS, "vision.kind", f"one of {VISION_KINDS}, got {self.kind!r}")
        _check(self.attention in ATTENTION_KINDS, "vision.attention", f"one of {ATTENTION_KINDS}")
        _check(self.kind == "tiny" or bool(self.path), "vision.path", f"needed for kind {self.kind!r}")
        _check(self.image_size % self.patch_size == 0, "vision.patch_size",
               f"must divide image_size {self.image_size}, got {self.patch_size}")
        _check(self.hidden % self.heads == 0, "vision.heads", f"must divide hidden {self.hidden}")
        _check(self.layers >= 1, "vision.layers", "must be >= 1")
        _check(self.stem_depth >= 0 and self.stem_width >= 0, "vision.stem_depth", "stem_depth, stem_width >= 0")
        _check(self.stem_depth == 0 or self.patch_size & (self.patch_size - 1) == 0, "vision.stem_depth",
               f"a deep stem strides by 2 to the patch: patch_size must be a power of 2, got {self.patch_size}")


@dataclass(frozen=True)
class SegEncoderConfig:
    """The parsing-map stream: a one-hot rendering of the 19 classes (not a palette: class identity,
    not colour similarity, is what the map says), a conv patch embedding and a small transformer."""

    num_classes: int = len(PARSING_CLASSES)
    image_size: int = 64
    patch_size: int = 16
    hidden: int = 64
    layers: int = 1
    heads: int = 4
    attention: str = "sdpa"  # its blocks' attention, one of ATTENTION_KINDS

    def __post_init__(self) -> None:
        _check(self.image_size % self.patch_size == 0, "seg.patch_size", "must divide seg.image_size")
        _check(self.attention in ATTENTION_KINDS, "seg.attention", f"one of {ATTENTION_KINDS}")
        _check(self.hidden % self.heads == 0, "seg.heads", f"must divide hidden {self.hidden}")


@dataclass(frozen=True)
class ProjectorConfig:
    type: str = "mlp2x_gelu"  # linear | mlp2x_gelu | mlp3x_gelu (LLaVA-1.5 uses mlp2x_gelu)
    shared: bool = False  # one projector for both streams (needs equal widths) or one each

    def __post_init__(self) -> None:
        _check(self.type in PROJECTOR_TYPES, "projector.type", f"one of {PROJECTOR_TYPES}, got {self.type!r}")


@dataclass(frozen=True)
class LLMConfig:
    kind: str = "tiny"  # tiny: a Llama-style model built from this config; pretrained: from `path`
    path: str = ""
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    intermediate: int = 256
    vocab_size: int = 0  # tiny: at least this many embedding rows (0: the tokenizer's size)
    max_positions: int = 1024
    chat_template: str = "tiny"  # a name in model/chat.py's CHAT_TEMPLATES (vicuna_v1 for Vicuna)
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    attention: str = "sdpa"  # tiny: transformers' attn_implementation, one of ATTENTION_KINDS

    def __post_init__(self) -> None:
        _check(self.kind in LLM_KINDS, "llm.kind", f"one of {LLM_KINDS}, got {self.kind!r}")
        _check(self.attention in ATTENTION_KINDS, "llm.attention", f"one of {ATTENTION_KINDS}")
        _check(self.kind == "tiny" or bool(self.path), "llm.path", "needed for kind 'pretrained'")
        _check(self.hidden % self.heads == 0, "llm.heads", f"must divide hidden {self.hidden}")
        _check(bool(self.lora_targets), "llm.lora_targets", "name at least one module")


@dataclass(frozen=True)
class LoRAConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05

    def __post_init__(self) -> None:
        _check(self.r >= 1 and self.alpha >= 1, "lora", "r and alpha must be >= 1")
        _check(0 <= self.dropout < 1, "lora.dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class AlignmentConfig:
    """Facial-knowledge alignment (the paper's co-occurrence module and logical-constraint loss)."""

    use_cooccurrence: bool = True
    use_constraints: bool = True
    gcn_hidden: int = 64
    lambda_bce: float = 1.0
    # the co-occurrence head's BCE (a mean over 40 attributes) against the answer heads' cross-entropies (one per
    # task, summed), both under lambda_bce: at 1 the attribute term is a fortieth of a task's (the specialist's own
    # attribute head learned 0.81 at 1 and 0.90 at 10 in the same 3 minutes: benchmarks/RESULTS.md, twenty-third pass)
    attribute_weight: float = 1.0
    lambda_constraint: float = 0.5
    num_attributes: int = len(CELEBA_ATTRIBUTES)
    # the head's attribute probabilities join the visual tokens (use_cooccurrence only; the no-co-occurrence
    # ablation has none): pooled, one token of all 40 projected; per_attribute, one token an attribute (its
    # name's embedding + its probability; 40 more tokens a sequence); none
    knowledge_tokens: str = "pooled"
    # KnowBert-style: every text token that names an attribute ("lipstick") carries the head's verdict on it,
    # so the answer reads it from the question's own words (use_cooccurrence only)
    knowledge_embedding: bool = True
    # how a word is found to name an attribute: soft, the learned cosine match of its embedding to the 40 names
    # (KnowBert); exact, a fixed table of each attribute's key words (model/knowledge_modules.ATTRIBUTE_KEYS),
    # linked where all of them have appeared within the last few tokens. The soft match of the seventh default run
    # wrote the Male verdict into every question's "person" and matched "beardless" and "young" to no attribute
    knowledge_link: str = "soft"
    # in training, this share of faces hand the knowledge embedding their true labels in place of the head's
    # guesses (teacher forcing); inference always reads the head's. At 0.5 the half of noisy guesses taught the LM
    # not to trust a verdict (tenth default run: yes/no 0.53 with the head at 0.75); text-phase learning curves
    # from two visual phases read the head at 1.0 (benchmarks/RESULTS.md, tenth pass)
    verdict_forcing: float = 1.0
    # at inference the text reads each head's decision as training forced it (+-6: an attribute present where the
    # head's probability passes 0.5, a task's top class), not the head's soft scores: a text trained on confident
    # labels alone read an unsure head's soft verdict as "no" / the common class (eleventh pass, RESULTS.md)
    hard_verdicts: bool = True
    # gender, race and expression heads on the pooled visual feature; the question words that name the task carry
    # their answer word (model/knowledge_modules.AnswerEmbedding). Independent of use_cooccurrence
    answer_heads: bool = True
    # the heads' logits: the mean of their per-token scores plus this times their max over tokens (CSRA; 0: the mean
    # alone, a linear head on the mean-pooled tokens as ML-GCN has it). benchmarks/RESULTS.md ("class-specific
    # pooling"): 0.5 beat 0, 1 and 3 on attributes, race and age in the visual phase
    head_max_weight: float = 0.5
    # a learned gate adds the answer heads' class scores to the logits of their words' first tokens wherever a word
    # has named the task in the current question turn (model/knowledge_modules.AnswerPointer): the copy becomes
    # structural, not learned per class. The eleventh default run's text, without it, never said Fear or Anger though
    # its head did (RESULTS.md). Acts only where the answer heads exist (a model without them has nothing to copy)
    answer_pointer: bool = True
    # the tasks the pointer copies (benchmarks/RESULTS.md, ninth pass: for all four it brought the text to the
    # expression and age heads but cost the attribute yes/no answers 0.07 at 1,000 steps, when a task's word still
    # opened the gate in every later turn of the conversation; it now closes at the next question)
    pointer_tasks: tuple[str, ...] = ANSWER_TASKS
    # how the copy meets the LM: mix, pointer-generator proper, a gated mixture of the LM's distribution and the
    # head's over its class words (an open gate writes a class word whatever the LM prefers); add, the head's class
    # scores times the gate added to the LM's logits (a class word gains at most gate x log C over any other token).
    # The twelfth default run (add): 10% of its expression answers were a background sentence; mix, from the same
    # align: none, the text = the head on expression and age (benchmarks/RESULTS.md, twelfth pass)
    pointer_form: str = "mix"
    # attribute yes/no answers through the pointer too: where the question turn names an attribute (its key words,
    # model/knowledge_modules.ATTRIBUTE_KEYS) the head's decision on it is copied into "No" / "Yes". The twelfth
    # default run's yes/no text read its head 0.026 below the head's own decisions and never said yes to Gray_Hair
    # (head 0.93). Acts only where the attribute head (use_cooccurrence) and the answer pointer exist
    verdict_pointer: bool = True
    # the pointer's gate also learns from its own target (BCE: does the next token open one of the named task's class
    # words?) with this weight; 0: from the mixture's loss alone, which gave the thirteenth run's yes/no gate no reason
    # to open (the LM, handed true labels in training, was already sure), so its yes/no text read the head 0.04 low
    lambda_gate: float = 1.0

    def __post_init__(self) -> None:
        _check(min(self.lambda_bce, self.lambda_constraint, self.lambda_gate) >= 0, "alignment", "lambdas must be >= 0")
        _check(self.attribute_weight > 0, "alignment.attribute_weight", f"> 0, got {self.attribute_weight}")
        _check(bool(self.pointer_tasks) and set(self.pointer_tasks) <= set(ANSWER_TASKS), "alignment.pointer_tasks",
               f"one or more of {ANSWER_TASKS}, got {self.pointer_tasks!r}")
        _check(self.pointer_form in ("add", "mix"), "alignment.pointer_form", f"add or mix, got {self.pointer_form!r}")
        _check(self.head_max_weight >= 0, "alignment.head_max_weight", f">= 0, got {self.head_max_weight}")
        _check(0 <= self.verdict_forcing <= 1, "alignment.verdict_forcing", f"in [0, 1], got {self.verdict_forcing}")
        _check(self.knowledge_link in ("soft", "exact"), "alignment.knowledge_link",
               f"soft or exact, got {self.knowledge_link!r}")
        _check(self.knowledge_tokens in KNOWLEDGE_TOKENS, "alignment.knowledge_tokens",
               f"one of {KNOWLEDGE_TOKENS}, got {self.knowledge_tokens!r}")
        _check(not self.use_constraints or self.use_cooccurrence, "alignment.use_constraints",
               "the constraint loss acts on the co-occurrence head's probabilities: enable use_cooccurrence")


@dataclass(frozen=True)
class Recipe:
    """Per component: frozen | full | lora (lora only for the LLM)."""

    vision: str = "frozen"
    seg_encoder: str = "full"
    projector: str = "full"
    llm: str = "frozen"
    knowledge: str = "full"

    def __post_init__(self) -> None:
        for name in COMPONENTS:
            mode = getattr(self, name)
            _check(mode in TRAIN_MODES, f"recipe.{name}", f"one of {TRAIN_MODES}, got {mode!r}")
            _check(mode != "lora" or name == "llm", f"recipe.{name}", "lora applies to the LLM only")


# LLaVA-1.5's two stages: align the new parts with the backbones frozen, then LoRA on the LLM.
RECIPES = {
    "align": Recipe(),
    "finetune": Recipe(llm="lora"),
    "full": Recipe(vision="full", llm="full"),  # tiny from scratch: nothing is pretrained
}


@dataclass(frozen=True)
class FaceInsightConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    seg: SegEncoderConfig = field(default_factory=SegEncoderConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    use_seg_map: bool = True

    def __post_init__(self) -> None:
        if self.projector.shared and self.use_seg_map:
            _check(self.vision.hidden == self.seg.hidden or self.vision.kind != "tiny", "projector.shared",
                   "a shared projector needs vision.hidden == seg.hidden")

    def visual_token_counts(self) -> tuple[int, int]:
        """(image tokens with the knowledge tokens, map tokens) a prompt holds, from the config alone: a driver
        that encodes records need not build the model (for a 7B preset, load 7B weights) to count them."""
        vision = self.vision
        if vision.kind == "tiny":
            side = vision.image_size // vision.patch_size
        else:  # the tower's own config file, no weights; CLIP's class token is dropped, SigLIP has none
            from transformers import AutoConfig

            tower = AutoConfig.from_pretrained(vision.path)
            tower = getattr(tower, "vision_config", tower)
            side = tower.image_size // tower.patch_size
        knowledge = 0
        if self.alignment.use_cooccurrence and self.alignment.knowledge_tokens != "none":
            knowledge = 1 if self.alignment.knowledge_tokens == "pooled" else self.alignment.num_attributes
        seg = (self.seg.image_size // self.seg.patch_size) ** 2 if self.use_seg_map else 0
        return side * side + knowledge, seg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaceInsightConfig:
        """Nested mappings -> config; unknown keys are refused with their path."""
        return _build(cls, data, "model")

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> FaceInsightConfig:
        """A saved config (a checkpoint's); a field it predates takes the value the checkpoint was built with."""
        data = json.loads(path.read_text())
        for (section, name), value in SAVED_BEFORE.items():
            data.setdefault(section, {}).setdefault(name, value)
        return cls.from_dict(data)


# fields added after checkpoints had been saved -> the value that rebuilds such a checkpoint as it was trained (a
# yes/no pointer would add a gate row the saved weights do not have)
SAVED_BEFORE: dict[tuple[str, str], Any] = {("alignment", "verdict_pointer"): False, ("vision", "attention"): "sdpa",
                                            ("seg", "attention"): "sdpa", ("llm", "attention"): "sdpa"}


def _build(cls, data: dict[str, Any] | None, where: str):
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        default = fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING \
            else fields[name].default
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}.{name}")
        elif isinstance(default, tuple):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


PRESETS: dict[str, FaceInsightConfig] = {
    # ~1M parameters: trains from scratch on 2 CPU cores in minutes (../shared/DESIGN.md). Eager attention: at its
    # sizes the CPU's fused kernel's backward was ~40% of a heads-only step (benchmarks/RESULTS.md, 19th pass)
    "tiny": FaceInsightConfig(vision=VisionConfig(attention="eager"), seg=SegEncoderConfig(attention="eager"),
                              llm=LLMConfig(attention="eager")),
    # LLaVA-1.5-7B's backbones; weights come from the paths the user gives (ids or local dirs)
    "llava15-7b": FaceInsightConfig(
        vision=VisionConfig(kind="clip", path="openai/clip-vit-large-patch14-336", image_size=336, patch_size=14,
                            hidden=1024, layers=24, heads=16, conv_stem=False, feature_layer=-2),
        seg=SegEncoderConfig(image_size=336, patch_size=28, hidden=256, layers=2, heads=8),
        llm=LLMConfig(kind="pretrained", path="lmsys/vicuna-7b-v1.5", hidden=4096, layers=32, heads=32,
                      intermediate=11008, vocab_size=32000, max_positions=4096, chat_template="vicuna_v1"),
        lora=LoRAConfig(r=128, alpha=256, dropout=0.05),
        alignment=AlignmentConfig(gcn_hidden=1024),
    ),
}


def model_config(params: dict[str, Any] | None) -> FaceInsightConfig:
    """params.yaml's `model` section: `preset` (default tiny) plus any field overrides, nested."""
    params = dict(params or {})
    preset = params.pop("preset", "tiny")
    if preset not in PRESETS:
        raise ValueError(f"model.preset must be one of {sorted(PRESETS)}, got {preset!r}")
    return FaceInsightConfig.from_dict(merge_overrides(PRESETS[preset].to_dict(), params))


def merge_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge_overrides(out[key], value) if nested else value
    return out
