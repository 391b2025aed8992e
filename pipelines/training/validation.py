"""FaceInsight's validation during training: a fixed sample of val faces, scored at every checkpoint.

The run page then shows a learning curve, not only the training loss: the co-occurrence head's attribute
balanced accuracy, the answer heads' gender accuracy, age MAE and expression UAR, and the generated answers' yes/no
balanced accuracy on attribute questions, accuracy on the gender question, MAE on the age question and UAR on the
expression question (short greedy decoding, read by evaluation's own rules).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from model.knowledge_modules import answer_value
from model.labels import CELEBA_ATTRIBUTES, EXPRESSIONS, UTK_GENDERS
from pipelines.corpus.reader import load_faces
from pipelines.evaluation.answers import parse_name, parse_number, parse_yes_no
from pipelines.images import decode_image

QUESTIONS_PER_FACE = 8  # attribute questions asked of each val face (a fixed, seeded choice)


def val_sample(corpus: Path, faces: int, image_size: int, seg_size: int, seed: int) -> dict[str, Any]:
    """Up to `faces` val faces each of the attribute, age/gender/race and expression tasks, as arrays."""
    out: dict[str, Any] = {}
    for task in ("attributes", "age_gender_race", "expression"):
        rows = load_faces(corpus, "val", task, faces, required=False)
        if not rows:
            continue
        out[task] = face_arrays(rows, image_size, seg_size)
        if task == "attributes":
            out[task]["labels"] = np.array([r["labels"]["attributes"] for r in rows], dtype=np.int64)
            rng = np.random.default_rng(seed)
            out[task]["asked"] = np.stack([rng.choice(len(CELEBA_ATTRIBUTES), QUESTIONS_PER_FACE, replace=False)
                                           for _ in rows])
        else:
            key = "gender" if task == "age_gender_race" else "expression"
            out[task]["labels"] = np.array([r["labels"][key] for r in rows], dtype=np.int64)
            if task == "age_gender_race":
                out[task]["age"] = np.array([r["labels"]["age"] for r in rows], dtype=np.int64)
    return out


def face_arrays(rows: list[dict[str, Any]], image_size: int, seg_size: int) -> dict[str, np.ndarray]:
    """Corpus face rows -> their decoded images (N, H, W, 3) and parsing maps (N, H, W), as the model takes them."""
    return {"image": np.stack([decode_image(r["image"], image_size) for r in rows]),
            "seg_map": np.stack([decode_image(r["seg_map"], seg_size, "L") for r in rows]).astype(np.int64)}


def threshold_faces(corpus: Path, image_size: int, seg_size: int) -> dict[str, np.ndarray] | None:
    """Every val face of the attribute task as arrays, with its labels: what fit_val_thresholds fits on (the maps
    as evaluation gives them); None where the corpus has none."""
    rows = load_faces(corpus, "val", "attributes", required=False)
    if not rows:
        return None
    return face_arrays(rows, image_size, seg_size) | {
        "labels": np.array([r["labels"]["attributes"] for r in rows], dtype=np.int64)}


def fit_val_thresholds(model, faces: dict[str, np.ndarray] | None) -> np.ndarray | None:
    """Choose the attribute head's per-attribute decision thresholds on the val faces (threshold_faces, at the
    model's own image and map sizes); None where the model has no attribute head or there are no such faces."""
    import torch

    if model.cooccurrence is None or faces is None:
        return None
    if faces["image"].shape[1] != model.cfg.vision.image_size or faces["seg_map"].shape[1] != model.cfg.seg.image_size:
        raise ValueError(f"val faces of {faces['image'].shape[1]} px (maps {faces['seg_map'].shape[1]} px) for a model "
                         f"of {model.cfg.vision.image_size} px (maps {model.cfg.seg.image_size} px)")
    maps = torch.as_tensor(faces["seg_map"]) if model.seg_encoder is not None else None
    return model.fit_attribute_thresholds(model.preprocess(faces["image"]), maps, faces["labels"])


