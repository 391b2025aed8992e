"""Every template's answer agrees with the labels: checked by reading the text back, not by trusting `value`."""

from __future__ import annotations

import copy
import random
import re

import numpy as np
import pytest

from model.labels import CELEBA_ATTRIBUTES, EXPRESSIONS, UTK_GENDERS, UTK_RACES
from pipelines.corpus.templates import FaceLabels, Templates, Turn
from pipelines.knowledge import KnowledgeConfig, mine_knowledge
from pipelines.synthetic.latent import CELEBA_POPULATION, sample_faces


@pytest.fixture(scope="module")
def faces() -> list[FaceLabels]:
    """Realistic faces from the synthetic latent model, plus uniformly random ones that break rules."""
    rng = np.random.default_rng(0)
    realistic = sample_faces(CELEBA_POPULATION, 300, rng)
    labels = [FaceLabels(attributes=tuple(int(v > 0) for v in f.label_vector())) for f in realistic]
    labels += [FaceLabels(attributes=tuple(int(v) for v in rng.integers(0, 2, 40))) for _ in range(100)]
    return labels


@pytest.fixture(scope="module")
def templates(faces) -> Templates:
    table = np.array([f.attributes for f in faces[:300]], dtype=bool)
    return Templates.load(knowledge=mine_knowledge(table, KnowledgeConfig(min_support=10, min_expected=3)))


def options(question: str) -> dict[str, str]:
    return dict(re.findall(r"^([A-Z])\. (.+)$", question, flags=re.M))


def chosen(turn: Turn) -> str:
    letter = re.match(r"^([A-Z])\b", turn.answer).group(1)
    assert letter == turn.value
    return options(turn.question)[letter]


def says_yes(answer: str) -> bool:
    assert re.match(r"^(Yes|No)\b", answer), answer
    return answer.startswith("Yes")


def clauses(answer: str) -> set[str]:
    body = answer.removeprefix("This person ").split(". Attributes:")[0].rstrip(".")
    head, _, last = body.rpartition(" and ")
    return set(filter(None, [*head.split(", "), last])) if head else {body}


def test_attribute_phrases_do_not_break_clause_lists(templates):
    for spec in templates.attr.values():
        assert ", " not in spec["pos"] and " and " not in spec["pos"], spec


def test_attribute_templates_agree_with_labels(faces, templates):
    by_name = {spec["name"]: a for a, spec in templates.attr.items()}
    used = set()
    for n, face in enumerate(faces):
        rng = random.Random(n)
        held = {a for a in CELEBA_ATTRIBUTES if face.has(a)}
        yes_no = templates.attribute_yes_no(face, rng)
        assert sorted(t.target for t in yes_no) == sorted(CELEBA_ATTRIBUTES)  # every attribute, once
        for t in yes_no:
            assert says_yes(t.answer) == (t.target in held), t
        for t in templates.attribute_multiple_choice(face, rng, 8):
            text = chosen(t)
            group = templates.data["multiple_choice"]["groups"].get(t.target)
            if group:
                members = set(group["attributes"])
                assert (text == group["none"] and not members & held) or by_name[text] in held, t
                assert len(members & held) <= 1  # a face that breaks the exclusion gets no group question
            elif t.template.startswith("multiple_choice/binary"):
                assert (text == "yes") == (t.target in held), t
            else:
                picked = [by_name[o] for o in options(t.question).values()]
                assert by_name[text] in held and sum(p in held for p in picked) == 1, t
            used.add(t.template)
        for t in templates.attribute_open(face, rng):
            topic = templates.data["open"]["topics"][t.target]
            expected = {templates.attr[a]["pos"] for a in topic["attributes"] if a in held}
            assert (clauses(t.answer) == expected) if expected else t.answer == topic["none"], t
            used.add(t.template)
        d = templates.attribute_description(face, rng)
        names = d.answer.split("Attributes: ")[-1].rstrip(".").split(", ") if held else []
        assert {by_name[x] for x in names} == held and clauses(d.answer) == {templates.attr[a]["pos"] for a in held}
        for t in templates.knowledge_statements(face, rng, 6):
            kind, pair = t.target.split(":")
            a, b = pair.split("->")
            assert a in held
            rules = {(r["kind"], r["a"], r["b"]) for r in templates.knowledge["rules"]}
            if kind == "implication":
                assert ("implication", a, b) in rules and b in held and b in t.answer, t
            elif kind == "exclusion":
                assert {("exclusion", a, b), ("exclusion", b, a)} & rules and b not in held and "false" in t.answer
            else:
                p = templates.knowledge["conditional"][CELEBA_ATTRIBUTES.index(a)][CELEBA_ATTRIBUTES.index(b)]
                assert f"{p:.0%}" in t.answer or f"{p:.2f}" in t.answer, t
                tail = t.answer.split(":")[-1] if "Here" not in t.answer else t.answer.split("Here: ")[1]
                assert (b in held) == (templates.attr[b]["pos"] in tail and templates.attr[b]["neg"] not in tail), t
            used.add(t.template)
        used |= {t.template for t in yes_no} | {d.template}
    attribute_ids = {i for i in templates.template_ids() if i.split("/")[0] in
                     ("yes_no", "multiple_choice", "open", "description", "knowledge")}
    assert used == attribute_ids  # every attribute template was exercised (and so checked)


