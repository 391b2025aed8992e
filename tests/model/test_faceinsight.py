"""FaceInsight with the tiny backbones: fusion, losses, generation, recipes, ablations, checkpoints, learning."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import pytest
import torch

from model.chat import IGNORE
from model.config import RECIPES, AlignmentConfig
from model.faceinsight import FaceInsight, shared_prefix
from model.tokenizer import IMAGE_TOKEN_ID, SEG_TOKEN_ID
from tests.model.conftest import SMALL


def batch(model: FaceInsight, conversations: list[list[dict]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded training batch of real corpus conversations with random images and maps."""
    encoded = [model.chat.encode(model.tokenizer, c, model.image_tokens, model.seg_tokens) for c in conversations]
    longest = max(len(ids) for ids, _ in encoded)
    pad = model.tokenizer.pad_token_id
    g = torch.Generator().manual_seed(seed)
    side = model.cfg.vision.image_size
    return {
        "input_ids": torch.tensor([ids + [pad] * (longest - len(ids)) for ids, _ in encoded]),
        "labels": torch.tensor([lab + [IGNORE] * (longest - len(lab)) for _, lab in encoded]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (longest - len(ids)) for ids, _ in encoded]),
        "pixel_values": torch.rand(len(encoded), 3, side, side, generator=g),
        "seg_maps": torch.randint(0, 19, (len(encoded), side, side), generator=g),
        "attribute_labels": torch.randint(0, 2, (len(encoded), 40), generator=g),
        "answer_labels": {"gender": torch.randint(0, 2, (len(encoded),), generator=g),
                          "race": torch.randint(0, 5, (len(encoded),), generator=g),
                          "expression": torch.tensor([-1] + [3] * (len(encoded) - 1)),  # -1: no label
                          "age": torch.randint(0, 100, (len(encoded),), generator=g)},  # years
    }


@pytest.fixture
def model(tokenizer, knowledge) -> FaceInsight:
    torch.manual_seed(0)
    return FaceInsight(SMALL, tokenizer, knowledge)


