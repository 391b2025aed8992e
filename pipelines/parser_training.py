"""Train the face parser with Ray Train on the CelebAMask-HQ-format masks; evaluate mIoU and per-class F1."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch.nn import functional as F

from model.face_parser import WEIGHTS_FILE, FaceParser, FaceParserConfig, load_parser, save_parser
from model.labels import PARSING_CLASSES
from pipelines.datasets.common import Record
from pipelines.parsing_data import augment_batch, load_parsing_example
from pipelines.training.learner import Learner
from pipelines.training.loop import TRAINER_STATE, LoopConfig, TrainingPass, run_name, train_and_publish, worker_counts

log = logging.getLogger(__name__)
LEARNER = "pipelines.parser_training:ParserLearner"


@dataclass(frozen=True)
class ParserTrainConfig(LoopConfig):
    """params.yaml: train_parser (and the loop's own keys, LoopConfig)."""

    parser: FaceParserConfig = field(default_factory=FaceParserConfig)
    epochs: int = 10
    lr: float = 1e-2
    weight_decay: float = 1e-4
    warmup_steps: int = 30
    dice_weight: float = 1.0  # soft Dice beside cross-entropy: small parts (eyes, earrings) count as much as skin
    augment: bool = True
    max_train_records: int = 0  # 0: all; smoke runs cap it
    min_val_miou: float = 0.0  # a gate: the stage fails when the trained parser scores below it


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


def _images(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch["image"].permute(0, 3, 1, 2).float() / 255.0, batch["label"].long()


class ParserLearner(Learner):
    """The face parser on the shared loop: CE + soft Dice; val mIoU at every checkpoint, test at the end."""

    config_class = ParserTrainConfig
    artifact_path = "parser"

    def build(self) -> FaceParser:
        return FaceParser(self.cfg.parser)

    def loss(self, wrapped, module, batch):
        images, labels = _images(batch)
        logits = wrapped(images)
        ce = F.cross_entropy(logits, labels)
        dice = soft_dice_loss(logits, labels)
        return ce + self.cfg.dice_weight * dice, {"loss_ce": ce.item(), "loss_dice": dice.item()}, len(images)

    def save(self, module, path: Path, weights: dict[str, torch.Tensor] | None) -> None:
        save_parser(module, path, state_dict=weights)

    def load(self, module, path: Path) -> None:
        module.load_state_dict(load_file(str(path / WEIGHTS_FILE)))

    def evaluate(self, wrapped, module, final: bool) -> dict[str, Any]:
        import ray.train

        splits = ("val", "test") if final else ("val",)  # test is looked at once, at the end
        scores = {s: segmentation_scores(self._confusion(module, ray.train.get_dataset_shard(s)).numpy())
                  for s in splits}
        out: dict[str, Any] = {f"{s}_miou": v["miou"] for s, v in scores.items()}
        out["val_pixel_accuracy"] = scores["val"]["pixel_accuracy"]
        return out | scores

    def _confusion(self, module, shard) -> torch.Tensor:
        n = self.cfg.parser.num_classes
        confusion = torch.zeros(n, n, dtype=torch.long)
        module.eval()
        with torch.no_grad():
            for batch in shard.iter_torch_batches(batch_size=64):
                images, labels = _images(batch)
                confusion += confusion_matrix(module(images).argmax(1), labels, n)
        module.train()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(confusion)  # each rank saw its own part of the split
        return confusion


def _dataset(records: list[Record], size: int, augment: bool, seed: int):
    import ray

    rows = [{"id": r.id, "image": r.image, "masks": list(r.masks)} for r in records]
    ds = ray.data.from_items(rows).map(lambda row: load_parsing_example(row, size))
    if augment:
        ds = ds.map_batches(augment_batch, fn_kwargs={"seed": seed}, batch_size=64)
    return ds.drop_columns(["id"]).materialize()


def train_parser(records: list[Record], cfg: ParserTrainConfig, seed: int, out_dir: Path,
                 storage_path: str) -> dict[str, Any]:
    """Fit the parser on the train split, choose nothing on test; copy the final checkpoint to `out_dir`."""
    def prepare(where) -> TrainingPass:
        by_split = {s: [r for r in records if r.dataset == "celebamask_hq" and r.split == s and r.masks]
                    for s in ("train", "val", "test")}
        if cfg.max_train_records:
            by_split["train"] = by_split["train"][: cfg.max_train_records]
        for split, rows in by_split.items():
            if not rows:
                raise ValueError(f"no CelebAMask-HQ {split} records with masks in the manifest; check `ingest`")
        where.require_files("train_parser", "manifest images and masks",
                            (p for rows in by_split.values() for r in rows for p in (r.image, *r.masks)))
        size = cfg.parser.image_size
        datasets = {"train": _dataset(by_split["train"], size, cfg.augment, seed),
                    "val": _dataset(by_split["val"], size, False, seed),
                    "test": _dataset(by_split["test"], size, False, seed)}
        records_by_split = {s: [(r.id, r.image) for r in rows] for s, rows in by_split.items()}
        name = run_name("train_parser", {"train": asdict(cfg), "seed": seed, "records": records_by_split})
        return TrainingPass(LEARNER, datasets, {"seed": seed, "n_train": len(by_split["train"])}, name, check)

    def check(folder: Path) -> None:
        load_parser(folder)  # refuse to publish a checkpoint that does not load
        val = json.loads((folder / TRAINER_STATE).read_text())["evaluation"]["val"]
        if val["miou"] < cfg.min_val_miou:
            raise RuntimeError(f"the parser reached val mIoU {val['miou']:.3f}, below train_parser."
                               f"min_val_miou={cfg.min_val_miou}; train longer (epochs) or lower the gate")

    job, state = train_and_publish("train_parser", cfg, storage_path, out_dir, prepare)
    scores, history = state["evaluation"], state["history"]
    return {"epochs": cfg.epochs, "steps": state["step"], "train_records": job.loop_config["n_train"],
            **worker_counts(state),
            "final_train_loss": float(np.mean([h["loss"] for h in history[-10:]])),
            "val_miou": scores["val"]["miou"], "val_pixel_accuracy": scores["val"]["pixel_accuracy"],
            "test_miou": scores["test"]["miou"], "val_f1": scores["val"]["f1"], "val_iou": scores["val"]["iou"],
            "seconds": state["seconds"]}
