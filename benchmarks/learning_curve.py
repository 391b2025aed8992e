"""The tiny FaceInsight's learning curve on the default corpus: val numbers against optimiser steps.

    python benchmarks/learning_curve.py --steps 1500 --every 250      # the align recipe, params.yaml's lr
    python benchmarks/learning_curve.py --steps 1000 --visual-steps 0 # no heads-only phase first
    python benchmarks/learning_curve.py --model '{"alignment": {"answer_pointer": true}}'   # a model override

A plain torch loop (no Ray), with the align stage's recipe, lr, warm-up, batch and max_tokens from
params.yaml and bf16 as the stage would use it here: the batches are the corpus' train records in the
order the stage reads them, encoded by the stage's own CorpusEncoder. Every `--every` steps it prints what
the in-loop validation logs to MLflow (pipelines/training/validation.py): the co-occurrence head's attribute
balanced accuracy, the generated yes/no answers' balanced accuracy and unread share, and gender accuracy,
on a fixed sample of val faces. Used to choose align.max_steps and finetune.max_steps (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from model.config import RECIPES, merge_overrides, model_config
from model.faceinsight import FaceInsight
from model.tokenizer import load_tokenizer
from pipelines.config import build, load_params
from pipelines.corpus.reader import shard_files
from pipelines.training.corpus_data import CorpusEncoder, encoder_kwargs
from pipelines.training.faceinsight_training import (
    FaceInsightLearner,
    TrainConfig,
    val_questions,
)
from pipelines.training.loop import bf16_enabled
from pipelines.training.schedule import phase_at
from pipelines.training.validation import val_sample, val_scores


def corpus_arguments(ap: argparse.ArgumentParser, steps: int, every: int) -> None:
    """The options both FaceInsight benchmarks take: params, the pipeline's outputs they read, the run's length."""
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    ap.add_argument("--tokenizer", type=Path, default=Path("models/tokenizer"))
    ap.add_argument("--knowledge", type=Path, default=Path("data/knowledge/knowledge.json"))
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--every", type=int, default=every)
    ap.add_argument("--threads", type=int, default=2)


def encoded_records(encoder: CorpusEncoder, split_dir: Path, needed: int, kinds: tuple[str, ...] = ()
                    ) -> dict[str, np.ndarray]:
    """At least `needed` records of a split (of `kinds`, or all), in shard order, through the stage's encoder."""
    tables, have = [], 0
    for path in shard_files(split_dir):
        table = pq.read_table(path, columns=["conversations", "labels", "image", "seg_map", "kind"])
        if kinds:
            table = table.filter(pc.is_in(table["kind"], pa.array(list(kinds))))
        tables.append(table)
        have += len(table)
        if have >= needed:
            break
    records = [encoder(t.slice(k, 256)) for t in tables for k in range(0, len(t), 256)]
    return {k: np.concatenate([r[k] for r in records]) for k in records[0]}