def test_shapes_fusion_and_loss_terms(model, conversations):
    b = batch(model, conversations[:3])
    visual = model.visual_tokens(b["pixel_values"], b["seg_maps"])
    # the image's patches, then the knowledge token (the head's 40 probabilities, projected), then the map's
    assert model.image_tokens == (32 // 8) ** 2 + 1 and model.seg_tokens == (32 // 16) ** 2
    probs = model.attribute_probabilities(b["pixel_values"], b["seg_maps"])
    with torch.no_grad():
        assert torch.allclose(visual[:, (32 // 8) ** 2], model.knowledge_tokens.proj(probs.clone()), atol=1e-5)
    assert visual.shape == (3, model.image_tokens + model.seg_tokens, model.llm.config.hidden_size)
    embeds = model.embed(b["input_ids"], visual)
    positions = (b["input_ids"] == IMAGE_TOKEN_ID) | (b["input_ids"] == SEG_TOKEN_ID)
    assert torch.equal(embeds[positions], visual.reshape(-1, visual.shape[-1]))  # the visual tokens, in order
    assert torch.equal(embeds[~positions], model.llm.get_input_embeddings()(b["input_ids"][~positions]))
    with torch.no_grad():  # with the head's logits the words carry its verdicts (the knowledge embedding)
        logits = torch.logit(probs.clone())
        informed = model.embed(b["input_ids"], visual, {"attributes": logits})
    assert torch.equal(informed[positions], embeds[positions]) and not torch.allclose(informed, embeds)
    out = model(**b)
    supervised = int((b["labels"][:, 1:] != IGNORE).sum())  # logits only where a label is predicted
    assert out.logits.shape == (supervised, len(model.tokenizer)) and out.logits.dtype == torch.float32
    unlabelled = {k: v for k, v in b.items() if k != "labels"}
    assert model(**unlabelled).logits.shape == (*b["input_ids"].shape, len(model.tokenizer))
    assert set(out.losses) == {"lm", "bce", "answer", "constraint", "gate"} and out.attribute_logits.shape == (3, 40)
    assert {t: v.shape for t, v in out.answer_logits.items()} == {"gender": (3, 2), "race": (3, 5),
                                                                  "expression": (3, 7), "age": (3, 100)}
    weights = SMALL.alignment
    total = out.losses["lm"] + weights.lambda_bce * (out.losses["bce"] + out.losses["answer"]) + \
        weights.lambda_constraint * out.losses["constraint"] + weights.lambda_gate * out.losses["gate"]
    assert torch.isclose(out.loss, total)
    with pytest.raises(ValueError, match="visual placeholders"):
        model.embed(b["input_ids"][:, :-1][:, 1:], visual[:1])


def verdict_shift(model: FaceInsight, ids: torch.Tensor, attribute: int) -> torch.Tensor:
    """(1, T) token ids -> (T,) how far each token's embedding moves when the head turns from sure-absent to
    sure-present on `attribute` (all others sure-absent)."""
    absent, present = torch.full((1, 40), -6.0), torch.full((1, 40), -6.0)
    present[0, attribute] = 6.0
    with torch.no_grad():
        return (model.embed_text(ids, {"attributes": present}) -
                model.embed_text(ids, {"attributes": absent})).norm(dim=-1)[0]


def with_alignment(model: FaceInsight, **changes) -> FaceInsight:
    """A SMALL model with `changes` to its alignment config, on the same tokenizer and co-occurrence graph."""
    graph = {"graph": {"normalized": model.cooccurrence.adjacency.tolist()}, "rules": []}
    return FaceInsight(dataclasses.replace(SMALL, alignment=dataclasses.replace(SMALL.alignment, **changes)),
                       model.tokenizer, graph)


def test_the_attribute_weight_scales_the_attribute_bce_alone(model, conversations):
    b = batch(model, conversations[:3])
    out = model(**b, visual_only=True)
    heavier = dataclasses.replace(SMALL, alignment=dataclasses.replace(SMALL.alignment, attribute_weight=10.0))
    model.cfg = heavier
    again = model.output(out.losses, None, {})
    a = SMALL.alignment
    assert torch.isclose(again.loss - out.loss, a.lambda_bce * 9.0 * out.losses["bce"])
    with pytest.raises(ValueError, match="attribute_weight"):
        AlignmentConfig(attribute_weight=0.0)


def test_knowledge_embedding_moves_the_word_that_names_an_attribute(model):
    """' lipstick' names Wearing_Lipstick: its embedding moves with that probability; ' the' names none and moves
    far less; per_attribute knowledge tokens are one token an attribute."""
    from model.labels import CELEBA_ATTRIBUTES

    words = [model.tokenizer(w, add_special_tokens=False)["input_ids"] for w in (" lipstick", " the")]
    ids = torch.tensor([[w[-1] for w in words]])
    shift = verdict_shift(model, ids, CELEBA_ATTRIBUTES.index("Wearing_Lipstick"))
    assert shift[0] > 3 * shift[1] and shift[0] > 0
    per_attribute = with_alignment(model, knowledge_tokens="per_attribute")
    assert per_attribute.image_tokens == (32 // 8) ** 2 + 40


def test_exact_links_name_each_attribute_in_its_own_question_and_nowhere_else(model):
    """knowledge_link exact: every template question and clause links its own attribute and no other; a colour without
    "hair" (the background questions) links nothing; the link is causal (a word is linked from what precedes it),
    and the knowledge embedding then moves exactly the linked words."""
    from model.labels import CELEBA_ATTRIBUTES
    from pipelines.corpus.templates import Templates

    exact = with_alignment(model, knowledge_link="exact")
    assert not hasattr(exact.knowledge_embedding, "query")  # nothing left to learn about matching

    def linked(text: str) -> torch.Tensor:
        ids = torch.tensor([model.tokenizer(text, add_special_tokens=False)["input_ids"]])
        return exact.attribute_linker(ids)[0]  # (T, 40)

    for name, spec in Templates.load().data["attributes"].items():  # the question and both answer clauses
        for text in (spec["question"] + " Answer yes or no.", f"This person {spec['pos']}.",
                     f"This person {spec['neg']}."):
            named = {CELEBA_ATTRIBUTES[a] for a in linked(text).nonzero()[:, 1].tolist()}
            assert named == {name}, (text, named)
    assert linked("Is the background of this photo mostly black?").sum() == 0
    hair = linked("This person has black hair and a hat.")
    words = model.tokenizer.convert_ids_to_tokens(model.tokenizer("This person has black hair and a hat.",
                                                                  add_special_tokens=False)["input_ids"])
    black = CELEBA_ATTRIBUTES.index("Black_Hair")
    assert [words[t] for t in hair[:, black].nonzero()[:, 0].tolist()] == ["Ġhair"]  # not at " black"
    ids = torch.tensor([model.tokenizer("Is this person wearing a hat?", add_special_tokens=False)["input_ids"]])
    hat = CELEBA_ATTRIBUTES.index("Wearing_Hat")
    shift = verdict_shift(exact, ids, hat)
    at = exact.attribute_linker(ids)[0, :, hat].bool()
    assert (shift[at] > 0).all() and (shift[~at] == 0).all() and at.sum() == 1


def test_answer_embedding_writes_the_heads_answer_word_into_the_word_naming_the_task(model):
    """' gender' gains the embedding of the gender head's answer (' female'); ' feel' (an expression question's
    word) that of the expression head's; ' the' nothing."""
    from model.labels import EXPRESSIONS

    def token(w: str) -> int:
        return model.tokenizer(w, add_special_tokens=False)["input_ids"][-1]

    ids = torch.tensor([[token(" gender"), token(" feel"), token(" the")]])
    table = model.llm.get_input_embeddings()
    female = {"gender": torch.tensor([[-0.2, 0.3]]), "expression": torch.zeros(1, 7)}  # argmax, however unsure
    female["expression"][0, EXPRESSIONS.index("Happiness")] = 0.5
    with torch.no_grad():
        moved = model.embed_text(ids, female) - table(ids)
        words = {t: model.answer_embedding.words(table, t) for t in ("gender", "expression")}
    assert torch.allclose(moved[0, 0], words["gender"][1], atol=1e-5)  # ' female', nothing of ' male'
    assert torch.allclose(moved[0, 1], words["expression"][EXPRESSIONS.index("Happiness")], atol=1e-5)
    assert torch.equal(moved[0, 2], torch.zeros_like(moved[0, 2]))
    # the carried word is made of both forms an answer writes it in: opening an open answer ("Happiness.", the
    # token the LM must emit first) and inside a sentence (" Happiness"); the output layer is tied to this table
    buffers = model.answer_embedding.expression_word_ids, model.answer_embedding.expression_word_mask
    for k, word in enumerate(EXPRESSIONS):
        carried = buffers[0][k][buffers[1][k] > 0].tolist()
        both = [model.tokenizer(form, add_special_tokens=False)["input_ids"] for form in (word, " " + word)]
        assert carried == both[0] + both[1], word


def test_forward_calls_the_same_modules_whatever_words_the_batch_holds(model, conversations):
    """ZeRO-3 gathers a module's parameters when it is called: ranks whose batches differ (one names a task,
    the other not) must call the same modules in the same order, or their all-gathers differ and gloo aborts."""
    calls: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: calls.append(name))
             for name, m in model.named_modules() if name]
    try:
        def trace(b: dict) -> list[str]:
            calls.clear()
            model(**b)
            return list(calls)

        plain = batch(model, conversations[:2])  # attribute conversations: no word names gender or expression
        gender = model.tokenizer(" gender", add_special_tokens=False)["input_ids"][-1]
        assert not (plain["input_ids"] == gender).any()
        ids = plain["input_ids"].clone()
        ids[0, -2] = gender
        assert trace(dict(plain, input_ids=ids)) == trace(plain)
    finally:
        for h in hooks:
            h.remove()


def test_a_visual_only_step_trains_the_heads_and_runs_no_language_model(model, conversations):
    b = batch(model, conversations[:3])
    calls: list[str] = []
    hook = model.llm.get_decoder().register_forward_pre_hook(lambda *a: calls.append("llm"))
    out = model(**b, visual_only=True)
    hook.remove()
    assert not calls and out.logits is None and set(out.losses) == {"bce", "answer", "constraint"}
    full = model(**b)
    for term in ("bce", "answer", "constraint"):  # the same terms as the whole loss computes
        assert torch.isclose(out.losses[term], full.losses[term])
    a = SMALL.alignment
    assert torch.isclose(out.loss, a.lambda_bce * (out.losses["bce"] + out.losses["answer"])
                         + a.lambda_constraint * out.losses["constraint"])
    model.zero_grad()
    out.loss.backward()
    assert all(p.grad is None for p in model.llm.get_decoder().layers.parameters())  # its embeddings name the heads
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.vision.parameters())


def test_answer_heads_learn_rare_classes_with_their_class_weights(tokenizer, knowledge):
    """A rare expression (5% of faces) is learned by the weighted head; the loss skips faces without a label."""
    from model.knowledge_modules import class_weights

    torch.manual_seed(0)
    counts = {"gender": [50, 50], "race": [1] * 5, "expression": [190, 10, 0, 0, 0, 0, 0]}
    model = FaceInsight(SMALL, tokenizer, {**knowledge, "class_counts": counts})
    head = model.answer_embedding
    assert torch.allclose(head.expression_class_weight[:2], class_weights(counts["expression"], 7)[:2])
    assert head.expression_class_weight[1] > 10 * head.expression_class_weight[0]
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(200, generator=g) < 0.05).long()
    x = torch.randn(200, model.llm.config.hidden_size, generator=g) * 0.1
    x[:, 0] += y * 0.3  # a weak cue (one visual token a face)
    opt = torch.optim.Adam(head.heads.parameters(), lr=0.05)
    for _ in range(150):
        loss = head.loss(head(x[:, None]), {"expression": y, "gender": torch.full((200,), -1)})
        opt.zero_grad()
        loss.backward()
        opt.step()
    pred = head(x[:, None])["expression"].argmax(-1)
    assert (pred[y == 1] == 1).float().mean() > 0.8 and (pred[y == 0] == 0).float().mean() > 0.8
    unknown = head.loss(head(x[:, None]), {"expression": torch.full((200,), -1)})
    assert float(unknown.detach()) == 0.0 and unknown.requires_grad


def test_age_is_answered_in_one_year_classes_named_by_their_year(model):
    """Age labels are years; the head's classes are 0, 1, ..., 98, 99+ and each answers with its own number word,
    so the word handed to the text (a forced label or the head's class) is the word the answer writes."""
    from model.knowledge_modules import AGE_SIGMA, AGE_WORDS, answer_value, ordinal_targets

    head = model.answer_embedding
    years = torch.tensor([-1, 0, 1, 4, 37, 98, 99, 116])
    assert head.classes("age", years).tolist() == [-1, 0, 1, 4, 37, 98, 99, 99]
    assert head.classes("gender", torch.tensor([1, -1])).tolist() == [1, -1]  # classes already: unchanged
    said = answer_value("age", head.classes("age", years)[1:].numpy())
    assert said.tolist() == [0, 1, 4, 37, 98, 99, 99]
    assert len(AGE_WORDS) == head.heads["age"].out_features == 100
    soft = ordinal_targets(torch.tensor([0, 37]), 100, AGE_SIGMA)  # peaked at the true year, neighbours next
    assert torch.allclose(soft.sum(-1), torch.ones(2)) and soft[1].argmax() == 37 and soft[1, 36] > soft[1, 33] > 0
    asked = model.tokenizer("How old is this person?", add_special_tokens=False)["input_ids"]
    assert torch.isin(torch.tensor(asked), head.age_keys).any()  # "old" carries the head's age word


def test_verdict_forcing_hands_labels_only_in_training_and_only_where_known(model):
    logits = torch.randn(3, 40)
    labels = torch.randint(0, 2, (3, 40))
    labels[2] = -1  # a face without attribute labels (UTKFace, RAF-DB) keeps the head's verdicts
    expression, expression_labels = torch.randn(3, 7), torch.tensor([4, -1, 0])
    verdicts = {"attributes": logits, "expression": expression}
    forcing = dataclasses.replace(model.cfg, alignment=dataclasses.replace(model.cfg.alignment, verdict_forcing=1.0))
    model.cfg = forcing
    model.train()
    forced = model.forced_verdicts(verdicts, labels, {"expression": expression_labels})
    assert torch.equal(forced["attributes"][:2], (labels[:2].float() * 2 - 1) * 6.0)
    assert torch.equal(forced["attributes"][2], logits[2])
    assert forced["expression"][0].argmax() == 4 and forced["expression"][0].max() == 6.0
    assert torch.equal(forced["expression"][1], expression[1])  # no label: the head's own
    ages = model.forced_verdicts({"age": torch.randn(3, 100)}, None, {"age": torch.tensor([37, -1, 105])})["age"]
    assert ages[0].argmax() == 37 and ages[2].argmax() == 99  # years -> their class (105: 99+)
    model.eval()  # inference reads the heads' decisions, as confident as the forced labels were
    decided = model.forced_verdicts(verdicts, labels)
    assert torch.equal(decided["attributes"], torch.where(logits > 0, 6.0, -6.0))
    assert torch.equal(decided["expression"].argmax(-1), expression.argmax(-1))
    assert set(decided["expression"].unique().tolist()) == {-6.0, 6.0}
    soft = dataclasses.replace(forcing, alignment=dataclasses.replace(forcing.alignment, hard_verdicts=False))
    model.cfg = soft
    assert model.forced_verdicts(verdicts, labels) is verdicts  # or their scores, with hard_verdicts off
    model.train()
    model.cfg = dataclasses.replace(soft, alignment=dataclasses.replace(soft.alignment, verdict_forcing=0.0))
    assert model.forced_verdicts(verdicts, labels) is verdicts


def test_generation_reads_the_heads_decisions_not_their_confidence(model, monkeypatch):
    """Heads as sure as training's forced labels, or barely sure of the same decisions: the same answers."""
    torch.manual_seed(2)
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    model.eval()
    prompts = [model.chat.prompt(model.tokenizer, q, model.image_tokens, model.seg_tokens)
               for q in ("Is this person smiling?", "What is the facial expression?", "Is this person bald?")]
    side = model.cfg.vision.image_size
    pixels, maps = torch.rand(3, 3, side, side), torch.randint(0, 19, (3, side, side))
    encode = model.encode_visual

    def scaled(by: float):
        def encode_visual(*args):
            visual, verdicts = encode(*args)
            return visual, {k: v * by for k, v in verdicts.items()}
        return encode_visual

    embed, read = model.embed, []

    def embed_spy(ids, visual, verdicts=None):
        read.append(verdicts)
        return embed(ids, visual, verdicts)

    monkeypatch.setattr(model, "embed", embed_spy)
    said = []
    for by in (1.0, 0.01):
        monkeypatch.setattr(model, "encode_visual", scaled(by))
        said.append(model.generate(prompts, pixels, maps, max_new_tokens=6))
    assert said[0] == said[1]
    assert len(read) == 2 and torch.equal(read[0]["attributes"], read[1]["attributes"])
    assert set(read[0]["attributes"].unique().tolist()) == {-6.0, 6.0}
    assert set(read[0]["expression"].unique().tolist()) == {-6.0, 6.0}


def test_cached_and_uncached_generation_agree_and_batching_changes_nothing(model, conversations):
    torch.manual_seed(1)
    for p in model.parameters():  # a random model says something different per prompt; make it talk long
        p.data.add_(torch.randn_like(p) * 0.05)
    questions = ["Is this person smiling?", "Describe this person's hair.", "Which of these attributes does it have?"]
    prompts = [model.chat.prompt(model.tokenizer, q, model.image_tokens, model.seg_tokens) for q in questions]
    assert len({len(p) for p in prompts}) > 1  # different lengths: left padding is exercised
    b = batch(model, conversations[:3], seed=4)
    cached = model.generate(prompts, b["pixel_values"], b["seg_maps"], max_new_tokens=12)
    uncached = model.generate(prompts, b["pixel_values"], b["seg_maps"], max_new_tokens=12, use_cache=False)
    assert cached == uncached and any(len(c) > 3 for c in cached)
    for k in range(3):
        alone = model.generate([prompts[k]], b["pixel_values"][k:k + 1], b["seg_maps"][k:k + 1], max_new_tokens=12)
        assert alone == [cached[k]]
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    sampled = model.generate(prompts, b["pixel_values"], b["seg_maps"], max_new_tokens=8, temperature=1.0,
                             generator=g1)
    assert sampled == model.generate(prompts, b["pixel_values"], b["seg_maps"], max_new_tokens=8, temperature=1.0,
                                     generator=g2)


def test_the_shared_prefix_runs_through_the_last_visual_token_and_only_where_every_prompt_has_it():
    face = [1, 7, IMAGE_TOKEN_ID, IMAGE_TOKEN_ID, SEG_TOKEN_ID]
    assert shared_prefix([face + [5, 6, 2], face + [9, 2]]) == len(face)
    assert shared_prefix([face + [5, 6, 2]]) == len(face)
    assert shared_prefix([[1, 8] + face[2:] + [5, 2], face + [9, 2]]) == 0  # the turns open differently
    assert shared_prefix([face, face + [9, 2]]) == 0  # a prompt with nothing after its face
    assert shared_prefix([[1, 7, 5, 2], [1, 7, 9, 2]]) == 0  # no face
    assert shared_prefix([face + [9, 2], face + [5, IMAGE_TOKEN_ID, 2]]) == 0  # one prompt shows a second image


def test_a_face_asked_many_questions_is_encoded_once_and_answered_as_alone(model, conversations, monkeypatch):
    torch.manual_seed(1)
    for p in model.parameters():  # a random model that says something different per face and question
        p.data.add_(torch.randn_like(p) * 0.05)
    model.eval()
    b = batch(model, conversations[:2], seed=4)
    images = (b["pixel_values"].permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    maps = b["seg_maps"].numpy()
    questions = ["Is this person smiling?", "Describe this person's hair.", "What is the person's gender?"]
    rows = [0, 1, 0, 1, 0, 1]  # each face asked the three questions, interleaved
    alone = [model.answer(images[k:k + 1], maps[k:k + 1], [q], max_new_tokens=8)[0]
             for k, q in zip(rows, questions * 2, strict=True)]
    encoded, encode = [], model.encode_visual

    def encode_spy(pixel_values, seg_maps):
        encoded.append(len(pixel_values))
        return encode(pixel_values, seg_maps)

    prefixes, prefix_cache = [], model.prefix_cache

    def prefix_spy(prefix, visual, verdicts, faces):
        prefixes.append((len(prefix), len(visual), faces.tolist()))
        return prefix_cache(prefix, visual, verdicts, faces)

    monkeypatch.setattr(model, "encode_visual", encode_spy)
    monkeypatch.setattr(model, "prefix_cache", prefix_spy)
    together = model.answer(images[rows], maps[rows], questions * 2, max_new_tokens=8)
    assert encoded == [2] and together == alone and len(set(alone)) > 2
    # the turn's opening and each face's tokens went through the LM once per face, each question from its face's
    face_end = 2 + model.image_tokens + model.seg_tokens  # <s> <|user|>, then the visual tokens
    assert prefixes == [(face_end, 2, rows)]
    uncached = model.answer(images[rows], maps[rows], questions * 2, max_new_tokens=8, use_cache=False)
    assert uncached == together and len(prefixes) == 1  # without a cache every prompt runs whole


def test_recipes_train_exactly_their_components(model, conversations):
    counts = model.parameter_counts()
    align = model.apply_recipe(RECIPES["align"])
    assert align["vision"] == 0 and align["llm"] == 0
    assert align["projector"] == counts["projector"] and align["seg_encoder"] == counts["seg_encoder"]
    assert align["knowledge"] == counts["knowledge"] > 0
    with warnings.catch_warnings(record=True) as seen:  # adding LoRA says nothing to the user (every stage does it)
        warnings.simplefilter("always")
        finetune = model.apply_recipe(RECIPES["finetune"])
    assert not [w for w in seen if issubclass(w.category, FutureWarning)], [str(w.message) for w in seen]
    # LoRA: r * (in + out) per targeted linear; 7 linears a layer in a Llama block
    cfg = model.llm.config
    h, i, r = cfg.hidden_size, cfg.intermediate_size, SMALL.lora.r
    per_layer = 4 * r * (h + h) + 2 * r * (h + i) + r * (i + h)
    assert finetune["llm"] == cfg.num_hidden_layers * per_layer
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in trainable if n.startswith("llm."))
    assert not any(n.startswith("vision.") for n in trainable)
    # one optimiser step moves exactly the trainable tensors
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    # a question naming a task, so the answer pointer's gate has an answer to act on
    asked = [{"from": "human", "value": "<image>\nWhat is this person's gender?"}, {"from": "gpt", "value": "Female"}]
    model(**batch(model, [*conversations[:2], asked])).loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p)
        assert changed == (n in trainable) or (n in trainable and "lora_A" in n), n  # lora_A gets no grad at step 0


