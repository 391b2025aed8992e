"""What one training pass costs besides its steps: record encoding, and a stage's fixed cost.

    python benchmarks/pass_cost.py encode [--records 1280]
    python benchmarks/pass_cost.py stage [--steps 1 21] [--heads-only] [--params P] [--session] [--rounds N]
    python benchmarks/pass_cost.py cache [--records 83200]

`encode`: CorpusEncoder (what the Ray Data tasks run before training) on the first corpus records of the
train split, in this process: records/s, and the share of the chat template's tokenising.
`stage`: the `align` stage's command (`python -m stages.align`) run in a fresh process with its params
section at each `--steps` (checkpoint at the end only, no heads-only phase; its own MLflow store, created before the
timed runs as the DAG's first pass creates it for the others, and Ray storage in a temporary folder): wall seconds
each, then the per-step cost (the slope) and the fixed cost (process and Ray start, data encoding, Ray Train's
controller and workers, model build, MLflow, publishing, shutdown) that a pass pays however short it is, and each
run's timeline by phase (the stage metrics' `seconds`). `--session`: the passes join one Ray instance started
before them, as the stages of `make run` do (pipelines/ray_session.py), instead of each starting its own; a Ray
Data job runs in it first, leaving Ray Data's once-per-instance actors running as `make run`'s first stages do.
`--heads-only`: the steps are align's heads-only steps (`visual_steps`), whose slope is what the long passes
(align's visual phase, the variants) pay a step. `--rounds N`: N pairs of passes, interleaved (few, more, few, more,
...), each round's fixed cost, then their mean with its 95% t-interval, the median and the range: one pair's figure
moves by ~2 s between runs on 2 cores, so one round cannot say whether a pass's fixed cost is under a bound.
`cache`: a long pass' records (`--records`; 83,200 = a variant's align at the ablation budget) encoded by Ray
Data's tasks and kept (pipelines/training/encoded_cache.py), then read back as the next such pass reads them.
Needs `dvc repro train_tokenizer` (corpus, tokenizer, knowledge).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def encode(records: int) -> None:
    import glob

    import pyarrow.parquet as pq

    from model.config import model_config
    from model.faceinsight import FaceInsight
    from model.tokenizer import load_tokenizer
    from pipelines.config import load_params
    from pipelines.training.corpus_data import CorpusEncoder, encoder_kwargs

    params = load_params()
    knowledge = json.loads(Path("data/knowledge/knowledge.json").read_text())
    probe = FaceInsight(model_config(params.get("model")), load_tokenizer("models/tokenizer"), knowledge)
    table = pq.read_table(sorted(glob.glob("data/corpus/train/part-*.parquet"))[0]).slice(0, records)
    encoder = CorpusEncoder(**encoder_kwargs(probe.cfg, "models/tokenizer", probe.image_tokens, probe.seg_tokens,
                                             params["align"]["max_tokens"]))
    encoder(table.slice(0, 64))  # warm-up
    start = time.perf_counter()
    for k in range(0, len(table), 64):
        encoder(table.slice(k, 64))
    took = time.perf_counter() - start
    convs = table.column("conversations").to_pylist()
    start = time.perf_counter()
    for conv in convs:
        probe.chat.encode(probe.tokenizer, conv, probe.image_tokens, probe.seg_tokens)
    one_by_one = time.perf_counter() - start
    print(f"CorpusEncoder: {len(table)} records in {took:.2f} s = {len(table) / took:,.0f} records/s "
          f"({took / len(table) * 1000:.2f} ms/record)")
    print(f"chat template, one conversation per call: {one_by_one / len(convs) * 1000:.2f} ms/record")


def stage(steps: list[int], heads_only: bool = False, params_file: Path = Path("params.yaml"),
          name: str = "align", session: bool = False, rounds: int = 1) -> None:
    from pipelines.ray_session import SESSION_ENV, session_address, stop_processes_mentioning
    from pipelines.tracking import pipeline_run_id

    params = yaml.safe_load(params_file.read_text())
    times, phases = [], []  # round by round, each round the two step counts in order
    with tempfile.TemporaryDirectory(prefix="fi-ray-") as tmp:
        # the store, its experiment and the pipeline's run exist before the timed passes, as they do for every pass of
        # the DAG but its first: otherwise the first timed pass alone pays their creation, and the intercept with it
        pipeline_run_id(f"sqlite:///{tmp}/mlflow.db")
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
        if session:  # the run's instance, started before the timed passes as the DAG's first Ray stage starts it
            env[SESSION_ENV] = os.environ[SESSION_ENV] = f"{tmp}/session"
            Path(env[SESSION_ENV]).mkdir()
            print(f"the session's Ray instance at {session_address()}")
            warm_session(env)
        try:
            for k, n in enumerate(n for _ in range(rounds) for n in steps):  # interleaved: a drift reaches both
                # n whole-loss steps and no heads-only phase, or n heads-only steps and one whole-loss step (the same
                # in every run: the slope is the heads-only step's); one checkpoint (at the end)
                whole, visual = (1, n) if heads_only else (n, 0)
                params[name] = {**params[name], "max_steps": whole, "visual_steps": visual,
                                "checkpoint_every": whole + visual}
                path = Path(tmp) / f"params-{n}.yaml"
                path.write_text(yaml.safe_dump(params))
                start = time.perf_counter()
                # storage of its own: a pass whose run already has a checkpoint there resumes from it (0 steps)
                out = subprocess.run([sys.executable, "-m", f"stages.{name}", "--params", str(path), "--out",
                                      f"{tmp}/out-{k}", "--metrics", f"{tmp}/m-{k}.json", "--history",
                                      f"{tmp}/h-{k}.json", "--storage", f"{tmp}/ray-{k}"],
                                     env=env, capture_output=True, text=True)
                times.append(time.perf_counter() - start)
                if out.returncode:
                    sys.exit(f"stages.{name} failed (exit {out.returncode}):\n{out.stderr[-8000:]}")
                phases.append(json.loads(Path(f"{tmp}/m-{k}.json").read_text()).get("seconds", {}))
                print(f"stages.{name} at {n} steps: {times[-1]:.1f} s wall")
        finally:
            if session:
                stop_processes_mentioning(env[SESSION_ENV])
    fixed = []
    for k in range(0, len(times), 2):
        per_step = (times[k + 1] - times[k]) / (steps[1] - steps[0])
        fixed.append(times[k] - per_step * steps[0])
        print(f"round {k // 2 + 1}: per step {per_step:.2f} s; fixed cost of a pass {fixed[-1]:.1f} s")
    if rounds > 1:
        print(f"fixed cost over {rounds} rounds: {fixed_cost_summary(fixed)}")
    for k in range(0, len(times), 2):
        print_phases(steps, times[k:k + 2], phases[k:k + 2])


def fixed_cost_summary(fixed: list[float]) -> str:
    """The rounds' fixed costs (a round: one pass at each step count): mean and 95% t-interval, median, range."""
    from scipy import stats

    mean, sd = statistics.mean(fixed), statistics.stdev(fixed)
    half = stats.t.ppf(0.975, len(fixed) - 1) * sd / len(fixed) ** 0.5
    return (f"mean {mean:.1f} s, 95% interval {mean - half:.1f}-{mean + half:.1f} s; median "
            f"{statistics.median(fixed):.1f} s; {min(fixed):.1f}-{max(fixed):.1f} s")