def test_demographic_and_expression_templates_agree_with_labels(templates):
    rng = random.Random(1)
    used = set()
    groups = templates.data["age_groups"]
    for _ in range(400):
        face = FaceLabels(age=rng.randrange(0, 117), gender=rng.randrange(2), race=rng.randrange(5),
                          expression=rng.randrange(7))
        group = next(g[2] for g in groups if g[0] <= face.age <= g[1])
        gender, race, expression = UTK_GENDERS[face.gender], UTK_RACES[face.race], EXPRESSIONS[face.expression]
        for kind in ("yes_no", "multiple_choice", "open", "description"):
            for t in templates.demographics(kind, face, rng):
                used.add(t.template)
                if kind == "yes_no":
                    asked = t.target.split(">" if ">" in t.target else "=")[1]
                    truth = face.age > int(asked) if t.target.startswith("age") else asked in (gender, race)
                    assert says_yes(t.answer) == truth, t
                elif kind == "multiple_choice":
                    assert chosen(t) == {"age_group": group, "gender": gender, "race": race}[t.target], t
                elif kind == "open":
                    want = {"age": str(face.age), "age_group": group, "gender": gender, "race": race}[t.target]
                    assert re.search(rf"(?<!\w){re.escape(want)}(?!\w)", t.answer), t
                    if t.target == "age":
                        assert [int(x) for x in re.findall(r"\d+", t.answer)] == [face.age]
                else:
                    assert f"{face.age}-year-old {gender}" in t.answer and group in t.answer and race in t.answer
            for t in templates.expression(kind, face, rng):
                used.add(t.template)
                if kind == "yes_no":
                    assert says_yes(t.answer) == (t.target == f"expression:{expression}"), t
                elif kind == "multiple_choice":
                    assert chosen(t) == expression
                else:
                    assert expression in t.answer and all(e not in t.answer for e in EXPRESSIONS if e != expression)
    other_ids = {i for i in templates.template_ids() if i.split("/")[0] in ("demographics", "expression")}
    assert used == other_ids


def test_generic_templates_agree_with_the_photo_and_come_in_every_answer_form(templates):
    """Read back: the open answers name the scene's facts, a listed colour set holds the true one, each record has
    one true and one false yes/no; and the forms the evaluation asks in (yes/no, a name from a list, a number)
    all occur, many about "this person", so a general model learns an answer's form from the question."""
    from pipelines.corpus.templates import generic_turns

    spec = templates.data["generic"]
    rng = random.Random(3)
    used, forms = set(), set()
    for _ in range(300):
        scene = {"background": rng.choice(spec["colours"]), "brightness": rng.choice(["bright", "dark"]),
                 "level": str(rng.randrange(100)), "position": rng.choice(["left", "centre", "right"])}
        turns = generic_turns(templates, scene, rng)
        answers = {}
        for t in turns:
            used.add(t.template)
            topic = t.target.removeprefix("scene:").split("=")[0]
            if "=" in t.target:
                asked = t.target.split("=")[1]
                assert says_yes(t.answer) == (asked == scene[topic]) and asked in t.question, t
                answers.setdefault("yes_no", []).append(says_yes(t.answer))
                forms.add("yes_no")
                continue
            words = re.findall(r"[a-z0-9]+", t.answer.lower())
            assert t.value == scene[topic] and scene[topic] in words, t
            if topic == "level":
                assert [int(w) for w in re.findall(r"\d+", t.answer)] == [int(scene["level"])], t
                forms.add("number")
            listed = re.search(r"\(([a-z, ]+)\)", t.question)
            if listed and topic == "background":
                options = listed.group(1).split(", ")
                assert scene["background"] in options and len(options) == spec["choices"] == len(set(options)), t
                forms.add("listed")
        assert sorted(answers["yes_no"]) == [False, True]
        assert len(turns) == len(spec["open"]) + 2
    assert used == {i for i in templates.template_ids() if i.startswith("generic/")}
    assert forms == {"yes_no", "number", "listed"}
    assert sum("this person" in q for t in spec["yes_no"].values() for q in (f["q"] for f in t)) >= 3


def test_broken_templates_are_refused():
    base = Templates.load().data
    missing = copy.deepcopy(base)
    del missing["attributes"]["Smiling"]
    with pytest.raises(ValueError, match="Smiling"):
        Templates(missing)
    doubled = copy.deepcopy(base)
    doubled["open"]["topics"]["hair"]["attributes"].append("Smiling")
    with pytest.raises(ValueError, match="exactly once"):
        Templates(doubled)
    gap = copy.deepcopy(base)
    gap["age_groups"][1][0] = 4
    with pytest.raises(ValueError, match="gap"):
        Templates(gap)
    for context in (None, "Going by this description: {description}"):
        no_context = copy.deepcopy(base)
        if context is None:
            del no_context["text_qa"]
        else:
            no_context["text_qa"]["context"] = context
        with pytest.raises(ValueError, match=r"text_qa.context must hold \{description\} and \{question\}"):
            Templates(no_context)


def test_knowledge_statements_need_knowledge():
    face = FaceLabels(attributes=(1,) * 40)
    with pytest.raises(ValueError, match="knowledge.json"):
        Templates.load().knowledge_statements(face, random.Random(0), 3)
