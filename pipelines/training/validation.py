"""FaceInsight's validation during training: a fixed sample of val faces, scored at every checkpoint.

The run page then shows a learning curve, not only the training loss: the co-occurrence head's attribute
balanced accuracy, and the generated answers' yes/no balanced accuracy on attribute questions and
accuracy on the gender question (short greedy decoding, read by evaluation's own rules).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from model.labels import CELEBA_ATTRIBUTES, UTK_GENDERS

QUESTIONS_PER_FACE = 8  # attribute questions asked of each val face (a fixed, seeded choice)


def val_sample(corpus: Path, faces: int, image_size: int, seg_size: int, seed: int) -> dict[str, Any]:
    """Up to `faces` val faces each of the attribute and the age/gender/race tasks, as arrays."""
    from pipelines.corpus.records import decode_image
    from pipelines.evaluation.evaluate import load_faces

    out: dict[str, Any] = {}
    for task in ("attributes", "age_gender_race"):
        rows = load_faces(corpus, "val", task, faces, required=False)
        if not rows:
            continue
        out[task] = {"image": np.stack([decode_image(r["image"], image_size) for r in rows]),
                     "seg_map": np.stack([decode_image(r["seg_map"], seg_size, "L") for r in rows]).astype(np.int64)}
        if task == "attributes":
            out[task]["labels"] = np.array([r["labels"]["attributes"] for r in rows], dtype=np.int64)
            rng = np.random.default_rng(seed)
            out[task]["asked"] = np.stack([rng.choice(len(CELEBA_ATTRIBUTES), QUESTIONS_PER_FACE, replace=False)
                                           for _ in rows])
        else:
            out[task]["labels"] = np.array([r["labels"]["gender"] for r in rows], dtype=np.int64)
    return out


def _balanced(pred: np.ndarray, truth: np.ndarray) -> float:
    recalls = [float((pred[truth == c] == c).mean()) for c in (0, 1) if (truth == c).any()]
    return float(np.mean(recalls)) if recalls else 0.0


def val_scores(model, sample: dict[str, Any], questions: dict[str, str], batch: int = 64) -> dict[str, float]:
    """questions: attribute name -> its yes/no question, and "gender" -> the gender question (templates')."""
    import torch

    from pipelines.evaluation.answers import parse_name, parse_yes_no

    out: dict[str, float] = {}
    maps = model.seg_encoder is not None
    attrs = sample.get("attributes")
    if attrs is not None:
        images, seg = attrs["image"], attrs["seg_map"]
        labels = attrs["labels"]
        if model.cooccurrence is not None:
            probs = model.attribute_probabilities(model.preprocess(images),
                                                  torch.as_tensor(seg) if maps else None).float().numpy()
            per = [_balanced((probs[:, j] > 0.5).astype(int), labels[:, j]) for j in range(labels.shape[1])
                   if len(np.unique(labels[:, j])) == 2]
            out["val_head_balanced_accuracy"] = float(np.mean(per))
        pairs = [(i, int(j)) for i in range(len(images)) for j in attrs["asked"][i]]
        said, truth = [], []
        for start in range(0, len(pairs), batch):
            chunk = pairs[start:start + batch]
            idx = [i for i, _ in chunk]
            answers = model.answer(images[idx], seg[idx] if maps else None,
                                   [questions[CELEBA_ATTRIBUTES[j]] for _, j in chunk], max_new_tokens=3)
            said += [parse_yes_no(a) for a in answers]
            truth += [int(labels[i, j]) for i, j in chunk]
        read = np.array([s is not None for s in said])
        pred = np.array([-1 if s is None else s for s in said])
        out["val_yes_no_balanced_accuracy"] = _balanced(pred, np.array(truth))
        out["val_unread_share"] = float(1 - read.mean())
    demo = sample.get("age_gender_race")
    if demo is not None:
        answers = []
        for start in range(0, len(demo["image"]), batch):
            sl = slice(start, start + batch)
            n = len(demo["image"][sl])
            answers += model.answer(demo["image"][sl], demo["seg_map"][sl] if maps else None,
                                    [questions["gender"]] * n, max_new_tokens=4)
        pred = np.array([-1 if (g := parse_name(a, UTK_GENDERS)) is None else g for a in answers])
        out["val_gender_accuracy"] = float((pred == demo["labels"]).mean())
    return out
