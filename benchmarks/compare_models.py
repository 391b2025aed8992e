"""Two trained FaceInsight checkpoints on the same test faces: the gated numbers and their paired differences.

    python benchmarks/compare_models.py --a models/faceinsight --b /tmp/baseline/faceinsight \
        [--label-a "visual phase"] [--label-b "no visual phase"] [--out /tmp/compare.json]

For a change that the default run has not recorded yet (a new training phase, a new budget): train both
checkpoints (e.g. `python -m stages.align --params other.yaml --out ...`, then `stages.finetune`), then ask
both the evaluation's questions on the test split of the corpus (parser-made maps), as `evaluate@<task>` does.
Prints each system's generated-answer and head numbers with 95% bootstrap half-widths, then a - b with its
paired 95% interval and the verdict (supported / contradicted / not resolved) on "a is better".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipelines.config import build, load_params
from pipelines.evaluation.evaluate import TASKS, EvalConfig, evaluate_task
from pipelines.evaluation.report import LOWER_IS_BETTER, VARIANT_PREFIX, compare
from pipelines.evaluation.uncertainty import METRICS

KEYS = [k for k in METRICS if k.split(".")[1] in ("mean_balanced_accuracy", "gender_accuracy", "age_mae", "uar")]


def number(systems: dict, system: str, metric: str) -> float | None:
    """A system's headline number; None where the system has no such row or read nothing (NaN)."""
    value = systems.get(system, {}).get("summary", {}).get(metric)
    return None if value is None or value != value else value


def print_comparison(evals: dict, label_a: str, label_b: str) -> None:
    """Each system's numbers (generated answers, heads; the majority class for scale), then a - b, paired."""
    b = f"{VARIANT_PREFIX}b"
    names = {"majority": "majority class", "faceinsight": label_a, b: label_b}
    for key in KEYS:
        task, metric = key.split(".")
        systems = evals[task]["systems"]
        for system, label in names.items():
            for suffix, how in (("", "generated"), ("_head", "heads")):
                value = number(systems, system + suffix, metric)
                if value is None:
                    continue
                ci = systems[system + suffix]["intervals"].get(metric)
                width = f" ±{(ci['high'] - ci['low']) / 2:.3f}" if ci else ""
                print(f"{key:38s} {label:>22s} ({how:9s}) {value:7.3f}{width}")
        for suffix in ("", "_head"):
            both = all(number(systems, s + suffix, metric) is not None for s in ("faceinsight", b))
            judged = compare(evals, "faceinsight" + suffix, b + suffix, key) if both else None
            if judged:
                diff, verdict = judged
                better = "lower" if key in LOWER_IS_BETTER else "higher"
                print(f"{key:38s} a - b{' (heads)' if suffix else ''}: {diff.value:+.3f} [{diff.low:+.3f}, "
                      f"{diff.high:+.3f}] ({better} is better): {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", type=Path, required=True, help="a FaceInsight checkpoint folder")
    ap.add_argument("--b", type=Path, required=True, help="the checkpoint it is compared with")
    ap.add_argument("--label-a", default="a")
    ap.add_argument("--label-b", default="b")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help="its `evaluate` section is used")
    ap.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    ap.add_argument("--knowledge", type=Path, default=Path("data/knowledge/knowledge.json"))
    ap.add_argument("--out", type=Path, help="write every system's evaluation here (JSON)")
    args = ap.parse_args()
    cfg = build(EvalConfig, load_params(args.params).get("evaluate"), "evaluate")
    knowledge = json.loads(args.knowledge.read_text())
    evals = {task: evaluate_task(task, args.corpus, args.a, knowledge, cfg, variants={"b": (args.label_b, args.b)})
             for task in TASKS}
    print_comparison(evals, args.label_a, args.label_b)
    if args.out:
        args.out.write_text(json.dumps(evals))


if __name__ == "__main__":
    main()