# a Ray Data job in a process of its own, joined to the session: it leaves Ray Data's detached actors running
RAY_DATA_JOB = ("from pipelines.ray_runtime import init_ray; init_ray(); import ray; "
                "ray.data.range(8).map_batches(lambda b: b).materialize()")


def warm_session(env: dict[str, str]) -> None:
    """The session as a training pass of `make run` finds it: Ray Data's stats actor and autoscaling coordinator are
    detached, started once per instance by its first Ray Data job (`ingest` in the DAG). Without them here the first
    timed pass alone starts both (~3 s on 2 cores, thirty-seventh pass), and the intercept with it."""
    out = subprocess.run([sys.executable, "-c", RAY_DATA_JOB], env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"the session's warm-up Ray Data job failed (exit {out.returncode}):\n{out.stderr[-4000:]}")


def cache(records: int) -> None:
    import tempfile

    from model.config import model_config
    from pipelines.config import load_params
    from pipelines.ray_runtime import init_ray
    from pipelines.training.corpus_data import corpus_dataset, encoder_kwargs
    from pipelines.training.encoded_cache import cached_encoding, encoding_key

    params = load_params()
    cfg = model_config(params.get("model"))
    split, tokenizer = Path("data/corpus/train"), str(Path("models/tokenizer").resolve())
    encoder = encoder_kwargs(cfg, tokenizer, *cfg.visual_token_counts(), params["align"]["max_tokens"])
    init_ray()
    with tempfile.TemporaryDirectory() as tmp:
        key = encoding_key(split, encoder, records, (), ())
        for what in ("encoded (Ray Data tasks) and kept", "read back from the kept encoding"):
            start = time.perf_counter()
            dataset = cached_encoding(Path(tmp), key, lambda: corpus_dataset(split, encoder, records).materialize())
            rows = dataset.count()
            took = time.perf_counter() - start
            size = sum(f.stat().st_size for f in Path(tmp).rglob("*.arrow")) / 2**30
            print(f"{rows:,} records {what}: {took:.1f} s ({dataset.num_blocks()} blocks, {size:.2f} GiB on disk)")


