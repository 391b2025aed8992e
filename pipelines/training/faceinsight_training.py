"""FaceInsight on the shared loop: the `align` / `finetune` task, its params and its driver."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import CONFIG_FILE, WEIGHTS_FILE, update_tensors
from model.config import RECIPES, FaceInsightConfig
from model.faceinsight import FaceInsight
from model.tokenizer import load_tokenizer
from pipelines.corpus.records import KINDS, PHOTO_KINDS, TASKS
from pipelines.corpus.templates import Templates
from pipelines.storage import local_copy
from pipelines.training.augmentation import mirror_and_shift
from pipelines.training.corpus_data import corpus_dataset, driver_encoded_dataset, encode_records, encoder_kwargs
from pipelines.training.encoded_cache import cache_root, cached_encoding, encoding_key
from pipelines.training.learner import Learner
from pipelines.training.loop import LoopConfig, TrainingPass, run_name, train_and_publish, worker_counts
from pipelines.training.schedule import Phase
from pipelines.training.validation import fit_val_thresholds, threshold_faces, val_sample, val_scores

LEARNER = "pipelines.training.faceinsight_training:FaceInsightLearner"


@dataclass(frozen=True)
class TrainConfig(LoopConfig):
    """params.yaml: align / finetune (and the loop's own keys, LoopConfig)."""

    recipe: str = "align"  # a name in model.config.RECIPES
    projector_lr: float = 0.0  # 0: same as lr
    max_tokens: int = 320  # sequences are padded / truncated to this many tokens
    max_records: int = 0  # 0: the whole train split
    # a pass that reads at most this many records encodes them in the driver, not in Ray Data tasks: their worker
    # start-up (~13 s) cost more than encoding 6,400 records here (finetune's 200 steps; benchmarks/RESULTS.md)
    driver_encode_records: int = 6400
    kinds: tuple[str, ...] = ()  # record kinds to train on; empty: PHOTO_KINDS (every kind but text_qa)
    tasks: tuple[str, ...] = ()  # record tasks (attributes, age_gender_race, expression); empty: all
    val_faces: int = 64  # val faces per task scored at every checkpoint (learning curve in MLflow); 0: none
    # optimiser steps before max_steps in which the LM does not run: the image tower, map encoder and heads learn
    # from the labels alone, ~5x cheaper a step (benchmarks/RESULTS.md); models without heads skip it
    visual_steps: int = 0
    # after the visual phase, the image tower, map encoder, projectors and heads learn at this share of the rate:
    # under the whole loss at the restarted full rate they forgot what the visual phase taught (the seventh default
    # run's in-loop val: expression head UAR 0.80 at the phase's end, 0.38 a thousand whole-loss steps later)
    visual_lr_after: float = 1.0
    # mirror half the faces and shift each by up to 4 px in the visual phase (the heads' labels are mirror-invariant;
    # the parsing map mirrors with its left / right classes swapped), as the specialist trains; the LM's phase sees
    # the faces as they are (a text may name a side)
    augment_visual: bool = False
    augment_shift: int = 4  # the largest shift, px (0: mirror only)

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"train.recipe must be one of {sorted(RECIPES)}, got {self.recipe!r}")
        if self.driver_encode_records < 0:
            raise ValueError(f"train.driver_encode_records must be >= 0 (0: never), got {self.driver_encode_records}")
        if self.max_tokens < 1:
            raise ValueError("train.max_tokens must be >= 1")
        if self.visual_steps < 0:
            raise ValueError(f"train.visual_steps must be >= 0, got {self.visual_steps}")
        if self.augment_shift < 0:
            raise ValueError(f"train.augment_shift is a number of pixels >= 0, got {self.augment_shift}")
        if not 0 <= self.visual_lr_after <= 1:
            raise ValueError(f"train.visual_lr_after is a share of the rate in [0, 1], got {self.visual_lr_after}")

        if not self.kinds:
            object.__setattr__(self, "kinds", PHOTO_KINDS)
        for key, allowed in (("tasks", TASKS.values()), ("kinds", KINDS)):
            unknown = set(getattr(self, key)) - set(allowed)
            if unknown:
                raise ValueError(f"train.{key}: unknown {sorted(unknown)}; use {', '.join(allowed)}")
        super().__post_init__()


