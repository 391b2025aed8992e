"""What FaceInsight's visual phase teaches its heads in a fixed time: the image tower, map encoder and heads trained on
the heads' losses alone (no LM), then the heads scored on val faces.

    python benchmarks/visual_phase.py --minutes 3                                    # the default model
    python benchmarks/visual_phase.py --minutes 3 --vision '{"stem_depth": 1, "stem_width": 16}'
    python benchmarks/visual_phase.py --minutes 6                                    # is the curve still rising?
    python benchmarks/visual_phase.py --steps 4000 --augment --threads 1             # as align's heads-only steps

`--steps` trains a fixed number of steps (the cosine over steps, as the stage) instead of a time; `--augment`
mirrors and shifts the faces as `align.augment_visual` does. The heads are scored on train faces too (as many as on
val), so under- and over-fitting show.

A plain torch loop (no Ray), 2 threads, bf16 as the stage uses it here, batches of faces drawn from all three tasks
of the default corpus' train split, align's lr with a warm-up and a cosine over the time budget. Scored on up to 300
val faces per task: the co-occurrence head's attribute balanced accuracy (threshold 0.5, and with per-attribute
thresholds fitted on half the faces and scored on the other half), the answer heads' gender accuracy (UTKFace faces),
race and expression UAR, and age MAE beside the train median's. Used to choose align.visual_steps and the tiny
vision tower (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from model.config import RECIPES, model_config
from model.faceinsight import FaceInsight
from model.knowledge_modules import answer_value, gender_from_attributes
from model.labels import CELEBA_ATTRIBUTES
from model.tokenizer import load_tokenizer
from pipelines.config import load_params
from pipelines.corpus.reader import load_faces
from pipelines.images import decode_image
from pipelines.training.faceinsight_training import augment_faces
from pipelines.training.loop import native_bf16
from pipelines.training.schedule import lr_at

TASKS = ("attributes", "age_gender_race", "expression")


def face_arrays(corpus: Path, split: str, size: int, seg_size: int, max_faces: int = 0) -> dict[str, np.ndarray]:
    """Every face of the three tasks in a split: images, maps and each label (-1 where the face has none)."""
    cols: dict[str, list] = {k: [] for k in ("image", "seg", "attributes", "gender", "race", "expression", "age")}
    for task in TASKS:
        for row in load_faces(corpus, split, task, max_faces):
            labels = row["labels"]
            cols["image"].append(decode_image(row["image"], size))
            cols["seg"].append(decode_image(row["seg_map"], seg_size, "L"))
            cols["attributes"].append(labels["attributes"] or [-1] * len(CELEBA_ATTRIBUTES))
            gender = labels["gender"] if labels["gender"] is not None else \
                gender_from_attributes(labels["attributes"])
            cols["gender"].append(gender)
            for key in ("race", "expression", "age"):
                cols[key].append(-1 if labels[key] is None else labels[key])
    out = {k: np.stack(v) if k in ("image", "seg") else np.array(v) for k, v in cols.items()}
    out["seg"] = out["seg"].astype(np.int64)
    return out


def record_stream(celeba: np.ndarray, batch: int, buffer: int, rng: np.random.Generator):
    """Face indices as the stage's loop draws them (an endless iterator of batches): the corpus holds each face's
    records side by side (a CelebA face ~7: five kinds and ~2.4 yes/no records; the others five), read in order
    through Ray Data's local shuffle buffer (fill to `buffer`, draw a batch at random, refill)."""
    while True:
        order = rng.permutation(len(celeba))
        stream = iter(np.repeat(order, np.where(celeba[order], 7, 5)))
        pool: list[int] = []
        for face in stream:
            pool.append(int(face))
            if len(pool) >= buffer + batch:
                picks = rng.choice(len(pool), batch, replace=False)
                yield np.array([pool[k] for k in picks])
                for k in sorted(picks, reverse=True):
                    pool[k] = pool[-1]
                    pool.pop()


