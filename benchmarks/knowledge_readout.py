"""Can the tiny LM read a verdict it is handed? Yes/no decisions against steps, with true labels as verdicts.

    python benchmarks/knowledge_readout.py --steps 300 --every 100
    python benchmarks/knowledge_readout.py --model '{"alignment": {"knowledge_embedding": false,
                                                                   "knowledge_tokens": "per_attribute"}}'

Trains the tiny FaceInsight (align's lr, batch, warm-up and max_tokens from params.yaml; everything trains) on the
default corpus' yes/no records only, in a plain torch loop, with `alignment.verdict_forcing: 1`: every labelled
face hands the knowledge modules its true labels in place of the head's guesses. So the verdicts are right from
step 1, and what is measured is how fast the LM learns to read them: the teacher-forced first answer token
(Yes / No) on the val split's yes/no records, balanced accuracy, with the true labels as verdicts ("oracle") and
with the head's own ("head"). A design whose oracle column stays near 0.5 cannot say what its head knows, however
good the head. benchmarks/RESULTS.md has the figures that chose the knowledge embedding.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch
from learning_curve import corpus_arguments, encoded_records  # run as a script: benchmarks/ is on sys.path

from model.chat import IGNORE
from model.config import RECIPES, model_config
from model.faceinsight import FaceInsight
from model.tokenizer import load_tokenizer
from pipelines.config import build, load_params
from pipelines.training.corpus_data import CorpusEncoder, encoder_kwargs
from pipelines.training.faceinsight_training import TrainConfig
from pipelines.training.loop import bf16_enabled
from pipelines.training.schedule import lr_at


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    corpus_arguments(ap, steps=300, every=100)
    ap.add_argument("--model", default="{}", help="JSON overrides of params.yaml's model section")
    ap.add_argument("--val-records", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    section = {k: v for k, v in params["align"].items() if k in TrainConfig.__dataclass_fields__}
    cfg = build(TrainConfig, section, "align")
    model_params = {**(params.get("model") or {}), **json.loads(args.model)}
    model_cfg = model_config(model_params)
    model_cfg = dataclasses.replace(model_cfg, alignment=dataclasses.replace(model_cfg.alignment, verdict_forcing=1.0))
    torch.manual_seed(params["seed"])
    model = FaceInsight(model_cfg, load_tokenizer(args.tokenizer), json.loads(args.knowledge.read_text()))
    model.apply_recipe(RECIPES["full"])
    encoder = CorpusEncoder(**encoder_kwargs(model.cfg, str(args.tokenizer), model.image_tokens, model.seg_tokens,
                                             cfg.max_tokens))
    train = encoded_records(encoder, args.corpus / "train", args.steps * cfg.batch_size, ("yes_no",))
    val = encoded_records(encoder, args.corpus / "val", args.val_records, ("yes_no",))
    val = {k: v[:args.val_records] for k, v in val.items()}
    yes, no = (model.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ("Yes", "No"))
    bf16 = bf16_enabled(cfg)

    def tensors(data, idx):
        b = {k: torch.from_numpy(np.ascontiguousarray(v[idx])) for k, v in data.items()}
        return {"input_ids": b["input_ids"].long(), "pixel_values": model.preprocess(b["image"].numpy()),
                "seg_maps": b["seg_map"].long() if model.seg_encoder is not None else None,
                "attention_mask": b["attention_mask"].long(), "labels": b["labels"].long(),
                "attribute_labels": b["attribute_labels"].long()}

    def decisions(oracle: bool) -> float:
        """Balanced accuracy of Yes/No at the first answer token; train mode hands the true labels (forcing 1),
        eval mode the head's (the tiny preset has no dropout, so the modes differ in nothing else)."""
        model.train(oracle)
        hits, counts = np.zeros(2), np.zeros(2)
        with torch.no_grad():
            for start in range(0, len(val["input_ids"]), 64):
                b = tensors(val, np.arange(start, min(start + 64, len(val["input_ids"]))))
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    logits = model(**b).logits
                targets = b["labels"][:, 1:]
                targets = targets[targets != IGNORE]
                decided = (targets == yes) | (targets == no)
                pred = logits[decided][:, [yes, no]].argmax(-1).numpy()
                truth = (targets[decided] == no).long().numpy()
                for c in (0, 1):
                    hits[c] += (pred[truth == c] == c).sum()
                    counts[c] += (truth == c).sum()
        model.train()
        return float(np.mean(hits / np.maximum(counts, 1)))

    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(train["input_ids"])
    order = np.random.default_rng(params["seed"]).permutation(n)
    print(f"yes/no records: {n} train, {len(val['input_ids'])} val; lr {cfg.lr}, batch {cfg.batch_size}, bf16 {bf16}")
    print(f"{'step':>5} {'lm loss':>8} {'oracle':>7} {'head':>7} {'s/step':>7}")
    start, losses = time.perf_counter(), []
    model.train()
    for step in range(1, args.steps + 1):
        b = tensors(train, order[((step - 1) * cfg.batch_size + np.arange(cfg.batch_size)) % n])
        for group in opt.param_groups:
            group["lr"] = lr_at(step - 1, args.steps, cfg.warmup_steps, cfg.lr)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(**b)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        opt.step()
        losses.append(out.losses["lm"].item())
        if step % args.every == 0 or step == args.steps:
            per_step = (time.perf_counter() - start) / step
            print(f"{step:5d} {np.mean(losses[-50:]):8.3f} {decisions(True):7.3f} {decisions(False):7.3f} "
                  f"{per_step:7.2f}", flush=True)


if __name__ == "__main__":
    main()
