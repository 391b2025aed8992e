"""Turn a face's labels into question/answer turns, from the templates in templates.yaml.

Every turn carries, beside its text, what it asks (`target`) and the canonical answer (`value`:
"yes"/"no", an option letter, a number, a class name), so evaluation can score generated text
and tests can check each answer against the labels without parsing prose.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from model.labels import CELEBA_ATTRIBUTES, EXPRESSIONS, UTK_GENDERS, UTK_RACES

TEMPLATES_FILE = Path(__file__).with_name("templates.yaml")
KINDS = ("yes_no", "multiple_choice", "open", "description", "knowledge", "generic", "text_qa")


@dataclass(frozen=True)
class Turn:
    question: str
    answer: str
    kind: str  # one of KINDS
    template: str  # which template made it, e.g. "yes_no/2"
    target: str  # what it asks about: an attribute, a topic, "age", "gender", "race", "expression", ...
    value: str  # the canonical answer


@dataclass(frozen=True)
class FaceLabels:
    """A face's labels in the corpus' terms: attributes 0/1, expression an index into EXPRESSIONS."""

    attributes: tuple[int, ...] | None = None
    age: int | None = None
    gender: int | None = None
    race: int | None = None
    expression: int | None = None

    def has(self, attribute: str) -> bool:
        return bool(self.attributes[CELEBA_ATTRIBUTES.index(attribute)])


def options_text(options: list[str]) -> str:
    return "\n".join(f"{string.ascii_uppercase[k]}. {o}" for k, o in enumerate(options))


def age_group(age: int, groups: list) -> str:
    for first, last, name in groups:
        if first <= age <= last:
            return name
    raise ValueError(f"age {age} is in no age group of templates.yaml")


class Templates:
    """The loaded, validated templates; every method returns turns whose answers follow from the labels."""

    def __init__(self, data: dict[str, Any], knowledge: dict[str, Any] | None = None):
        self.data = data
        self.attr = data["attributes"]
        self.knowledge = knowledge
        self._validate()
        # the uncertain dependencies (graph edges short of certainty), listed once: (a, b, p(b|a))
        self.dependencies: dict[str, list[tuple[str, float]]] = {}
        # per attribute and answer, the share of faces asked: the rarer answer always, the commoner one as often
        # as the rarer occurs, so "No" is not the cheapest answer (76% of unbalanced answers were "No")
        self.ask_share: dict[tuple[str, bool], float] = {}
        if knowledge is not None:
            for name, count in zip(knowledge["attributes"], knowledge["counts"], strict=True):
                pos, neg = count, knowledge["n_train"] - count
                self.ask_share[name, True] = min(1.0, neg / pos) if pos else 1.0
                self.ask_share[name, False] = min(1.0, pos / neg) if neg else 1.0
            names, cond, edge = knowledge["attributes"], knowledge["conditional"], knowledge["graph"]["binary"]
            for i, a in enumerate(names):
                self.dependencies[a] = [(b, cond[i][j]) for j, b in enumerate(names)
                                        if i != j and edge[i][j] and cond[i][j] < 1.0]

    @classmethod
    def load(cls, path: Path | str = TEMPLATES_FILE, knowledge: dict[str, Any] | None = None) -> Templates:
        with open(path) as f:
            return cls(yaml.safe_load(f), knowledge)

    def _validate(self) -> None:
        missing = set(CELEBA_ATTRIBUTES) - set(self.attr)
        unknown = set(self.attr) - set(CELEBA_ATTRIBUTES)
        if missing or unknown:
            raise ValueError(f"{TEMPLATES_FILE.name}: attributes missing {sorted(missing)}, unknown {sorted(unknown)}")
        topics = [a for t in self.data["open"]["topics"].values() for a in t["attributes"]]
        if sorted(topics) != sorted(CELEBA_ATTRIBUTES):
            raise ValueError(f"{TEMPLATES_FILE.name}: open.topics must list every attribute exactly once")
        for group in self.data["multiple_choice"]["groups"].values():
            if set(group["attributes"]) - set(CELEBA_ATTRIBUTES):
                raise ValueError(f"{TEMPLATES_FILE.name}: a multiple_choice group names an unknown attribute")
        ages = self.data["age_groups"]
        if ages[0][0] != 0 or any(a[1] + 1 != b[0] for a, b in zip(ages, ages[1:], strict=False)):
            raise ValueError(f"{TEMPLATES_FILE.name}: age_groups must start at 0 and leave no gap")
        if set(self.data["expression"]["gloss"]) != set(EXPRESSIONS):
            raise ValueError(f"{TEMPLATES_FILE.name}: expression.gloss must name the 7 expressions")
        generic = self.data["generic"]
        if set(generic["yes_no"]) - {"background", *generic["values"]}:
            raise ValueError(f"{TEMPLATES_FILE.name}: a generic yes/no topic other than background needs its "
                             "generic.values")
        if not 2 <= generic["choices"] <= len(generic["colours"]):
            raise ValueError(f"{TEMPLATES_FILE.name}: generic.choices must be between 2 and the number of colours")
        context = self.data.get("text_qa", {}).get("context", "")
        if "{description}" not in context or "{question}" not in context:
            raise ValueError(f"{TEMPLATES_FILE.name}: text_qa.context must hold {{description}} and {{question}} (the "
                             "described person and the first question of a text_qa record)")

    # -- every template id, so a test can prove each one was exercised -------------------------------
    def template_ids(self) -> set[str]:
        d = self.data
        ids = {f"yes_no/{k}" for k in range(len(d["yes_no"]))}
        ids |= {f"multiple_choice/pick_one/{k}" for k in range(len(d["multiple_choice"]["pick_one"]))}
        ids |= {f"multiple_choice/binary/{k}" for k in range(len(d["multiple_choice"]["binary"]))}
        groups = d["multiple_choice"]["groups"]
        ids |= {f"multiple_choice/{g}/{k}" for g, v in groups.items() for k in range(len(v["q"]))}
        ids |= {f"open/{t}/{k}" for t, v in d["open"]["topics"].items() for k in range(len(v["q"]))}
        ids |= {f"description/{k}" for k in range(len(d["description"]["q"]))}
        ids |= {f"knowledge/{kind}/{k}" for kind, v in d["knowledge"].items() for k in range(len(v))}
        demo = d["demographics"]
        ids |= {f"demographics/{kind}/{t}" for kind in ("yes_no", "multiple_choice") for t in demo[kind]}
        ids |= {f"demographics/open/{t}/{k}" for t, v in demo["open"].items() for k in range(len(v))}
        ids |= {f"demographics/description/{k}" for k in range(len(demo["description"]["q"]))}
        ids |= {f"expression/{kind}/{k}" for kind in ("yes_no", "multiple_choice", "open")
                for k in range(len(d["expression"][kind]))}
        ids |= {f"expression/description/{k}" for k in range(len(d["expression"]["description"]["q"]))}
        ids |= {f"generic/open/{t}/{k}" for t, v in d["generic"]["open"].items() for k in range(len(v))}
        ids |= {f"generic/yes_no/{t}/{k}" for t, v in d["generic"]["yes_no"].items() for k in range(len(v))}
        return ids

    # -- attributes (CelebAMask-HQ-format faces) -------------------------------------------------------
    def attribute_yes_no(self, labels: FaceLabels, rng: random.Random, balance: bool = False) -> list[Turn]:
        """One yes/no turn per attribute, in a shuffled order; with `balance` (needs knowledge), an attribute is
        asked with its answer's `ask_share`, so each attribute is answered "Yes" and "No" about equally often."""
        if balance and not self.ask_share:
            raise ValueError("balanced yes/no questions need knowledge.json (its label counts)")
        turns = []
        for name in rng.sample(CELEBA_ATTRIBUTES, len(CELEBA_ATTRIBUTES)):
            holds = labels.has(name)
            if balance and rng.random() >= self.ask_share[name, holds]:
                continue
            k = rng.randrange(len(self.data["yes_no"]))
            t, a = self.data["yes_no"][k], self.attr[name]
            answer = (t["a_yes"] if holds else t["a_no"]).format(**a)
            turns.append(Turn(t["q"].format(**a), answer, "yes_no", f"yes_no/{k}", name, "yes" if holds else "no"))
        return turns

    def _choice(self, template: str, options: list[str], correct: int, template_id: str, target: str,
                fields: dict[str, Any] | None = None) -> Turn:
        letter = string.ascii_uppercase[correct]
        fields = {**(fields or {}), "options": options_text(options), "letter": letter, "option": options[correct]}
        return Turn(template["q"].format(**fields), template["a"].format(**fields), "multiple_choice",
                    template_id, target, letter)

    def attribute_multiple_choice(self, labels: FaceLabels, rng: random.Random, count: int) -> list[Turn]:
        """`count` turns: groups of exclusive attributes, one-of-four picks and two-option questions."""
        mc = self.data["multiple_choice"]
        held = [a for a in CELEBA_ATTRIBUTES if labels.has(a)]
        lacking = [a for a in CELEBA_ATTRIBUTES if not labels.has(a)]
        turns = []
        for group, spec in mc["groups"].items():
            present = [a for a in spec["attributes"] if labels.has(a)]
            if len(present) > 1:  # real labels can break an exclusion; such a face gets no group question
                continue
            options = [self.attr[a]["name"] for a in spec["attributes"]] + [spec["none"]]
            correct = spec["attributes"].index(present[0]) if present else len(options) - 1
            k = rng.randrange(len(spec["q"]))
            turns.append(self._choice({"q": spec["q"][k], "a": spec["a"]}, options, correct,
                                      f"multiple_choice/{group}/{k}", group))
        while len(turns) < count:
            if held and len(lacking) >= 3 and rng.random() < 0.5:
                right, wrong = rng.choice(held), rng.sample(lacking, 3)
                order = rng.sample([right, *wrong], 4)
                k = rng.randrange(len(mc["pick_one"]))
                turns.append(self._choice(mc["pick_one"][k], [self.attr[a]["name"] for a in order],
                                          order.index(right), f"multiple_choice/pick_one/{k}", right))
            else:
                name = rng.choice(CELEBA_ATTRIBUTES)
                options = rng.sample(["yes", "no"], 2)
                k = rng.randrange(len(mc["binary"]))
                turns.append(self._choice(mc["binary"][k], options, options.index("yes" if labels.has(name) else "no"),
                                          f"multiple_choice/binary/{k}", name, self.attr[name]))
        return rng.sample(turns, len(turns))[:count]

    def attribute_open(self, labels: FaceLabels, rng: random.Random) -> list[Turn]:
        """One open description per topic; the answer names exactly the topic's attributes that hold."""
        turns = []
        for topic, spec in self.data["open"]["topics"].items():
            held = [a for a in spec["attributes"] if labels.has(a)]
            answer = (self.data["open"]["answer"].format(clauses=join_clauses([self.attr[a]["pos"] for a in held]))
                      if held else spec["none"])
            k = rng.randrange(len(spec["q"]))
            turns.append(Turn(spec["q"][k], answer, "open", f"open/{topic}/{k}", topic, ",".join(held)))
        return turns

    def attribute_description(self, labels: FaceLabels, rng: random.Random) -> Turn:
        spec = self.data["description"]
        held = [a for a in CELEBA_ATTRIBUTES if labels.has(a)]
        k = rng.randrange(len(spec["q"]))
        answer = (spec["a"].format(clauses=join_clauses([self.attr[a]["pos"] for a in held]),
                                   names=", ".join(self.attr[a]["name"] for a in held)) if held else spec["none"])
        return Turn(spec["q"][k], answer, "description", f"description/{k}", "all_attributes", ",".join(held))

    def knowledge_statements(self, labels: FaceLabels, rng: random.Random, count: int) -> list[Turn]:
        """Mined rules and dependencies stated for this face; a rule the face's labels break is not stated."""
        if self.knowledge is None:
            raise ValueError("knowledge statements need knowledge.json (the mine_knowledge stage's output)")
        spec = self.data["knowledge"]
        candidates: list[tuple[str, str, str, dict]] = []
        for rule in self.knowledge["rules"]:
            a, b = rule["a"], rule["b"]
            facts = {"support": rule["support"], "violations": rule["violations"]}
            if rule["kind"] == "implication" and labels.has(a) and labels.has(b):
                candidates.append(("implication", a, b, facts))
            elif rule["kind"] == "exclusion":
                for x, y in ((a, b), (b, a)):
                    if labels.has(x) and not labels.has(y):
                        candidates.append(("exclusion", x, y, facts))
        for a, deps in self.dependencies.items():
            if labels.has(a):
                candidates += [("dependency", a, b, {"p": p}) for b, p in deps]
        turns = []
        for kind, a, b, facts in rng.sample(candidates, min(count, len(candidates))):
            k = rng.randrange(len(spec[kind]))
            t = spec[kind][k]
            fields = {"a": a, "b": b, "a_pos": self.attr[a]["pos"], "a_name": self.attr[a]["name"],
                      "b_pos": self.attr[b]["pos"], "b_neg": self.attr[b]["neg"], "b_name": self.attr[b]["name"],
                      **facts}
            holds = labels.has(b)
            answer = t["a"] if "a" in t else (t["a_yes"] if holds else t["a_no"])
            turns.append(Turn(t["q"].format(**fields), answer.format(**fields), "knowledge", f"knowledge/{kind}/{k}",
                              f"{kind}:{a}->{b}", "yes" if holds else "no"))
        return turns

    # -- a person given in words (the text_qa records) ------------------------------------------------
    def text_questions(self, dataset: str, labels: FaceLabels, rng: random.Random, count: int) -> list[Turn]:
        """`count` of the dataset's face questions about a person described in the first question, not seen in the
        photo: the answer forms an LLM knows from text alone. `labels` are the described person's (drawn apart
        from the photo's, so the turns teach reading, not faces); the first turn carries the description."""
        if dataset == "celebamask_hq":
            described = self.attribute_description(labels, rng).answer
            pool = (self.attribute_yes_no(labels, rng, bool(self.ask_share))
                    + self.attribute_multiple_choice(labels, rng, 2) + self.attribute_open(labels, rng))
        else:
            make = self.demographics if dataset == "utkface" else self.expression
            described = make("description", labels, rng)[0].answer
            pool = [t for kind in KINDS[:3] for t in make(kind, labels, rng)]
        turns = [replace(t, kind="text_qa", template=f"text_qa/{t.template}") for t in rng.sample(pool, count)]
        context = self.data["text_qa"]["context"].format(description=described, question=turns[0].question)
        return [replace(turns[0], question=context), *turns[1:]]

    # -- age / gender / race (UTKFace-format faces) ----------------------------------------------------
    def demographics(self, kind: str, labels: FaceLabels, rng: random.Random) -> list[Turn]:
        demo = self.data["demographics"]
        group = age_group(labels.age, self.data["age_groups"])
        gender, race = UTK_GENDERS[labels.gender], UTK_RACES[labels.race]
        facts = {"age": labels.age, "age_group": group, "gender": gender, "race": race}
        if kind == "yes_no":
            t = demo["yes_no"]
            threshold = rng.choice(self.data["age_thresholds"])
            asked_gender, asked_race = rng.choice(UTK_GENDERS), rng.choice(UTK_RACES)
            turns = []
            for tid, target, holds, fields in (
                    ("age_over", f"age>{threshold}", labels.age > threshold, {"threshold": threshold}),
                    ("gender", f"gender={asked_gender}", asked_gender == gender, {"gender_asked": asked_gender}),
                    ("race", f"race={asked_race}", asked_race == race, {"race_asked": asked_race})):
                fields = {**facts, **fields}
                answer = (t[tid]["a_yes"] if holds else t[tid]["a_no"]).format(**fields)
                turns.append(Turn(t[tid]["q"].format(**fields), answer, "yes_no", f"demographics/yes_no/{tid}",
                                  target, "yes" if holds else "no"))
            return turns
        if kind == "multiple_choice":
            t = demo["multiple_choice"]
            groups = [g[2] for g in self.data["age_groups"]]
            return [self._choice(t["age_group"], groups, groups.index(group), "demographics/multiple_choice/age_group",
                                 "age_group"),
                    self._choice(t["gender"], list(UTK_GENDERS), labels.gender, "demographics/multiple_choice/gender",
                                 "gender"),
                    self._choice(t["race"], list(UTK_RACES), labels.race, "demographics/multiple_choice/race", "race")]
        if kind == "open":
            turns = []
            for target, values in (("age", str(labels.age)), ("age_group", group), ("gender", gender),
                                   ("race", race)):
                k = rng.randrange(len(demo["open"][target]))
                t = demo["open"][target][k]
                turns.append(Turn(t["q"].format(**facts), t["a"].format(**facts), "open",
                                  f"demographics/open/{target}/{k}", target, values))
            return turns
        if kind == "description":
            k = rng.randrange(len(demo["description"]["q"]))
            return [Turn(demo["description"]["q"][k], demo["description"]["a"].format(**facts), "description",
                         f"demographics/description/{k}", "age_gender_race", f"{labels.age},{gender},{race}")]
        raise ValueError(f"unknown template kind {kind!r}")

    # -- expression (RAF-DB-format faces) ------------------------------------------------------------
    def expression(self, kind: str, labels: FaceLabels, rng: random.Random) -> list[Turn]:
        spec = self.data["expression"]
        name = EXPRESSIONS[labels.expression]
        facts = {"expression": name, "gloss": spec["gloss"][name]}
        if kind == "yes_no":
            others = [e for e in EXPRESSIONS if e != name]
            turns = []
            for asked in rng.sample([name, rng.choice(others)], 2):  # one true, one false, in random order
                k = rng.randrange(len(spec["yes_no"]))
                t = spec["yes_no"][k]
                fields = {**facts, "asked": asked}
                holds = asked == name
                turns.append(Turn(t["q"].format(**fields), (t["a_yes"] if holds else t["a_no"]).format(**fields),
                                  "yes_no", f"expression/yes_no/{k}", f"expression:{asked}", "yes" if holds else "no"))
            return turns
        if kind == "multiple_choice":
            k = rng.randrange(len(spec["multiple_choice"]))
            options = rng.sample(EXPRESSIONS, len(EXPRESSIONS))
            return [self._choice(spec["multiple_choice"][k], options, options.index(name),
                                 f"expression/multiple_choice/{k}", "expression")]
        if kind == "open":
            k = rng.randrange(len(spec["open"]))
            t = spec["open"][k]
            return [Turn(t["q"], t["a"].format(**facts), "open", f"expression/open/{k}", "expression", name)]
        if kind == "description":
            k = rng.randrange(len(spec["description"]["q"]))
            return [Turn(spec["description"]["q"][k], spec["description"]["a"].format(**facts), "description",
                         f"expression/description/{k}", "expression", name)]
        raise ValueError(f"unknown template kind {kind!r}")


