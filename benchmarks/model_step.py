"""FaceInsight training-step cost: forward + backward time per sample, tokens/s, FLOP/s and MFU.

    python benchmarks/model_step.py [--preset tiny] [--batch 16] [--steps 5] [--recipe full]
    python benchmarks/model_step.py --preset llava15-7b --random --device cuda --dtype bf16 --recipe finetune
    python benchmarks/model_step.py ... --deepspeed zero2      # the step through a DeepSpeed engine (1 process)

Sequences are real corpus conversations (the templates on random labels): 8 yes/no questions about
one face per sequence, as the tiny recipe packs them. `--random` builds a preset's backbones from
its shapes with random weights (no download): the `llava15-7b` shapes are CLIP ViT-L/14-336 and a
7B Llama. FLOPs are counted by torch's FlopCounterMode on one step; MFU divides the achieved FLOP/s
by `--peak-tflops` (default: 989 for an H100's dense bf16; on a CPU pass the machine's own figure).
`--deepspeed NAME` runs the step through `infra/deepspeed/NAME.json` (bf16 from `--dtype`) in one
process; peak memory is the accelerator's high-water mark over the timed steps (CUDA only).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time

import numpy as np
import torch

from model.config import PRESETS, RECIPES
from model.faceinsight import FaceInsight
from model.tokenizer import train_tokenizer
from pipelines.corpus.records import RecordPlan, conversation, face_conversations, face_labels
from pipelines.corpus.templates import Templates
from pipelines.knowledge import KnowledgeConfig, mine_knowledge


def corpus_like(n: int, seed: int = 0) -> tuple[list[list[dict]], dict]:
    rng = np.random.default_rng(seed)
    table = rng.random((400, 40)) < 0.35
    knowledge = mine_knowledge(table, KnowledgeConfig(min_support=10, min_expected=3))
    templates = Templates.load(knowledge=knowledge)
    convs = []
    for k in range(n):
        labels = face_labels({"attributes": [1 if v else -1 for v in table[k % 400]], "age": None, "gender": None,
                              "race": None, "expression": None})
        convs += [conversation(t) for kind, t in face_conversations("celebamask_hq", labels, templates, RecordPlan(),
                                                                     random.Random(k)) if kind == "yes_no"]
    return convs, knowledge


def build(preset: str, random_backbones: bool, tokenizer, knowledge) -> FaceInsight:
    cfg = PRESETS[preset]
    if random_backbones and preset != "tiny":  # the preset's shapes, built from config with random weights
        cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, kind="tiny", path=""),
                                  llm=dataclasses.replace(cfg.llm, kind="tiny", path=""))
    return FaceInsight(cfg, tokenizer, knowledge)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--random", action="store_true", help="random backbones in the preset's shapes")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--recipe", default="full", choices=sorted(RECIPES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--deepspeed", default="", help="a config name under infra/deepspeed/ (zero2, zero3, ...)")
    args = ap.parse_args()
    torch.manual_seed(0)
    convs, knowledge = corpus_like(args.batch)
    tokenizer = train_tokenizer((t["value"] for c in convs for t in c), vocab_size=2048)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    with torch.device(args.device):
        model = build(args.preset, args.random, tokenizer, knowledge)
    model.to(args.device)
    counts = model.apply_recipe(RECIPES[args.recipe])
    total = sum(model.parameter_counts().values())
    print(f"{args.preset}{' (random)' if args.random else ''}: {total / 1e6:.2f}M parameters, trainable "
          f"{ {k: v for k, v in counts.items() if v} } ({args.recipe}), {args.device}, {args.dtype}")
    convs = convs[:args.batch]
    encoded = [model.chat.encode(tokenizer, c, model.image_tokens, model.seg_tokens) for c in convs]
    longest = max(len(i) for i, _ in encoded)
    side = model.cfg.vision.image_size
    batch = {
        "input_ids": torch.tensor([i + [0] * (longest - len(i)) for i, _ in encoded]),
        "labels": torch.tensor([lab + [-100] * (longest - len(lab)) for _, lab in encoded]),
        "attention_mask": torch.tensor([[1] * len(i) + [0] * (longest - len(i)) for i, _ in encoded]),
        "pixel_values": torch.rand(len(encoded), 3, side, side),
        "seg_maps": torch.randint(0, 19, (len(encoded), model.cfg.seg.image_size, model.cfg.seg.image_size)),
        "attribute_labels": torch.randint(0, 2, (len(encoded), 40)),
    }
    batch = {k: v.to(args.device) for k, v in batch.items()}
    tokens = int(batch["attention_mask"].sum())
    from torch.utils.flop_counter import FlopCounterMode

    def forward_backward(module) -> torch.Tensor:
        with torch.autocast(args.device, dtype=dtype, enabled=args.dtype == "bf16"):
            return module(**batch).loss

    with FlopCounterMode(display=False) as counter:  # counted on the bare model: the same matmuls
        forward_backward(model).backward()
    flops = counter.get_total_flops()
    model.zero_grad(set_to_none=True)
    step = (deepspeed_step(model, args, forward_backward) if args.deepspeed
            else torch_step(model, forward_backward))
    step()  # warm-up
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    sync()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    per_step = (time.perf_counter() - start) / args.steps
    print(f"batch {len(encoded)} x {longest} tokens ({tokens} real; {model.image_tokens} image + {model.seg_tokens} "
          f"map tokens each)")
    print(f"forward+backward+step: {per_step * 1000:.1f} ms/step, {per_step / len(encoded) * 1000:.2f} ms/sample, "
          f"{tokens / per_step:,.0f} tokens/s")
    print(f"{flops / 1e9:.2f} GFLOP/step -> {flops / per_step / 1e9:,.1f} GFLOP/s achieved; "
          f"MFU {flops / per_step / (args.peak_tflops * 1e12):.2%} of {args.peak_tflops} TFLOP/s peak")
    if args.device == "cuda":
        print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB allocated, "
              f"{torch.cuda.max_memory_reserved() / 2**30:.1f} GiB reserved ({args.deepspeed or 'plain torch'})")


def torch_step(model: FaceInsight, forward_backward):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        loss = forward_backward(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def deepspeed_step(model: FaceInsight, args: argparse.Namespace, forward_backward):
    """One process, world size 1: the engine, its ZeRO stage and bf16 as the trainer configures them."""
    import os

    import deepspeed

    from pipelines.training.loop import LoopConfig, deepspeed_config, make_optimizer

    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29531"}.items():
        os.environ.setdefault(key, value)
    deepspeed.init_distributed(dist_backend="nccl" if args.device == "cuda" else "gloo")
    cfg = LoopConfig(deepspeed=args.deepspeed, bf16=args.dtype == "bf16", warmup_steps=0)
    ds_config = deepspeed_config(cfg, micro=args.batch)
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": 1e-4}]
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=make_optimizer(groups, cfg, ds_config),
                                           config=ds_config)

    def step() -> None:
        loss = forward_backward(engine)  # as the trainer does: bf16 weights from the engine, autocast around
        engine.backward(loss)
        engine.step()
    return step


if __name__ == "__main__":
    main()