@pytest.mark.parametrize("switch", ["use_seg_map", "use_cooccurrence", "use_constraints", "answer_heads"])
def test_each_ablation_removes_its_module(switch, tokenizer, knowledge, conversations):
    if switch == "use_seg_map":
        cfg = dataclasses.replace(SMALL, use_seg_map=False)
    elif switch == "use_cooccurrence":
        cfg = dataclasses.replace(SMALL, alignment=AlignmentConfig(use_cooccurrence=False, use_constraints=False))
    elif switch == "answer_heads":
        cfg = dataclasses.replace(SMALL, alignment=dataclasses.replace(SMALL.alignment, answer_heads=False))
    else:
        cfg = dataclasses.replace(SMALL, alignment=dataclasses.replace(SMALL.alignment, use_constraints=False))
    full, ablated = FaceInsight(SMALL, tokenizer, knowledge), FaceInsight(cfg, tokenizer, knowledge)
    full_n, ablated_n = full.parameter_counts(), ablated.parameter_counts()
    b = batch(ablated, conversations[:2])
    out = ablated(**b)
    if switch == "use_seg_map":
        assert ablated_n["seg_encoder"] == 0 < full_n["seg_encoder"] and ablated.seg_tokens == 0
        assert ablated_n["projector"] < full_n["projector"]
        assert SEG_TOKEN_ID not in b["input_ids"]
    elif switch == "use_cooccurrence":  # the answer heads stay: they are not the co-occurrence module
        assert ablated.cooccurrence is None and ablated.knowledge_embedding is None
        assert ablated_n["knowledge"] < full_n["knowledge"] and set(out.losses) == {"lm", "answer", "gate"}
    elif switch == "answer_heads":
        assert ablated.answer_embedding is None and set(out.losses) == {"lm", "bce", "constraint"}
    else:
        assert ablated.rules.numel() == 0 < full.rules.numel() and set(out.losses) == {"lm", "bce", "answer", "gate"}
    assert torch.isfinite(out.loss)


