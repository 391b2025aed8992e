"""FaceInsight training with Ray Train: one train_loop_per_worker for `align` and `finetune`.

Per worker: the dataset shard (encoded by Ray Data), per-worker batch = global batch / world size,
gradient accumulation, warm-up + cosine LR (a separate projector LR), clipping, seeds; DDP over gloo
on CPUs. Rank 0 logs to MLflow and writes checkpoints (trained parts as safetensors + optimizer
state as safetensors + a JSON trainer state); every worker resumes from ray.train.get_checkpoint()
at the same step, data position and LR, and the MLflow run it logged to before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipelines.training.schedule import lr_at

log = logging.getLogger(__name__)
TRAINER_STATE = "trainer_state.json"
DEEPSPEED_DIR = Path(__file__).resolve().parents[2] / "infra" / "deepspeed"
OPTIMIZER_FILE = "optimizer.safetensors"
DEEPSPEED_STATE = "deepspeed"  # engine.save_checkpoint's folder: each rank's ZeRO optimiser partition
HISTORY_FILE = "history.json"


@dataclass(frozen=True)
class TrainConfig:
    """params.yaml: align / finetune."""

    recipe: str = "align"  # a name in model.config.RECIPES
    epochs: int = 1
    max_steps: int = 0  # 0: epochs decide; else stop after this many optimiser steps
    batch_size: int = 32  # global, per optimiser step
    grad_accum: int = 1  # micro-batches per optimiser step (per-worker micro-batch = batch / workers / accum)
    lr: float = 1e-3
    projector_lr: float = 0.0  # 0: same as lr
    weight_decay: float = 0.0
    warmup_steps: int = 50
    grad_clip: float = 1.0
    max_tokens: int = 320  # sequences are padded / truncated to this many tokens
    max_records: int = 0  # 0: the whole train split
    kinds: tuple[str, ...] = ()  # record kinds to train on; empty: all
    checkpoint_every: int = 100  # optimiser steps between checkpoints (and at the end)
    keep_checkpoints: int = 2
    max_failures: int = 1  # Ray Train restarts the workers from the last checkpoint this many times
    num_workers: int = 1
    cpus_per_worker: int = 1
    use_gpu: bool = False
    torch_threads: int = 2
    bf16: bool = False  # autocast to bfloat16 (GPUs; also works on recent CPUs)
    seed_offset: int = 0
    fail_at_step: int = 0  # fault injection (tests): the first attempt raises at this step; 0 = never
    deepspeed: str = ""  # "": DDP; else a config name under infra/deepspeed/ (zero2, zero3, zero3_offload)

    def __post_init__(self) -> None:
        from model.config import RECIPES

        if self.recipe not in RECIPES:
            raise ValueError(f"train.recipe must be one of {sorted(RECIPES)}, got {self.recipe!r}")
        if self.batch_size % (self.num_workers * self.grad_accum):
            raise ValueError(f"train.batch_size ({self.batch_size}) must divide by num_workers x grad_accum "
                             f"({self.num_workers} x {self.grad_accum})")
        if self.deepspeed and not (DEEPSPEED_DIR / f"{self.deepspeed}.json").exists():
            names = sorted(p.stem for p in DEEPSPEED_DIR.glob("*.json"))
            raise ValueError(f"train.deepspeed: no infra/deepspeed/{self.deepspeed}.json; one of {names}")
        if min(self.epochs, self.num_workers, self.grad_accum, self.checkpoint_every, self.max_tokens) < 1:
            raise ValueError("train: epochs, num_workers, grad_accum, checkpoint_every, max_tokens must be >= 1")


# -- optimiser state without pickle ---------------------------------------------------------------------

def save_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    from safetensors.torch import save_file

    state = optimizer.state_dict()
    tensors = {f"{idx}.{name}": (v if torch.is_tensor(v) else torch.tensor(v)).contiguous()
               for idx, s in state["state"].items() for name, v in s.items()}
    save_file(tensors, str(path / OPTIMIZER_FILE), metadata={"param_groups": json.dumps(state["param_groups"])})


def read_optimizer_state(path: Path) -> dict[str, Any]:
    """The optimiser state save_optimizer wrote, in memory (the checkpoint folder may go away after)."""
    from safetensors import safe_open

    with safe_open(str(path / OPTIMIZER_FILE), framework="pt") as f:
        groups = json.loads(f.metadata()["param_groups"])
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key in f.keys():
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = f.get_tensor(key)
    return {"state": state, "param_groups": groups}


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    optimizer.load_state_dict(read_optimizer_state(path))


def deepspeed_config(cfg: TrainConfig, micro: int) -> dict[str, Any]:
    """infra/deepspeed/<name>.json with its "auto" values filled from the stage's params."""
    raw = json.loads((DEEPSPEED_DIR / f"{cfg.deepspeed}.json").read_text())
    raw.pop("_comment", None)
    fill = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": cfg.grad_accum,
            "gradient_clipping": cfg.grad_clip}
    for key, value in fill.items():
        if raw.get(key) == "auto":
            raw[key] = value
    if raw.get("bf16", {}).get("enabled") == "auto":
        raw["bf16"]["enabled"] = cfg.bf16
    return raw


