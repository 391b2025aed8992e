"""Per-face record building: region statistics, label conventions, LLaVA conversations."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from model.labels import CELEBA_ATTRIBUTES, PART_LABEL
from pipelines.corpus.records import (
    IMAGE_TOKEN,
    RecordPlan,
    encode_png,
    face_labels,
    face_records,
    region_stats,
)
from pipelines.corpus.templates import Templates
from pipelines.knowledge import KnowledgeConfig, mine_knowledge


def test_region_stats_on_a_drawn_map():
    label = np.zeros((10, 20), np.uint8)
    label[2:6, 4:10] = PART_LABEL["skin"]  # 4 rows x 6 columns
    label[8, 19] = PART_LABEL["hat"]
    stats = {s["part"]: s for s in region_stats(label)}
    assert set(stats) == {"skin", "hat"}
    assert stats["skin"]["area"] == 24 / 200
    assert stats["skin"]["bbox"] == [4 / 20, 2 / 10, 10 / 20, 6 / 10]
    assert stats["skin"]["centroid"] == [7 / 20, 4 / 10]
    assert stats["hat"]["bbox"] == [19 / 20, 8 / 10, 1.0, 9 / 10]


def test_png_round_trip_is_lossless():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    label = rng.integers(0, 19, (16, 16), dtype=np.uint8)
    for array in (image, label):
        with Image.open(io.BytesIO(encode_png(array))) as img:
            assert np.array_equal(np.asarray(img), array)
    assert encode_png(image) == encode_png(image.copy())


def test_face_labels_convert_the_manifest_conventions():
    labels = face_labels({"attributes": [1, -1] * 20, "age": None, "gender": None, "race": None, "expression": 7})
    assert labels.attributes[:4] == (1, 0, 1, 0) and labels.expression == 6 and labels.age is None


def _face(dataset: str, **labels) -> dict:
    return {"id": "17", "dataset": dataset, "split": "train", "image_png": b"img", "map_png": b"map",
            "map_source": "ground_truth", "regions": [], "attributes": None, "age": None, "gender": None,
            "race": None, "expression": None, **labels}


def test_face_records_are_llava_conversations_and_cover_every_attribute():
    rng = np.random.default_rng(3)
    table = rng.random((200, 40)) < 0.4
    templates = Templates.load(knowledge=mine_knowledge(table, KnowledgeConfig(min_support=5, min_expected=1)))
    attrs = [1 if v else -1 for v in table[0]]
    plan = RecordPlan(balance_yes_no=False)  # every attribute asked once
    records = face_records(_face("celebamask_hq", attributes=attrs), templates, plan, seed=5)
    kinds = [r["kind"] for r in records]
    assert kinds[:5] == ["yes_no"] * 5 and kinds[5:9] == ["multiple_choice", "open", "description", "knowledge"]
    asked = [t["target"] for r in records if r["kind"] == "yes_no" for t in r["turns"]]
    assert sorted(asked) == sorted(CELEBA_ATTRIBUTES)
    for r in records:
        conv = r["conversations"]
        assert [c["from"] for c in conv] == ["human", "gpt"] * len(r["turns"])
        assert conv[0]["value"].startswith(IMAGE_TOKEN + "\n")
        assert sum(IMAGE_TOKEN in c["value"] for c in conv) == 1
        assert r["task"] == "attributes" and r["image"] == b"img" and r["labels"]["attributes"][0] == int(table[0, 0])
    assert len({r["id"] for r in records}) == len(records)
    # seeded per face: the same face gives the same records; another seed gives others
    assert face_records(_face("celebamask_hq", attributes=attrs), templates, plan, seed=5) == records
    assert face_records(_face("celebamask_hq", attributes=attrs), templates, plan, seed=6) != records


def test_balanced_yes_no_asks_each_attribute_yes_and_no_about_equally():
    # a rare attribute (5% positive) and a common one (90%): unbalanced, "No" and "Yes" would dominate
    rng = np.random.default_rng(4)
    table = rng.random((2000, 40)) < 0.3
    table[:, 4] = rng.random(2000) < 0.05  # Bald
    table[:, 24] = rng.random(2000) < 0.9  # No_Beard
    templates = Templates.load(knowledge=mine_knowledge(table, KnowledgeConfig(min_support=5, min_expected=1)))
    answers: dict[str, list[str]] = {"Bald": [], "No_Beard": []}
    for k in range(600):
        attrs = [1 if v else -1 for v in table[k]]
        for r in face_records(_face("celebamask_hq", attributes=attrs, id=str(k)), templates, RecordPlan(), seed=1):
            for t in r["turns"]:
                if r["kind"] == "yes_no" and t["target"] in answers:
                    answers[t["target"]].append(t["value"])
    for name, said in answers.items():
        share = said.count("yes") / len(said)
        assert 0.35 < share < 0.65, (name, share, len(said))
    # unbalanced, the same faces answer Bald "no" ~95% of the time
    plain = [t["value"] for k in range(600) for r in face_records(
        _face("celebamask_hq", attributes=[1 if v else -1 for v in table[k]], id=str(k)), templates,
        RecordPlan(balance_yes_no=False), seed=1) if r["kind"] == "yes_no" for t in r["turns"] if t["target"] == "Bald"]
    assert plain.count("no") / len(plain) > 0.9


def test_utkface_and_rafdb_faces_get_their_tasks():
    templates = Templates.load()
    utk = face_records(_face("utkface", age=34, gender=1, race=2), templates, RecordPlan(), seed=0)
    raf = face_records(_face("rafdb", expression=4), templates, RecordPlan(), seed=0)
    assert [r["kind"] for r in utk] == [r["kind"] for r in raf] == ["yes_no", "multiple_choice", "open", "description",
                                                                     "text_qa"]
    assert {r["task"] for r in utk} == {"age_gender_race"} and {r["task"] for r in raf} == {"expression"}
    assert "34-year-old female" in utk[3]["conversations"][1]["value"]
    assert "Happiness" in raf[2]["conversations"][1]["value"]  # RAF-DB label 4 = Happiness


def test_turns_come_in_no_fixed_order():
    """UTKFace's open record asks age, age group, gender and race: across faces each question is sometimes the
    first turn (validation and evaluation ask it first; a fixed third place left gender unlearned)."""
    templates = Templates.load()
    first = set()
    for k in range(40):
        records = face_records(_face("utkface", id=str(k), age=34, gender=1, race=2), templates, RecordPlan(), seed=0)
        opened = next(r for r in records if r["kind"] == "open")
        first.add(opened["turns"][0]["target"])
        assert opened["conversations"][0]["value"].startswith(IMAGE_TOKEN + "\n")  # the image opens whatever is first
    assert first == {"age", "age_group", "gender", "race"}


def test_text_qa_asks_of_someone_described_in_words_apart_from_the_photo():
    """The text_qa record: the first question quotes a description of someone drawn apart from the photo, and the
    answers follow the description; the face's other records are the same with it or without it."""
    templates = Templates.load()
    described = []
    for k in range(200):
        face = _face("utkface", id=str(k), age=34, gender=1, race=2)  # every photo: a 34-year-old woman
        records = face_records(face, templates, RecordPlan(), seed=0)
        text = records[-1]
        assert text["kind"] == "text_qa" and len(text["turns"]) == 3
        opening = text["conversations"][0]["value"]
        assert opening.startswith(IMAGE_TOKEN + "\nGoing by this description of someone, not by the photo: ")
        age, gender = re.search(r'"A (\d+)-year-old (male|female) ', opening).groups()
        described.append((int(age), gender))
        for turn, answer in zip(text["turns"], text["conversations"][1::2], strict=True):
            if "/open/" in turn["template"] and turn["target"] in ("gender", "age"):  # read the answer back
                assert turn["value"] == {"gender": gender, "age": age}[turn["target"]]
                assert re.search(rf"(?<![a-z]){turn['value']}\b", answer["value"]), answer
        assert face_records(face, templates, RecordPlan(text_turns=0), seed=0) == records[:-1]
    assert 0.35 < sum(g == "female" for _, g in described) / len(described) < 0.65  # not the photo's gender
    assert len({a for a, _ in described}) > 40


def test_text_turns_out_of_range_are_refused():
    with pytest.raises(ValueError, match="text_turns must be 0 to 4"):
        RecordPlan(text_turns=5)