def test_checkpoint_round_trip_is_exact_and_pickle_free(model, conversations, tmp_path):
    model.apply_recipe(RECIPES["finetune"])
    b = batch(model, conversations[:2])
    model.eval()
    names = model.save_pretrained(tmp_path, RECIPES["finetune"])
    assert any("lora_A" in n for n in names) and "rules" in names
    for f in tmp_path.iterdir():
        assert f.suffix in (".json", ".safetensors", ".jinja"), f.name
        assert not f.read_bytes().startswith(b"\x80"), f"{f.name} looks like a pickle"
    loaded = FaceInsight.from_pretrained(tmp_path)
    assert torch.equal(model(**b).logits, loaded(**b).logits)
    assert torch.equal(model.attribute_probabilities(b["pixel_values"], b["seg_maps"]),
                       loaded.attribute_probabilities(b["pixel_values"], b["seg_maps"]))
    assert loaded.trainable_parameters() == model.trainable_parameters()
    meta = json.loads((tmp_path / "faceinsight.json").read_text())
    assert meta["lora"] and meta["recipe"]["llm"] == "lora"


def test_tiny_overfits_32_examples_and_answers_them(tokenizer, knowledge):
    """Random images, each with its own yes/no answer: the model must memorise image -> answer. The LM's memory, so
    no yes/no pointer: its source, the attribute head, has no labels here to learn the random answers from."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(SMALL, alignment=dataclasses.replace(SMALL.alignment, verdict_pointer=False))
    model = FaceInsight(cfg, tokenizer, knowledge)
    model.apply_recipe(RECIPES["full"])
    g = torch.Generator().manual_seed(3)
    n = 32
    answers = ["Yes." if k % 2 else "No." for k in range(n)]
    convs = [[{"from": "human", "value": "<image>\nIs this person smiling?"}, {"from": "gpt", "value": a}]
             for a in answers]
    b = batch(model, convs)
    # on the uint8 grid: answer() below sees exactly these pixels (unquantised, a memorised example with a thin
    # margin flipped on the 1/255 rounding on one CPU and not on another)
    b["pixel_values"] = (torch.rand(n, 3, 32, 32, generator=g) * 255).round() / 255
    # no attribute labels: batch()'s random ones would contradict the answers, and verdict forcing would hand the
    # knowledge embedding in training what the head (the embedding's source at inference) cannot know
    b["attribute_labels"] = torch.full_like(b["attribute_labels"], -1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(800):
        out = model(**b)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the training recipe's clip; without it a spike
        opt.step()                                                # can knock the model into ignoring the image
        if out.losses["lm"].item() < 0.01:
            break
    assert out.losses["lm"].item() < 0.05
    model.eval()
    images = (b["pixel_values"].permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    said = model.answer(images, b["seg_maps"], ["Is this person smiling?"] * n, max_new_tokens=4)
    assert said == answers


@pytest.mark.parametrize("lora", [False, True])
def test_lm_loss_on_supervised_positions_equals_the_full_logits_loss(model, conversations, lora):
    """The head applied only where a label is predicted gives HF's loss and gradients (plain and LoRA-wrapped)."""
    if lora:
        model.apply_recipe(RECIPES["finetune"])
        torch.nn.init.normal_(next(p for n, p in model.llm.named_parameters() if "lora_B" in n), std=0.1)
    model.eval()  # LoRA dropout off: both paths see the same weights
    b = batch(model, conversations[:3])
    embeds = model.embed(b["input_ids"], model.visual_tokens(b["pixel_values"], b["seg_maps"]))
    full = model.llm(inputs_embeds=embeds, attention_mask=b["attention_mask"], labels=b["labels"])
    logits, loss = model.supervised_lm_loss(embeds, b["attention_mask"], None, b["labels"])
    assert torch.allclose(loss, full.loss, rtol=1e-5, atol=1e-6)
    targets = b["labels"][:, 1:]
    assert torch.allclose(logits, full.logits[:, :-1][targets != IGNORE], atol=1e-5)
    weights = [p for p in model.llm.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, weights, retain_graph=True, allow_unused=True)
    reference = torch.autograd.grad(full.loss, weights, allow_unused=True)
    assert all((g is None and r is None) or torch.allclose(g, r, atol=1e-6) for g, r in zip(grads, reference,
                                                                                            strict=True))
    nothing = torch.full_like(b["labels"], IGNORE)  # no answer token: a zero loss, still differentiable
    _, zero = model.supervised_lm_loss(embeds, b["attention_mask"], None, nothing)
    assert zero.item() == 0.0 and zero.requires_grad