def generic_turns(templates: Templates, scene: dict[str, str], rng: random.Random) -> list[Turn]:
    """Questions about the photo (background colour, brightness, where the face is): one open question per topic
    in a random form (a sentence, a name, a name from listed colours, a 0-99 number), then one true and one false
    yes/no about random topics: instruction following in every answer form, without facial knowledge."""
    spec = templates.data["generic"]
    values = {"background": spec["colours"], **spec["values"]}
    options = rng.sample([c for c in spec["colours"] if c != scene["background"]], spec["choices"] - 1)
    options.insert(rng.randrange(spec["choices"]), scene["background"])
    fields = {**scene, "Background": scene["background"].capitalize(), "Position": scene["position"].capitalize(),
              "options": ", ".join(options)}
    turns = []
    for topic, forms in spec["open"].items():
        k = rng.randrange(len(forms))
        said = "level" if "{level}" in forms[k]["a"] else topic
        turns.append(Turn(forms[k]["q"].format(**fields), forms[k]["a"].format(**fields), "generic",
                          f"generic/open/{topic}/{k}", f"scene:{said}", scene[said]))
    for holds in rng.sample([True, False], 2):
        topic = rng.choice(list(spec["yes_no"]))
        asked = scene[topic] if holds else rng.choice([v for v in values[topic] if v != scene[topic]])
        k = rng.randrange(len(spec["yes_no"][topic]))
        t = spec["yes_no"][topic][k]
        turns.append(Turn(t["q"].format(asked=asked), t["a_yes"] if holds else t["a_no"], "generic",
                          f"generic/yes_no/{topic}/{k}", f"scene:{topic}={asked}", "yes" if holds else "no"))
    return rng.sample(turns, len(turns))


def join_clauses(clauses: list[str]) -> str:
    """['a', 'b', 'c'] -> 'a, b and c'."""
    return clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]
