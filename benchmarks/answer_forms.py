"""What copying a class word in the form its position writes is worth, measured at inference on one set of weights.

    python benchmarks/answer_forms.py [--model models/faceinsight ...] [--task age_gender_race] [--split test]

The answer pointer (model/knowledge_modules.AnswerPointer) copies the head's class onto the first token of the class
word. The corpus writes each word in two forms: "female" opening an answer, " female" inside a sentence. The model
copies onto the form its position calls for (`AnswerPointer.forms`: the opening form right after the assistant
opening, the in-sentence form elsewhere), in training and decoding. Until the twenty-second run the copy was split
evenly between the two forms: where the gate was open (the first token of an open answer) they tied, greedy decoding
took whichever the rounding favoured, and after " female" the LM went on with a sentence ("female, without ...")
where after "female" it closes the answer ("female.").

This prints, for each model and each open question of the task, on the split's faces, with the evaluate stage's
questions, decoding and answer readers: accuracy, unreadable answers and two answers, (a) as the model decodes and
(b) with the copy split evenly between the forms (`opens=None`), the decoding it replaced. Both leave each class's
probability the head's; (b) is measured at inference only, on weights trained with (a).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from model.faceinsight import FaceInsight
from pipelines.corpus.reader import load_faces
from pipelines.corpus.templates import Templates
from pipelines.evaluation.evaluate import EvalConfig, model_predictions, questions, truth
from pipelines.evaluation.metrics import UNREAD
from pipelines.provenance import host_tags


def compare(folder: Path, faces: list, asked: list, true: dict[str, np.ndarray], cfg: EvalConfig) -> None:
    """One model's open class questions answered twice: the copy in the form the position writes, split evenly."""
    model = FaceInsight.from_pretrained(folder)
    pointer = model.answer_pointer
    if pointer is None:
        print(f"{folder}: no answer pointer; nothing to compare")
        return
    by_position = pointer.next_token_scores

    def even(hidden, named, logits, lm_logits, opens=None):
        return by_position(hidden, named, logits, lm_logits, None)  # no position: half the copy on each form

    for arm, scores in (("as the model decodes", by_position), ("copy split evenly", even)):
        pointer.next_token_scores = scores
        pred, extra = model_predictions(model, faces, asked, cfg)
        for q in asked:
            if q.target == "age":
                continue  # a number: no class word is copied
            got, want = np.asarray(pred[q.target]), true[q.target]
            said = [e["answer"] for e in extra["examples"] if e["question"] == q.text][:2]
            print(f"{folder} | {arm:20s} | {q.target:10s} | accuracy {np.mean(got == want):.3f} | "
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