def test_shared_projector_and_bf16_autocast(tokenizer, knowledge, conversations):
    shared_cfg = dataclasses.replace(SMALL, projector=dataclasses.replace(SMALL.projector, shared=True),
                                     seg=dataclasses.replace(SMALL.seg, hidden=SMALL.vision.hidden))
    shared = FaceInsight(shared_cfg, tokenizer, knowledge)
    assert shared.seg_projector is shared.image_projector
    separate = FaceInsight(dataclasses.replace(shared_cfg, projector=SMALL.projector), tokenizer, knowledge)
    assert shared.parameter_counts()["projector"] * 2 == separate.parameter_counts()["projector"]
    b = batch(shared, conversations[:2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = shared(**b)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in shared.parameters())  # fp32 master weights


def test_bf16_weights_take_float_inputs(tokenizer, knowledge, conversations):
    """DeepSpeed's bf16 mode casts the weights and turns autocast off: float images and maps must still work."""
    model = FaceInsight(SMALL, tokenizer, knowledge)
    for p in model.parameters():  # parameters only, as DeepSpeed does: the fp32 buffers stay
        p.data = p.data.to(torch.bfloat16)
    b = batch(model, conversations[:2])
    assert b["pixel_values"].dtype == torch.float32 and model.attribute_mask.dtype == torch.float32
    out = model(**b)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.image_projector[0].weight.grad.dtype == torch.bfloat16


@pytest.fixture(scope="module")
def answer_tokenizer(conversations):
    """The model tests' tokenizer also trained on open questions and answers, so each class word and each word naming
    a task (" gender", " old") is a token of its own, as in the default corpus' tokenizer, and the pointer's terms can
    be read class by class."""
    from model.knowledge_modules import ANSWER_CLASSES
    from model.tokenizer import train_tokenizer

    answers = [f"{w}. The answer is {w}, {w}." for words in ANSWER_CLASSES.values() for w in words] * 30
    questions = ["What is this person's gender?", "What is this person's race?", "How old is this person?",
                 "Estimate this person's age in years.", "How does this person feel?", "What is the expression?"] * 30
    return train_tokenizer([t["value"] for c in conversations for t in c] + answers + questions, vocab_size=1000)


@pytest.fixture
def pointer_model(answer_tokenizer, knowledge) -> FaceInsight:
    torch.manual_seed(0)
    cfg = dataclasses.replace(SMALL, alignment=dataclasses.replace(SMALL.alignment, answer_pointer=True,
                                                                    pointer_form="add"))
    return FaceInsight(cfg, answer_tokenizer, knowledge)


def test_answer_pointer_adds_the_heads_class_scores_only_after_a_word_names_the_task(pointer_model):
    """Before ' feel' nothing is added; after it, the first token of each expression word gains g x (log p + log 7):
    the head's sure class up, the others down, every other token untouched."""
    from model.labels import EXPRESSIONS

    m = pointer_model

    def token(w: str) -> int:
        return m.tokenizer(w, add_special_tokens=False)["input_ids"][-1]

    ids = torch.tensor([[token(" the"), token(" feel"), token(" the")]])
    named = m.answer_pointer.named(ids)
    k = m.answer_pointer.tasks.index("expression")
    assert named[0, :, k].tolist() == [False, True, True]
    assert not named[0, :, m.answer_pointer.tasks.index("gender")].any()
    # the pointer opens where the answer embedding writes: the task words as a question tokenizes them
    for task in set(m.answer_pointer.tasks) - {"attributes"}:  # the yes/no verdict opens on attribute words
        assert torch.equal(getattr(m.answer_pointer, f"{task}_keys"), getattr(m.answer_embedding, f"{task}_keys"))
    for question, task in (("What is this person's gender?", "gender"), ("How old is this person?", "age")):
        asked = torch.tensor([m.tokenizer(question, add_special_tokens=False)["input_ids"]])
        assert m.answer_pointer.named(asked)[0, -1, m.answer_pointer.tasks.index(task)], question
    sure = torch.full((1, 7), -4.0)
    sure[0, EXPRESSIONS.index("Sadness")] = 4.0
    verdicts = {"expression": sure, "gender": torch.zeros(1, 2), "race": torch.zeros(1, 5), "age": torch.zeros(1, 100),
                "attributes": torch.zeros(1, 40)}
    with torch.no_grad():
        # the additive form's term: the scores on zero LM logits
        bias = m.copy_logits(torch.randn(1, 3, m.llm.config.hidden_size), ids, verdicts,
                             torch.zeros(1, 3, m.llm.config.vocab_size))[0]
    assert torch.equal(bias[0], torch.zeros_like(bias[0]))
    first = m.answer_pointer.expression_first  # (classes, forms)
    assert len(set(first.flatten().tolist())) == first.numel()  # no token shared by two classes' words
    # inside a sentence (no answer opens here) the in-sentence form (" Sadness") takes the copy, not the opening one
    sad = int(first[EXPRESSIONS.index("Sadness"), 1])
    others = torch.tensor([i for i in first[:, 1].tolist() if i != sad])
    assert bias[1, sad] > 0 and (bias[1, others] < 0).all()
    rest = torch.ones(bias.shape[-1], dtype=torch.bool)
    rest[first[:, 1]] = False
    assert torch.equal(bias[1, rest], torch.zeros(int(rest.sum())))


def test_answer_pointer_closes_at_the_next_question_turn(pointer_model):
    """A conversation asks many things: after an expression turn, the next turn's yes/no answer gains nothing from the
    expression head (the gate's scope is its own turn); the yes/no verdict opens on that turn's attribute alone."""
    m = pointer_model
    turns = [{"from": "human", "value": "<image>\nHow does this person feel?"}, {"from": "gpt", "value": "Happiness"},
             {"from": "human", "value": "Is this person smiling?"}, {"from": "gpt", "value": "Yes"}]
    ids, labels = m.chat.encode(m.tokenizer, turns, m.image_tokens, m.seg_tokens)
    ids = torch.tensor([ids])
    named = m.answer_pointer.named(ids)[0, :, m.answer_pointer.tasks.index("expression")]
    answers = [k for k, label in enumerate(labels) if label != -100]
    opens = (ids[0] == m.chat.turn_start_id(m.tokenizer)).nonzero()[:, 0].tolist()
    assert len(opens) == 2
    first_answer = [k - 1 for k in answers if k < opens[1]]  # the positions that predict the first answer's tokens
    second_answer = [k - 1 for k in answers if k > opens[1]]
    assert named[first_answer].all() and not named[second_answer].any()
    assert not named[opens[1]:].any()
    verdict = m.answer_pointer.named(ids)[0, :, m.answer_pointer.tasks.index("attributes")]
    assert not verdict[first_answer].any() and verdict[second_answer].all()


def test_answer_pointer_copies_only_its_tasks(answer_tokenizer, knowledge):
    """pointer_tasks ("age",): an expression question opens no gate and no expression word gains anything; an age
    question's gate opens on the age words alone. An unknown task is refused where the config is built."""
    from model.knowledge_modules import ANSWER_CLASSES
    from model.labels import ANSWER_TASKS

    assert ANSWER_TASKS == tuple(ANSWER_CLASSES)
    torch.manual_seed(0)
    cfg = dataclasses.replace(SMALL, alignment=dataclasses.replace(SMALL.alignment, answer_pointer=True,
                                                                    pointer_tasks=("age",), pointer_form="add",
                                                                    verdict_pointer=False))
    m = FaceInsight(cfg, answer_tokenizer, knowledge)
    assert m.answer_pointer.tasks == ("age",) and m.answer_pointer.gate.out_features == 1
    verdicts = {"expression": torch.randn(1, 7), "gender": torch.randn(1, 2), "race": torch.randn(1, 5),
                "age": torch.randn(1, 100)}
    for question, opens in (("How does this person feel?", False), ("How old is this person?", True)):
        ids = torch.tensor([m.tokenizer(question, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            bias = m.copy_logits(torch.randn(1, ids.shape[1], m.llm.config.hidden_size), ids, verdicts,
                                 torch.zeros(1, ids.shape[1], m.llm.config.vocab_size))[0, -1]
        touched = set(torch.nonzero(bias).flatten().tolist())
        assert bool(touched) == opens, question
        assert touched <= set(m.answer_pointer.age_first.flatten().tolist())
    with pytest.raises(ValueError, match="pointer_tasks"):
        dataclasses.replace(SMALL.alignment, answer_pointer=True, pointer_tasks=("mood",))


def loss_path_and_full_logits(m: FaceInsight, b: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The supervised-positions path's logits and loss, and the full forward's logits at the same positions (eval
    mode: no verdict forcing, both paths read the heads' own decisions)."""
    m.eval()
    with torch.no_grad():
        visual, verdicts = m.encode_visual(b["pixel_values"], b["seg_maps"])
        verdicts = m.forced_verdicts(verdicts, None)
        embeds = m.embed(b["input_ids"], visual, verdicts)
        full = m(input_ids=b["input_ids"], pixel_values=b["pixel_values"], seg_maps=b["seg_maps"],
                 attention_mask=b["attention_mask"]).logits
        logits, loss = m.supervised_lm_loss(embeds, b["attention_mask"], None, b["labels"],
                                            (b["input_ids"], verdicts))
    return logits, full[:, :-1][b["labels"][:, 1:] != IGNORE], loss


def test_answer_pointer_in_the_loss_path_equals_the_full_logits_and_makes_generation_copy(pointer_model, conversations):
    """The supervised-positions loss adds the same pointer terms as the full forward; with an open gate the generated
    answer to an expression question opens with the head's class, whatever the LM would have said."""
    from model.labels import EXPRESSIONS

    m = pointer_model
    b = batch(m, conversations[:3])
    logits, full, _ = loss_path_and_full_logits(m, b)
    assert torch.allclose(logits, full, atol=1e-4)

    head = m.answer_embedding.heads["expression"]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.full((7,), -5.0))
        head.bias[EXPRESSIONS.index("Fear")] = 5.0
        m.answer_pointer.gate.bias.fill_(60.0)
    prompt = m.chat.prompt(m.tokenizer, "How does this person feel?", m.image_tokens, m.seg_tokens)
    said = m.generate([prompt], b["pixel_values"][:1], b["seg_maps"][:1], max_new_tokens=1)
    assert said[0][0] in m.answer_pointer.expression_first[EXPRESSIONS.index("Fear")].tolist()
    # a question that names no task and no attribute is answered as without the pointer
    other = m.chat.prompt(m.tokenizer, "Is the background of this photo mostly gray?", m.image_tokens, m.seg_tokens)
    opened = m.generate([other], b["pixel_values"][:1], b["seg_maps"][:1], max_new_tokens=6)
    with torch.no_grad():
        m.answer_pointer.gate.bias.fill_(-60.0)
    assert m.generate([other], b["pixel_values"][:1], b["seg_maps"][:1], max_new_tokens=6) == opened


def test_attribute_thresholds_are_chosen_on_val_and_travel_with_the_checkpoint(model, conversations, tmp_path):
    """fit_attribute_thresholds picks, per attribute, the logit that separates these faces' labels best; the head's
    decisions and what the text is handed then follow it; the thresholds save and load with the weights, and a
    checkpoint saved before they existed loads deciding at p 0.5, as it did."""
    from safetensors.torch import load_file, save_file

    from model.checkpoint import WEIGHTS_FILE
    from pipelines.evaluation.metrics import attribute_metrics

    model.eval()
    b = batch(model, conversations[:16])
    with torch.no_grad():
        logits = model.encode_visual(b["pixel_values"], b["seg_maps"])[1]["attributes"].float()
    # labels a threshold other than 0 separates: present above each attribute's median logit over these faces
    truth = (logits > logits.median(0).values).long().numpy()

    def balanced(decided: torch.Tensor) -> float:
        return attribute_metrics(decided.long().numpy(), truth)["mean_balanced_accuracy"]

    assert balanced(model.attribute_decisions(b["pixel_values"], b["seg_maps"])) < 0.9  # p 0.5 misses them
    chosen = model.fit_attribute_thresholds(b["pixel_values"], b["seg_maps"], truth)
    assert (chosen != 0).any()
    decided = model.attribute_decisions(b["pixel_values"], b["seg_maps"])
    assert balanced(decided) == 1.0
    handed = model.decided_verdicts({"attributes": logits})["attributes"]
    assert torch.equal(handed > 0, decided)
    model.save_pretrained(tmp_path, RECIPES["full"])
    assert torch.equal(FaceInsight.from_pretrained(tmp_path).attribute_threshold, model.attribute_threshold)
    weights = load_file(str(tmp_path / WEIGHTS_FILE))
    del weights["attribute_threshold"]
    save_file(weights, str(tmp_path / WEIGHTS_FILE))
    assert not FaceInsight.from_pretrained(tmp_path).attribute_threshold.any()


@pytest.fixture
def mixture_model(answer_tokenizer, knowledge) -> FaceInsight:
    torch.manual_seed(0)
    cfg = dataclasses.replace(SMALL, alignment=dataclasses.replace(SMALL.alignment, pointer_form="mix"))
    return FaceInsight(cfg, answer_tokenizer, knowledge)


def test_mixture_pointer_is_a_distribution_that_writes_the_head_class_whatever_the_lm_prefers(mixture_model):
    """pointer_form mix: where no task is named the scores are the LM's own log-probabilities; where one is, they are
    a distribution (they sum to 1) and an open gate puts the head's class word first even against an LM sure of
    another token; gradients stay finite where the target is no class word (log 0 is kept out of the graph)."""
    from model.labels import EXPRESSIONS

    m = mixture_model
    p = m.answer_pointer
    vocab, width = m.llm.config.vocab_size, m.llm.config.hidden_size
    sure = torch.full((2, 7), -6.0)
    sure[:, EXPRESSIONS.index("Fear")] = 6.0
    verdicts = {"expression": sure, "gender": torch.zeros(2, 2), "race": torch.zeros(2, 5), "age": torch.zeros(2, 100),
                "attributes": torch.zeros(2, 2)}
    lm = torch.randn(2, vocab)
    lm[:, 5] = 20.0  # the LM is sure of another token
    hidden = torch.randn(2, width)
    k = p.tasks.index("expression")
    named = torch.zeros(2, len(p.tasks), dtype=torch.bool)
    assert torch.allclose(p.next_token_scores(hidden, named, verdicts, lm), torch.log_softmax(lm, -1))
    named[:, k] = True
    with torch.no_grad():
        p.gate.bias.fill_(60.0)
    scores = p.next_token_scores(hidden, named, verdicts, lm)
    assert torch.allclose(scores.logsumexp(-1), torch.zeros(2), atol=1e-5)
    assert scores.argmax(-1).tolist()[0] in p.expression_first[EXPRESSIONS.index("Fear")].tolist()
    with torch.no_grad():
        p.gate.bias.fill_(-2.0)
    hidden.requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(p.next_token_scores(hidden, named, verdicts, lm), torch.tensor([5, 5]))
    loss.backward()
    assert torch.isfinite(hidden.grad).all() and torch.isfinite(p.gate.weight.grad).all() and p.gate.weight.grad.any()


def test_the_pointer_copies_a_class_word_in_the_form_its_position_writes(mixture_model):
    """At an answer's first token the copy goes on the word's opening form ("Fear", as "Fear." is written), inside a
    sentence on its in-sentence form (" Fear"), not half on each: split evenly, the two tied where the gate was open
    and the twentieth default run wrote " female" and ran on; the copied token's loss can then reach zero (an even
    split floors it at log 2)."""
    from model.labels import EXPRESSIONS

    m = mixture_model
    p = m.answer_pointer
    prompt = torch.tensor([m.chat.prompt(m.tokenizer, "How does this person feel?", m.image_tokens, m.seg_tokens)])
    opens = p.opens(prompt)
    assert opens[0, -1] and not opens[0, :-1].any()  # only where the assistant opening ends
    assert p.opens(prompt[:, :-1]).sum() == 0 and p.opens(prompt[:, -1:]).sum() == int(len(p.answer_opening) == 1)
    fear = EXPRESSIONS.index("Fear")
    sure = torch.full((2, 7), -8.0)
    sure[:, fear] = 8.0
    verdicts = {"expression": sure, "gender": torch.zeros(2, 2), "race": torch.zeros(2, 5), "age": torch.zeros(2, 100),
                "attributes": torch.zeros(2, 2)}
    named = torch.zeros(2, len(p.tasks), dtype=torch.bool)
    named[:, p.tasks.index("expression")] = True
    with torch.no_grad():
        p.gate.bias.fill_(60.0)
    lm = torch.randn(2, m.llm.config.vocab_size)
    hidden = torch.randn(2, m.llm.config.hidden_size)
    opening, inside = p.expression_first[fear].tolist()
    assert opening != inside
    scores = p.next_token_scores(hidden, named, verdicts, lm, torch.tensor([True, False]))
    assert scores.argmax(-1).tolist() == [opening, inside]
    loss = torch.nn.functional.cross_entropy(scores, torch.tensor([opening, inside]))
    even = torch.nn.functional.cross_entropy(p.next_token_scores(hidden, named, verdicts, lm),
                                             torch.tensor([opening, inside]))
    assert loss < 0.01 and even > 0.69  # log 2 = 0.693
    added = p.bias(hidden, named, verdicts, lm.shape[-1], torch.tensor([True, False]))  # the add form
    assert added[0, opening] > 0 and added[0, inside] == 0 and added[1, inside] > 0 and added[1, opening] == 0
    with torch.no_grad():
        p.gate.bias.fill_(-2.0)


def test_mixture_pointer_in_the_loss_path_equals_the_full_logits(mixture_model, conversations):
    b = batch(mixture_model, [*conversations[:2], [{"from": "human", "value": "<image>\nHow does this person feel?"},
                                                   {"from": "gpt", "value": "Fear."}]])
    logits, full, loss = loss_path_and_full_logits(mixture_model, b)
    assert torch.allclose(logits, full, atol=1e-4) and torch.isfinite(loss)


def test_verdict_pointer_reads_the_attribute_the_turn_names_with_its_sign(mixture_model):
    """The verdict logits of `scopes`: at each position the head's logit on the attribute last named in the turn
    ("hat" -> Wearing_Hat; "hair ... black" -> Black_Hair), its sign turned where the phrase names the absence
    ("female" -> -Male), 0 and not named before any attribute word; a new turn closes it."""
    from model.labels import ATTRIBUTE_INDEX

    m = mixture_model
    p = m.answer_pointer
    k = p.tasks.index("attributes")
    head = torch.arange(1.0, 41.0)[None]  # a distinct logit per attribute: index + 1
    for question, attribute, sign in (("Is this person wearing a hat?", "Wearing_Hat", 1),
                                      ("Is this person's hair black?", "Black_Hair", 1),
                                      ("Is this person female?", "Male", -1),
                                      ("Is this person male?", "Male", 1)):
        ids = torch.tensor([m.tokenizer(question, add_special_tokens=False)["input_ids"]])
        logits = p.scopes(ids, head)[1][0]
        named = p.named(ids)[0, :, k]
        assert named[-1] and logits[-1].tolist() == [0.0, sign * (ATTRIBUTE_INDEX[attribute] + 1.0)], question
        assert not named[0] and logits[0].tolist() == [0.0, 0.0]
    turns = [{"from": "human", "value": "<image>\nIs this person wearing a hat?"}, {"from": "gpt", "value": "Yes."},
             {"from": "human", "value": "How does this person feel?"}, {"from": "gpt", "value": "Fear."}]
    ids = torch.tensor([m.chat.encode(m.tokenizer, turns, m.image_tokens, m.seg_tokens)[0]])
    opens = (ids[0] == m.chat.turn_start_id(m.tokenizer)).nonzero()[:, 0].tolist()
    assert not p.named(ids)[0, opens[1]:, k].any()


@pytest.mark.parametrize("present", [True, False])
def test_verdict_pointer_makes_the_yes_no_answer_the_heads_decision(mixture_model, conversations, present):
    """With an open gate, a yes/no question about an attribute is answered Yes where the head decides present (its
    val threshold below the face's logit) and No where it decides absent, whatever the LM prefers."""
    m = mixture_model
    b = batch(m, conversations[:1])
    with torch.no_grad():
        m.attribute_threshold.fill_(-1e4 if present else 1e4)
        m.answer_pointer.gate.bias.fill_(60.0)
    prompt = m.chat.prompt(m.tokenizer, "Is this person wearing a hat?", m.image_tokens, m.seg_tokens)
    said = m.generate([prompt], b["pixel_values"], b["seg_maps"], max_new_tokens=1)[0][0]
    assert said in m.answer_pointer.attributes_first[int(present)].tolist()


def test_a_config_saved_before_the_verdict_pointer_loads_without_it(tmp_path):
    """A checkpoint's config that predates `verdict_pointer` rebuilds the model it was trained as (no yes/no gate row
    its weights lack); a new config keeps the default."""
    from model.config import FaceInsightConfig

    data = SMALL.to_dict()
    data["alignment"].pop("verdict_pointer")
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert FaceInsightConfig.load(tmp_path / "old.json").alignment.verdict_pointer is False
    SMALL.save(tmp_path / "new.json")
    assert FaceInsightConfig.load(tmp_path / "new.json").alignment.verdict_pointer is SMALL.alignment.verdict_pointer


def test_the_age_decision_is_the_median_year_of_the_heads_distribution(model, conversations):
    """An ordered task's decision is the median class (the least expected absolute error), not the top class: a head
    with 0.4 on 20 and 0.3 each on 60 and 61 decides 60; the text is handed that decision and the heads' row reads it;
    a nominal task keeps its top class."""
    logits = torch.full((1, 100), -1e4)
    logits[0, 20], logits[0, 60], logits[0, 61] = math.log(0.4), math.log(0.3), math.log(0.3)
    assert model.decide("age", logits).tolist() == [60]
    handed = model.decided_verdicts({"age": logits})["age"]
    assert handed.argmax(-1).tolist() == [60]
    expression = torch.tensor([[0.1, 0.5, 0.2, 0.3, 0.0, 0.0, 0.0]]).log()
    assert model.decide("expression", expression).tolist() == [1]
    b = batch(model, conversations[:4])
    model.eval()
    with torch.no_grad():
        verdicts = model.encode_visual(b["pixel_values"], b["seg_maps"])[1]
    decided = model.answer_decisions(b["pixel_values"], b["seg_maps"])
    assert torch.equal(decided["age"], model.decide("age", verdicts["age"]))
    assert torch.equal(decided["gender"], verdicts["gender"].argmax(-1))


def test_the_pointer_gate_learns_where_a_copy_is_due(mixture_model, conversations):
    """The gate's own loss (lambda_gate): trained on it alone, the yes/no gate opens where the next token is the
    answer's Yes / No and stays shut on the named turn's other positions; lambda_gate 0 leaves it out."""
    m = mixture_model
    turns = [{"from": "human", "value": "<image>\nIs this person wearing a hat?"}, {"from": "gpt", "value": "Yes."}]
    b = batch(m, [turns] * 4)
    out = m(**b)
    assert torch.isfinite(out.losses["gate"]) and out.losses["gate"] > 0
    for p in m.parameters():
        p.requires_grad_(False)
    m.answer_pointer.gate.requires_grad_(True)
    opt = torch.optim.SGD(m.answer_pointer.gate.parameters(), lr=0.5)
    for _ in range(60):
        loss = m(**b).losses["gate"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        visual, verdicts = m.encode_visual(b["pixel_values"], b["seg_maps"])
        hidden = m.llm(inputs_embeds=m.embed(b["input_ids"], visual, m.decided_verdicts(verdicts)),
                       attention_mask=b["attention_mask"], output_hidden_states=True).hidden_states[-1][0]
        gate = m.answer_pointer.gate(hidden)[:, m.answer_pointer.tasks.index("attributes")]
    answer = (b["labels"][0] != IGNORE).nonzero()[:, 0]
    assert gate[answer[0] - 1] > 0 and (gate[answer[1:] - 1] < 0).all()
    off = dataclasses.replace(m.cfg, alignment=dataclasses.replace(m.cfg.alignment, lambda_gate=0.0))
    assert "gate" not in FaceInsight(off, m.tokenizer, None if off.alignment.use_cooccurrence is False else
                                     _knowledge_of(m))(**b).losses


def _knowledge_of(m: FaceInsight) -> dict:
    """The knowledge a model was built with, from its buffers (as a checkpoint rebuilds it)."""
    from model.checkpoint import knowledge_from_weights

    return knowledge_from_weights(m.state_dict())
