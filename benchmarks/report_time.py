"""What the evaluation's bootstrap intervals cost, on the DAG's own evaluation outputs.

    python benchmarks/report_time.py [--evals reports/eval]

Needs a finished `dvc repro` (reports/eval/<task>.json: every system's per-face answers and the truth). Prints the
seconds of each task's metric intervals (evaluate@<task> computes one per system and headline metric:
uncertainty.metric_interval) and of the report's table with its paired intervals (report.results_markdown, every
claim and comparison), each in this process, nothing written.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    from model.labels import TASKS
    from pipelines.evaluation.report import read_evals, results_markdown
    from pipelines.evaluation.uncertainty import METRICS, RESAMPLES, as_arrays, metric_interval

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evals", type=Path, default=Path("reports/eval"))
    args = parser.parse_args()
    for task in TASKS:
        result = json.loads((args.evals / f"{task}.json").read_text())
        truth = as_arrays(result["truth"])
        systems = [name for name, s in result["systems"].items() if "predictions" in s]
        keys = [key for key in METRICS if key.startswith(f"{task}.")]
        start = time.perf_counter()
        for name in systems:
            for key in keys:
                metric_interval(key, as_arrays(result["systems"][name]["predictions"]), truth)
        took = time.perf_counter() - start
        print(f"evaluate@{task}: {len(systems)} systems x {len(keys)} metrics, {result['faces']} faces, "
              f"{RESAMPLES} resamples each: {took:.2f} s")
    results = read_evals(args.evals, TASKS)
    start = time.perf_counter()
    results_markdown(results, {}, 0, None, (False, ["not judged here"]), False)
    print(f"report: results_markdown with its paired intervals: {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
