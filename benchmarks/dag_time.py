"""Where the default run's training time went: every Ray Train pass of the last `dvc repro`, from its metrics.

    python benchmarks/dag_time.py [--metrics metrics]

Each trained stage's metrics carry `seconds`, its pass's time by phase (pipelines/training/loop.PASS_PHASES),
and `steps`. This prints one row per pass (a variant has two: its align and its finetune): the seconds in steps,
per step, and the fixed cost (every other phase: process and Ray start, the driver's data, Ray Train's
workers, model build, MLflow, the final evaluation and checkpoint, publishing, exit), then the totals, so what
bounds the run's wall time reads off in seconds per pass and per step. Passes recorded before the timeline
existed are listed without figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

STEP_PHASES = ("first_step", "steps")  # the optimiser steps; every other phase is a pass's fixed cost


def passes(metrics: Path) -> list[tuple[str, dict]]:
    """(name, metrics of one pass) for every trained stage's metrics file below `metrics`, in DAG order."""
    files = [metrics / "parser.json", metrics / "train_align.json", metrics / "train_finetune.json",
             *sorted((metrics / "train_finetune_task").glob("*.json")),
             *sorted((metrics / "train_variant").glob("*.json")), metrics / "train_specialist.json"]
    out = []
    for path in files:
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        name = path.stem if path.parent == metrics else f"{path.parent.name}@{path.stem}"
        parts = [(f"{name} ({k})", data[k]) for k in ("align", "finetune") if isinstance(data.get(k), dict)]
        out += parts or [(name, data)]
    return out


def row(name: str, data: dict) -> tuple[str, int, float, float, float] | None:
    seconds = data.get("seconds")
    if not seconds:
        return None
    stepping = sum(seconds.get(k, 0.0) for k in STEP_PHASES)
    steps = int(data.get("steps") or 0)
    return name, steps, stepping, stepping / max(steps, 1), sum(seconds.values()) - stepping


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", type=Path, default=Path("metrics"), help="the DAG's metrics folder")
    args = parser.parse_args()
    rows, missing = [], []
    for name, data in passes(args.metrics):
        r = row(name, data)
        if r:
            rows.append(r)
        else:
            missing.append(name)
    print("| pass | steps | steps (s) | s / step | fixed (s) | total (min) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, steps, stepping, per_step, fixed in rows:
        print(f"| {name} | {steps:,} | {stepping:.0f} | {per_step:.3f} | {fixed:.0f} | {(stepping + fixed) / 60:.1f} |")
    if rows:
        stepping, fixed = sum(r[2] for r in rows), sum(r[4] for r in rows)
        print(f"| **{len(rows)} passes** | {sum(r[1] for r in rows):,} | {stepping:.0f} | | {fixed:.0f} "
              f"| **{(stepping + fixed) / 60:.1f}** |")
        print(f"\nfixed cost: {fixed / len(rows):.1f} s a pass on average, {fixed / (stepping + fixed):.0%} of the "
              f"training time")
    if missing:
        print(f"no timeline (recorded before passes kept one): {', '.join(missing)}")


if __name__ == "__main__":
    main()
