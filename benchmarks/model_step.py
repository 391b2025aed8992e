"""FaceInsight training-step cost: forward + backward time per sample, tokens/s, FLOP/s and MFU.

    python benchmarks/model_step.py [--preset tiny] [--batch 16] [--steps 5] [--recipe full]
    python benchmarks/model_step.py --preset llava15-7b --random --device cuda --dtype bf16 --recipe finetune

Sequences are real corpus conversations (the templates on random labels): 8 yes/no questions about
one face per sequence, as the tiny recipe packs them. `--random` builds a preset's backbones from
its shapes with random weights (no download): the `llava15-7b` shapes are CLIP ViT-L/14-336 and a
7B Llama. FLOPs are counted by torch's FlopCounterMode on one step; MFU divides the achieved FLOP/s
by `--peak-tflops` (default: 989 for an H100's dense bf16; on a CPU pass the machine's own figure).
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
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        with torch.autocast(args.device, dtype=dtype, enabled=args.dtype == "bf16"):
            loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()  # also the warm-up
    flops = counter.get_total_flops()
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    sync()
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


if __name__ == "__main__":
    main()