class FaceInsightLearner(Learner):
    config_class = TrainConfig

    def build(self):
        """Fresh from the config, or from the previous stage's checkpoint; the recipe decides what trains."""
        config = self.config  # paths here are what the driver handed over: local, shared or s3://
        if config.get("init_from"):
            model = FaceInsight.from_pretrained(local_copy(config["init_from"]))
        else:
            model = FaceInsight(FaceInsightConfig.from_dict(config["model"]),
                                load_tokenizer(local_copy(config["tokenizer_dir"])), config["knowledge"])
        self.recipe = RECIPES[self.cfg.recipe]
        model.apply_recipe(self.recipe)
        self.gen = torch.Generator().manual_seed(config.get("seed", 0) + 17)  # the augmentation's draws
        return model

    def param_groups(self, module) -> list[dict[str, Any]]:
        parts = module.components()
        projector = {id(p) for m in parts["projector"] for p in m.parameters()}
        trainable = [p for p in module.parameters() if p.requires_grad]
        groups = [{"params": [p for p in trainable if id(p) not in projector], "base_lr": self.cfg.lr, "name": "main"},
                  {"params": [p for p in trainable if id(p) in projector],
                   "base_lr": self.cfg.projector_lr or self.cfg.lr, "name": "projector"}]
        if self.cfg.visual_lr_after != 1.0 and self.cfg.visual_steps and module.has_heads:
            # what the heads read and the heads themselves (not the LM, nor the modules that write their verdicts
            # into the text): their own group, scaled down once the visual phase is over. A model without heads has
            # no visual phase (phases()), so its tower keeps the full rate
            heads = [m for m in (module.cooccurrence, module.answer_embedding) if m is not None]
            visual = {id(p) for m in parts["vision"] + parts["seg_encoder"] + parts["projector"] + heads
                      for p in m.parameters()}
            scale = {"phase_scale": {"main": self.cfg.visual_lr_after}}
            groups = [{**g, "params": [p for p in g["params"] if id(p) not in visual]} for g in groups] + \
                     [{**g, "params": [p for p in g["params"] if id(p) in visual], "name": f"{g['name']}_visual",
                       **scale} for g in groups]
        return [g for g in groups if g["params"]]

    def trainable(self, module) -> dict[str, int]:
        return module.trainable_parameters()

    def phases(self, module, steps: int) -> list[Phase]:
        """`visual_steps` of the heads alone (where the model has heads), then `steps` of the whole loss."""
        if self.cfg.visual_steps and module.has_heads:
            return [Phase("visual", 0, self.cfg.visual_steps), Phase("main", self.cfg.visual_steps, steps)]
        return [Phase("main", 0, steps)]

    def logged_params(self, module) -> dict[str, Any]:
        return {"model": module.cfg.to_dict()}

    def loss(self, wrapped, module, batch):
        batch = {k: (v.long() if k in ("input_ids", "labels", "attention_mask", "attribute_labels")
                     or k.endswith("_label") else v) for k, v in batch.items()}
        pixel_values = module.preprocess(batch["image"].numpy())  # the vision tower's own preprocessing
        seg_maps = batch["seg_map"] if module.seg_encoder is not None else None
        if self.phase == "visual" and self.cfg.augment_visual:
            pixel_values, seg_maps = augment_faces(pixel_values, seg_maps, self.gen, self.cfg.augment_shift)
        out = wrapped(input_ids=batch["input_ids"], pixel_values=pixel_values, seg_maps=seg_maps,
                    attention_mask=batch["attention_mask"], labels=batch["labels"],
                    attribute_labels=batch["attribute_labels"], answer_labels=answer_labels(batch),
                    visual_only=self.phase == "visual")
        terms = {f"loss_{k}": v.item() for k, v in out.losses.items()}
        if out.attribute_logits is not None:  # how often the attribute head is right, where labels exist
            known = batch["attribute_labels"] >= 0
            if known.any():
                right = (out.attribute_logits.detach() > 0).long() == batch["attribute_labels"]
                terms["attribute_accuracy"] = float(right[known].float().mean())
        for task, logits in out.answer_logits.items():  # the answer heads' accuracy, where labels exist
            y = module.answer_embedding.classes(task, batch[f"{task}_label"])
            if (y >= 0).any():
                terms[f"{task}_accuracy"] = float((logits.detach().argmax(-1) == y)[y >= 0].float().mean())
        return out.loss, terms, int(batch["attention_mask"].sum())

    def evaluate(self, wrapped, module, final: bool) -> dict[str, Any]:
        sample = self.config.get("val")
        if not sample:
            return {}
        module.eval()
        with torch.no_grad():
            scores = val_scores(module, sample, self.config["val_questions"])
        module.train()
        return scores

    def save(self, module, path: Path, weights: dict[str, torch.Tensor] | None) -> None:
        module.save_pretrained(path, self.recipe, state_dict=weights)

    def load(self, module, path: Path) -> None:
        from safetensors.torch import load_file

        module.load_state_dict(load_file(str(path / WEIGHTS_FILE)), strict=False)


