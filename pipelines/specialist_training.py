"""The specialist CNN baseline on the shared train loop: the corpus' train faces, every label at once."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.specialist import SpecialistCNN, SpecialistConfig, load_specialist, save_specialist
from pipelines.corpus.reader import load_faces
from pipelines.images import decode_image
from pipelines.training.augmentation import mirror_and_shift
from pipelines.training.learner import Learner
from pipelines.training.loop import LoopConfig, TrainingPass, run_name, train_and_publish, worker_counts

LEARNER = "pipelines.specialist_training:SpecialistLearner"
LABELS = ("attributes", "age", "gender", "race", "expression")


@dataclass(frozen=True)
class SpecialistTrainConfig(LoopConfig):
    """params.yaml: train_specialist (and the loop's own keys, LoopConfig)."""

    model: SpecialistConfig = field(default_factory=SpecialistConfig)
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    balance: bool = True  # pos_weight / class weights from the train labels, thresholds chosen on val
    augment: bool = True  # mirror and shift the train images (every label here is mirror-invariant)
    # the attribute BCE's weight in the sum of the heads' losses: a mean over 40 attributes beside one cross-entropy
    # per other head, it learned 0.81 where the attribute head alone reached 0.93 in the same steps
    attribute_weight: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.attribute_weight <= 0:
            raise ValueError(f"train_specialist.attribute_weight must be > 0, got {self.attribute_weight}")


def label_tensors(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The label columns of face_rows as tensors (balance_weights' input)."""
    return {"attributes": torch.from_numpy(np.stack([r["attributes"] for r in rows]).astype(np.int64)),
            **{k: torch.tensor([r[k] for r in rows], dtype=torch.long) for k in LABELS[1:]}}


def val_scores(model: SpecialistCNN, images: np.ndarray, labels: dict[str, np.ndarray]) -> dict[str, float]:
    """Validation numbers the run page plots against steps: attribute balanced accuracy, gender accuracy,
    expression UAR, age MAE (each over the faces that have the label)."""
    from sklearn.metrics import balanced_accuracy_score

    pred = model.predict(images)
    out: dict[str, float] = {}
    attrs = labels["attributes"]
    rows = attrs[:, 0] >= 0
    if rows.any():
        per = [balanced_accuracy_score(attrs[rows, j], pred["attributes"][rows, j])
               for j in range(attrs.shape[1]) if len(np.unique(attrs[rows, j])) == 2]
        out["val_attribute_balanced_accuracy"] = float(np.mean(per))
    for name, key in (("gender", "val_gender_accuracy"), ("expression", "val_expression_uar")):
        m = labels[name] >= 0
        if m.any():
            fn = balanced_accuracy_score if name == "expression" else (lambda t, p: float((t == p).mean()))
            out[key] = float(fn(labels[name][m], pred[name][m]))
    m = labels["age"] >= 0
    if m.any():
        out["val_age_mae"] = float(np.abs(pred["age"][m] - labels["age"][m]).mean())
    return out


class SpecialistLearner(Learner):
    config_class = SpecialistTrainConfig
    artifact_path = "specialist"

    def build(self) -> SpecialistCNN:
        weights = self.config.get("balance_weights")
        self.weights = {k: torch.tensor(v) for k, v in weights.items()} if weights else None
        self.gen = torch.Generator().manual_seed(self.config["seed"] + 17)
        return SpecialistCNN(self.cfg.model)

    def loss(self, wrapped, module, batch):
        images = batch["image"].permute(0, 3, 1, 2).float() / 255.0
        if self.cfg.augment:
            images = mirror_and_shift(images, self.gen)
        out = wrapped(images)  # through the DDP wrapper where there is one: it syncs the gradients
        loss, terms = module.losses(out, {k: batch[k].long() for k in LABELS}, self.weights, self.cfg.attribute_weight)
        return loss, terms, len(images)

    def evaluate(self, wrapped, module, final: bool) -> dict[str, Any]:
        val = self.config.get("val")
        if not val:
            return {}
        module.eval()
        scores = val_scores(module, np.asarray(val["image"]), {k: np.asarray(val[k]) for k in LABELS})
        module.train()
        return scores

    def save(self, module, path: Path, weights) -> None:
        save_specialist(module, path, state_dict=weights)

    def load(self, module, path: Path) -> None:
        module.load_state_dict(load_specialist(path).state_dict())


def face_rows(corpus: Path, split: str, size: int) -> list[dict[str, Any]]:
    """One row per face: the image at `size` and every label (-1 where the face's dataset has none)."""
    rows = []
    for task in ("attributes", "age_gender_race", "expression"):
        for face in load_faces(corpus, split, task, required=False):
            lab = face["labels"]
            rows.append({"image": decode_image(face["image"], size),
                         "attributes": np.array(lab["attributes"] if lab["attributes"] else [-1] * 40, np.int8),
                         **{k: -1 if lab[k] is None else int(lab[k]) for k in ("age", "gender", "race", "expression")}})
    return rows


def train_specialist(corpus: Path, cfg: SpecialistTrainConfig, seed: int, out_dir: Path, storage_path: str
                     ) -> dict[str, Any]:
    import ray

    def prepare(where) -> TrainingPass:  # the rows travel in the object store: no path reaches a worker
        rows = face_rows(corpus, "train", cfg.model.image_size)
        # a seeded mix of the three datasets: in load order every batch held one task's faces, and each epoch
        # ended on expression faces only (the heads took turns instead of learning together)
        rows = [rows[k] for k in np.random.default_rng(seed).permutation(len(rows))]
        val_rows = face_rows(corpus, "val", cfg.model.image_size)
        # the val faces are small (64 px): they travel in the loop config and every checkpoint scores them
        val = ({"image": np.stack([r["image"] for r in val_rows])}
               | {k: np.array([r[k] for r in val_rows]) for k in LABELS} if val_rows else None)
        weights = ({k: v.tolist() for k, v in SpecialistCNN.balance_weights(label_tensors(rows)).items()}
                   if cfg.balance else None)

        def thresholds(path: Path) -> SpecialistCNN:  # chosen on val once training is over, saved with the weights
            if cfg.balance and val is not None:
                model = load_specialist(path)
                model.fit_thresholds(val["image"], val["attributes"])
                save_specialist(model, path)
            return load_specialist(path)  # the published folder must load

        return TrainingPass(LEARNER, {"train": ray.data.from_items(rows)},
                            {"seed": seed, "n_train": len(rows), "balance_weights": weights, "val": val},
                            run_name("train_specialist", {"train": asdict(cfg), "seed": seed},
                                     [corpus / "train", corpus / "val"]), thresholds)

    job, state = train_and_publish("train_specialist", cfg, storage_path, out_dir, prepare)
    history = state["history"]
    return {"steps": state["step"], "train_faces": job.loop_config["n_train"], "mlflow_run_id": state["mlflow_run_id"],
            **worker_counts(state), "val": state.get("evaluation", {}),
            "first_loss": history[0]["loss"], "final_loss": float(np.mean([h["loss"] for h in history[-10:]])),
            "seconds": state["seconds"]}
