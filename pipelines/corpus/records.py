"""One face -> corpus records: load and resize, region statistics, PNG encoding, LLaVA conversations.

Plain functions over plain rows, so the Ray Data pipeline (build.py) and the single-process
baseline of benchmarks/corpus_throughput.py run exactly the same code.
"""

from __future__ import annotations

import io
import random
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from model.labels import CELEBA_ATTRIBUTES, EXPRESSIONS, PARSING_CLASSES, UTK_GENDERS, UTK_RACES
from pipelines.corpus.templates import KINDS, FaceLabels, Templates, Turn, generic_turns  # KINDS: a record's `kind`
from pipelines.images import decode_image, resize_map
from pipelines.label_maps import compose_label_map, part_of_mask_file
from pipelines.storage import read_url

IMAGE_TOKEN = "<image>"
TASKS = {"celebamask_hq": "attributes", "utkface": "age_gender_race", "rafdb": "expression"}
# what FaceInsight trains on: every kind about the photo. text_qa asks about someone described in words, and its
# knowledge and answer modules write the photo's verdicts onto the words that name an attribute or a task: trained on
# another person's answers it would learn to distrust them. The general variant, with no face Q&A, learns forms there.
PHOTO_KINDS = tuple(k for k in KINDS if k != "text_qa")
# reference colours generic questions name a background by (the nearest one wins)
SCENE_COLOURS = {"black": (25, 25, 25), "white": (235, 235, 235), "gray": (128, 128, 128), "red": (200, 40, 40),
                 "green": (50, 170, 60), "blue": (40, 70, 200), "yellow": (225, 210, 50), "orange": (235, 135, 40),
                 "purple": (130, 50, 170), "pink": (235, 140, 190), "brown": (125, 80, 40), "cyan": (50, 195, 205)}


@dataclass(frozen=True)
class RecordPlan:
    """How many records of each kind a face gets (params.yaml: build_corpus)."""

    questions_per_record: int = 8  # QA turns packed into one conversation (yes/no: the attributes asked, in chunks)
    multiple_choice_turns: int = 8
    knowledge_turns: int = 4
    text_turns: int = 3  # questions about a person described in words (the text_qa record), 0: no such record
    balance_yes_no: bool = True  # ask each attribute's commoner answer only as often as its rarer one occurs

    def __post_init__(self) -> None:
        if min(self.questions_per_record, self.multiple_choice_turns, self.knowledge_turns) < 1:
            raise ValueError("build_corpus: questions_per_record, multiple_choice_turns, knowledge_turns must be >= 1")
        if not 0 <= self.text_turns <= 4:  # an expression face has 4 questions to draw from
            raise ValueError(f"build_corpus.records.text_turns must be 0 to 4, got {self.text_turns}")