def answer_labels(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The encoder's `<task>_label` columns (gender, race, expression; -1 unknown) as the model's answer_labels."""
    return {k[:-len("_label")]: v.long() for k, v in batch.items() if k.endswith("_label")}


# -- the driver ------------------------------------------------------------------------------------------

@dataclass
class TrainInputs:
    corpus: Path
    tokenizer_dir: Path
    knowledge: dict[str, Any]
    model: dict[str, Any] = field(default_factory=dict)  # params.yaml: model (a FaceInsightConfig mapping)
    init_from: Path | None = None  # the previous stage's checkpoint (finetune starts from align)


def faceinsight_run_name(stage: str, cfg: TrainConfig, inputs: TrainInputs, seed: int) -> str:
    """Config, model, seed and knowledge, and the bytes of the corpus' train split, the tokenizer and
    the starting checkpoint."""
    folders = [inputs.corpus / "train", inputs.tokenizer_dir] + ([inputs.init_from] if inputs.init_from else [])
    return run_name(stage, {"train": asdict(cfg), "model": inputs.model, "seed": seed,
                            "knowledge": inputs.knowledge}, folders)


def augment_faces(pixel_values: torch.Tensor, seg_maps: torch.Tensor | None, gen: torch.Generator, shift: int
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The visual phase's augmentation (TrainConfig.augment_visual): faces and their maps mirrored and shifted
    together."""
    if seg_maps is None:
        return mirror_and_shift(pixel_values, gen, shift), None
    return mirror_and_shift(pixel_values, gen, shift, maps=seg_maps.long())


def val_questions() -> dict[str, str]:
    """The questions validation asks: the templates' own, as evaluation asks them."""
    data = Templates.load().data
    return {name: a["question"] for name, a in data["attributes"].items()} | {
        "gender": data["demographics"]["open"]["gender"][0]["q"], "age": data["demographics"]["open"]["age"][0]["q"],
        "expression": data["expression"]["open"][0]["q"]}


def pretrained_path(model: dict[str, Any]) -> str | None:
    """The user's pretrained weights folder named in params (model.llm / model.vision), if any."""
    for part in ("llm", "vision"):
        section = model.get(part) or {}
        if section.get("kind") == "pretrained" and section.get("path"):
            return str(section["path"])
    return None


def with_val_thresholds(corpus: Path, image_size: int, seg_size: int) -> Callable[[Path], FaceInsight]:
    """The publish check: the checkpoint loads, and its attribute head's decision thresholds are chosen on the val
    faces and saved with it (as the specialist's), so the text and the head row decide as val says. The val faces
    are read, and the LLM's modelling code imported, on a thread while the pass trains (the driver only waits on Ray
    Train then), not after it."""
    ahead = ThreadPoolExecutor(1, thread_name_prefix="publish-ahead")
    faces = ahead.submit(_publish_ahead, corpus, image_size, seg_size)
    ahead.shutdown(wait=False)

    def check(path: Path) -> FaceInsight:
        model = FaceInsight.from_pretrained(path)  # the published folder must load (once: a 7B preset is slow to)
        if fit_val_thresholds(model, faces.result()) is not None:
            update_tensors(path, {"attribute_threshold": model.attribute_threshold})
        return model

    return check


def _publish_ahead(corpus: Path, image_size: int, seg_size: int) -> dict[str, Any] | None:
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM  # noqa: F401 - as the model builds its LLM

    return threshold_faces(corpus, image_size, seg_size)


def starting_point(inputs: TrainInputs) -> tuple[FaceInsightConfig, Path]:
    """The model's config and the tokenizer folder a pass starts from: the previous stage's (saved beside its
    weights) or params' and the trained tokenizer's."""
    if inputs.init_from is not None:
        return FaceInsightConfig.load(Path(inputs.init_from) / CONFIG_FILE), Path(inputs.init_from)
    return FaceInsightConfig.from_dict(inputs.model), Path(inputs.tokenizer_dir)


def run_training(stage: str, cfg: TrainConfig, inputs: TrainInputs, seed: int, out_dir: Path,
                 storage_path: str) -> dict[str, Any]:
    """Train on the corpus' train split; copy the final checkpoint to `out_dir` (a DVC out)."""
    model_cfg, local_tokenizer = starting_point(inputs)
    # the counts from the config: no model is built here (for a 7B preset that loaded 7B weights on the driver)
    counts = (*model_cfg.visual_token_counts(), cfg.max_tokens)
    # with max_steps, encode only the records those steps can consume (one pass)
    limit = cfg.max_records or ((cfg.max_steps + cfg.visual_steps) * cfg.batch_size if cfg.max_steps else 0)
    local_encoder = encoder_kwargs(model_cfg, str(local_tokenizer.resolve()), *counts)
    short = bool(limit) and limit <= cfg.driver_encode_records  # its records are encoded here, not in Ray Data
    # the driver's own data (no Ray in it) on a thread, while the main thread starts Ray (~3 s each on 2 cores)
    thread = ThreadPoolExecutor(1, thread_name_prefix="driver-data")
    val = thread.submit(val_sample, inputs.corpus, cfg.val_faces, model_cfg.vision.image_size,
                        model_cfg.seg.image_size, seed) if cfg.val_faces else None
    records = thread.submit(encode_records, inputs.corpus / "train", local_encoder, limit, cfg.kinds,
                            cfg.tasks) if short else None
    thread.shutdown(wait=False)

    def prepare(where) -> TrainingPass:
        where.require(stage, {"model.llm.path (pretrained weights)": pretrained_path(inputs.model)})
        # what workers open: absolute local paths on a local cluster, staged s3:// copies on a remote one
        init_from = where.hand(stage, "init_from", inputs.init_from) if inputs.init_from is not None else None
        tokenizer_dir = init_from or where.hand(stage, "tokenizer", inputs.tokenizer_dir)
        split = where.hand(stage, "corpus train split", inputs.corpus / "train")
        if records is not None:
            train = driver_encoded_dataset(records.result())
        else:
            encoder = encoder_kwargs(model_cfg, tokenizer_dir, *counts)
            root = cache_root(storage_path, split, tokenizer_dir)
            key = encoding_key(inputs.corpus / "train", local_encoder, limit, cfg.kinds, cfg.tasks) if root else ""
            train = cached_encoding(root, key, lambda: corpus_dataset(split, encoder, limit, cfg.kinds,
                                                                      tasks=cfg.tasks).materialize())
        return TrainingPass(LEARNER, {"train": train},
                            {"model": inputs.model, "seed": seed, "knowledge": inputs.knowledge,
                             "tokenizer_dir": tokenizer_dir, "init_from": init_from, "n_train": train.count(),
                             "val": val.result() if val is not None else {}, "val_questions": val_questions()},
                            faceinsight_run_name(stage, cfg, inputs, seed),
                            with_val_thresholds(inputs.corpus, model_cfg.vision.image_size, model_cfg.seg.image_size))

    job, state = train_and_publish(stage, cfg, storage_path, out_dir, prepare)
    history = state["history"]
    return {"stage": stage, "steps": state["step"], "train_records": job.loop_config["n_train"],
            "mlflow_run_id": state["mlflow_run_id"],
            **worker_counts(state),
            "optimizer_restored": bool(state.get("optimizer_restored")),
            # the first step of the whole loss: a visual phase's steps have no LM term and a smaller loss
            "first_loss": next((h["loss"] for h in history if "loss_lm" in h), history[0]["loss"]) if history else None,
            "final_loss": sum(h["loss"] for h in history[-10:]) / len(history[-10:]) if history else None,
            "seconds": state["seconds"], "history": history}
