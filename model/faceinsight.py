"""FaceInsight: image ViT + parsing-map encoder -> projectors -> a causal LM, with knowledge alignment.

Visual tokens enter the LLM by one masked assignment at the sentinel positions the chat template
wrote (model/tokenizer.py), as HF's LlavaForConditionalGeneration does. The attribute head
(co-occurrence graph network) scores the pooled visual tokens against 40 attribute classifiers;
its probabilities also feed the logical-constraint loss.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from model.chat import CHAT_TEMPLATES, IGNORE, ChatTemplate
from model.checkpoint import Checkpointable
from model.config import FaceInsightConfig, Recipe
from model.encoders import ImagePreprocessor, SegMapEncoder, build_projector, build_vision
from model.knowledge_modules import (
    ANSWER_BINS,
    ANSWER_CLASSES,
    ANSWER_KEYS,
    ATTRIBUTE_KEYS,
    NEGATED_KEYS,
    VERDICT_WORDS,
    AnswerEmbedding,
    AnswerPointer,
    AttributeLinker,
    CooccurrenceGraph,
    KnowledgeEmbedding,
    KnowledgeTokens,
    attribute_pos_weight,
    balanced_thresholds,
    class_weights,
    constraint_loss,
    masked_bce,
    median_class,
    rules_tensor,
)
from model.labels import CELEBA_ATTRIBUTES
from model.tokenizer import IMAGE_TOKEN_ID, SEG_TOKEN_ID


@dataclass
class FaceInsightOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor | None  # None from a visual-only step
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # each term, for logging
    attribute_logits: torch.Tensor | None = None
    answer_logits: dict[str, torch.Tensor] = field(default_factory=dict)  # gender / race / expression / age heads
    past_key_values: Any = None


def build_llm(cfg: FaceInsightConfig, vocab_size: int) -> nn.Module:
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if cfg.llm.kind == "pretrained":
        return AutoModelForCausalLM.from_pretrained(cfg.llm.path)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=max(vocab_size, cfg.llm.vocab_size), hidden_size=cfg.llm.hidden,
        intermediate_size=cfg.llm.intermediate,
        num_hidden_layers=cfg.llm.layers, num_attention_heads=cfg.llm.heads, num_key_value_heads=cfg.llm.heads,
        max_position_embeddings=cfg.llm.max_positions, tie_word_embeddings=True, attn_implementation=cfg.llm.attention))


def loop_tokens(seq: list[int], longest: int) -> list[int]:
    """Tokens that would end a phrase (2..`longest` tokens) said twice in a row: "has a big nose, has a big
    nose,". A phrase said again later (a description's closing list of names) is allowed."""
    banned = set()
    for k in range(2, min(longest, (len(seq) + 1) // 2) + 1):
        if seq[len(seq) - k + 1:] == seq[len(seq) - 2 * k + 1:len(seq) - k]:
            banned.add(seq[-k])
    return sorted(banned)


def confident_logits(name: str, decided: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A verdict as sure as a label (the form verdict forcing trains on): attributes, +6 where `decided` is true and
    -6 elsewhere; a task, +6 for the class index `decided` and -6 for the rest (`like`'s class count and dtype)."""
    if name == "attributes":
        return (decided.to(like.dtype) * 2 - 1) * 6.0
    return nn.functional.one_hot(decided, like.shape[-1]).to(like.dtype) * 12.0 - 6.0


def shared_prefix(input_ids: list[list[int]]) -> int:
    """How many leading tokens every prompt shares, through its last visual placeholder (the chat template's
    turn opening and the face's tokens, before the question); 0 where the prompts differ there, or hold no face
    or nothing after it."""
    first = input_ids[0]
    visual = [k for k, t in enumerate(first) if t in (IMAGE_TOKEN_ID, SEG_TOKEN_ID)]
    if not visual:
        return 0
    end = visual[-1] + 1
    head = first[:end]
    if any(len(p) <= end or p[:end] != head or IMAGE_TOKEN_ID in p[end:] or SEG_TOKEN_ID in p[end:]
           for p in input_ids):
        return 0
    return end


def distinct_faces(images, maps=None) -> tuple[list[int], torch.Tensor | None]:
    """The first index of each distinct (image, map) pair and each item's row among them; (all, None) where the
    images differ in size (a pretrained tower's processor resizes them)."""
    if len({np.shape(image) for image in images}) != 1:
        return list(range(len(images))), None
    seen: dict[bytes, int] = {}  # a face's bytes -> its row (a dict: np.unique's row sort cost more than the tower)
    first, rows = [], []
    for k, image in enumerate(images):
        key = np.asarray(image).tobytes() + (b"" if maps is None else np.asarray(maps[k]).tobytes())
        if key not in seen:
            seen[key] = len(first)
            first.append(k)
        rows.append(seen[key])
    return first, torch.tensor(rows)


class FaceEncoding(NamedTuple):
    """A batch of faces as the towers and heads see them (FaceInsight.encode_visual), to ask many questions of."""
    visual: torch.Tensor  # (B, image_tokens + seg_tokens, width)
    verdicts: dict[str, torch.Tensor]  # "attributes" logits and the answer heads' logits, where the model has them

    def rows(self, rows: torch.Tensor | list[int]) -> FaceEncoding:
        """The encoding of some of these faces (a face may come more than once)."""
        return FaceEncoding(self.visual[rows], {name: v[rows] for name, v in self.verdicts.items()})


class FaceInsight(Checkpointable, nn.Module):
    """`FaceInsight.from_pretrained(path)` / `save_pretrained(path, recipe)` come from model/checkpoint.py."""

    def __init__(self, cfg: FaceInsightConfig, tokenizer, knowledge: dict[str, Any] | None = None,
                 chat: ChatTemplate | None = None):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.chat = chat or CHAT_TEMPLATES[cfg.llm.chat_template]
        self.llm = build_llm(cfg, len(tokenizer))
        width = self.llm.config.hidden_size
        self.vision = build_vision(cfg.vision)
        self.image_projector = build_projector(cfg.projector, self.vision.out_dim, width)
        self.image_tokens = self.vision.num_tokens
        self.knowledge_tokens = None
        if cfg.alignment.use_cooccurrence and cfg.alignment.knowledge_tokens != "none":
            self.knowledge_tokens = KnowledgeTokens(cfg.alignment.knowledge_tokens, cfg.alignment.num_attributes, width)
            self.image_tokens += self.knowledge_tokens.count  # written after the image's own tokens, before the map's
        exact = cfg.alignment.knowledge_link == "exact"
        self.knowledge_embedding = (KnowledgeEmbedding(width, exact=exact) if cfg.alignment.use_cooccurrence
                                    and cfg.alignment.knowledge_embedding else None)
        self.attribute_linker = None
        if self.knowledge_embedding is not None and exact:
            self.attribute_linker = AttributeLinker([[self.phrase_ids(p) for p in ATTRIBUTE_KEYS[a]]
                                                     for a in CELEBA_ATTRIBUTES])
        self.seg_encoder, self.seg_projector, self.seg_tokens = None, None, 0
        if cfg.use_seg_map:
            self.seg_encoder = SegMapEncoder(cfg.seg)
            self.seg_projector = (self.image_projector if cfg.projector.shared
                                  else build_projector(cfg.projector, self.seg_encoder.out_dim, width))
            self.seg_tokens = self.seg_encoder.num_tokens
        self.cooccurrence = None
        if cfg.alignment.use_cooccurrence:
            if knowledge is None:
                raise ValueError("use_cooccurrence needs knowledge.json (the mine_knowledge stage's output)")
            adjacency = torch.tensor(knowledge["graph"]["normalized"], dtype=torch.float32)
            self.cooccurrence = CooccurrenceGraph(adjacency, width, cfg.alignment.gcn_hidden, width)
            # with a leading space, as the names are tokenized inside a question (" wavy", not "w" "avy")
            names = [" " + n.replace("_", " ").lower() for n in CELEBA_ATTRIBUTES]
            ids = [tokenizer(n, add_special_tokens=False)["input_ids"] for n in names]
            longest = max(map(len, ids))
            self.register_buffer("attribute_ids", torch.tensor([i + [0] * (longest - len(i)) for i in ids]))
            self.register_buffer("attribute_mask", torch.tensor([[1] * len(i) + [0] * (longest - len(i))
                                                                 for i in ids], dtype=torch.float32))
            # rare attributes (Bald 2%) would otherwise never cross 0.5; a checkpoint carries its own weights
            self.register_buffer("attribute_pos_weight",
                                 attribute_pos_weight(knowledge.get("counts"), knowledge.get("n_train")))
            # per attribute, the logit above which the head decides "present", chosen on val once training is over
            # (fit_attribute_thresholds; 0 = p 0.5 until then): what the text is handed and the head row says
            self.register_buffer("attribute_threshold", torch.zeros(len(CELEBA_ATTRIBUTES)))
        self.answer_embedding = self.build_answer_embedding(width, knowledge) if cfg.alignment.answer_heads else None
        self.answer_pointer = (self.build_answer_pointer(width)
                               if cfg.alignment.answer_pointer and self.answer_embedding is not None else None)
        rules = knowledge["rules"] if (knowledge and cfg.alignment.use_constraints) else []
        self.register_buffer("rules", rules_tensor(rules))
        self.preprocess = ImagePreprocessor(cfg.vision)
        self.lora_applied = False

    def build_answer_embedding(self, width: int, knowledge: dict[str, Any] | None) -> AnswerEmbedding:
        def tokens(text: str) -> list[int]:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]

        def ids(word: str) -> list[int]:
            # both forms the answers write: opening an answer ("Happiness.", its own token) and inside a sentence
            # (" Happiness"); with the output layer tied to the embeddings, the carried word then raises the logit
            # of the very token the open answer starts with, not a look-alike the LM must learn to map over
            return tokens(word) + tokens(" " + word)

        counts = (knowledge or {}).get("class_counts") or {}  # a loaded checkpoint's weights come from its buffers
        return AnswerEmbedding(width, {t: [ids(w) for w in words] for t, words in ANSWER_CLASSES.items()},
                               self.answer_key_ids(),
                               {t: class_weights(counts.get(t), len(words)) for t, words in ANSWER_CLASSES.items()})

    def answer_key_ids(self) -> dict[str, list[int]]:
        """Per task, the token that ends each word naming it as a question writes it (" gender", with its leading
        space): where the answer embedding writes the head's word and after which the answer pointer copies it."""
        return {t: [self.tokenizer(" " + k, add_special_tokens=False)["input_ids"][-1] for k in keys]
                for t, keys in ANSWER_KEYS.items()}

    def build_answer_pointer(self, width: int) -> AnswerPointer:
        def first(text: str) -> int:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"][0]

        tasks = self.cfg.alignment.pointer_tasks
        keys = self.answer_key_ids()
        words = {t: ANSWER_CLASSES[t] for t in tasks}
        linker = None
        if self.cfg.alignment.verdict_pointer and self.cooccurrence is not None:  # yes/no: the attribute head's
            words["attributes"] = VERDICT_WORDS
            linker = AttributeLinker(  # built from the tokenizer, so not saved with the weights
                [[self.phrase_ids(p) for p in ATTRIBUTE_KEYS[a]] for a in CELEBA_ATTRIBUTES],
                negated=[[p in NEGATED_KEYS for p in ATTRIBUTE_KEYS[a]] for a in CELEBA_ATTRIBUTES], persistent=False)
        return AnswerPointer(width, tasks, {t: [[first(w), first(" " + w)] for w in ws] for t, ws in words.items()},
                             {t: keys[t] for t in tasks}, self.chat.turn_start_id(self.tokenizer),
                             self.cfg.alignment.pointer_form, linker, self.chat.answer_opening(self.tokenizer))

    def phrase_ids(self, phrase: str) -> list[int]:
        """A key phrase's token ids, each word with its leading space, as inside a sentence."""
        return [t for w in phrase.split() for t in self.tokenizer(" " + w, add_special_tokens=False)["input_ids"]]

    def pointer_inputs(self, input_ids: torch.Tensor, verdicts: dict[str, torch.Tensor]
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(B, T) token ids and the verdicts the text reads -> what the answer pointer copies from at each position:
        whether each of its tasks is named (B, T, tasks), and per task the (B, T, classes) logits (a face's head
        logits at every position; for attribute yes/no, the verdict on the attribute last named)."""
        b, t = input_ids.shape
        logits = {k: verdicts[k][:, None].expand(b, t, -1) for k in self.answer_pointer.tasks if k != "attributes"}
        named, verdict = self.answer_pointer.scopes(input_ids, verdicts.get("attributes"))
        if "attributes" in self.answer_pointer.tasks:
            logits["attributes"] = verdict
        return named, logits

    def copy_logits(self, hidden: torch.Tensor, input_ids: torch.Tensor, verdicts: dict[str, torch.Tensor],
                    lm_logits: torch.Tensor) -> torch.Tensor:
        """(B, T, W) hidden states of (B, T) tokens and the LM's (B, T, vocab) logits -> the fp32 scores with the
        pointer's copy (AnswerPointer.next_token_scores)."""
        b, t, w = hidden.shape
        named, logits = self.pointer_inputs(input_ids, verdicts)
        return self.answer_pointer.next_token_scores(
            hidden.reshape(b * t, w), named.reshape(b * t, -1), {k: v.reshape(b * t, -1) for k, v in logits.items()},
            lm_logits.reshape(b * t, -1), self.answer_pointer.opens(input_ids).reshape(-1)).view(b, t, -1)

    # -- components and the training recipe ------------------------------------------------------------
    def components(self) -> dict[str, list[nn.Module]]:
        projectors = [m for m in (self.image_projector, self.seg_projector) if m is not None]
        return {"vision": [self.vision], "seg_encoder": [m for m in (self.seg_encoder,) if m is not None],
                "projector": list({id(m): m for m in projectors}.values()), "llm": [self.llm],
                "knowledge": [m for m in (self.cooccurrence, self.knowledge_tokens, self.knowledge_embedding,
                                          self.answer_embedding, self.answer_pointer) if m is not None]}

    def apply_recipe(self, recipe: Recipe) -> dict[str, int]:
        """Freeze or train each component as the recipe says (adding LoRA to the LLM if asked)."""
        if recipe.llm == "lora" and not self.lora_applied:
            self.add_lora()
        for name, modules in self.components().items():
            mode = getattr(recipe, name)
            for module in modules:
                for pname, p in module.named_parameters():
                    is_lora = "lora_" in pname
                    p.requires_grad_(mode == "full" and not is_lora or mode == "lora" and is_lora)
        return self.trainable_parameters()

    def add_lora(self) -> None:
        from peft import LoraConfig, get_peft_model

        lora = self.cfg.lora
        with warnings.catch_warnings():  # peft reads transformers' deprecated alias: its note to itself, not the user's
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            self.llm = get_peft_model(self.llm, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                           target_modules=list(self.cfg.llm.lora_targets),
                                                           task_type="CAUSAL_LM"))
        self.lora_applied = True

    def trainable_parameters(self) -> dict[str, int]:
        return {name: sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)
                for name, modules in self.components().items()}

    def parameter_counts(self) -> dict[str, int]:
        return {name: sum(p.numel() for m in modules for p in m.parameters())
                for name, modules in self.components().items()}

    # -- forward ------------------------------------------------------------------------------------------
    def visual_tokens(self, pixel_values: torch.Tensor, seg_maps: torch.Tensor | None) -> torch.Tensor:
        """Projected image tokens (and the knowledge token), then map tokens: (B, image_tokens + seg_tokens, width)."""
        return self.encode_visual(pixel_values, seg_maps)[0]

    def encode_visual(self, pixel_values: torch.Tensor, seg_maps: torch.Tensor | None
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The visual tokens and the heads' verdicts: "attributes" (the co-occurrence head's logits) and "gender",
        "race", "expression" (the answer heads'), each present only where the model has that head."""
        # float images into a tower whose weights may be bf16 (DeepSpeed casts them; autocast is then off)
        pixel_values = pixel_values.to(next(self.vision.parameters()).dtype)
        image = self.image_projector(self.vision(pixel_values))
        seg = None
        if self.seg_encoder is not None:
            if seg_maps is None:
                raise ValueError("this model uses the parsing map (use_seg_map): pass seg_maps")
            seg = self.seg_projector(self.seg_encoder(seg_maps))
        visual = torch.cat([image] + ([seg] if seg is not None else []), dim=1)
        lam = self.cfg.alignment.head_max_weight
        verdicts: dict[str, torch.Tensor] = {}
        names = None
        if self.cooccurrence is not None:
            names = self.attribute_names()
            verdicts["attributes"] = self.cooccurrence(names, visual, lam)
        if self.answer_embedding is not None:
            verdicts.update(self.answer_embedding(visual, lam))
        tokens = [image]
        if self.knowledge_tokens is not None:
            tokens.append(self.knowledge_tokens(torch.sigmoid(verdicts["attributes"]), names).to(image.dtype))
        if seg is not None:
            tokens.append(seg)
        return torch.cat(tokens, dim=1), verdicts

    def embed_text(self, input_ids: torch.Tensor, verdicts: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Token embeddings; given the heads' verdicts, the words that name an attribute or a task carry them."""
        table = self.llm.get_input_embeddings()
        embeds = table(input_ids)
        verdicts = verdicts or {}
        if self.knowledge_embedding is not None and "attributes" in verdicts:
            links = self.attribute_linker(input_ids) if self.attribute_linker is not None else None
            embeds = self.knowledge_embedding(embeds, self.attribute_names(), torch.sigmoid(verdicts["attributes"]),
                                              links)
        answers = {t: v for t, v in verdicts.items() if t in ANSWER_CLASSES}
        if self.answer_embedding is not None and answers:
            embeds = self.answer_embedding.write(embeds, input_ids, table, answers)
        return embeds

    def embed(self, input_ids: torch.Tensor, visual: torch.Tensor | None,
              verdicts: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Token embeddings with the visual tokens written over the sentinel positions (one masked assignment)."""
        is_visual = (input_ids == IMAGE_TOKEN_ID) | (input_ids == SEG_TOKEN_ID)
        embeds = self.embed_text(input_ids.masked_fill(is_visual, 0), verdicts)
        if visual is None:
            if is_visual.any():
                raise ValueError("input_ids hold visual placeholders but no image was given")
            return embeds
        expected = visual.shape[0] * visual.shape[1]
        if int(is_visual.sum()) != expected:
            raise ValueError(f"{int(is_visual.sum())} visual placeholders in input_ids, but {expected} visual tokens "
                             f"({visual.shape[1]} per image); build prompts with the model's chat template")
        # per row, image tokens come first and map tokens follow, the order the template writes them
        return embeds.masked_scatter(is_visual.unsqueeze(-1), visual.to(embeds.dtype))

    def attribute_names(self) -> torch.Tensor:
        """(40, width): each attribute name's mean token embedding (the head's text, the knowledge embedding's keys)."""
        table = self.llm.get_input_embeddings()(self.attribute_ids)
        mask = self.attribute_mask.to(table.dtype)  # the buffer stays fp32 where DeepSpeed casts only parameters
        return (table * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, seg_maps: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                attribute_labels: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                answer_labels: dict[str, torch.Tensor] | None = None, visual_only: bool = False
                ) -> FaceInsightOutput:
        """Without labels, logits for every position; with labels, only the (N, vocab) logits of the N positions
        that predict a label, in row-major order, and the next-token loss over them. `answer_labels`: per task
        (gender, race, expression) the class of each face, -1 where unknown. `visual_only`: the heads' losses
        alone, no LM (a visual phase: the image tower, map encoder and heads learn ~5x cheaper a step)."""
        if visual_only:
            return self.heads_loss(pixel_values, seg_maps, attribute_labels, answer_labels)
        visual, verdicts = self.encode_visual(pixel_values, seg_maps)
        shown = self.forced_verdicts(verdicts, attribute_labels, answer_labels)  # what the text is given to read
        embeds = self.embed(input_ids, visual, shown)
        losses: dict[str, torch.Tensor] = {}
        if labels is None:
            out = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                           **({"output_hidden_states": True} if self.answer_pointer is not None else {}))
            logits = out.logits
            if self.answer_pointer is not None:
                # in fp32, returned in the LM's dtype (bf16 under autocast), as without the pointer
                logits = self.copy_logits(out.hidden_states[-1], input_ids, shown, logits).to(logits.dtype)
        else:
            logits, losses["lm"] = self.supervised_lm_loss(embeds, attention_mask, position_ids, labels,
                                                           (input_ids, shown), losses)
        losses.update(self.head_losses(verdicts, attribute_labels, answer_labels, constraint=labels is not None))
        return self.output(losses, logits, verdicts)

    @property
    def has_heads(self) -> bool:
        """Whether a visual phase has anything to train: the co-occurrence head or the answer heads."""
        return self.cooccurrence is not None or self.answer_embedding is not None

    def heads_loss(self, pixel_values: torch.Tensor, seg_maps: torch.Tensor | None,
                   attribute_labels: torch.Tensor | None, answer_labels: dict[str, torch.Tensor] | None
                   ) -> FaceInsightOutput:
        """The heads' terms of the loss (BCE, constraint, answer), weighted as in forward's total; no text."""
        _, verdicts = self.encode_visual(pixel_values, seg_maps)
        losses = self.head_losses(verdicts, attribute_labels, answer_labels, constraint=True)
        if not losses:
            raise ValueError("visual_only: this model has no heads to train (has_heads is false)")
        return self.output(losses, None, verdicts)

    def head_losses(self, verdicts: dict[str, torch.Tensor], attribute_labels: torch.Tensor | None,
                    answer_labels: dict[str, torch.Tensor] | None, constraint: bool) -> dict[str, torch.Tensor]:
        """BCE of the co-occurrence head (where labels are given), the constraint loss on its probabilities, the
        answer heads' class-weighted cross-entropy."""
        attr_logits = verdicts.get("attributes")
        answer_logits = {t: v for t, v in verdicts.items() if t in ANSWER_CLASSES}
        losses: dict[str, torch.Tensor] = {}
        if attr_logits is not None:
            if attribute_labels is not None:
                losses["bce"] = masked_bce(attr_logits, attribute_labels, self.attribute_pos_weight)
            if self.rules.numel() and constraint:
                losses["constraint"] = constraint_loss(torch.sigmoid(attr_logits), self.rules)
        if answer_logits and answer_labels is not None:
            losses["answer"] = self.answer_embedding.loss(answer_logits, answer_labels)
        return losses

    def output(self, losses: dict[str, torch.Tensor], logits: torch.Tensor | None,
               verdicts: dict[str, torch.Tensor]) -> FaceInsightOutput:
        """The weighted total (lm + lambda_bce x (attribute_weight x bce + answer) + lambda_constraint x constraint +
        lambda_gate x gate) and its parts."""
        a = self.cfg.alignment
        weights = {"lm": 1.0, "bce": a.lambda_bce * a.attribute_weight, "answer": a.lambda_bce,
                   "constraint": a.lambda_constraint, "gate": a.lambda_gate}
        loss = sum(weights[k] * v for k, v in losses.items()) if losses else None
        return FaceInsightOutput(loss, logits, losses, verdicts.get("attributes"),
                                 {t: v for t, v in verdicts.items() if t in ANSWER_CLASSES})

    def decided_verdicts(self, verdicts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What the text reads outside training: with `hard_verdicts`, each head's decision as the confident logits
        (+-6) verdict forcing hands it in training (an attribute where its probability passes 0.5; a task's top
        class); else the heads' own scores."""
        if not self.cfg.alignment.hard_verdicts:
            return verdicts
        return {name: confident_logits(name, self.decide(name, logits), logits) for name, logits in verdicts.items()}

    def decide(self, name: str, logits: torch.Tensor) -> torch.Tensor:
        """A head's decision: attributes present above their val-chosen thresholds; an ordered task (age in years)
        the median class of its distribution, the estimate with the least expected absolute error (the twelfth
        default run's age head: test MAE 11.55 -> 11.14, val 12.37 -> 11.43, against its top class); another task
        its top class."""
        if name == "attributes":
            return logits > self.attribute_threshold.to(logits.dtype)
        if name in ANSWER_BINS:
            return median_class(logits)
        return logits.argmax(-1)

    @torch.inference_mode()
    def answer_decisions(self, pixel_values: torch.Tensor, seg_maps: torch.Tensor | None = None
                         ) -> dict[str, torch.Tensor]:
        """The answer heads' decided class per task and face (what the text is handed: `decide`), no decoding."""
        if self.answer_embedding is None:
            raise ValueError("this model has no answer heads (alignment.answer_heads is off)")
        decided = self.face_decisions(FaceEncoding(*self.encode_visual(pixel_values, seg_maps)))
        return {t: v for t, v in decided.items() if t in ANSWER_CLASSES}

    def forced_verdicts(self, verdicts: dict[str, torch.Tensor], attribute_labels: torch.Tensor | None,
                        answer_labels: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """In training, `verdict_forcing` of the faces with labels give the embeddings their labels as confident
        logits (+-6), the rest the heads' own; at inference every face gives the heads' (decided_verdicts)."""
        share = self.cfg.alignment.verdict_forcing
        if not self.training:
            return self.decided_verdicts(verdicts)
        if share == 0:
            return verdicts
        labels = dict(answer_labels or {})
        if attribute_labels is not None:
            labels["attributes"] = attribute_labels
        out = dict(verdicts)
        for name, logits in verdicts.items():
            y = labels.get(name)
            if y is None:
                continue
            if name == "attributes":
                known = y >= 0
            else:
                y = self.answer_embedding.classes(name, y)
                known = (y >= 0)[:, None]
            truth = confident_logits(name, y if name == "attributes" else y.long().clamp(min=0), logits)
            forced = (torch.rand(len(logits), 1, device=logits.device) < share) & known
            out[name] = torch.where(forced, truth, logits)
        return out

    def supervised_lm_loss(self, embeds: torch.Tensor, attention_mask: torch.Tensor | None,
                           position_ids: torch.Tensor | None, labels: torch.Tensor,
                           copy: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None,
                           losses: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The causal LM's next-token loss (HF's: shifted, mean over labelled tokens), with the LM head applied only
        at the positions that predict a label: answers are ~43 of a tiny sequence's ~230 tokens, the rest image
        tokens and questions, and the head (tied to a vocabulary-sized embedding) ran over all of them. `copy`: the
        input ids and the verdicts the text was given, for the answer pointer (where the model has one); its gate's
        own loss (AnswerPointer.gate_loss) goes into `losses` as "gate" where given."""
        hidden = self.llm.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask,
                                        position_ids=position_ids).last_hidden_state
        targets = labels[:, 1:]
        supervised = targets != IGNORE
        rows = hidden[:, :-1][supervised]
        logits = self.llm.get_output_embeddings()(rows)
        scores = logits.float()
        if self.answer_pointer is not None and copy is not None:
            named, copied = self.pointer_inputs(copy[0][:, :-1], copy[1])
            named, opens = named[supervised], self.answer_pointer.opens(copy[0][:, :-1])[supervised]
            scores = self.answer_pointer.next_token_scores(rows, named, {t: v[supervised] for t, v in copied.items()},
                                                           logits, opens)
            if losses is not None and self.cfg.alignment.lambda_gate > 0:
                losses["gate"] = self.answer_pointer.gate_loss(rows, named, targets[supervised])
        if not supervised.any():  # nothing to predict here: a zero that keeps the graph (DDP expects gradients)
            return logits, hidden.sum() * 0.0
        # the loss in fp32; the logits returned in the LM's dtype (bf16 under autocast), pointer or not
        return scores.to(logits.dtype), nn.functional.cross_entropy(scores, targets[supervised])

    # -- inference ----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def attribute_probabilities(self, pixel_values: torch.Tensor, seg_maps: torch.Tensor | None = None
                                ) -> torch.Tensor:
        """The fast path evaluation uses beside generated text: (B, 40) probabilities, no decoding."""
        if self.cooccurrence is None:
            raise ValueError("this model has no attribute head (use_cooccurrence is off)")
        return torch.sigmoid(self.encode_visual(pixel_values, seg_maps)[1]["attributes"])

    @torch.inference_mode()
    def attribute_decisions(self, pixel_values: torch.Tensor, seg_maps: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 40) bool: the attribute head's decisions, as the text reads them (the val-chosen thresholds)."""
        if self.cooccurrence is None:
            raise ValueError("this model has no attribute head (use_cooccurrence is off)")
        return self.face_decisions(FaceEncoding(*self.encode_visual(pixel_values, seg_maps)))["attributes"]

    @torch.inference_mode()
    def fit_attribute_thresholds(self, pixel_values: torch.Tensor, seg_maps: torch.Tensor | None,
                                 attributes: np.ndarray, batch: int = 64) -> np.ndarray:
        """Choose each attribute's decision threshold on these (val) faces (balanced accuracy, as the specialist's;
        0 where they hold too few positives or negatives); returns and keeps them."""
        logits = torch.cat([self.encode_visual(pixel_values[k:k + batch],
                                               None if seg_maps is None else seg_maps[k:k + batch])[1]["attributes"]
                            for k in range(0, len(pixel_values), batch)]).float().numpy()
        out = balanced_thresholds(logits, attributes)
        self.attribute_threshold.copy_(torch.from_numpy(out))
        return out

    @torch.inference_mode()
    def generate(self, input_ids: list[list[int]], pixel_values: torch.Tensor | None,
                 seg_maps: torch.Tensor | None = None, max_new_tokens: int = 32, temperature: float = 0.0,
                 use_cache: bool = True, generator: torch.Generator | None = None, max_loop: int = 12,
                 faces: torch.Tensor | None = None, encoded: FaceEncoding | None = None) -> list[list[int]]:
        """Greedy (temperature 0) or sampled decoding of a batch of prompts (left-padded), with a KV cache.
        No answer says a phrase of up to `max_loop` tokens twice in a row (0: off): a small model's description
        otherwise loops ("has a big nose, has a big nose, ..."). `faces`: each prompt's row of `pixel_values` and
        `seg_maps` (default: a row each), so a face asked many questions goes through the towers once; `encoded`
        (encode_faces) stands for the pixels where the faces were encoded before."""
        pad = self.tokenizer.pad_token_id or 0
        stop = self.chat.stop_ids(self.tokenizer)
        visual, verdicts = encoded if encoded is not None else self.encode_visual(pixel_values, seg_maps)
        # a face asked several questions: the turn's opening and its visual tokens go through the LM once, and
        # each question continues from that cache (the prefix, then each question left-padded after it)
        shared = shared_prefix(input_ids) if use_cache and faces is not None and len(visual) < len(input_ids) else 0
        past = self.prefix_cache(input_ids[0][:shared], visual, verdicts, faces) if shared else None
        longest = max(len(p) - shared for p in input_ids)
        ids = torch.tensor([p[:shared] + [pad] * (longest + shared - len(p)) + p[shared:] for p in input_ids])
        mask = torch.tensor([[1] * shared + [0] * (longest + shared - len(p)) + [1] * (len(p) - shared)
                             for p in input_ids])
        if faces is not None:  # each prompt's face; where its prefix is cached, the text needs only its verdicts
            visual = None if shared else visual[faces]
            verdicts = {name: v[faces] for name, v in verdicts.items()}
        verdicts = self.decided_verdicts(verdicts)  # what the text reads, as in forward outside training
        # the shared prefix lives in the cache alone: what follows it is embedded once per prompt, not the prefix
        embeds = self.embed_text(ids[:, shared:], verdicts) if shared else self.embed(ids, visual, verdicts)
        done = torch.zeros(len(input_ids), dtype=torch.bool)
        outputs: list[list[int]] = [[] for _ in input_ids]
        cached = 0  # how many of embeds' positions (the prompt's from `shared` on) the KV cache holds
        pointer = self.answer_pointer is not None
        so_far = ids  # the prompt and what was generated so far: the pointer reads which task and attribute it names
        hidden = {"output_hidden_states": True} if pointer else {}  # the pointer's gate reads the last hidden state
        for _ in range(max_new_tokens):
            positions = (mask.cumsum(1) - 1).clamp(min=0)
            if use_cache and past is not None:
                out = self.llm(inputs_embeds=embeds[:, cached:], attention_mask=mask,
                               position_ids=positions[:, shared + cached:], past_key_values=past, use_cache=True,
                               logits_to_keep=1, **hidden)
            else:  # the prompt: the next token's logits only, not a vocabulary row per prompt position
                out = self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=use_cache,
                               logits_to_keep=1, **hidden)
            past = out.past_key_values if use_cache else None
            cached = embeds.shape[1]
            logits = out.logits[:, -1].float()
            if pointer:
                named, copied = self.pointer_inputs(so_far, verdicts)
                logits = self.answer_pointer.next_token_scores(out.hidden_states[-1][:, -1], named[:, -1],
                                                               {t: v[:, -1] for t, v in copied.items()}, logits,
                                                               self.answer_pointer.opens(so_far)[:, -1])
            if max_loop:
                for k, seq in enumerate(outputs):
                    banned = [] if done[k] else loop_tokens(seq, max_loop)
                    if banned:
                        logits[k, banned] = float("-inf")
            if temperature > 0:
                token = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator)[:, 0]
            else:
                token = logits.argmax(-1)
            token = token.masked_fill(done, pad)
            for k in range(len(outputs)):
                if not done[k]:
                    outputs[k].append(int(token[k]))
            done |= torch.tensor([int(t) in stop for t in token])
            if done.all():
                break
            so_far = torch.cat([so_far, token[:, None]], dim=1)
            embeds = torch.cat([embeds, self.embed_text(token[:, None], verdicts).to(embeds.dtype)], dim=1)
            mask = torch.cat([mask, torch.ones(len(mask), 1, dtype=mask.dtype)], dim=1)
        return [[t for t in seq if t not in stop] for seq in outputs]

    def prefix_cache(self, prefix: list[int], visual: torch.Tensor, verdicts: dict[str, torch.Tensor],
                     faces: torch.Tensor):
        """The LM's KV cache of the prompts' shared prefix, computed once per face, then one row per prompt."""
        ids = torch.tensor([prefix] * len(visual))
        out = self.llm(inputs_embeds=self.embed(ids, visual, self.decided_verdicts(verdicts)),
                       attention_mask=torch.ones_like(ids), position_ids=torch.arange(len(prefix)).expand_as(ids),
                       use_cache=True, logits_to_keep=1)
        past = out.past_key_values
        past.reorder_cache(faces)
        return past

    def answer(self, images, seg_maps, questions: list[str], **kwargs) -> list[str]:
        """Questions about a batch of uint8 RGB images (and their parsing maps) -> answers as text. A face that comes
        more than once (evaluation asks each face all its questions) is encoded once."""
        maps = seg_maps if seg_maps is not None and self.seg_encoder is not None else None
        first, faces = distinct_faces(images, maps)
        encoded = self.encode_faces([images[k] for k in first], [maps[k] for k in first] if maps is not None else None)
        return self.answer_faces(encoded, faces, questions, **kwargs)

    @torch.inference_mode()
    def encode_faces(self, images, seg_maps=None) -> FaceEncoding:
        """uint8 RGB images (and their parsing maps, where the model reads them) -> what the towers and heads make
        of them, for answer_faces and face_decisions to reuse: a face asked many questions is encoded once."""
        maps = torch.as_tensor(np.stack(seg_maps)) if seg_maps is not None and self.seg_encoder is not None else None
        return FaceEncoding(*self.encode_visual(self.preprocess(images), maps))

    def answer_faces(self, encoded: FaceEncoding, faces: torch.Tensor | list[int] | None, questions: list[str],
                     **kwargs) -> list[str]:
        """Questions about encoded faces (encode_faces) -> answers as text; `faces[k]`: question k's face (default:
        one face each)."""
        # each distinct question is tokenised once (evaluation asks every face the same few)
        asked = {q: self.chat.prompt(self.tokenizer, q, self.image_tokens, self.seg_tokens) for q in set(questions)}
        prompts = [asked[q] for q in questions]
        faces = None if faces is None else torch.as_tensor(faces)
        tokens = self.generate(prompts, None, faces=faces, encoded=encoded, **kwargs)
        return [self.tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]

    def face_decisions(self, encoded: FaceEncoding) -> dict[str, torch.Tensor]:
        """The heads' decisions on encoded faces, as `decide` makes them: "attributes" (B, 40) bool where the model
        has the attribute head, each answer head's class per face (as answer_decisions)."""
        return {name: self.decide(name, v.float() if name == "attributes" else v)
                for name, v in encoded.verdicts.items() if name == "attributes" or name in ANSWER_CLASSES}

