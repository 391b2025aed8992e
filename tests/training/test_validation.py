"""The in-loop validation's scores, computed from a stand-in model's answers (what the loop logs to MLflow)."""

import numpy as np
import pytest
import torch

from model.faceinsight import FaceEncoding
from model.knowledge_modules import AGE_WORDS
from model.labels import EXPRESSIONS
from pipelines.training.validation import val_scores


class ScriptedModel:
    """Answers each question with a fixed text per face and gives fixed head probabilities: val_scores is what is
    tested, the numbers it must reach are worked out by hand below."""

    seg_encoder = None
    cooccurrence = None
    answer_embedding = object()

    def __init__(self, texts: dict[str, list[str]], heads: dict[str, np.ndarray]):
        self.texts, self.heads, self.seen = texts, heads, {}

    def encode_faces(self, images, maps):
        return FaceEncoding(torch.as_tensor(images), {})

    def answer_faces(self, encoded, faces, questions, max_new_tokens):
        start = self.seen.get(questions[0], 0)
        self.seen[questions[0]] = start + len(questions)
        return self.texts[questions[0]][start:start + len(questions)]

    def face_decisions(self, encoded):
        return {t: torch.as_tensor(k[:len(encoded.visual)]) for t, (k, n) in self.heads.items()}


def test_age_is_scored_from_the_generated_number_and_from_the_heads_class():
    ages = np.array([20, 40, 50, 33])
    demo = {"image": np.zeros((4, 8, 8, 3), np.uint8), "seg_map": np.zeros((4, 8, 8), np.int64),
            "labels": np.array([0, 1, 0, 1]), "age": ages}
    expression = {"image": np.zeros((2, 8, 8, 3), np.uint8), "seg_map": np.zeros((2, 8, 8), np.int64),
                  "labels": np.array([0, 1])}
    questions = {"gender": "G?", "age": "A?", "expression": "E?"}
    heads = {"gender": (np.array([0, 1, 1, 1]), 2), "age": (np.array([3, 3, 9, 0]), len(AGE_WORDS)),
             "expression": (np.array([0, 0]), len(EXPRESSIONS))}
    model = ScriptedModel({"G?": ["male", "female", "male", "Female."],
                           "A?": ["About 30.", "30", "I cannot tell", "30 years"],
                           "E?": [EXPRESSIONS[0], "no idea"]}, heads)
    s = val_scores(model, {"age_gender_race": demo, "expression": expression}, questions)
    assert s["val_gender_accuracy"] == 1.0
    assert s["val_head_gender_accuracy"] == 0.75
    # the unread answer ("I cannot tell") is left out, as evaluation leaves it out: |30-20|, |30-40|, |30-33|
    assert s["val_age_mae"] == pytest.approx((10 + 10 + 3) / 3)
    head_years = np.array([int(AGE_WORDS[k]) for k in (3, 3, 9, 0)])
    assert s["val_head_age_mae"] == pytest.approx(np.abs(head_years - ages).mean())
    assert s["val_expression_uar"] == 0.5 and s["val_head_expression_uar"] == 0.5