def make_optimizer(groups: list[dict[str, Any]], cfg: TrainConfig, ds_config: dict[str, Any] | None = None):
    """AdamW over the param groups; DeepSpeed's CPU Adam where the ZeRO config offloads the optimiser."""
    offload = ((ds_config or {}).get("zero_optimization", {}).get("offload_optimizer") or {}).get("device")
    if offload == "cpu":  # ZeRO-Offload steps on the CPU: torch's AdamW there is rejected by DeepSpeed
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


# -- the worker ------------------------------------------------------------------------------------------

def build_model(config: dict[str, Any]):
    """The model a stage trains: fresh from the config, or from the previous stage's checkpoint."""
    from model.config import RECIPES, FaceInsightConfig
    from model.faceinsight import FaceInsight
    from model.tokenizer import load_tokenizer

    if config.get("init_from"):
        model = FaceInsight.from_pretrained(config["init_from"])
    else:
        model = FaceInsight(FaceInsightConfig.from_dict(config["model"]), load_tokenizer(config["tokenizer_dir"]),
                            config["knowledge"])
    recipe = RECIPES[config["train"]["recipe"]]
    model.apply_recipe(recipe)
    return model, recipe


def param_groups(model, cfg: TrainConfig) -> list[dict[str, Any]]:
    projector = {id(p) for m in model.components()["projector"] for p in m.parameters()}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for _, p in trainable if id(p) not in projector], "base_lr": cfg.lr, "name": "main"},
              {"params": [p for _, p in trainable if id(p) in projector], "base_lr": cfg.projector_lr or cfg.lr,
               "name": "projector"}]
    return [g for g in groups if g["params"]]


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray
    import ray.train
    import ray.train.torch

    from pipelines.config import build

    cfg = build(TrainConfig, config["train"], config["stage"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(config["seed"] + cfg.seed_offset)  # the same initial weights on every rank
    torch.set_num_threads(cfg.torch_threads)
    model, recipe = build_model(config)
    core = model
    micro = cfg.batch_size // world // cfg.grad_accum
    state = {"step": 0, "mlflow_run_id": None, "history": []}
    optimizer_state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # resume: weights (before any wrapping), step, data position, LR and the MLflow run
        with checkpoint.as_directory() as ckpt:
            from safetensors.torch import load_file

            from model.checkpoint import WEIGHTS_FILE

            core.load_state_dict(load_file(str(Path(ckpt) / WEIGHTS_FILE)), strict=False)
            state = json.loads((Path(ckpt) / TRAINER_STATE).read_text())
            if (Path(ckpt) / OPTIMIZER_FILE).exists():  # DDP checkpoints have it; ZeRO ones do not
                optimizer_state = read_optimizer_state(Path(ckpt))
    groups = param_groups(core, cfg)
    trainable = core.trainable_parameters()  # before ZeRO-3 partitions the parameters away
    ds_config = deepspeed_config(cfg, micro) if cfg.deepspeed else None
    optimizer = make_optimizer([{k: v for k, v in g.items() if k != "base_lr"} | {"lr": g["base_lr"]}
                                for g in groups], cfg, ds_config)
    engine = None
    if cfg.deepspeed:  # ZeRO partitions optimiser state (2) and parameters (3) across the workers
        import deepspeed

        engine, optimizer, _, _ = deepspeed.initialize(model=core, optimizer=optimizer, config=ds_config)
        model = engine
        if checkpoint:  # the moments live partitioned across ranks: each rank loads its own partition
            with checkpoint.as_directory() as ckpt:
                if (Path(ckpt) / DEEPSPEED_STATE).exists():
                    engine.load_checkpoint(str(Path(ckpt) / DEEPSPEED_STATE), tag="state", load_module_strict=False,
                                           load_lr_scheduler_states=False)
                    state["optimizer_restored"] = True
    else:
        kwargs = {"parallel_strategy_kwargs": {"find_unused_parameters": True}} if world > 1 else {}
        model = ray.train.torch.prepare_model(model, **kwargs)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
            state["optimizer_restored"] = True
    steps_per_epoch = max(1, config["n_train"] // cfg.batch_size)
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    nodes = [None] * world  # where each rank runs (logged; the multi-node test checks it)
    node = ray.get_runtime_context().get_node_id()
    if world > 1:
        torch.distributed.all_gather_object(nodes, node)
    else:
        nodes = [node]
    state["worker_nodes"] = nodes
    torch.manual_seed(config["seed"] + cfg.seed_offset + 1000 * rank + state["step"])
    shard = ray.train.get_dataset_shard("train")
    run = _open_mlflow(config, core, trainable, state) if rank == 0 else None
    step, started = state["step"], time.perf_counter()
    samples = tokens = 0
    try:
        while step < total:
            epoch, skip = divmod(step, steps_per_epoch)
            batches = shard.iter_torch_batches(batch_size=micro, drop_last=True, local_shuffle_buffer_size=256,
                                               local_shuffle_seed=config["seed"] + epoch)
            accumulated: list[dict[str, float]] = []
            for k, batch in enumerate(batches):
                if k < skip * cfg.grad_accum:  # fast-forward to the checkpoint's data position
                    continue
                if not accumulated:  # the LR of the optimiser step these micro-batches make
                    for group, spec in zip(optimizer.param_groups, groups, strict=True):
                        group["lr"] = lr_at(step, total, cfg.warmup_steps, spec["base_lr"])
                terms = _micro_step(model, core, batch, cfg, engine)
                accumulated.append(terms)
                samples += micro * world
                tokens += int(batch["attention_mask"].sum()) * world
                if len(accumulated) < cfg.grad_accum:
                    continue
                if engine is not None:  # DeepSpeed clips and steps at the accumulation boundary itself
                    grad_norm = engine.get_global_grad_norm() or 0.0
                else:
                    grad_norm = torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]],
                                                               cfg.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                step += 1
                metrics = {k2: sum(a[k2] for a in accumulated) / len(accumulated) for k2 in accumulated[0]}
                metrics.update(lr=optimizer.param_groups[0]["lr"], grad_norm=float(grad_norm))
                accumulated = []
                elapsed = time.perf_counter() - started
                metrics.update(samples_per_s=samples / elapsed, tokens_per_s=tokens / elapsed)
                state["history"].append({"step": step, **{k2: round(v, 6) for k2, v in metrics.items()}})
                if run is not None:
                    run.log_metrics({k2.replace("loss_", "loss/"): v for k2, v in metrics.items()}, step=step)
                _maybe_fail(config, cfg, step)
                if step % cfg.checkpoint_every == 0 or step == total:
                    _report(core, optimizer, engine, recipe, state | {"step": step}, metrics, rank, run,
                            final=step == total)
                if step >= total:
                    break
    finally:
        if run is not None:
            import mlflow

            mlflow.end_run()


def _micro_step(model, core, batch: dict[str, torch.Tensor], cfg: TrainConfig, engine) -> dict[str, float]:
    batch = {k: (v.long() if k in ("input_ids", "labels", "attention_mask", "attribute_labels") else v)
             for k, v in batch.items()}
    pixel_values = core.preprocess(batch["image"].numpy())  # the vision tower's own preprocessing
    with torch.autocast("cuda" if cfg.use_gpu else "cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        out = model(input_ids=batch["input_ids"], pixel_values=pixel_values,
                    seg_maps=batch["seg_map"] if core.seg_encoder is not None else None,
                    attention_mask=batch["attention_mask"], labels=batch["labels"],
                    attribute_labels=batch["attribute_labels"])
    if engine is not None:
        engine.backward(out.loss)  # scales by 1 / gradient_accumulation_steps itself
        engine.step()  # a no-op except at the accumulation boundary
    else:
        (out.loss / cfg.grad_accum).backward()
    terms = {"loss": out.loss.item()} | {f"loss_{k}": v.item() for k, v in out.losses.items()}
    if out.attribute_logits is not None:  # how often the attribute head is right, where labels exist
        known = batch["attribute_labels"] >= 0
        if known.any():
            right = (out.attribute_logits.detach() > 0).long() == batch["attribute_labels"]
            terms["attribute_accuracy"] = float(right[known].float().mean())
    return terms


def _maybe_fail(config: dict[str, Any], cfg: TrainConfig, step: int) -> None:
    """Fault injection for the resume test: the first attempt raises at `fail_at_step`."""
    marker = Path(config["storage_path"]) / f".failed_once_{config['stage']}"
    if cfg.fail_at_step and step == cfg.fail_at_step and not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(step))
        raise RuntimeError(f"injected failure at step {step} (fail_at_step)")


