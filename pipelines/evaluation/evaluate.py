"""Evaluate systems on one task's test faces: the same questions to every system, answers read by one rule.

Faces come from the corpus' test split, whose maps the parser made (`build_corpus.parser_splits`), never
ground truth. The questions are the corpus templates' own (the first open / yes-no form of each), so a
model is asked what it was taught to answer. Systems: the trained FaceInsight (its generated answers and its
heads: the co-occurrence head for attributes, the answer heads for gender, race and expression), the
majority-class baseline from the train split's labels, the specialist CNN, the variants (general MLLM,
ablations: asked exactly as FaceInsight is), and any Hugging Face MLLM named in `evaluate.hf_models`
(hf_adapter.py).
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from model.faceinsight import FaceInsight
from model.knowledge_modules import answer_value, rules_tensor
from model.labels import CELEBA_ATTRIBUTES, EXPRESSIONS, TASKS, UTK_GENDERS, UTK_RACES
from model.specialist import HEADS, load_specialist
from pipelines.corpus.reader import load_faces
from pipelines.corpus.templates import Templates
from pipelines.evaluation.answers import parse_name, parse_number, parse_yes_no
from pipelines.evaluation.hf_adapter import HFImageTextModel
from pipelines.evaluation.metrics import UNREAD, age_metrics, attribute_metrics, classification_metrics, rule_violations
from pipelines.evaluation.report import HF_PREFIX, VARIANT_PREFIX
from pipelines.evaluation.uncertainty import METRICS, metric_interval
from pipelines.images import decode_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    """params.yaml: evaluate."""

    split: str = "test"
    max_faces: int = 0  # 0: every face of the split; smoke runs cap it
    batch_size: int = 64  # prompts per generation batch
    max_new_tokens: int = 12
    hf_models: dict[str, str] = field(default_factory=dict)  # name -> folder of a Hugging Face MLLM, asked too

    def __post_init__(self) -> None:
        if self.split not in ("val", "test"):
            raise ValueError(f"evaluate.split must be val or test, got {self.split!r}")
        if self.batch_size < 1 or self.max_new_tokens < 1 or self.max_faces < 0:
            raise ValueError("evaluate: batch_size and max_new_tokens must be >= 1, max_faces >= 0")
        if not isinstance(self.hf_models, dict):
            raise ValueError(f"evaluate.hf_models: a mapping name -> model folder, got {self.hf_models!r}")
        for name, path in self.hf_models.items():
            if not re.fullmatch(r"[A-Za-z0-9_-]+", str(name)) or not isinstance(path, str) or not path:
                raise ValueError(f"evaluate.hf_models.{name}: names are letters, digits, _ and - (they become "
                                 f"metric keys); the value is the model's folder, got {path!r}")


@dataclass(frozen=True)
class Question:
    """One question asked of every face: its target, text, and how its answer is read."""

    target: str
    text: str
    read: Callable[[str], int | None]


def questions(task: str, templates: Templates) -> list[Question]:
    d = templates.data
    if task == "attributes":
        return [Question(name, d["attributes"][name]["question"], parse_yes_no) for name in CELEBA_ATTRIBUTES]
    if task == "age_gender_race":
        opened = d["demographics"]["open"]
        return [Question("age", opened["age"][0]["q"], parse_number),
                Question("gender", opened["gender"][0]["q"], lambda t: parse_name(t, UTK_GENDERS)),
                Question("race", opened["race"][0]["q"], lambda t: parse_name(t, UTK_RACES))]
    if task == "expression":
        return [Question("expression", d["expression"]["open"][0]["q"], lambda t: parse_name(t, EXPRESSIONS))]
    raise ValueError(f"unknown task {task!r}; one of {TASKS}")


def truth(task: str, faces: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    labels = [f["labels"] for f in faces]
    if task == "attributes":
        table = np.array([lab["attributes"] for lab in labels], dtype=int)
        return {name: table[:, k] for k, name in enumerate(CELEBA_ATTRIBUTES)}
    if task == "age_gender_race":
        return {k: np.array([lab[k] for lab in labels], dtype=int) for k in ("age", "gender", "race")}
    return {"expression": np.array([lab["expression"] for lab in labels], dtype=int)}


def score(task: str, pred: dict[str, np.ndarray], true: dict[str, np.ndarray], templates: Templates,
          rules: np.ndarray) -> dict[str, Any]:
    """The task's metrics from predicted and true labels per target (UNREAD where no answer was read)."""
    if task == "attributes":
        p = np.stack([pred[n] for n in CELEBA_ATTRIBUTES], axis=1)
        t = np.stack([true[n] for n in CELEBA_ATTRIBUTES], axis=1)
        return attribute_metrics(p, t) | {"rules": rule_violations(p, rules)}
    if task == "age_gender_race":
        return {"age": age_metrics(pred["age"], true["age"], templates.data["age_groups"]),
                "gender": classification_metrics(pred["gender"], true["gender"], UTK_GENDERS),
                "race": classification_metrics(pred["race"], true["race"], UTK_RACES)}
    return {"expression": classification_metrics(pred["expression"], true["expression"], EXPRESSIONS)}