def _mean_recall(pred: np.ndarray, truth: np.ndarray) -> float:
    """Unweighted average recall over the classes present (an unread answer, -1, is wrong): balanced accuracy for
    yes/no, UAR for expression."""
    return float(np.mean([(pred[truth == c] == c).mean() for c in np.unique(truth)])) if len(truth) else 0.0


def _said(model, encoded, question: str, names, batch: int, tokens: int) -> np.ndarray:
    """The class each encoded face's generated answer to `question` names (-1 unread); names None: the number it
    gives."""
    n = len(encoded.visual)
    answers = []
    for start in range(0, n, batch):
        rows = list(range(start, min(start + batch, n)))
        answers += model.answer_faces(encoded.rows(rows), None, [question] * len(rows), max_new_tokens=tokens)
    read = [parse_number(a) if names is None else parse_name(a, names) for a in answers]
    return np.array([-1 if k is None else k for k in read])


def val_scores(model, sample: dict[str, Any], questions: dict[str, str], batch: int = 64) -> dict[str, float]:
    """questions: attribute name -> its yes/no question, and "gender" -> the gender question (templates'). Each
    task's faces go through the towers once (FaceInsight.encode_faces); every question and head reads that."""
    out: dict[str, float] = {}
    maps = model.seg_encoder is not None
    attrs = sample.get("attributes")
    if attrs is not None:
        labels = attrs["labels"]
        encoded = model.encode_faces(attrs["image"], attrs["seg_map"] if maps else None)
        if model.cooccurrence is not None:
            decided = model.face_decisions(encoded)["attributes"].numpy()
            per = [_mean_recall(decided[:, j].astype(int), labels[:, j]) for j in range(labels.shape[1])
                   if len(np.unique(labels[:, j])) == 2]
            out["val_head_balanced_accuracy"] = float(np.mean(per))
        pairs = [(i, int(j)) for i in range(len(labels)) for j in attrs["asked"][i]]
        said, truth = [], []
        for start in range(0, len(pairs), batch):
            chunk = pairs[start:start + batch]
            first = sorted({i for i, _ in chunk})  # this chunk's faces, and each question's row among them
            answers = model.answer_faces(encoded.rows(first), [first.index(i) for i, _ in chunk],
                                         [questions[CELEBA_ATTRIBUTES[j]] for _, j in chunk], max_new_tokens=3)
            said += [parse_yes_no(a) for a in answers]
            truth += [int(labels[i, j]) for i, j in chunk]
        read = np.array([s is not None for s in said])
        pred = np.array([-1 if s is None else s for s in said])
        out["val_yes_no_balanced_accuracy"] = _mean_recall(pred, np.array(truth))
        out["val_unread_share"] = float(1 - read.mean())
    demo = sample.get("age_gender_race")
    if demo is not None:
        encoded = model.encode_faces(demo["image"], demo["seg_map"] if maps else None)
        heads = model.face_decisions(encoded)
        pred = _said(model, encoded, questions["gender"], UTK_GENDERS, batch, 4)
        out["val_gender_accuracy"] = float((pred == demo["labels"]).mean())
        if "gender" in heads:
            out["val_head_gender_accuracy"] = float((heads["gender"].numpy() == demo["labels"]).mean())
        if "age" in questions and "age" in demo:
            age = _said(model, encoded, questions["age"], None, batch, 4)
            read = age >= 0  # MAE over the answers that gave a number, as evaluation reads them
            out["val_age_mae"] = float(np.abs(age[read] - demo["age"][read]).mean()) if read.any() else 100.0
            if "age" in heads:
                head = answer_value("age", heads["age"].numpy())
                out["val_head_age_mae"] = float(np.abs(head - demo["age"]).mean())
    expression = sample.get("expression")
    if expression is not None and "expression" in questions:
        encoded = model.encode_faces(expression["image"], expression["seg_map"] if maps else None)
        said = _said(model, encoded, questions["expression"], EXPRESSIONS, batch, 4)
        out["val_expression_uar"] = _mean_recall(said, expression["labels"])
        heads = model.face_decisions(encoded)
        if "expression" in heads:
            out["val_head_expression_uar"] = _mean_recall(heads["expression"].numpy(), expression["labels"])
    return out
