"""The specialist CNN baseline on the shared train loop: the corpus' train faces, every label at once."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.specialist import SpecialistCNN, SpecialistConfig, load_specialist, save_specialist
from pipelines.training.loop import LoopConfig, fit, publish, run_name, training_storage, worker_counts
from pipelines.training.task import TrainTask

TASK = "pipelines.specialist_training:SpecialistTask"
LABELS = ("attributes", "age", "gender", "race", "expression")


@dataclass(frozen=True)
class SpecialistTrainConfig(LoopConfig):
    """params.yaml: train_specialist (and the loop's own keys, LoopConfig)."""

    model: SpecialistConfig = field(default_factory=SpecialistConfig)
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20


class SpecialistTask(TrainTask):
    config_class = SpecialistTrainConfig
    artifact_path = "specialist"

    def build(self) -> SpecialistCNN:
        return SpecialistCNN(self.cfg.model)

    def loss(self, model, core, batch):
        images = batch["image"].permute(0, 3, 1, 2).float() / 255.0
        out = model(images)  # through the DDP wrapper where there is one: it syncs the gradients
        loss, terms = core.losses(out, {k: batch[k].long() for k in LABELS})
        return loss, terms, len(images)

    def save(self, core, path: Path, weights) -> None:
        save_specialist(core, path, state_dict=weights)

    def load(self, core, path: Path) -> None:
        core.load_state_dict(load_specialist(path).state_dict())


def face_rows(corpus: Path, split: str, size: int) -> list[dict[str, Any]]:
    """One row per face: the image at `size` and every label (-1 where the face's dataset has none)."""
    from pipelines.corpus.records import decode_image
    from pipelines.evaluation.evaluate import load_faces

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

    from pipelines.cluster import placement

    # the rows travel in the object store: no path reaches a worker but Ray Train's storage
    storage_path = training_storage("train_specialist", storage_path, placement())
    rows = face_rows(corpus, "train", cfg.model.image_size)
    # a seeded mix of the three datasets: in load order every batch held one task's faces, and each epoch
    # ended on expression faces only (the heads took turns instead of learning together)
    rows = [rows[k] for k in np.random.default_rng(seed).permutation(len(rows))]
    train = ray.data.from_items(rows)
    name = run_name("train_specialist", {"train": asdict(cfg), "seed": seed}, [corpus / "train"])
    result = fit("train_specialist", TASK, cfg, {"train": train}, {"seed": seed, "n_train": len(rows)}, storage_path,
                 name)
    state = publish(result, out_dir, load_specialist)
    history = state["history"]
    return {"steps": state["step"], "train_faces": len(rows), "mlflow_run_id": state["mlflow_run_id"],
            **worker_counts(state),
            "first_loss": history[0]["loss"], "final_loss": float(np.mean([h["loss"] for h in history[-10:]]))}


def specialist_predictions(model_dir: Path, faces: list[dict[str, Any]], task: str) -> dict[str, np.ndarray]:
    """Evaluation's view: predicted labels per target for the task's faces."""
    from model.labels import CELEBA_ATTRIBUTES
    from pipelines.corpus.records import decode_image

    model = load_specialist(model_dir)
    images = np.stack([decode_image(f["image"], model.cfg.image_size) for f in faces])
    out = {k: [] for k in LABELS}
    for start in range(0, len(images), 256):
        pred = model.predict(images[start:start + 256])
        for k in LABELS:
            out[k].append(pred[k])
    pred = {k: np.concatenate(v) for k, v in out.items()}
    if task == "attributes":
        return {n: pred["attributes"][:, i] for i, n in enumerate(CELEBA_ATTRIBUTES)}
    if task == "age_gender_race":
        return {k: pred[k] for k in ("age", "gender", "race")}
    return {"expression": pred["expression"]}