# -- systems -------------------------------------------------------------------------------------------

def majority_predictions(task: str, train_faces: list[dict[str, Any]], n: int) -> dict[str, np.ndarray]:
    """The train split's most frequent label per target (the median for age), for every test face."""
    out = {}
    for target, values in truth(task, train_faces).items():
        constant = int(np.median(values)) if target == "age" else int(np.bincount(values).argmax())
        out[target] = np.full(n, constant)
    return out


AnswerFn = Callable[[list[int], list[str]], list[str]]  # (face indices, questions) -> generated answers


def generated_predictions(answer: AnswerFn, n_faces: int, asked: list[Question], cfg: EvalConfig
                          ) -> tuple[dict[str, np.ndarray], list[dict[str, str]]]:
    """Every question to every face in batches, each answer read by its question's rule; a few examples."""
    pairs = [(i, q) for i in range(n_faces) for q in range(len(asked))]
    pred = {q.target: np.full(n_faces, UNREAD) for q in asked}
    examples: list[dict[str, str]] = []
    for start in tqdm(range(0, len(pairs), cfg.batch_size), desc="answering", unit="batch", leave=False):
        chunk = pairs[start:start + cfg.batch_size]
        said = answer([i for i, _ in chunk], [asked[q].text for _, q in chunk])
        for (i, q), text in zip(chunk, said, strict=True):
            value = asked[q].read(text)
            pred[asked[q].target][i] = UNREAD if value is None else value
            if len(examples) < 12:
                examples.append({"question": asked[q].text, "answer": text})
    return pred, examples


def specialist_predictions(model_dir: Path, faces: list[dict[str, Any]], task: str) -> dict[str, np.ndarray]:
    """The specialist CNN's predicted labels per target for the task's faces."""
    model = load_specialist(model_dir)
    images = np.stack([decode_image(f["image"], model.cfg.image_size) for f in faces])
    out = {k: [] for k in HEADS}
    for start in range(0, len(images), 256):
        pred = model.predict(images[start:start + 256])
        for k in HEADS:
            out[k].append(pred[k])
    pred = {k: np.concatenate(v) for k, v in out.items()}
    if task == "attributes":
        return {n: pred["attributes"][:, i] for i, n in enumerate(CELEBA_ATTRIBUTES)}
    if task == "age_gender_race":
        return {k: pred[k] for k in ("age", "gender", "race")}
    return {"expression": pred["expression"]}


def model_predictions(model, faces: list[dict[str, Any]], asked: list[Question], cfg: EvalConfig
                      ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Generated answers of a FaceInsight model, read per question; for attributes also its head's."""
    import torch

    side = model.cfg.vision.image_size
    images = np.stack([decode_image(f["image"], side) for f in faces])
    maps = None
    if model.seg_encoder is not None:
        maps = np.stack([decode_image(f["seg_map"], model.cfg.seg.image_size, "L") for f in faces]).astype(np.int64)
    model.eval()
    with torch.no_grad():
        pred, examples = generated_predictions(
            lambda idx, texts: model.answer(images[idx], None if maps is None else maps[idx], texts,
                                            max_new_tokens=cfg.max_new_tokens), len(faces), asked, cfg)
        extra: dict[str, Any] = {"examples": examples}
        if model.cooccurrence is not None and asked[0].target in CELEBA_ATTRIBUTES:
            decided = []  # the head's decisions at its val-chosen thresholds, as the text reads them
            for start in range(0, len(faces), cfg.batch_size):
                sl = slice(start, start + cfg.batch_size)
                m = None if maps is None else torch.as_tensor(maps[sl])
                decided.append(model.attribute_decisions(model.preprocess(images[sl]), m).numpy())
            head = np.concatenate(decided)
            extra["head"] = {n: head[:, k].astype(int) for k, n in enumerate(CELEBA_ATTRIBUTES)}
        elif model.answer_embedding is not None and asked[0].target not in CELEBA_ATTRIBUTES:
            extra["head"] = answer_head_predictions(model, images, maps, [q.target for q in asked], cfg.batch_size)
    return pred, extra


def answer_head_predictions(model, images: np.ndarray, maps: np.ndarray | None, targets: list[str], batch: int
                            ) -> dict[str, np.ndarray]:
    """The answer heads' label per face for the targets they cover (gender, race, expression, age as its class's
    year); a target no head predicts is UNREAD, so its cells stay empty."""
    import torch

    classes: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), batch):
        sl = slice(start, start + batch)
        m = None if maps is None else torch.as_tensor(maps[sl])
        for task, decided in model.answer_decisions(model.preprocess(images[sl]), m).items():
            classes.setdefault(task, []).append(answer_value(task, decided.numpy()))
    return {t: np.concatenate(classes[t]) if t in classes else np.full(len(images), UNREAD) for t in targets}