def _open_mlflow(config, core, trainable: dict[str, int], state: dict):
    import mlflow

    from pipelines.tracking import flatten, start_stage_run

    # a restarted run continues its MLflow run; a new one is a child of the pipeline's run
    run = start_stage_run(config["tracking_uri"], config["stage"], state.get("mlflow_run_id"))
    if not state.get("mlflow_run_id"):
        mlflow.log_params(flatten({config["stage"]: config["train"], "model": core.cfg.to_dict()}))
        mlflow.log_params({f"trainable.{k}": v for k, v in trainable.items()})
    state["mlflow_run_id"] = run.info.run_id
    return mlflow


def _report(core, optimizer, engine, recipe, state: dict, metrics: dict, rank: int, run, final: bool) -> None:
    import ray.train

    weights = None
    if engine is not None and engine.zero_optimization_stage() == 3:
        # every rank takes part in gathering the partitioned parameters; rank 0 receives them
        weights = core.state_dict() | (engine._zero3_consolidated_16bit_state_dict() or {})
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:  # the trained parts are small and identical on every rank: rank 0 saves them
            core.save_pretrained(tmp, recipe, state_dict=weights)
            if engine is None:  # DDP: the whole state; ZeRO's partitions are written by every rank below
                save_optimizer(optimizer, Path(tmp))
            (Path(tmp) / TRAINER_STATE).write_text(json.dumps(state) + "\n")
            if final and run is not None:  # the model, before DeepSpeed's partitions join the folder
                run.log_artifacts(tmp, artifact_path="checkpoint")
        if engine is not None:  # collective: every rank writes its optimiser partition; Ray merges the folders
            engine.save_checkpoint(str(Path(tmp) / DEEPSPEED_STATE), tag="state", exclude_frozen_parameters=True)
        if rank == 0 or engine is not None:
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({"step": state["step"], **metrics}, checkpoint=checkpoint)


