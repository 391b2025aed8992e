"""How long a trained FaceInsight takes to answer: evaluation's questions, and the in-loop validation's.

    python benchmarks/answer_time.py [--model models/faceinsight] [--faces 96] [--repeats 3]

`evaluate`: model_predictions, what evaluate@<task> runs for each FaceInsight system, on the first `--faces` test
faces of each task (every question of the task to every face): seconds and prompts per second, the best and the
median of `--repeats` runs, and a digest of the answers read, so two versions of the code can be shown to answer
alike. `validation`: val_scores on the sample a training pass scores at every checkpoint (64 val faces per task),
the same way. One process, 2 torch threads, as a stage runs it. Needs the default run's corpus, knowledge and a trained
model (`dvc repro finetune`).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import statistics
import time
from pathlib import Path


def timed(fn, repeats: int) -> tuple[list[float], object]:
    """Seconds of each of `repeats` calls (after one untimed warm-up) and the last call's result."""
    out = fn()
    took = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        took.append(time.perf_counter() - start)
    return took, out


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/faceinsight")
    parser.add_argument("--faces", type=int, default=96, help="test faces per task for `evaluate`")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from model.faceinsight import FaceInsight
    from pipelines.corpus.reader import load_faces
    from pipelines.corpus.templates import Templates
    from pipelines.evaluation.evaluate import EvalConfig, model_predictions, questions
    from pipelines.training.faceinsight_training import val_questions
    from pipelines.training.validation import val_sample, val_scores

    torch.set_num_threads(2)
    corpus = Path("data/corpus")
    knowledge = json.loads(Path("data/knowledge/knowledge.json").read_text())
    model = FaceInsight.from_pretrained(Path(args.model)).eval()
    templates = Templates.load(knowledge=knowledge)
    cfg = EvalConfig(split="test", max_faces=args.faces)
    print(f"{args.model}: best / median of {args.repeats} s")
    for task in ("attributes", "age_gender_race", "expression"):
        asked = questions(task, templates)
        faces = load_faces(corpus, "test", task, args.faces)
        took, (pred, _) = timed(functools.partial(model_predictions, model, faces, asked, cfg), args.repeats)
        prompts = len(faces) * len(asked)
        print(f"evaluate {task:16s} {len(faces)} faces x {len(asked)} questions: {min(took):.2f} / "
              f"{statistics.median(took):.2f} s, {prompts / min(took):.0f} prompts/s, answers "
              f"{digest({k: v.tolist() for k, v in pred.items()})}")
    sample = val_sample(corpus, 64, model.cfg.vision.image_size, model.cfg.seg.image_size, 0)
    with torch.no_grad():
        took, scores = timed(lambda: val_scores(model, sample, val_questions()), args.repeats)
    print(f"validation (64 val faces per task): {min(took):.2f} / {statistics.median(took):.2f} s, scores "
          f"{digest(scores)}")


if __name__ == "__main__":
    main()