def describe(exc: Exception) -> str:
    """An exception as text without memory addresses, so two runs write the same quarantine bytes."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", f"{type(exc).__name__}: {exc}")


def load_face(row: dict[str, Any], size: int) -> dict[str, Any]:
    """Read the image (and masks) of a manifest row; a failure becomes `error` = (reason, detail)."""
    out = {"image_array": np.zeros((size, size, 3), np.uint8), "gt_map": np.zeros((size, size), np.uint8),
           "has_gt": False, "error_reason": "", "error_detail": ""}
    try:
        out["image_array"] = decode_image(read_url(row["image"]), size)
    except FileNotFoundError:
        return {**out, "error_reason": "missing_image", "error_detail": f"{row['image']}: gone since ingest"}
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this record's problem, not the run's
        return {**out, "error_reason": "unreadable_image", "error_detail": f"{row['image']}: {describe(exc)}"}
    if len(row["masks"]):
        masks = {}
        for url in row["masks"]:
            try:
                with Image.open(io.BytesIO(read_url(url))) as img:
                    masks[part_of_mask_file(url)] = np.asarray(img.convert("L")) > 0
            except Exception as exc:  # noqa: BLE001
                return {**out, "error_reason": "unreadable_mask", "error_detail": f"{url}: {describe(exc)}"}
        out["gt_map"] = resize_map(compose_label_map(masks), size)
        out["has_gt"] = True
    return out


def region_stats(label_map: np.ndarray) -> list[dict[str, Any]]:
    """Per part present: area share, bounding box and centroid, in [0, 1] image coordinates."""
    h, w = label_map.shape
    classes = np.arange(1, len(PARSING_CLASSES))[:, None, None]
    onehot = label_map[None] == classes  # (18, H, W): one pass for every part at once
    rows, cols = onehot.any(axis=2), onehot.any(axis=1)
    area = onehot.sum(axis=(1, 2))
    present = np.flatnonzero(area)
    ys, xs = np.arange(h) + 0.5, np.arange(w) + 0.5
    cy = (onehot.sum(axis=2) @ ys)[present] / area[present] / h
    cx = (onehot.sum(axis=1) @ xs)[present] / area[present] / w
    y0 = rows[present].argmax(axis=1) / h
    y1 = (h - rows[present][:, ::-1].argmax(axis=1)) / h
    x0 = cols[present].argmax(axis=1) / w
    x1 = (w - cols[present][:, ::-1].argmax(axis=1)) / w
    share = area[present] / (h * w)
    return [{"part": PARSING_CLASSES[k + 1], "area": round(float(a), 6), "bbox": [round(float(v), 4) for v in b],
             "centroid": [round(float(cx_), 4), round(float(cy_), 4)]}
            for k, a, b, cx_, cy_ in zip(present, share, zip(x0, y0, x1, y1, strict=True), cx, cy, strict=True)]


def scene_facts(image: np.ndarray, label_map: np.ndarray) -> dict[str, str]:
    """What generic questions ask about a photo: the background's colour name (mean of the background
    pixels of the map), brightness (a word, and a 0-99 level), and where the face (skin) sits left to right."""
    background = label_map == 0
    pixels = image[background] if background.sum() >= 16 else image.reshape(-1, 3)
    mean = pixels.reshape(-1, 3).mean(0)
    names = list(SCENE_COLOURS)
    colour = names[int(np.argmin([np.sum((mean - np.array(SCENE_COLOURS[c])) ** 2) for c in names]))]
    skin = np.flatnonzero((label_map == PARSING_CLASSES.index("skin")).any(axis=0))
    cx = (skin.mean() + 0.5) / label_map.shape[1] if skin.size else 0.5
    return {"background": colour, "brightness": "bright" if image.mean() > 127 else "dark",
            "level": str(min(99, int(image.mean() / 255 * 100))),
            "position": "left" if cx < 0.47 else "right" if cx > 0.53 else "centre"}


def encode_png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # level 1: ~3x faster than the default 6 for ~10% more bytes (Parquet's zstd squeezes the rest)
    Image.fromarray(array).save(buf, format="PNG", optimize=False, compress_level=1)
    return buf.getvalue()


def face_labels(row: dict[str, Any]) -> FaceLabels:
    """Manifest labels -> corpus labels (CelebA's -1/1 -> 0/1; RAF-DB's 1..7 -> 0..6)."""
    attrs = row.get("attributes")
    return FaceLabels(
        attributes=tuple(int(v > 0) for v in attrs) if attrs is not None and len(attrs) else None,
        age=None if row.get("age") is None else int(row["age"]),
        gender=None if row.get("gender") is None else int(row["gender"]),
        race=None if row.get("race") is None else int(row["race"]),
        expression=None if row.get("expression") is None else int(row["expression"]) - 1,
    )


def face_conversations(dataset: str, labels: FaceLabels, templates: Templates, plan: RecordPlan,
                       rng: random.Random) -> list[tuple[str, list[Turn]]]:
    """(kind, turns) per record of one face."""
    chunk = plan.questions_per_record
    if dataset == "celebamask_hq":
        yes_no = templates.attribute_yes_no(labels, rng, plan.balance_yes_no)
        out = [("yes_no", yes_no[k:k + chunk]) for k in range(0, len(yes_no), chunk)]
        out.append(("multiple_choice", templates.attribute_multiple_choice(labels, rng, plan.multiple_choice_turns)))
        out.append(("open", templates.attribute_open(labels, rng)))
        out.append(("description", [templates.attribute_description(labels, rng)]))
        knowledge = templates.knowledge_statements(labels, rng, plan.knowledge_turns)
        return out + ([("knowledge", knowledge)] if knowledge else [])
    make = templates.demographics if dataset == "utkface" else templates.expression
    return [(kind, make(kind, labels, rng)) for kind in KINDS[:4]]


def scene_conversation(templates: Templates, scene: dict[str, str] | None, rng: random.Random
                       ) -> list[tuple[str, list[Turn]]]:
    """The generic record of a face whose photo facts are known (build_corpus computes them)."""
    return [("generic", generic_turns(templates, scene, rng))] if scene else []


def described_labels(dataset: str, templates: Templates, rng: random.Random) -> FaceLabels:
    """A person to describe in words, drawn apart from any photo: attributes at their train-split rates (or
    half and half without knowledge), age 1-90, gender, race and expression uniform."""
    if dataset == "celebamask_hq":
        k = templates.knowledge
        rates = [c / k["n_train"] for c in k["counts"]] if k else [0.5] * len(CELEBA_ATTRIBUTES)
        return FaceLabels(attributes=tuple(int(rng.random() < p) for p in rates))
    if dataset == "utkface":
        return FaceLabels(age=rng.randint(1, 90), gender=rng.randrange(len(UTK_GENDERS)),
                          race=rng.randrange(len(UTK_RACES)))
    return FaceLabels(expression=rng.randrange(len(EXPRESSIONS)))


def text_conversation(dataset: str, templates: Templates, plan: RecordPlan, rng: random.Random
                      ) -> list[tuple[str, list[Turn]]]:
    """The text_qa record of a face: questions about someone else, described in words (not shuffled: the first
    turn carries the description)."""
    if not plan.text_turns:
        return []
    return [("text_qa", templates.text_questions(dataset, described_labels(dataset, templates, rng), rng,
                                                 plan.text_turns))]


def conversation(turns: list[Turn]) -> list[dict[str, str]]:
    """LLaVA form: the first human turn opens with the image token."""
    out = []
    for k, turn in enumerate(turns):
        out.append({"from": "human", "value": (f"{IMAGE_TOKEN}\n" if k == 0 else "") + turn.question})
        out.append({"from": "gpt", "value": turn.answer})
    return out


RECORD_SCHEMA = pa.schema([
    ("id", pa.string()), ("face_id", pa.string()), ("dataset", pa.string()), ("split", pa.string()),
    ("task", pa.string()), ("kind", pa.string()),
    ("image", pa.binary()), ("seg_map", pa.binary()), ("map_source", pa.string()),
    ("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))),
    ("turns", pa.list_(pa.struct([("template", pa.string()), ("target", pa.string()), ("value", pa.string())]))),
    ("labels", pa.struct([("attributes", pa.list_(pa.int8())), ("age", pa.int16()), ("gender", pa.int8()),
                          ("race", pa.int8()), ("expression", pa.int8())])),
    ("regions", pa.list_(pa.struct([("part", pa.string()), ("area", pa.float32()),
                                    ("bbox", pa.list_(pa.float32())), ("centroid", pa.list_(pa.float32()))]))),
])


def face_records(face: dict[str, Any], templates: Templates, plan: RecordPlan, seed: int) -> list[dict[str, Any]]:
    """All corpus records of one encoded face (a row with image_png, map_png, regions, labels)."""
    labels = face_labels(face)
    rng = random.Random(f"{seed}:{face['dataset']}:{face['id']}")  # str seeds are stable across processes
    common = {
        "face_id": face["id"], "dataset": face["dataset"], "split": face["split"], "task": TASKS[face["dataset"]],
        "image": face["image_png"], "seg_map": face["map_png"], "map_source": face["map_source"],
        "labels": {"attributes": list(labels.attributes) if labels.attributes else None, "age": labels.age,
                   "gender": labels.gender, "race": labels.race, "expression": labels.expression},
        "regions": face["regions"],
    }
    records = []
    conversations = face_conversations(face["dataset"], labels, templates, plan, rng)
    # the photo questions draw from their own stream: a change to them leaves the face's other records as they were
    scene_rng = random.Random(f"{seed}:{face['dataset']}:{face['id']}:scene")
    conversations += scene_conversation(templates, face.get("scene"), scene_rng)
    conversations += text_conversation(face["dataset"], templates, plan,
                                       random.Random(f"{seed}:{face['dataset']}:{face['id']}:text"))
    for k, (kind, turns) in enumerate(conversations):
        # turns in a random order (LLaVA's instruction data has no fixed one): UTKFace's open gender question was
        # always third, after the age questions, and the model never answered it asked first (gender 0.08)
        turns = turns if kind == "text_qa" else rng.sample(turns, len(turns))
        records.append({"id": f"{face['dataset']}/{face['id']}/{k:02d}-{kind}", "kind": kind, **common,
                        "conversations": conversation(turns),
                        "turns": [{"template": t.template, "target": t.target, "value": t.value} for t in turns]})
    return records