# -- the driver ------------------------------------------------------------------------------------------

@dataclass
class TrainInputs:
    corpus: Path
    tokenizer_dir: Path
    knowledge: dict[str, Any]
    model: dict[str, Any] = field(default_factory=dict)  # params.yaml: model (a FaceInsightConfig mapping)
    init_from: Path | None = None  # the previous stage's checkpoint (finetune starts from align)


def ray_storage(storage_path: str) -> dict[str, Any]:
    """RunConfig storage arguments. For s3:// with AWS_ENDPOINT_URL (MinIO, moto, ...) an explicit pyarrow
    filesystem: it travels to every worker with its endpoint, wherever the workers' environment comes from."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not storage_path.startswith("s3://") or not endpoint:
        return {"storage_path": storage_path}
    from pyarrow import fs

    scheme, _, host = endpoint.partition("://")
    filesystem = fs.S3FileSystem(endpoint_override=host, scheme=scheme,
                                 access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
                                 secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
                                 region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    return {"storage_path": storage_path.removeprefix("s3://"), "storage_filesystem": filesystem}


def run_name(stage: str, cfg: TrainConfig, inputs: TrainInputs, seed: int) -> str:
    """The Ray Train run name: the stage plus a fingerprint of everything the run learns from.

    Restarting the same stage on the same inputs finds the same name and resumes from its last
    checkpoint; a changed corpus, tokenizer, config or starting checkpoint starts a fresh run
    (resuming an old run's weights into a changed model would fail, or silently mix runs)."""
    digest = hashlib.sha256(json.dumps({"stage": stage, "train": asdict(cfg), "model": inputs.model, "seed": seed,
                                        "knowledge": inputs.knowledge}, sort_keys=True, default=str).encode())
    folders = [inputs.corpus / "train", inputs.tokenizer_dir] + ([inputs.init_from] if inputs.init_from else [])
    for folder in folders:
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            digest.update(path.name.encode())
            with path.open("rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    digest.update(chunk)
    return f"{stage}-{digest.hexdigest()[:12]}"


def run_training(stage: str, cfg: TrainConfig, inputs: TrainInputs, seed: int, out_dir: Path,
                 storage_path: str) -> dict[str, Any]:
    """Train on the corpus' train split; copy the final checkpoint to `out_dir` (a DVC out)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from model.config import FaceInsightConfig
    from model.faceinsight import FaceInsight
    from model.tokenizer import load_tokenizer
    from pipelines.ray_runtime import init_ray
    from pipelines.tracking import tracking_uri
    from pipelines.training.corpus_data import corpus_dataset, encoder_kwargs

    init_ray()
    # absolute paths: Ray Train workers do not run in this directory
    init_from = inputs.init_from.resolve() if inputs.init_from is not None else None
    if init_from is not None:
        probe = FaceInsight.from_pretrained(init_from)
        tokenizer_dir = str(init_from)
    else:
        probe = FaceInsight(FaceInsightConfig.from_dict(inputs.model), load_tokenizer(inputs.tokenizer_dir),
                            inputs.knowledge)
        tokenizer_dir = str(inputs.tokenizer_dir.resolve())
    encoder = encoder_kwargs(probe.cfg, tokenizer_dir, probe.image_tokens, probe.seg_tokens, cfg.max_tokens)
    # with max_steps, encode only the records those steps can consume (one pass)
    limit = cfg.max_records or (cfg.max_steps * cfg.batch_size if cfg.max_steps else 0)
    train = corpus_dataset(inputs.corpus, "train", encoder, limit, cfg.kinds).materialize()
    n_train = train.count()
    del probe
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"stage": stage, "train": asdict(cfg), "model": inputs.model, "seed": seed,
                           "knowledge": inputs.knowledge, "tokenizer_dir": tokenizer_dir,
                           "init_from": str(init_from) if init_from else None,
                           "n_train": n_train, "tracking_uri": tracking_uri(), "storage_path": storage_path},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(**ray_storage(storage_path), name=run_name(stage, cfg, inputs, seed),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=cfg.max_failures)),
        datasets={"train": train},
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{stage} finished without a checkpoint; see the Ray Train logs above")
    from pipelines.storage import atomic_dir

    with atomic_dir(out_dir) as tmp:
        with result.checkpoint.as_directory() as ckpt:
            shutil.copytree(ckpt, tmp)
        state = json.loads((tmp / TRAINER_STATE).read_text())
        # the DVC out is the model; optimiser state (whole or ZeRO partitions) stays in the Ray Train run
        (tmp / OPTIMIZER_FILE).unlink(missing_ok=True)
        shutil.rmtree(tmp / DEEPSPEED_STATE, ignore_errors=True)
        FaceInsight.from_pretrained(tmp)  # refuse to publish a checkpoint that does not load
    history = state["history"]
    return {"stage": stage, "steps": state["step"], "train_records": n_train, "mlflow_run_id": state["mlflow_run_id"],
            "workers": len(state.get("worker_nodes", [])), "nodes": len(set(state.get("worker_nodes", []))),
            "optimizer_restored": bool(state.get("optimizer_restored")),
            "first_loss": history[0]["loss"] if history else None,
            "final_loss": sum(h["loss"] for h in history[-10:]) / len(history[-10:]) if history else None,
            "history": history}
