"""Training throughput with Ray Train on `tiny`: 1 vs 2 CPU workers (DDP), and DDP vs DeepSpeed ZeRO-2.

    python benchmarks/train_throughput.py [--steps 30] [--batch 32]

Needs `dvc repro train_tokenizer` (corpus, tokenizer, knowledge). Each run trains `--steps` optimiser
steps of the align recipe from scratch and prints the loop's own samples/s and tokens/s at the end
(model build and Ray start-up excluded, data already encoded). On a GPU machine pass --gpu to run the
same comparison with one worker per GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

from pipelines.config import load_params
from pipelines.training.faceinsight_training import TrainConfig, TrainInputs, run_training


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--gpu", action="store_true")
    args = ap.parse_args()
    from model.config import model_config

    params = load_params()
    base = TrainConfig(recipe="full", max_steps=args.steps, batch_size=args.batch, checkpoint_every=args.steps,
                       warmup_steps=5, torch_threads=1, use_gpu=args.gpu, bf16=args.gpu)
    inputs = TrainInputs(corpus=Path("data/corpus"), tokenizer_dir=Path("models/tokenizer"),
                         knowledge=json.loads(Path("data/knowledge/knowledge.json").read_text()),
                         model=model_config(params.get("model")).to_dict())
    runs = [("DDP, 1 worker x 2 threads", dataclasses.replace(base, num_workers=1, torch_threads=2)),
            ("DDP, 2 workers x 1 thread", dataclasses.replace(base, num_workers=2)),
            ("DeepSpeed ZeRO-2, 2 workers", dataclasses.replace(base, num_workers=2, deepspeed="zero2"))]
    rows = []
    for name, cfg in runs:
        with tempfile.TemporaryDirectory() as tmp:
            result = run_training("benchmark", cfg, inputs, 0, Path(tmp) / "model", str(Path(tmp) / "ray"))
        last = result["history"][-1]
        rows.append((name, last["samples_per_s"], last["tokens_per_s"]))
        print(f"{name:30s} {last['samples_per_s']:8.1f} samples/s {last['tokens_per_s']:10,.0f} tokens/s", flush=True)
    print(f"2 workers / 1 worker (DDP): {rows[1][1] / rows[0][1]:.2f}x;  ZeRO-2 / DDP (2 workers): "
          f"{rows[2][1] / rows[1][1]:.2f}x")


if __name__ == "__main__":
    main()