def mean_recall(pred: np.ndarray, truth: np.ndarray) -> float:
    """Balanced accuracy / UAR over the faces with a label."""
    known = truth >= 0
    pred, truth = pred[known], truth[known]
    return float(np.mean([(pred[truth == c] == c).mean() for c in np.unique(truth)]))


def head_scores(model: FaceInsight, val: dict[str, np.ndarray], train_ages: np.ndarray) -> dict[str, float]:
    model.eval()
    probs, classes = [], {}
    with torch.no_grad():
        for start in range(0, len(val["image"]), 128):
            sl = slice(start, start + 128)
            _, verdicts = model.encode_visual(model.preprocess(val["image"][sl]), torch.from_numpy(val["seg"][sl]))
            probs.append(torch.sigmoid(verdicts["attributes"].float()).numpy())
            for task in ("gender", "race", "expression", "age"):
                if task in verdicts:
                    classes.setdefault(task, []).append(verdicts[task].argmax(-1).numpy())
    p = np.concatenate(probs)
    pred = {k: np.concatenate(v) for k, v in classes.items()}
    attrs = val["attributes"]
    faces = np.flatnonzero(attrs[:, 0] >= 0)
    fit_half, score_half = faces[::2], faces[1::2]
    grid = np.linspace(0.05, 0.95, 19)
    at_half, fitted, all_faces = [], [], []
    for j in range(attrs.shape[1]):
        if min(len(np.unique(attrs[fit_half, j])), len(np.unique(attrs[score_half, j]))) < 2:
            continue
        all_faces.append(mean_recall((p[faces, j] > 0.5).astype(int), attrs[faces, j]))
        best = grid[int(np.argmax([mean_recall((p[fit_half, j] > t).astype(int), attrs[fit_half, j]) for t in grid]))]
        at_half.append(mean_recall((p[score_half, j] > 0.5).astype(int), attrs[score_half, j]))
        fitted.append(mean_recall((p[score_half, j] > best).astype(int), attrs[score_half, j]))
    utk = val["age"] >= 0
    out = {"attributes": float(np.mean(all_faces)), "attributes_half_0.5": float(np.mean(at_half)),
           "attributes_half_fitted": float(np.mean(fitted)),
           "gender": float((pred["gender"][utk] == val["gender"][utk]).mean()),
           "race_uar": mean_recall(pred["race"], val["race"]), "expression_uar": mean_recall(pred["expression"],
                                                                                              val["expression"]),
           "median_age_mae": float(np.abs(np.median(train_ages) - val["age"][utk]).mean())}
    if "age" in pred:
        out["age_mae"] = float(np.abs(answer_value("age", pred["age"][utk]) - val["age"][utk]).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    ap.add_argument("--tokenizer", type=Path, default=Path("models/tokenizer"))
    ap.add_argument("--knowledge", type=Path, default=Path("data/knowledge/knowledge.json"))
    ap.add_argument("--minutes", type=float, default=3.0, help="training time")
    ap.add_argument("--steps", type=int, default=0, help="train this many steps instead (the cosine over steps)")
    ap.add_argument("--augment", action="store_true", help="mirror and shift the faces (align.augment_visual)")
    ap.add_argument("--vision", default="{}", help="JSON overrides of model.vision (e.g. a deeper stem)")
    ap.add_argument("--model", default="{}", help="JSON overrides of the model section (other fields)")
    ap.add_argument("--lr", type=float, default=0.0, help="default: align's lr")
    ap.add_argument("--batch", type=int, default=0, help="default: align's batch_size")
    ap.add_argument("--val-faces", type=int, default=300, help="val faces per task")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stream-buffer", type=int, default=0,
                    help="draw batches as the stage's record stream does: each face's records side by side (7 a "
                         "CelebA face, 5 the others), through a local shuffle buffer of this many records "
                         "(0: faces drawn uniformly)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    params = load_params(args.params)
    align = params["align"]
    lr, batch = args.lr or align["lr"], args.batch or align["batch_size"]
    overrides = dict(params.get("model") or {}) | json.loads(args.model)
    overrides["vision"] = dict(overrides.get("vision") or {}) | json.loads(args.vision)
    model = FaceInsight(model_config(overrides), load_tokenizer(args.tokenizer), json.loads(args.knowledge.read_text()))
    model.apply_recipe(RECIPES["full"])
    # what a visual step updates: everything but the LM's blocks (the attribute names are its embeddings)
    trained = {id(p): p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("llm.")}
    trained[id(model.llm.get_input_embeddings().weight)] = model.llm.get_input_embeddings().weight
    weights = list(trained.values())
    opt = torch.optim.AdamW(weights, lr=lr, weight_decay=0.0)
    sizes = (model.cfg.vision.image_size, model.cfg.seg.image_size)
    train = face_arrays(args.corpus, "train", *sizes)
    val = face_arrays(args.corpus, "val", *sizes, max_faces=args.val_faces)
    bf16 = native_bf16(False) if align.get("bf16", "auto") == "auto" else bool(align["bf16"])
    rng = np.random.default_rng(args.seed)
    budget, step = args.minutes * 60, 0
    gen = torch.Generator().manual_seed(args.seed + 17)
    batches = record_stream(train["attributes"][:, 0] >= 0, batch, args.stream_buffer, rng) \
        if args.stream_buffer else None
    length = f"{args.steps} steps" if args.steps else f"{args.minutes} min"
    print(f"visual phase, {length}: {len(train['image'])} train faces, lr {lr}, batch {batch}, bf16 {bf16}, "
          f"augment {args.augment}, stream buffer {args.stream_buffer or 'none (uniform faces)'}, "
          f"vision {model.cfg.vision}, tower {sum(p.numel() for p in model.vision.parameters()):,} parameters")
    model.train()
    start = time.perf_counter()
    while step < args.steps if args.steps else (elapsed := time.perf_counter() - start) < budget:
        idx = next(batches) if batches else rng.integers(0, len(train["image"]), batch)
        # the stage's warm-up and cosine: over the steps, or over the time
        at, total = (step, args.steps) if args.steps else (int(elapsed / budget * 10_000), 10_000)
        for group in opt.param_groups:
            group["lr"] = lr_at(at, total, 0, lr) * min(1.0, (step + 1) / 25)
        labels = {k: torch.from_numpy(train[k][idx]) for k in ("gender", "race", "expression", "age")}
        pixels, maps = model.preprocess(train["image"][idx]), torch.from_numpy(train["seg"][idx])
        if args.augment:
            pixels, maps = augment_faces(pixels, maps, gen, align.get("augment_shift", 4))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(input_ids=None, pixel_values=pixels, seg_maps=maps,
                        attribute_labels=torch.from_numpy(train["attributes"][idx]), answer_labels=labels,
                        visual_only=True)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(weights, 1.0)
        opt.step()
        step += 1
    took = time.perf_counter() - start
    train_ages = train["age"][train["age"] >= 0]
    scores = head_scores(model, val, train_ages)
    seen = head_scores(model, subset(train, args.val_faces), train_ages)
    print(json.dumps({"steps": step, "s_per_step": round(took / step, 3), **{k: round(v, 3) for k, v in scores.items()},
                      "train": {k: round(v, 3) for k, v in seen.items() if k != "median_age_mae"}}))


def subset(faces: dict[str, np.ndarray], per_task: int) -> dict[str, np.ndarray]:
    """Up to `per_task` faces of each task (the first ones: the train split is in the corpus' order), to score fit."""
    task = np.where(faces["attributes"][:, 0] >= 0, 0, np.where(faces["age"] >= 0, 1, 2))
    keep = np.concatenate([np.flatnonzero(task == t)[:per_task] for t in range(3)])
    return {k: v[keep] for k, v in faces.items()}


if __name__ == "__main__":
    main()
