"""Facial-knowledge alignment: the co-occurrence graph network (ML-GCN) and the logical-constraint loss.

Inputs come from `knowledge.json` (pipelines/knowledge.py): the normalised graph D^-1/2 A' D^-1/2
and the rule list. Both become buffers, so a checkpoint carries the knowledge it was trained with.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from model.labels import ANSWER_TASKS, ATTRIBUTE_INDEX, CELEBA_ATTRIBUTES, EXPRESSIONS, UTK_GENDERS, UTK_RACES

EXCLUSION, IMPLICATION = 0, 1
# age as one class a year (0, 1, ..., 98, 99+), each answered with its own number word: the LM copies it as it copies
# "female". The answers write the exact year, so only then is the word handed to the text (a forced label, or the
# head's class) the word the text must write; with five-year classes named by their middle year the LM wrote "39" for
# half the faces (generated MAE 23, the head's 13). The loss spreads each label over its neighbours (AGE_SIGMA).
AGE_EDGES: tuple[int, ...] = tuple(range(1, 100))
AGE_WORDS: tuple[str, ...] = tuple(str(k) for k in range(100))
AGE_SIGMA = 3.0  # years: the soft target's spread (DLDL)
# the single-label tasks the answer heads cover: their class words, as the corpus' answers write them
ANSWER_CLASSES: dict[str, tuple[str, ...]] = dict(zip(ANSWER_TASKS, (UTK_GENDERS, UTK_RACES, EXPRESSIONS, AGE_WORDS),
                                                       strict=True))
# the words that name each task in the templates' questions ("What is this person's gender?", "How does this
# person feel ...", "How old is ...") and answers ("the expression is"): there the head's answer word is written
ANSWER_KEYS: dict[str, tuple[str, ...]] = {"gender": ("gender",), "race": ("race",),
                                           "expression": ("expression", "feel"), "age": ("old", "age")}
# the words that name each attribute in the templates' questions and clauses ("Is this person's hair black?", "has
# black hair"): one or more key phrases an attribute; all words of a phrase within the last few tokens link the
# last of them to it (AttributeLinker). A colour needs "hair" beside it (the background questions name colours too)
ATTRIBUTE_KEYS: dict[str, tuple[str, ...]] = {
    "5_o_Clock_Shadow": ("shadow",), "Arched_Eyebrows": ("arched",), "Attractive": ("attractive",),
    "Bags_Under_Eyes": ("bags",), "Bald": ("bald",), "Bangs": ("bangs",), "Big_Lips": ("big lips",),
    "Big_Nose": ("big nose",), "Black_Hair": ("black hair",), "Blond_Hair": ("blond hair",),
    "Blurry": ("blurry", "sharp photo"), "Brown_Hair": ("brown hair",), "Bushy_Eyebrows": ("bushy",),
    "Chubby": ("chubby",), "Double_Chin": ("double chin",), "Eyeglasses": ("eyeglasses",), "Goatee": ("goatee",),
    "Gray_Hair": ("gray hair",), "Heavy_Makeup": ("makeup",), "High_Cheekbones": ("cheekbones",),
    "Male": ("male", "female"), "Mouth_Slightly_Open": ("mouth open", "mouth closed"), "Mustache": ("mustache",),
    "Narrow_Eyes": ("narrow",), "No_Beard": ("beardless", "beard"), "Oval_Face": ("oval",), "Pale_Skin": ("pale",),
    "Pointy_Nose": ("pointy",), "Receding_Hairline": ("receding",), "Rosy_Cheeks": ("rosy",),
    "Sideburns": ("sideburns",), "Smiling": ("smiling",), "Straight_Hair": ("straight hair",),
    "Wavy_Hair": ("wavy",), "Wearing_Earrings": ("earrings",), "Wearing_Hat": ("hat",),
    "Wearing_Lipstick": ("lipstick",), "Wearing_Necklace": ("necklace",), "Wearing_Necktie": ("necktie",),
    "Young": ("young",)}
# key phrases that name their attribute's absence ("Is this person female?" is yes where Male is false): the answer
# pointer's yes/no copy reads them with the verdict's sign turned
NEGATED_KEYS: frozenset[str] = frozenset({"female", "mouth closed", "beard", "sharp photo"})
# the words a yes/no answer opens with, absent then present: what the answer pointer copies an attribute verdict into
VERDICT_WORDS: tuple[str, ...] = ("No", "Yes")
# tasks whose labels are values, not classes: the bins' upper edges (a label in years -> its class)
ANSWER_BINS: dict[str, tuple[int, ...]] = {"age": AGE_EDGES}


def class_pooling(scores: torch.Tensor, lam: float) -> torch.Tensor:
    """Per-token class scores (B, N, C) -> logits (B, C): their mean (the score of the mean token) plus `lam` times
    their max over tokens (CSRA, Zhu & Wu 2021), so a class can answer from the few tokens that show it (a hat, the
    mouth's corners) instead of a mean over every token of the face and its background."""
    return scores.mean(1) + lam * scores.amax(1) if lam else scores.mean(1)


def label_classes(task: str, labels: torch.Tensor, edges: torch.Tensor | None = None) -> torch.Tensor:
    """A task's labels as class indices (-1 stays unknown): values (age in years) fall into their bin (`edges`:
    ANSWER_BINS[task], given as a tensor where it lives on the labels' device already)."""
    if task not in ANSWER_BINS:
        return labels
    edges = edges if edges is not None else torch.tensor(ANSWER_BINS[task], dtype=torch.float32, device=labels.device)
    binned = torch.bucketize(labels.float(), edges, right=True)
    return torch.where(labels >= 0, binned, torch.full_like(binned, -1))


def median_class(logits: torch.Tensor) -> torch.Tensor:
    """An ordered task's decision: the median class of its distribution, the estimate with the least expected
    absolute error."""
    return (torch.softmax(logits.float(), -1).cumsum(-1) >= 0.5).int().argmax(-1)


def answer_value(task: str, classes: np.ndarray) -> np.ndarray:
    """The answer heads' class indices -> the label they stand for (age: the class's year; others: as is)."""
    return np.array([int(w) for w in ANSWER_CLASSES[task]])[classes] if task in ANSWER_BINS else classes


class CooccurrenceGraph(nn.Module):
    """Two graph-convolution layers turn attribute text embeddings into one classifier per attribute.

    H1 = LeakyReLU(A E W1), C = A H1 W2, logits = v C^T for a pooled visual feature v (ML-GCN).
    """

    def __init__(self, adjacency: torch.Tensor, text_dim: int, hidden: int, visual_dim: int):
        super().__init__()
        self.register_buffer("adjacency", adjacency.float().clone())
        self.w1 = nn.Linear(text_dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, visual_dim, bias=False)

    def classifiers(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        """(N, text_dim) -> (N, visual_dim)."""
        text_embeddings = text_embeddings.to(self.w1.weight.dtype)
        a = self.adjacency.to(text_embeddings.dtype)
        h = F.leaky_relu(a @ self.w1(text_embeddings), 0.2)
        return a @ self.w2(h)

    def forward(self, text_embeddings: torch.Tensor, visual: torch.Tensor, lam: float = 0.0) -> torch.Tensor:
        """(N, text_dim), visual tokens (B, T, visual_dim) -> logits (B, N), pooled by `class_pooling`."""
        return class_pooling(visual @ self.classifiers(text_embeddings).to(visual.dtype).T, lam)


class KnowledgeTokens(nn.Module):
    """The co-occurrence head's probabilities as LLM input tokens, so the LM reads the aligned knowledge.

    per_attribute: token i = attribute i's name embedding + a learned slot + its probability's projection,
    so the words of a question ("wearing lipstick") can attend to the one token that answers it (a pooled
    token of all 40 left the tiny LM to learn a 40-way lookup from a few dozen answer tokens a step).
    pooled: one token, the 40 probabilities through a linear layer.
    """

    def __init__(self, mode: str, num_attributes: int, width: int):
        super().__init__()
        self.mode = mode
        if mode == "pooled":
            self.proj = nn.Linear(num_attributes, width)
        else:
            # at the embeddings' scale (Llama's init, std 0.02): a default Linear(1, w) draws ~0.5, many times the
            # names' scale (measured: no better readout either way at 300 steps, benchmarks/RESULTS.md)
            self.value = nn.Linear(1, width)
            nn.init.normal_(self.value.weight, std=0.02)
            nn.init.zeros_(self.value.bias)
            self.slot = nn.Parameter(torch.randn(num_attributes, width) * 0.02)
        self.count = 1 if mode == "pooled" else num_attributes

    def forward(self, probs: torch.Tensor, names: torch.Tensor) -> torch.Tensor:
        """(B, N) probabilities, (N, width) name embeddings -> (B, count, width)."""
        weight = self.proj.weight if self.mode == "pooled" else self.value.weight
        probs = probs.to(weight.dtype)
        if self.mode == "pooled":
            return self.proj(probs)[:, None]
        signed = (2 * probs - 1)[..., None]  # -1 absent ... +1 present: the sign is the answer
        return names.to(weight.dtype)[None] + self.slot[None] + self.value(signed)


class KnowledgeEmbedding(nn.Module):
    """The head's verdicts written into the words that name them (KnowBert's entity-linked embeddings, with the
    40 attribute names as the knowledge base): each text embedding is matched to the attribute names by cosine
    similarity (a null entry at a fixed similarity for words that name none), and the matched attributes' signed
    probabilities move it along one learned direction. A question's "lipstick" then says whether the face wears
    it, and the answer needs one attention hop back to its question, not a lookup among visual tokens. Fed true
    labels, the tiny LM answered yes/no 0.94 right after 300 steps with it, 0.57 with per-attribute tokens alone
    (benchmarks/RESULTS.md)."""

    def __init__(self, width: int, scale: float = 10.0, threshold: float = 0.5, exact: bool = False):
        super().__init__()
        if not exact:  # exact: the links come from AttributeLinker and nothing here matches
            self.query = nn.Linear(width, width, bias=False)
            self.key = nn.Linear(width, width, bias=False)
            nn.init.eye_(self.query.weight)  # start as plain cosine similarity of the embeddings
            nn.init.eye_(self.key.weight)
        self.scale = scale  # a sharp match: a name's own word at cosine ~0.7 takes most of the weight
        # the null entry's similarity: a word names an attribute only above it ("lipstick" ~0.7 to its name), so
        # the other words ("gender") stay as they are instead of carrying an average of all 40 verdicts
        self.threshold = threshold
        self.present = nn.Parameter(torch.randn(width) * 0.02)  # the embeddings' scale; 0.1 read no better

    def forward(self, embeds: torch.Tensor, names: torch.Tensor, probs: torch.Tensor,
                links: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, W) embeddings, (N, W) names, (B, N) probabilities -> (B, T, W) embeddings with the verdicts;
        `links` (B, T, N), AttributeLinker's, stand for the soft match where given."""
        dtype = self.present.dtype
        if links is not None:
            match = links.to(dtype)
        else:
            q = F.normalize(self.query(embeds.to(dtype)), dim=-1)
            k = F.normalize(self.key(names.to(dtype)), dim=-1)
            similarity = q @ k.T
            null = torch.full_like(similarity[..., :1], self.threshold)
            match = torch.softmax(self.scale * torch.cat([similarity, null], -1), dim=-1)[..., :-1]  # (B, T, N)
        signed = (2 * probs.to(dtype) - 1)[:, None, :]  # -1 absent ... +1 present
        verdict = (match * signed).sum(-1, keepdim=True)
        return embeds + (verdict * self.present).to(embeds.dtype)


class AttributeLinker(nn.Module):
    """Exact entity linking for the knowledge embedding: position t names attribute a where t holds a token of one of
    a's key phrases and all of that phrase's tokens have appeared within the last `window` tokens, t included. Causal,
    so a word is linked from what precedes it, as in generation ("hair ... black" links "black"; "black hair" links
    "hair")."""

    def __init__(self, phrases: list[list[list[int]]], window: int = 6, negated: list[list[bool]] | None = None,
                 persistent: bool = True):
        """phrases: per attribute, its key phrases' token ids; `negated`: per phrase, whether it names the
        attribute's absence (for `signed`); `persistent`: whether the tables are saved with the weights (a table
        built from the tokenizer at construction need not be)."""
        super().__init__()
        tokens = sorted({t for attribute in phrases for ids in attribute for t in ids})
        rows = [(a, ids) for a, attribute in enumerate(phrases) for ids in attribute]
        negated = negated or [[False] * len(attribute) for attribute in phrases]
        signs = [s for attribute in negated for s in attribute]
        member = torch.zeros(len(rows), len(tokens))
        owner = torch.zeros(len(rows), len(phrases))
        for r, (a, ids) in enumerate(rows):
            owner[r, a] = 1.0
            for t in ids:
                member[r, tokens.index(t)] = 1.0
        self.register_buffer("tokens", torch.tensor(tokens, dtype=torch.long), persistent=persistent)
        self.register_buffer("member", member, persistent=persistent)  # (phrases, key tokens)
        self.register_buffer("owner", owner, persistent=persistent)  # (phrases, attributes)
        self.register_buffer("sign", 1.0 - 2.0 * torch.tensor(signs, dtype=torch.float32), persistent=False)
        self.window = window

    def phrase_links(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, phrases) 0/1: the phrases completed at each position."""
        present = (input_ids[..., None] == self.tokens).to(self.member.dtype)  # (B, T, K); the tables' dtype
        seen = F.max_pool1d(F.pad(present.transpose(1, 2), (self.window, 0)), self.window + 1, stride=1)
        complete = seen.transpose(1, 2) @ self.member.T >= self.member.sum(1)  # every token of the phrase seen
        at_key = present @ self.member.T > 0
        return (complete & at_key).float()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, attributes) 0/1 links."""
        return (self.phrase_links(input_ids) @ self.owner).clamp(max=1.0)

    def signed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, attributes) links in {-1, 0, 1}: -1 where the phrase names the absence."""
        return (self.phrase_links(input_ids) @ (self.owner * self.sign[:, None])).clamp(-1.0, 1.0)


class AnswerEmbedding(nn.Module):
    """Heads for the single-label tasks (gender, race, expression, age in bins) on the visual tokens, read
    as the knowledge embedding reads the attribute head: the words of a text that name a task ("gender") carry the
    embedding of the head's answer word, E(word_argmax). The LM's output layer is tied to its embeddings, so the
    answer is one copy from the question away. An open gender or expression question has
    no attribute name to carry a verdict, and the LM alone did not learn them from visual tokens (gender 0.08,
    expression at the one-answer level in the default run before these heads)."""

    def __init__(self, width: int, word_ids: dict[str, list[list[int]]], key_ids: dict[str, list[int]],
                 class_weights: dict[str, torch.Tensor]):
        super().__init__()
        self.tasks = tuple(word_ids)
        self.heads = nn.ModuleDict({t: nn.Linear(width, len(word_ids[t])) for t in self.tasks})
        for t in self.tasks:
            longest = max(map(len, word_ids[t]))
            self.register_buffer(f"{t}_word_ids", torch.tensor([i + [0] * (longest - len(i)) for i in word_ids[t]]))
            self.register_buffer(f"{t}_word_mask", torch.tensor([[1] * len(i) + [0] * (longest - len(i))
                                                                 for i in word_ids[t]], dtype=torch.float32))
            self.register_buffer(f"{t}_keys", torch.tensor(sorted(set(key_ids[t])), dtype=torch.long))
            self.register_buffer(f"{t}_class_weight", class_weights[t].float().clone())
            if t in ANSWER_BINS:
                self.register_buffer(f"{t}_edges", torch.tensor(ANSWER_BINS[t], dtype=torch.float32))

    def classes(self, task: str, labels: torch.Tensor) -> torch.Tensor:
        """A task's labels as class indices (-1 stays unknown): values (age in years) fall into their bin."""
        return label_classes(task, labels, getattr(self, f"{task}_edges", None))

    def forward(self, visual: torch.Tensor, lam: float = 0.0) -> dict[str, torch.Tensor]:
        """Visual tokens (B, T, width) -> logits per task, (B, classes), pooled by `class_pooling`."""
        return {t: class_pooling(head(visual.to(head.weight.dtype)), lam) for t, head in self.heads.items()}

    def words(self, table: nn.Module, task: str) -> torch.Tensor:
        """(classes, width): each class word's mean token embedding."""
        emb = table(getattr(self, f"{task}_word_ids"))
        mask = getattr(self, f"{task}_word_mask").to(emb.dtype)
        return (emb * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)

    def write(self, embeds: torch.Tensor, input_ids: torch.Tensor, table: nn.Module,
              logits: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T, W) embeddings of `input_ids`: the words naming a task gain the head's answer word. The word of
        the head's top class, not the probability-weighted mix: a mix of seven expression words read as none of
        them (generated UAR 0.143, the head's 0.211, at 1,000 steps), and forced true classes are one word too."""
        for task, task_logits in logits.items():
            names_task = torch.isin(input_ids, getattr(self, f"{task}_keys")).unsqueeze(-1)
            # looked up even where no word names the task: under ZeRO-3 every rank must call the same modules in
            # the same order, or their parameter all-gathers differ in size and gloo aborts the process
            answer = self.words(table, task)[task_logits.argmax(-1)]  # (B, W)
            embeds = embeds + (names_task * answer[:, None]).to(embeds.dtype)
        return embeds

    def loss(self, logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class-weighted cross-entropy per task over the faces with that label (-1: unknown), summed."""
        total = sum(task_logits.sum() * 0.0 for task_logits in logits.values())
        for task, task_logits in logits.items():
            y = labels.get(task)
            if y is None or not (y >= 0).any():
                continue
            y = self.classes(task, y)
            known = y >= 0
            if task in ANSWER_BINS:  # ordered classes: a neighbour of the true bin is less wrong than a far one
                soft = ordinal_targets(y[known], task_logits.shape[-1], AGE_SIGMA)
                total = total + F.cross_entropy(task_logits[known].float(), soft)
                continue
            total = total + F.cross_entropy(task_logits[known].float(), y[known].long(),
                                            weight=getattr(self, f"{task}_class_weight"))
        return total


class AnswerPointer(nn.Module):
    """Copies the answer heads' classes into the LM's next-token logits (pointer-generator style, See et al. 2017).

    The answer embedding leaves the copy to the LM, which learned it class by class: in the sixth default run it wrote
    "Neutral" for 45 of the 50 faces its expression head called Sadness. Here, at every position of a text in which a
    word has named the task in the current question turn ("expression", "feel", "old", ...), a learned gate on the
    LM's hidden state brings in the head's class distribution on the first token of each class's word (both forms the
    answers write: "Happiness" and " Happiness"). `form` add: g = softplus(w . h + b) >= 0 adds g x (log p_c + log C)
    to those logits (zero for an unsure head, up to g x log C for the class it is sure of). `form` mix (pointer-
    generator proper, next_token_scores): the gate's weight mixes the head's distribution with the LM's, so an open
    gate writes a class word whatever the LM prefers. The gate learns where an answer starts; the copy is the head's,
    so a class the LM rarely saw answered is written as readily as a frequent one. A token shared by two classes'
    words gains both terms.

    With a `linker` (AttributeLinker), yes/no answers about attributes are one more task, "attributes": where the
    turn has named an attribute ("Is this person wearing a hat?"), its verdict (the attribute head's logit, sign
    turned for a phrase that names the absence: "female") is copied into "No" / "Yes". The twelfth default run's
    yes/no text read its head 0.026 below the head's own decisions, and never said yes to Gray_Hair (head 0.93)."""

    def __init__(self, width: int, tasks: tuple[str, ...], first_ids: dict[str, list[list[int]]],
                 key_ids: dict[str, list[int]], turn_id: int | None = None, form: str = "add",
                 linker: AttributeLinker | None = None, answer_opening: list[int] | None = None):
        super().__init__()
        self.linker = linker
        if linker is not None:  # the yes/no verdict: its words' first tokens come in first_ids["attributes"]
            tasks = (*tasks, "attributes")
        self.tasks = tasks
        self.form = form  # add: the copy's scores added to the LM's logits; mix: a mixture of the two distributions
        self.gate = nn.Linear(width, len(tasks))
        nn.init.zeros_(self.gate.weight)
        # a small pull until the gate has learned: softplus(-2) = 0.13 (add), a mixture weight of 0.12 (mix)
        nn.init.constant_(self.gate.bias, -2.0)
        for t in tasks:
            self.register_buffer(f"{t}_first", torch.tensor(first_ids[t], dtype=torch.long))  # (classes, forms)
            self.register_buffer(f"{t}_keys", torch.tensor(sorted(set(key_ids.get(t, []))), dtype=torch.long))
        # the token that opens a question turn closes the previous question's scope: a conversation asks ~20 things,
        # and an expression question's word must not open the gate on the yes/no answers of the turns after it
        # (not persistent: the chat template's, as the model is built)
        self.register_buffer("turn_ids", torch.tensor([] if turn_id is None else [turn_id], dtype=torch.long),
                             persistent=False)
        # the tokens after which an answer's text starts (the chat template's assistant opening): a class word there
        # is written without its leading space ("female."), anywhere else with it (" female,"); the copy goes on that
        # form alone. Split evenly, the two forms tied wherever the gate was open and rounding chose: the twentieth
        # run wrote " female" and the LM went on with a sentence (benchmarks/RESULTS.md, twenty-first pass). Without
        # it (None) the split is even. A Python tuple, not a buffer: `opens` reads it per call, with no device sync.
        self.answer_opening = tuple(answer_opening or ())

    def named(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, tasks): whether a word naming each task stands at or before each position
        within its turn (after the last token that opens one); for "attributes", a phrase naming an attribute."""
        return self.scopes(input_ids)[0]

    def scopes(self, input_ids: torch.Tensor, attribute_logits: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, T) token ids -> `named` (B, T, tasks) and, given the attribute head's (B, attributes) logits and a
        linker, the (B, T, 2) logits of "No" / "Yes": at each position the verdict on the attribute last named (0
        where none is), its sign turned by a negated phrase, so softmax gives (1 - p, p); else None. One pass over
        the ids serves both (the links are the costly part)."""
        pos = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        opened = torch.where(torch.isin(input_ids, self.turn_ids), pos, -1).cummax(1).values
        last = {t: torch.where(torch.isin(input_ids, getattr(self, f"{t}_keys")), pos, -1).cummax(1).values
                for t in self.tasks if t != "attributes"}
        verdict = None
        if self.linker is not None:
            links = self.linker.signed(input_ids)
            last["attributes"] = linked = torch.where(links.abs().sum(-1) > 0, pos, -1).cummax(1).values
            if attribute_logits is not None:
                at = links.float().gather(1, linked.clamp(min=0)[..., None].expand_as(links)) * (linked >= 0)[..., None]
                v = (at * attribute_logits[:, None].float()).sum(-1) / at.abs().sum(-1).clamp(min=1)
                verdict = torch.stack([torch.zeros_like(v), v], -1)
        return torch.stack([last[t] > opened for t in self.tasks], -1), verdict

    def opens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(..., T) token ids -> (..., T) bool: whether the next token is an answer's first (the assistant opening's
        whole sequence ends at this position; its last token alone, ":" in "ASSISTANT:", occurs in text too)."""
        seq = self.answer_opening
        out = torch.zeros_like(input_ids, dtype=torch.bool)
        if not seq or input_ids.shape[-1] < len(seq):
            return out
        k, t = len(seq), input_ids.shape[-1]
        hit = torch.ones_like(input_ids[..., k - 1:], dtype=torch.bool)
        for j, token in enumerate(seq):  # position p ends the opening where p - (k - 1 - j) holds seq[j]
            hit &= input_ids[..., j:t - k + 1 + j] == token
        out[..., k - 1:] = hit
        return out

    def forms(self, task: str, opens: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Where a task's copy goes: (N, classes x forms) token ids and each one's share of its class. With `opens`
        (N,) bool, the one form the position writes (the first, which opens an answer, or the second, inside a
        sentence); without, every form, evenly."""
        first = getattr(self, f"{task}_first")  # (classes, forms)
        if opens is None or not self.answer_opening:
            n = len(opens) if opens is not None else 1
            return first.flatten().expand(n, -1), torch.full((1, first.numel()), 1.0 / first.shape[1],
                                                             device=first.device)
        chosen = torch.where(opens[:, None], first[:, 0], first[:, -1])  # (N, classes)
        return chosen, torch.ones(1, first.shape[0], device=first.device)

    def bias(self, hidden: torch.Tensor, named: torch.Tensor, logits: dict[str, torch.Tensor],
             vocab: int, opens: torch.Tensor | None = None) -> torch.Tensor:
        """hidden (N, W), named (N, tasks), the heads' logits per task (N, classes; entries of other heads are ignored)
        -> (N, vocab) additions. `opens`: as in `forms`."""
        gate = F.softplus(self.gate(hidden.to(self.gate.weight.dtype)).float()) * named.float()
        out = torch.zeros(hidden.shape[0], vocab, dtype=torch.float32, device=hidden.device)
        for k, t in enumerate(self.tasks):
            ids, _ = self.forms(t, opens)
            scores = torch.log_softmax(logits[t].float(), -1) + math.log(logits[t].shape[-1])
            add = (gate[:, k:k + 1] * scores).repeat_interleave(ids.shape[1] // scores.shape[1], 1)
            out.scatter_add_(1, ids.expand(len(out), -1), add)
        return out

    def gate_loss(self, hidden: torch.Tensor, named: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """hidden (N, W), named (N, tasks), the next tokens (N,) -> BCE of each named task's gate against whether the
        next token opens one of its class words: the gate learns where a copy is due even where the LM, reading the
        true labels verdict forcing hands it in training, is already sure (the thirteenth default run's yes/no gate
        closed at -7 so: the mixture's loss gave it no reason to open)."""
        a = self.gate(hidden.to(self.gate.weight.dtype)).float()
        due = torch.stack([torch.isin(targets, getattr(self, f"{t}_first").flatten()) for t in self.tasks], -1)
        if not named.any():  # a zero that keeps the graph (DDP expects gradients)
            return a.sum() * 0.0
        return F.binary_cross_entropy_with_logits(a[named], due[named].float())

    def next_token_scores(self, hidden: torch.Tensor, named: torch.Tensor, logits: dict[str, torch.Tensor],
                          lm_logits: torch.Tensor, opens: torch.Tensor | None = None) -> torch.Tensor:
        """hidden (N, W), named (N, tasks), the heads' logits per task (N, classes), the LM's (N, vocab) -> the (N,
        vocab) fp32 scores the next token is read from. `add`: the LM's logits plus `bias`. `mix` (pointer-generator
        proper): log of pi_0 p_LM + sum_k pi_k p_copy_k, pi = softmax(0, the gate's a_k where task k is named), p_copy_k
        the head's class probabilities on its words' first tokens (split between a word's two forms). An open gate
        then writes a class word whatever the LM prefers (a sentence start the LM learned from another question), and
        where no task is named the scores are the LM's own log-probabilities. `opens` (N,): whether the next token
        opens an answer, which decides the form a class word is copied in (`forms`)."""
        if self.form == "add":
            return lm_logits.float() + self.bias(hidden, named, logits, lm_logits.shape[-1], opens)
        gate = self.gate(hidden.to(self.gate.weight.dtype)).float().masked_fill(~named, float("-inf"))
        log_pi = torch.log_softmax(torch.cat([torch.zeros_like(gate[:, :1]), gate], -1), -1)
        parts = [log_pi[:, 0:1] + torch.log_softmax(lm_logits.float(), -1)]
        for k, t in enumerate(self.tasks):
            ids, share = self.forms(t, opens)
            p = torch.softmax(logits[t].float(), -1)
            p = p.repeat_interleave(ids.shape[1] // p.shape[1], 1) * share.to(p.device)
            copy = torch.zeros_like(parts[0]).scatter_add_(1, ids.expand(len(p), -1), p)  # tokens shared: summed
            # -inf off the class words, without log(0) in the graph (its gradient, 0 / 0, would be NaN)
            parts.append(log_pi[:, k + 1:k + 2] + torch.where(copy > 0, copy.clamp_min(1e-30).log(), float("-inf")))
        return torch.logsumexp(torch.stack(parts), 0)


def balanced_thresholds(logits: np.ndarray, truth: np.ndarray, min_count: int = 5) -> np.ndarray:
    """(N, A) attribute logits and 0/1 labels of the same (val) faces -> per attribute, the logit threshold that
    maximises balanced accuracy (the middle of the best plateau, not its edge); 0 where the faces hold fewer than
    `min_count` positives or negatives (too few to choose from)."""
    out = np.zeros(truth.shape[1], np.float32)
    for j in range(truth.shape[1]):
        pos, neg = logits[truth[:, j] == 1, j], logits[truth[:, j] == 0, j]
        if len(pos) < min_count or len(neg) < min_count:
            continue
        cands = np.unique(np.concatenate([[0.0], logits[:, j]]))
        # the share of positives above and of negatives at or below each candidate, all at once (sorted counts)
        above = len(pos) - np.searchsorted(np.sort(pos), cands, side="right")
        below = np.searchsorted(np.sort(neg), cands, side="right")
        bal = 0.5 * (above / len(pos) + below / len(neg))
        best = np.flatnonzero(np.isclose(bal, bal.max()))
        out[j] = float(np.median(cands[best]))
    return out


def ordinal_targets(classes: torch.Tensor, n: int, sigma: float = 1.0) -> torch.Tensor:
    """Soft targets for ordered classes: a Gaussian over the class index around the true one (DLDL, Gao et al. 2017)."""
    d = torch.arange(n, device=classes.device)[None].float() - classes[:, None].float()
    return torch.softmax(-0.5 * (d / sigma) ** 2, dim=-1)


def class_weights(counts: list[int] | None, classes: int, max_weight: float = 20.0) -> torch.Tensor:
    """n / (classes x count) per class (1 where unknown), clipped: rare classes count as much as common ones."""
    if not counts or sum(counts) == 0:
        return torch.ones(classes)
    c = torch.tensor(counts, dtype=torch.float32)
    weight = torch.where(c > 0, c.sum() / (classes * c.clamp(min=1)), torch.ones_like(c))
    return weight.clamp(1 / max_weight, max_weight)


def gender_from_attributes(attributes: list[int] | None) -> int:
    """A CelebA-labelled face's gender in UTKFace's coding (0 male, 1 female) from its Male attribute; -1 unknown:
    the gender head learns from both datasets' faces."""
    if not attributes:
        return -1
    return 0 if attributes[ATTRIBUTE_INDEX["Male"]] > 0 else 1


def rules_tensor(rules: list[dict[str, Any]]) -> torch.Tensor:
    """knowledge.json rules -> (R, 3) long tensor of (kind, a, b)."""
    index = {name: i for i, name in enumerate(CELEBA_ATTRIBUTES)}
    rows = [(EXCLUSION if r["kind"] == "exclusion" else IMPLICATION, index[r["a"]], index[r["b"]]) for r in rules]
    return torch.tensor(rows, dtype=torch.long).reshape(-1, 3)


def constraint_loss(probs: torch.Tensor, rules: torch.Tensor) -> torch.Tensor:
    """Mean over faces and rules of p_a * p_b (exclusions) and p_a * (1 - p_b) (implications).

    Zero exactly when the predictions obey every rule with hard 0/1 probabilities; its gradient
    lowers p_a and p_b for a violated exclusion, lowers p_a and raises p_b for a violated implication.
    """
    if rules.numel() == 0:
        return probs.sum() * 0.0
    kind, a, b = rules[:, 0], rules[:, 1], rules[:, 2]
    pa, pb = probs[:, a], probs[:, b]
    penalty = torch.where(kind == EXCLUSION, pa * pb, pa * (1 - pb))
    return penalty.mean()


def masked_bce(logits: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-label BCE over faces that have attribute labels (rows of -1 are faces without them); `pos_weight`
    (per attribute, negatives / positives) makes a rare attribute's positives count as much as its negatives."""
    known = labels >= 0
    if not known.any():
        return logits.sum() * 0.0
    per = F.binary_cross_entropy_with_logits(logits, labels.clamp(min=0).to(logits.dtype), reduction="none",
                                             pos_weight=None if pos_weight is None else pos_weight.to(logits.dtype))
    return (per * known).sum() / known.sum()


def attribute_pos_weight(counts: list[int] | None, n_train: int | None, max_weight: float = 20.0) -> torch.Tensor:
    """negatives / positives per attribute from knowledge.json's label counts (1 where unknown), clipped."""
    if counts is None or not n_train:
        return torch.ones(len(CELEBA_ATTRIBUTES))
    pos = torch.tensor(counts, dtype=torch.float32)
    weight = torch.where(pos > 0, (n_train - pos) / pos.clamp(min=1), torch.ones_like(pos))
    return weight.clamp(1 / max_weight, max_weight)
