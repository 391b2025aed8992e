"""The co-occurrence graph network and the constraint loss, against hand-computed numbers."""

from __future__ import annotations

import torch

from model.knowledge_modules import (
    EXCLUSION,
    IMPLICATION,
    CooccurrenceGraph,
    balanced_thresholds,
    class_pooling,
    constraint_loss,
    masked_bce,
)


def test_graph_network_on_a_three_attribute_graph():
    # A: 0 - 1 connected, 2 alone (already normalised); E: one-hot text embeddings
    a = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    graph = CooccurrenceGraph(a, text_dim=3, hidden=2, visual_dim=2)
    with torch.no_grad():
        graph.w1.weight.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]]))  # (hidden, text)
        graph.w2.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # identity
    e = torch.eye(3)
    # A E W1^T: rows 0,1 = 0.5*[1,0] + 0.5*[0,2] = [0.5, 1]; row 2 = [-1, 0] -> LeakyReLU(0.2) -> [-0.2, 0]
    # A H1 W2^T: rows 0,1 = [0.5, 1]; row 2 = [-0.2, 0]
    expected = torch.tensor([[0.5, 1.0], [0.5, 1.0], [-0.2, 0.0]])
    assert torch.allclose(graph.classifiers(e), expected)
    visual = torch.tensor([[[2.0, 1.0]]])  # one face, one visual token
    assert torch.allclose(graph(e, visual), torch.tensor([[2.0, 2.0, -0.4]]))
    # two tokens: the mean of their scores is the score of their mean token; the max term adds the best token's
    two = torch.tensor([[[2.0, 1.0], [0.0, -1.0]]])
    assert torch.allclose(graph(e, two), graph(e, two.mean(1, keepdim=True)))
    assert torch.allclose(graph(e, two, lam=0.5), torch.tensor([[0.5 + 1.0, 0.5 + 1.0, -0.2 + 0.0]]))


def test_class_pooling_lets_a_class_answer_from_the_one_token_that_shows_it():
    """A cue in 1 of 64 tokens moves the mean by 1/64; with the max term the class's logit moves by the cue itself."""
    scores = torch.zeros(2, 64, 3)
    scores[1, 17, 0] = 4.0  # face 1 shows class 0 in one token
    mean_only, with_max = class_pooling(scores, 0.0), class_pooling(scores, 1.0)
    assert torch.allclose(mean_only[1, 0] - mean_only[0, 0], torch.tensor(4.0 / 64))
    assert torch.allclose(with_max[1, 0] - with_max[0, 0], torch.tensor(4.0 + 4.0 / 64))
    assert torch.equal(with_max[:, 1:], torch.zeros(2, 2))


def test_constraint_loss_is_zero_on_consistent_predictions_and_signed_otherwise():
    rules = torch.tensor([[EXCLUSION, 0, 1], [IMPLICATION, 2, 3]])
    consistent = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    assert constraint_loss(consistent, rules).item() == 0.0

    probs = torch.tensor([[0.9, 0.8, 0.7, 0.1]], requires_grad=True)
    loss = constraint_loss(probs, rules)
    assert torch.isclose(loss, torch.tensor((0.9 * 0.8 + 0.7 * 0.9) / 2))
    loss.backward()
    grad = probs.grad[0]
    # exclusion: lowering either side lowers the loss; implication: lower the premise, raise the conclusion
    assert grad[0] > 0 and grad[1] > 0 and grad[2] > 0 and grad[3] < 0
    assert constraint_loss(probs, torch.zeros(0, 3, dtype=torch.long)).item() == 0.0


def test_masked_bce_ignores_faces_without_attribute_labels():
    logits = torch.tensor([[10.0, -10.0], [3.0, 3.0]])
    labels = torch.tensor([[1, 0], [-1, -1]])
    assert masked_bce(logits, labels).item() < 1e-3  # the unlabelled row would cost ~3 if counted
    assert masked_bce(logits, torch.full_like(labels, -1)).item() == 0.0


def test_balanced_thresholds_are_the_brute_force_choice_ties_and_sparse_attributes_included():
    import numpy as np

    rng = np.random.default_rng(7)
    truth = (rng.random((300, 12)) < np.linspace(0.01, 0.6, 12)).astype(np.int64)  # the first: too few positives
    logits = np.round(rng.normal(size=(300, 12)) + 1.5 * truth, 1).astype(np.float32)  # rounded: many ties
    expected = np.zeros(12, np.float32)
    for j in range(12):
        pos, neg = logits[truth[:, j] == 1, j], logits[truth[:, j] == 0, j]
        if min(len(pos), len(neg)) < 5:
            continue
        cands = np.unique(np.concatenate([[0.0], logits[:, j]]))
        bal = np.array([0.5 * ((pos > c).mean() + (neg <= c).mean()) for c in cands])
        expected[j] = np.median(cands[np.isclose(bal, bal.max())])
    chosen = balanced_thresholds(logits, truth)
    assert chosen[0] == 0 and np.array_equal(chosen, expected)