def print_phases(steps: list[int], times: list[float], phases: list[dict[str, float]]) -> None:
    """The pass's timeline (the metrics' `seconds`) per run; what is left is the process's exit (Ray's shutdown)."""
    from pipelines.training.loop import PASS_PHASES

    names = [name for name, _, _ in PASS_PHASES if any(name in p for p in phases)]
    print(f"\n{'phase (s)':<22}" + "".join(f"{f'{n} steps':>11}" for n in steps))
    for key in names:
        print(f"{key:<22}" + "".join(f"{p.get(key, float('nan')):>11.2f}" for p in phases))
    rest = [t - sum(p.values()) for t, p in zip(times, phases, strict=True)]
    print(f"{'exit (the rest)':<22}" + "".join(f"{r:>11.2f}" for r in rest))
    print(f"{'wall':<22}" + "".join(f"{t:>11.2f}" for t in times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    enc = sub.add_parser("encode")
    enc.add_argument("--records", type=int, default=1280)
    st = sub.add_parser("stage")
    st.add_argument("--steps", type=int, nargs=2, default=[1, 21], metavar=("FEW", "MORE"),
                    help="the two step counts (different: the slope between them is the cost of a step)")
    st.add_argument("--heads-only", action="store_true", help="align's heads-only steps instead of whole-loss ones")
    st.add_argument("--params", type=Path, default=Path("params.yaml"), help="the params file the passes start from")
    st.add_argument("--session", action="store_true", help="the passes join one Ray instance, as in `make run`")
    st.add_argument("--rounds", type=int, default=1,
                    help="pairs of passes, interleaved: each round's fixed cost, then their mean and 95%% interval")
    ca = sub.add_parser("cache")
    ca.add_argument("--records", type=int, default=83200)
    args = ap.parse_args()
    if args.what == "encode":
        encode(args.records)
    elif args.what == "cache":
        cache(args.records)
    else:
        if args.steps[0] == args.steps[1] or min(args.steps) < 1:
            st.error(f"--steps {args.steps[0]} {args.steps[1]}: two different counts of at least 1 (e.g. 1 21)")
        if args.rounds < 1:
            st.error(f"--rounds {args.rounds}: at least 1")
        stage(args.steps, args.heads_only, args.params, session=args.session, rounds=args.rounds)


if __name__ == "__main__":
    main()