def save_visual_phase(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    """The model and the optimiser's per-parameter state, keyed by parameter name (arms may lack parameters)."""
    names = {id(p): n for n, p in model.named_parameters()}
    state = {names[id(p)]: s for p, s in opt.state.items()}
    torch.save({"step": step, "model": model.state_dict(), "optimizer": state}, path)


def load_visual_phase(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, phases: list) -> int:
    """Restore what save_visual_phase wrote; the step it was written at, which must end this run's visual phase."""
    saved = torch.load(path, weights_only=False)
    if phases[0].name != "visual" or saved["step"] != phases[0].end:
        raise SystemExit(f"{path} was written at step {saved['step']}; this run's visual phase ends at "
                         f"{phases[0].end if phases[0].name == 'visual' else 0}: use the same --visual-steps")
    missing, unexpected = model.load_state_dict(saved["model"], strict=False)
    if missing or unexpected:
        print(f"not in {path}: {len(missing)} tensors (kept at init); in it but not here: {len(unexpected)}")
    named = dict(model.named_parameters())
    for name, state in saved["optimizer"].items():
        if name in named:
            opt.state[named[name]] = state
    return saved["step"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    corpus_arguments(ap, steps=1500, every=250)
    ap.add_argument("--stage", default="align", help="the params section whose recipe, lr and batch are used")
    ap.add_argument("--lr", type=float, default=0.0, help="override the section's lr")
    ap.add_argument("--kinds", default="", help="comma-separated record kinds to train on (default: the section's)")
    ap.add_argument("--visual-steps", type=int, default=-1,
                    help="heads-only steps before --steps of the whole loss (default: the section's visual_steps)")
    ap.add_argument("--visual-lr-after", type=float, default=-1,
                    help="the share of the rate the visual stream and heads keep after the visual phase "
                         "(default: the section's visual_lr_after)")
    ap.add_argument("--model", default="{}", help="JSON overrides of the model section, e.g. "
                    "'{\"alignment\": {\"answer_pointer\": true}}'")
    ap.add_argument("--val-faces", type=int, default=0, help="val faces per task scored (default: the section's)")
    ap.add_argument("--augment-visual", type=int, default=-1, choices=(-1, 0, 1),
                    help="1 / 0: mirror and shift the faces in the visual phase or not (default: the section's)")
    ap.add_argument("--augment-shift", type=int, default=-1,
                    help="the augmentation's largest shift, px (0: mirror only)")
    ap.add_argument("--save-visual", type=Path, default=None,
                    help="write the model and optimiser after the visual phase here (a later run can --load-visual)")
    ap.add_argument("--load-visual", type=Path, default=None,
                    help="start after the visual phase from a --save-visual file: arms that differ only after the "
                         "phase share it (parameters matched by name; a parameter the file lacks keeps its init)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    section = {k: v for k, v in params[args.stage].items() if k in TrainConfig.__dataclass_fields__}
    if args.kinds:
        section["kinds"] = tuple(args.kinds.split(","))
    if args.visual_steps >= 0:
        section["visual_steps"] = args.visual_steps
    if args.visual_lr_after >= 0:
        section["visual_lr_after"] = args.visual_lr_after
    if args.augment_visual >= 0:
        section["augment_visual"] = bool(args.augment_visual)
    if args.augment_shift >= 0:
        section["augment_shift"] = args.augment_shift
    cfg = build(TrainConfig, section, args.stage)
    lr = args.lr or cfg.lr
    knowledge = json.loads(args.knowledge.read_text())
    torch.manual_seed(params["seed"])
    overrides = merge_overrides(dict(params.get("model") or {}), json.loads(args.model))
    model = FaceInsight(model_config(overrides), load_tokenizer(args.tokenizer), knowledge)
    model.apply_recipe(RECIPES[cfg.recipe])
    encoder = CorpusEncoder(**encoder_kwargs(model.cfg, str(args.tokenizer), model.image_tokens, model.seg_tokens,
                                             cfg.max_tokens))
    learner = FaceInsightLearner({"train": section, "stage": args.stage})
    phases = learner.phases(model, args.steps)  # as the stage runs
    total = phases[-1].end
    data = encoded_records(encoder, args.corpus / "train", total * cfg.batch_size, cfg.kinds)
    n = len(data["input_ids"])
    sample = val_sample(args.corpus, args.val_faces or cfg.val_faces or 64, model.cfg.vision.image_size,
                        model.cfg.seg.image_size, params["seed"])
    questions = val_questions()
    groups = learner.param_groups(model)  # as the stage groups them (a phase may scale a group's rate)
    params_ = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW([{"params": g["params"]} for g in groups], lr=lr, weight_decay=cfg.weight_decay)
    order = np.random.default_rng(params["seed"]).permutation(n)
    learner.gen = torch.Generator().manual_seed(params["seed"] + 17)  # the augmentation's draws, as build() seeds them
    bf16 = bf16_enabled(cfg)
    print(f"{args.stage}: recipe {cfg.recipe}, lr {lr}, batch {cfg.batch_size}, {n} records, bf16 {bf16}, phases "
          + ", ".join(f"{p.name} {p.steps}" for p in phases))
    print(f"{'step':>6} {'loss':>7} {'s/step':>7} {'head_bal':>9} {'yesno_bal':>9} {'unread':>7} {'gender':>7} "
          f"{'head_gen':>8} {'expr_uar':>8} {'head_uar':>8} {'age_mae':>7} {'head_age':>8}")
    first = 1
    if args.load_visual:
        first = load_visual_phase(args.load_visual, model, opt, phases) + 1
        print(f"resumed after step {first - 1} from {args.load_visual}")
    start, losses = time.perf_counter(), []
    model.train()
    for step in range(first, total + 1):
        idx = order[((step - 1) * cfg.batch_size + np.arange(cfg.batch_size)) % n]
        batch = {k: torch.from_numpy(np.ascontiguousarray(v[idx])) for k, v in data.items()}
        phase = phase_at(phases, step - 1)
        for group, spec in zip(opt.param_groups, groups, strict=True):  # --lr stands for the section's rates
            base = lr * spec["base_lr"] / cfg.lr
            group["lr"] = phase.lr(step - 1, cfg.warmup_steps, base) * spec.get("phase_scale", {}).get(phase.name, 1.0)
        learner.phase = phase.name
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _, _ = learner.loss(model, model, batch)  # the stage's own step: inputs, augmentation, phase
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params_, cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
        if args.save_visual and phases[0].name == "visual" and step == phases[0].end:
            save_visual_phase(args.save_visual, model, opt, step)
        if step % args.every == 0 or step == total:
            per_step = (time.perf_counter() - start) / (step - first + 1)
            model.eval()
            with torch.no_grad():
                s = val_scores(model, sample, questions)
            model.train()
            head = s.get("val_head_balanced_accuracy", 0)
            print(f"{step:6d} {np.mean(losses[-50:]):7.3f} {per_step:7.3f} {head:9.3f} "
                  f"{s.get('val_yes_no_balanced_accuracy', 0):9.3f} {s.get('val_unread_share', 0):7.3f} "
                  f"{s.get('val_gender_accuracy', 0):7.3f} {s.get('val_head_gender_accuracy', 0):8.3f} "
                  f"{s.get('val_expression_uar', 0):8.3f} {s.get('val_head_expression_uar', 0):8.3f} "
                  f"{s.get('val_age_mae', 0):7.2f} {s.get('val_head_age_mae', 0):8.2f}", flush=True)


if __name__ == "__main__":
    main()