def hf_predictions(path: str, faces: list[dict[str, Any]], asked: list[Question], cfg: EvalConfig
                   ) -> tuple[dict[str, np.ndarray], list[dict[str, str]]]:
    """A Hugging Face MLLM asked the same questions about the same faces (the image alone: it has no maps)."""
    model = HFImageTextModel.load(path)
    with Image.open(io.BytesIO(faces[0]["image"])) as first:
        side = first.size[0]  # as stored in the corpus; the model's processor resizes
    images = np.stack([decode_image(f["image"], side) for f in faces])
    return generated_predictions(lambda idx, texts: model.answer(images[idx], texts, cfg.max_new_tokens),
                                 len(faces), asked, cfg)


def summary(task: str, metrics: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of a task's metrics (the results table's cells)."""
    if task == "attributes":
        return {"mean_accuracy": metrics["mean_accuracy"], "mean_balanced_accuracy": metrics["mean_balanced_accuracy"],
                "mean_balanced_accuracy_drawn": metrics["mean_balanced_accuracy_drawn"],
                "macro_f1": metrics["macro_f1"], "rule_violation_rate": metrics["rules"]["violation_rate"]}
    if task == "age_gender_race":
        return {"age_mae": metrics["age"]["mae"], "age_group_accuracy": metrics["age"]["age_group_accuracy"],
                "gender_accuracy": metrics["gender"]["accuracy"], "race_accuracy": metrics["race"]["accuracy"],
                "race_macro_f1": metrics["race"]["macro_f1"]}
    return {"war": metrics["expression"]["accuracy"], "uar": metrics["expression"]["uar"]}


def evaluate_task(task: str, corpus: Path, model_dir: Path | None, knowledge: dict[str, Any],
                  cfg: EvalConfig, specialist: Path | None = None, tuned_dir: Path | None = None,
                  variants: dict[str, tuple[str, Path]] | None = None) -> dict[str, Any]:
    """Every system on the task's `cfg.split` faces: {"faces", "systems": {name: {"summary", "metrics"}}}.
    `variants`: name -> (row label, model folder) of the baselines and ablations (train_variant@<name>)."""
    templates = Templates.load(knowledge=knowledge)
    asked = questions(task, templates)
    faces = load_faces(corpus, cfg.split, task, cfg.max_faces)
    true = truth(task, faces)
    rules = rules_tensor(knowledge.get("rules", [])).numpy()
    systems: dict[str, dict[str, Any]] = {}

    def add(name: str, pred: dict[str, np.ndarray], **extra: Any) -> None:
        metrics = score(task, pred, true, templates, rules)
        headline = summary(task, metrics)
        if task == "age_gender_race" and (pred["age"] == UNREAD).all():  # no age read (the heads have none)
            headline.update(age_mae=None, age_group_accuracy=None)
        # per-face labels, in the faces' order: the report's paired bootstrap resamples faces across systems
        systems[name] = {"summary": headline, "metrics": metrics,
                         "predictions": {k: np.asarray(v).astype(int).tolist() for k, v in pred.items()},
                         "intervals": intervals(task, pred, true), **extra}
        log.info("%s / %s: %s", task, name, systems[name]["summary"])

    add("majority", majority_predictions(task, load_faces(corpus, "train", task), len(faces)))
    if specialist is not None:
        add("specialist", specialist_predictions(specialist, faces, task))
    # the training-free multi-task model, the one fine-tuned on this task (finetune_task@<task>), the variants
    models = [("faceinsight", model_dir, {}), ("faceinsight_tuned", tuned_dir, {})]
    models += [(f"{VARIANT_PREFIX}{name}", folder, {"label": label})
               for name, (label, folder) in (variants or {}).items()]
    for name, folder, about in models:
        if folder is None:
            continue

        pred, extra = model_predictions(FaceInsight.from_pretrained(folder), faces, asked, cfg)
        add(name, pred, examples=extra["examples"], **about)
        if "head" in extra:
            add(f"{name}_head", extra["head"], **about)
    for name, path in cfg.hf_models.items():
        pred, examples = hf_predictions(path, faces, asked, cfg)
        add(f"{HF_PREFIX}{name}", pred, examples=examples, path=str(path))
    map_sources = sorted({f["map_source"] for f in faces})
    return {"task": task, "split": cfg.split, "faces": len(faces), "map_sources": map_sources,
            "face_keys": face_keys(faces), "questions": [q.text for q in asked], "systems": systems,
            "truth": {k: np.asarray(v).astype(int).tolist() for k, v in true.items()}}


def face_keys(faces: list[dict[str, Any]]) -> list[str]:
    """Each face as `<face_id>:<digest of its image>`, in the evaluation's order: two evaluations' answers pair face
    by face (the registry gate's paired interval against the champion) only where these lists are equal."""
    return [f"{f['face_id']}:{hashlib.sha1(f['image']).hexdigest()[:12]}" for f in faces]


def intervals(task: str, pred: dict[str, np.ndarray], true: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """95% bootstrap intervals of the task's headline numbers that uncertainty.METRICS knows."""
    return {key.split(".", 1)[1]: metric_interval(key, pred, true).as_dict()
            for key in METRICS if key.startswith(f"{task}.")}
