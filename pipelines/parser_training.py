"""Train the face parser with Ray Train on the CelebAMask-HQ-format masks; evaluate mIoU and per-class F1."""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from model.face_parser import FaceParser, FaceParserConfig, load_parser, save_parser
from model.labels import PARSING_CLASSES
from pipelines.datasets.common import Record
from pipelines.parsing_data import Augment, load_parsing_example
from pipelines.storage import atomic_dir
from pipelines.training.schedule import lr_at

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParserTrainConfig:
    """params.yaml: train_parser."""

    parser: FaceParserConfig = field(default_factory=FaceParserConfig)
    epochs: int = 10
    batch_size: int = 32  # global; each worker gets batch_size / num_workers
    lr: float = 1e-2
    weight_decay: float = 1e-4
    warmup_steps: int = 30
    grad_clip: float = 1.0
    dice_weight: float = 1.0  # soft Dice beside cross-entropy: small parts (eyes, earrings) count as much as skin
    augment: bool = True
    torch_threads: int = 2  # intra-op threads per worker (data is materialised before training starts)
    num_workers: int = 1
    cpus_per_worker: int = 1
    use_gpu: bool = False
    max_train_records: int = 0  # 0: all; smoke runs cap it
    min_val_miou: float = 0.0  # a gate: the stage fails when the trained parser scores below it

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.num_workers < 1 or self.cpus_per_worker < 1:
            raise ValueError("train_parser: epochs, batch_size, num_workers, cpus_per_worker must be >= 1")
        if self.batch_size % self.num_workers:
            raise ValueError(f"train_parser.batch_size ({self.batch_size}) must divide by num_workers "
                             f"({self.num_workers})")
        if self.lr <= 0:
            raise ValueError(f"train_parser.lr must be > 0, got {self.lr}")


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    idx = target.reshape(-1).long() * num_classes + pred.reshape(-1).long()
    return torch.bincount(idx, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def segmentation_scores(confusion: np.ndarray) -> dict[str, Any]:
    """mIoU over classes present in the targets or predictions, and per-class IoU / F1 (rows: truth)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    fp = confusion.sum(0) - tp
    fn = confusion.sum(1) - tp
    present = (tp + fp + fn) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(present, tp / (tp + fp + fn), np.nan)
        f1 = np.where(present, 2 * tp / (2 * tp + fp + fn), np.nan)
    names = PARSING_CLASSES if len(tp) == len(PARSING_CLASSES) else [str(k) for k in range(len(tp))]
    return {
        "miou": float(np.nanmean(iou)) if present.any() else 0.0,
        "pixel_accuracy": float(tp.sum() / confusion.sum()) if confusion.sum() else 0.0,
        "iou": {n: (None if math.isnan(v) else round(float(v), 6)) for n, v in zip(names, iou, strict=True)},
        "f1": {n: (None if math.isnan(v) else round(float(v), 6)) for n, v in zip(names, f1, strict=True)},
    }


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over the classes present in the batch (background excluded)."""
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    total = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    present = onehot.sum(dim=(0, 2, 3)) > 0
    present[0] = False
    if not present.any():
        return logits.sum() * 0.0
    dice = (2 * inter + 1.0) / (total + 1.0)
    return 1.0 - dice[present].mean()


def _batches(shard, batch_size: int):
    for batch in shard.iter_torch_batches(batch_size=batch_size, dtypes={"image": torch.uint8, "label": torch.uint8}):
        images = batch["image"].permute(0, 3, 1, 2).float() / 255.0
        yield images, batch["label"].long()


def _evaluate(model, shard, batch_size: int, num_classes: int) -> torch.Tensor:
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    model.eval()
    with torch.no_grad():
        for images, labels in _batches(shard, batch_size):
            confusion += confusion_matrix(model(images).argmax(1), labels, num_classes)
    model.train()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(confusion)
    return confusion


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: train, evaluate on val and test, rank 0 logs to MLflow and saves the checkpoint."""
    import ray.train
    import ray.train.torch

    from pipelines.config import build
    from pipelines.tracking import mlflow_run

    cfg = build(ParserTrainConfig, config["train"], "train_parser")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(config["seed"] + rank)
    torch.set_num_threads(cfg.torch_threads)
    model = ray.train.torch.prepare_model(FaceParser(cfg.parser))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_worker = cfg.batch_size // world
    train_shard = ray.train.get_dataset_shard("train")
    total = cfg.epochs * math.ceil(config["n_train"] / cfg.batch_size)
    step = 0

    def epochs(run):
        nonlocal step
        for epoch in range(cfg.epochs):
            losses = []
            for images, labels in _batches(train_shard, per_worker):
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, total, cfg.warmup_steps, cfg.lr)
                logits = model(images)
                loss = F.cross_entropy(logits, labels) + cfg.dice_weight * soft_dice_loss(logits, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                losses.append(loss.item())
                if run is not None:
                    run.log_metrics({"train_loss": loss.item(), "lr": optimizer.param_groups[0]["lr"]}, step=step)
                step += 1
            val = segmentation_scores(_evaluate(model, ray.train.get_dataset_shard("val"), per_worker,
                                                cfg.parser.num_classes).numpy())
            metrics = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                       "val_miou": val["miou"], "val_pixel_accuracy": val["pixel_accuracy"]}
            if run is not None:
                run.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=step)
            last = epoch == cfg.epochs - 1
            if not last:
                ray.train.report(metrics)
                continue
            test = segmentation_scores(_evaluate(model, ray.train.get_dataset_shard("test"), per_worker,
                                                 cfg.parser.num_classes).numpy())
            final = {**metrics, "test_miou": test["miou"], "val": val, "test": test}
            with tempfile.TemporaryDirectory() as tmp:
                checkpoint = None
                if rank == 0:
                    save_parser(model.module if hasattr(model, "module") else model, tmp)
                    if run is not None:
                        run.log_metrics({"test_miou": test["miou"]}, step=step)
                        run.log_artifacts(tmp, artifact_path="parser")
                    checkpoint = ray.train.Checkpoint.from_directory(tmp)
                scalars = {k: v for k, v in final.items() if not isinstance(v, dict)}
                ray.train.report({**scalars, "scores_json": json.dumps({"val": val, "test": test})},
                                 checkpoint=checkpoint)

    if rank == 0:  # only rank 0 talks to MLflow; `run` is the mlflow module bound to the active run
        with mlflow_run(config["tracking_uri"], "train_parser", "train_parser", config["train"]):
            import mlflow

            epochs(mlflow)
    else:
        epochs(None)


def _dataset(records: list[Record], size: int, augment: bool, seed: int):
    import ray

    rows = [{"id": r.id, "image": r.image, "masks": list(r.masks)} for r in records]
    ds = ray.data.from_items(rows).map(lambda row: load_parsing_example(row, size)).drop_columns(["id"])
    if augment:
        ds = ds.map_batches(Augment, fn_constructor_kwargs={"seed": seed}, batch_size=64,
                            compute=ray.data.ActorPoolStrategy(size=1))
    return ds.materialize()


def train_parser(records: list[Record], cfg: ParserTrainConfig, seed: int, out_dir: Path,
                 storage_path: Path) -> dict[str, Any]:
    """Fit the parser on the train split, choose nothing on test; copy the final checkpoint to `out_dir`."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.ray_runtime import init_ray
    from pipelines.tracking import tracking_uri

    init_ray()
    by_split = {s: [r for r in records if r.dataset == "celebamask_hq" and r.split == s and r.masks]
                for s in ("train", "val", "test")}
    if cfg.max_train_records:
        by_split["train"] = by_split["train"][: cfg.max_train_records]
    for split, rows in by_split.items():
        if not rows:
            raise ValueError(f"no CelebAMask-HQ {split} records with masks in the manifest; check `ingest`")
    size = cfg.parser.image_size
    datasets = {"train": _dataset(by_split["train"], size, cfg.augment, seed),
                "val": _dataset(by_split["val"], size, False, seed),
                "test": _dataset(by_split["test"], size, False, seed)}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": asdict(cfg), "seed": seed, "n_train": len(by_split["train"]),
                           "tracking_uri": tracking_uri()},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(storage_path=str(storage_path.resolve()), name="train_parser"),
        datasets=datasets,
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("train_parser finished without a checkpoint; see the Ray Train logs above")
    scores = json.loads(result.metrics["scores_json"])
    with atomic_dir(out_dir) as tmp:
        with result.checkpoint.as_directory() as ckpt:
            shutil.copytree(ckpt, tmp)
        load_parser(tmp)  # refuse to publish a checkpoint that does not load
        if scores["val"]["miou"] < cfg.min_val_miou:
            raise RuntimeError(f"the parser reached val mIoU {scores['val']['miou']:.3f}, below train_parser."
                               f"min_val_miou={cfg.min_val_miou}; train longer (epochs) or lower the gate")
    return {"epochs": cfg.epochs, "train_records": len(by_split["train"]),
            "final_train_loss": result.metrics["train_loss"],
            "val_miou": scores["val"]["miou"], "val_pixel_accuracy": scores["val"]["pixel_accuracy"],
            "test_miou": scores["test"]["miou"], "val_f1": scores["val"]["f1"], "val_iou": scores["val"]["iou"]}


