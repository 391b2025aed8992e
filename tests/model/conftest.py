"""Tiny FaceInsight pieces shared by the model tests: a tokenizer trained on template text, knowledge, configs."""

from __future__ import annotations

import random

import numpy as np
import pytest

from model.config import AlignmentConfig, FaceInsightConfig, LLMConfig, SegEncoderConfig, VisionConfig
from pipelines.corpus.records import RecordPlan, conversation, face_conversations, face_labels
from pipelines.corpus.templates import Templates
from pipelines.knowledge import KnowledgeConfig, mine_knowledge


@pytest.fixture(scope="session")
def knowledge() -> dict:
    rng = np.random.default_rng(0)
    table = rng.random((300, 40)) < 0.35
    table[:, 24] = ~(table[:, 16] | table[:, 22])  # No_Beard excludes Goatee and Mustache, as in CelebA
    return mine_knowledge(table, KnowledgeConfig(min_support=10, min_expected=3))


@pytest.fixture(scope="session")
def conversations(knowledge) -> list[list[dict]]:
    """Real corpus conversations (the templates on random labels)."""
    templates = Templates.load(knowledge=knowledge)
    rng = np.random.default_rng(1)
    out = []
    for k in range(60):
        labels = face_labels({"attributes": list(np.where(rng.random(40) < 0.4, 1, -1)), "age": None,
                              "gender": None, "race": None, "expression": None})
        for _, turns in face_conversations("celebamask_hq", labels, templates, RecordPlan(), random.Random(k)):
            out.append(conversation(turns))
    return out


@pytest.fixture(scope="session")
def tokenizer(conversations):
    from model.tokenizer import train_tokenizer

    return train_tokenizer((t["value"] for c in conversations for t in c), vocab_size=600)


SMALL = FaceInsightConfig(
    vision=VisionConfig(image_size=32, patch_size=8, hidden=48, layers=2, heads=4),
    seg=SegEncoderConfig(image_size=32, patch_size=16, hidden=32, layers=1, heads=4),
    llm=LLMConfig(hidden=48, layers=2, heads=4, intermediate=96),
    alignment=AlignmentConfig(gcn_hidden=16),
)
