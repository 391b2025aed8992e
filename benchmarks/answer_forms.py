"""Which form of a copied class word opens an open answer, and what the LM writes after it.

    python benchmarks/answer_forms.py [--model models/faceinsight ...] [--task age_gender_race] [--split test]

The answer pointer (model/knowledge_modules.AnswerPointer, `pointer_form: mix`) copies the head's class onto the
first token of the class word in both forms the corpus writes it ("female" opening an answer, " female" inside a
sentence), half the class's probability each. Where the gate is open (the first token of an open answer: the LM's
share is ~0) the two forms tie, and greedy decoding takes whichever the rounding favours. After " female" the LM
continues a sentence ("female, without ..."), after "female" it closes the answer ("female."): the same weights,
the same face, only the form differs.

This prints, for each model and each open question of the task, on the split's faces, with the evaluate stage's
questions, decoding and answer readers: accuracy, unreadable answers and two answers, (a) as the model decodes
today and (b) with the class's copy split between its forms by the LM's own preference between them (softmax of the
LM's logits over the forms), (c) with the copy on the form the position calls for: the answer's first token opens it
("female"), a later one is inside a sentence (" female"). (b) and (c) leave each class's probability the head's and
are measured at inference only, on weights trained with (a); no stage uses them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from model.faceinsight import FaceInsight
from model.knowledge_modules import AnswerPointer
from pipelines.corpus.reader import load_faces
from pipelines.corpus.templates import Templates
from pipelines.evaluation.evaluate import EvalConfig, model_predictions, questions, truth
from pipelines.evaluation.metrics import UNREAD
from pipelines.provenance import host_tags


def split_scores(pointer: AnswerPointer, hidden: torch.Tensor, named: torch.Tensor, logits: dict[str, torch.Tensor],
                 lm_logits: torch.Tensor, opening: bool | None) -> torch.Tensor:
    """AnswerPointer.next_token_scores (mix) with each class's copy split between its forms otherwise than evenly:
    `opening` None: by the LM's softmax over the forms' tokens; True / False: all on the form that opens an answer
    ("female") / the form inside a sentence (" female")."""
    gate = pointer.gate(hidden.to(pointer.gate.weight.dtype)).float().masked_fill(~named, float("-inf"))
    log_pi = torch.log_softmax(torch.cat([torch.zeros_like(gate[:, :1]), gate], -1), -1)
    lm = lm_logits.float()
    parts = [log_pi[:, 0:1] + torch.log_softmax(lm, -1)]
    for k, t in enumerate(pointer.tasks):
        first = getattr(pointer, f"{t}_first")  # (classes, forms)
        if opening is None:
            share = torch.softmax(lm[:, first], -1)  # (N, classes, forms): the LM's choice between a word's forms
        else:
            share = torch.zeros(lm.shape[0], *first.shape, device=lm.device)
            share[..., 0 if opening else 1] = 1.0
        p = (torch.softmax(logits[t].float(), -1)[..., None] * share).flatten(1)
        copy = torch.zeros_like(lm).index_add_(1, first.flatten(), p)
        parts.append(log_pi[:, k + 1:k + 2] + torch.where(copy > 0, copy.clamp_min(1e-30).log(), float("-inf")))
    return torch.logsumexp(torch.stack(parts), 0)


def compare(folder: Path, faces: list, asked: list, true: dict[str, np.ndarray], cfg: EvalConfig) -> None:
    """One model's open class questions answered three ways: the copy split evenly, by the LM, by position."""
    model = FaceInsight.from_pretrained(folder)
    pointer = model.answer_pointer
    if pointer is None or pointer.form != "mix":
        print(f"{folder}: no answer pointer in the mix form; nothing to compare")
        return
    as_trained, generate = pointer.next_token_scores, model.generate
    step = [0]  # the decoding step of the current batch: step 1 writes the answer's first token

    def counted(*a, **kw):
        step[0] = 0
        return generate(*a, **kw)

    def by_position(*a):
        step[0] += 1
        return split_scores(pointer, *a[:4], opening=step[0] == 1)

    model.generate = counted
    for arm, scores in (("as the model decodes", as_trained),
                        ("forms by the LM", lambda *a: split_scores(pointer, *a[:4], opening=None)),
                        ("form by position", by_position)):
        pointer.next_token_scores = scores
        pred, extra = model_predictions(model, faces, asked, cfg)
        for q in asked:
            if q.target == "age":
                continue  # a number: no class word is copied
            got, want = np.asarray(pred[q.target]), true[q.target]
            said = [e["answer"] for e in extra["examples"] if e["question"] == q.text][:2]
            print(f"{folder} | {arm:24s} | {q.target:10s} | accuracy {np.mean(got == want):.3f} | "
                  f"unread {int(np.sum(got == UNREAD))} of {len(got)} | {said}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, action="append", help="FaceInsight folders [models/faceinsight]")
    parser.add_argument("--task", default="age_gender_race", choices=("age_gender_race", "expression"))
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    parser.add_argument("--knowledge", type=Path, default=Path("data/knowledge/knowledge.json"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    knowledge = json.loads(args.knowledge.read_text())
    asked = questions(args.task, Templates.load(knowledge=knowledge))
    faces = load_faces(args.corpus, args.split, args.task)
    true = truth(args.task, faces)
    cfg = EvalConfig(split=args.split)
    host = host_tags()
    print(f"{host['host.cpu']} (bf16: {host['host.cpu_bf16']}); {len(faces)} {args.split} faces; task {args.task}")
    for folder in args.model or [Path("models/faceinsight")]:
        compare(folder, faces, asked, true, cfg)


if __name__ == "__main__":
    main()
