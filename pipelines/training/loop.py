"""The one Ray Train loop: `train_loop_per_worker`, shared by align, finetune, the parser and task fine-tunes.

What it trains comes from a learner (`pipelines.training.learner.Learner`, named in the loop config as
"module:Class"): the model, its parameter groups, the loss of a batch, how its weights are saved and
loaded, and what it evaluates at a checkpoint. The loop owns everything else. Per worker: the
dataset shard (decoded by Ray Data), per-worker batch = global batch / world size, gradient
accumulation, warm-up + cosine LR per group and per phase (a learner's `phases`: FaceInsight may open with
heads-only steps), clipping, seeds; DDP over gloo on CPUs or DeepSpeed
ZeRO from infra/deepspeed/. Rank 0 logs to MLflow and writes the checkpoints (trained weights +
optimiser state as safetensors + a JSON trainer state; under DeepSpeed every rank adds its ZeRO
partition); every worker resumes from ray.train.get_checkpoint() at the same step, data position,
LR, optimiser moments and MLflow run.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from pipelines.cluster import Placement, placement
from pipelines.provenance import code_tags, host_tags
from pipelines.storage import arrow_filesystem, atomic_dir, filesystem
from pipelines.tracking import (
    TrackingUnavailable,
    flatten,
    reaching,
    retry_settings,
    start_stage_run,
    tracking_store_path,
    tracking_uri,
)
from pipelines.training.schedule import phase_at

log = logging.getLogger(__name__)
TRAINER_STATE = "trainer_state.json"
DEEPSPEED_DIR = Path(__file__).resolve().parents[2] / "infra" / "deepspeed"
OPTIMIZER_FILE = "optimizer.safetensors"
DEEPSPEED_STATE = "deepspeed"  # engine.save_checkpoint's folder: each rank's ZeRO optimiser partition
# rank 0 writes what an MLflow outage said here: Ray Train V2 retries a worker group whatever failed it (no policy
# per exception), and a retry that met the same stopped server waited out the client's retries a second time
OUTAGE_MARKER = ".tracking_unavailable"


@dataclass(frozen=True)
class LoopConfig:
    """What every trained stage's params section has (align, finetune, train_parser, ...)."""

    epochs: int = 1
    max_steps: int = 0  # 0: epochs decide; else stop after this many optimiser steps
    batch_size: int = 32  # global, per optimiser step
    grad_accum: int = 1  # micro-batches per optimiser step (per-worker micro-batch = batch / workers / accum)
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    grad_clip: float = 1.0
    checkpoint_every: int = 100  # optimiser steps between checkpoints (and at the end)
    keep_checkpoints: int = 2
    max_failures: int = 1  # Ray Train restarts the workers from the last checkpoint this many times
    num_workers: int = 1
    cpus_per_worker: int = 1
    use_gpu: bool = False
    torch_threads: int = 2
    bf16: bool | str = "auto"  # autocast to bfloat16: true, false, or auto (where the hardware has it natively)
    seed_offset: int = 0
    fail_at_step: int = 0  # fault injection (tests): the first attempt raises at this step; 0 = never
    deepspeed: str = ""  # "": DDP; else a config name under infra/deepspeed/ (zero2, zero3, zero3_offload)

    def __post_init__(self) -> None:
        if self.batch_size % (self.num_workers * self.grad_accum):
            raise ValueError(f"batch_size ({self.batch_size}) must divide by num_workers x grad_accum "
                             f"({self.num_workers} x {self.grad_accum})")
        if self.deepspeed and not (DEEPSPEED_DIR / f"{self.deepspeed}.json").exists():
            names = sorted(p.stem for p in DEEPSPEED_DIR.glob("*.json"))
            raise ValueError(f"deepspeed: no infra/deepspeed/{self.deepspeed}.json; one of {names}")
        if min(self.epochs, self.num_workers, self.grad_accum, self.checkpoint_every, self.batch_size) < 1:
            raise ValueError("epochs, batch_size, num_workers, grad_accum, checkpoint_every must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.bf16 not in (True, False, "auto"):
            raise ValueError(f"bf16 must be true, false or auto, got {self.bf16!r}")


@functools.cache
def native_bf16(use_gpu: bool) -> bool:
    """Whether this machine computes bfloat16 natively: a GPU that supports it, or a CPU with AVX512-BF16 or
    AMX. Elsewhere autocast emulates it, and training ran ~15x slower than fp32 (an AVX2-only EPYC)."""
    if use_gpu:
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def bf16_enabled(cfg: LoopConfig) -> bool:
    """The stage's `bf16` on this worker: `auto` follows the hardware (native_bf16)."""
    return native_bf16(cfg.use_gpu) if cfg.bf16 == "auto" else bool(cfg.bf16)


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


def deepspeed_config(cfg: LoopConfig, micro: int) -> dict[str, Any]:
    """infra/deepspeed/<name>.json with its "auto" values filled from the stage's params."""
    raw = json.loads((DEEPSPEED_DIR / f"{cfg.deepspeed}.json").read_text())
    raw.pop("_comment", None)
    fill = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": cfg.grad_accum,
            "gradient_clipping": cfg.grad_clip}
    for key, value in fill.items():
        if raw.get(key) == "auto":
            raw[key] = value
    if raw.get("bf16", {}).get("enabled") == "auto":
        raw["bf16"]["enabled"] = bf16_enabled(cfg)
    return raw


def training_deepspeed():
    """`deepspeed`, with its CPU shared-memory all-reduce marked unavailable: that op serves only tensor-parallel
    inference (`inference_all_reduce`), and DeepSpeed would JIT-compile its C++ on the first `initialize` of every
    fresh machine or virtual environment (~35 s of both cores here, before the first step)."""
    import deepspeed
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # one dict per process: DeepSpeed reads it back
    return deepspeed


def make_optimizer(groups: list[dict[str, Any]], cfg: LoopConfig, ds_config: dict[str, Any] | None = None):
    """AdamW over the param groups; DeepSpeed's CPU Adam where the ZeRO config offloads the optimiser."""
    offload = ((ds_config or {}).get("zero_optimization", {}).get("offload_optimizer") or {}).get("device")
    if offload == "cpu":  # ZeRO-Offload steps on the CPU: torch's AdamW there is rejected by DeepSpeed
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


# -- the worker ------------------------------------------------------------------------------------------

def load_learner(config: dict[str, Any]):
    """The learner named "module:Class" in the loop config, built from that config."""
    module, _, name = config["learner"].partition(":")
    return getattr(importlib.import_module(module), name)(config)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray
    import ray.train
    import ray.train.torch

    started_at = time.time()  # the pass's timeline (pass_seconds): when this worker's function began
    said = _recorded_outage(config)
    if said:  # Ray Train retries every worker failure: after an outage, stop now, not after the client's retries again
        raise TrackingUnavailable(said)
    learner = load_learner(config)
    cfg = learner.cfg
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(config["seed"] + cfg.seed_offset)  # the same initial weights on every rank
    torch.set_num_threads(cfg.torch_threads)
    module = wrapped = learner.build()
    micro = cfg.batch_size // world // cfg.grad_accum
    state = {"step": 0, "mlflow_run_id": None, "history": []}
    optimizer_state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # resume: weights (before any wrapping), step, data position, LR and the MLflow run
        with checkpoint.as_directory() as ckpt:
            learner.load(module, Path(ckpt))
            state = json.loads((Path(ckpt) / TRAINER_STATE).read_text())
            if (Path(ckpt) / OPTIMIZER_FILE).exists():  # DDP checkpoints have it; ZeRO ones keep partitions
                optimizer_state = read_optimizer_state(Path(ckpt))
    state["timeline"] = {"worker_start": started_at}  # this attempt's (a resumed run's own, not the first's)
    groups = learner.param_groups(module)
    trainable = learner.trainable(module)  # before ZeRO-3 partitions the parameters away
    ds_config = deepspeed_config(cfg, micro) if cfg.deepspeed else None
    optimizer = make_optimizer([{k: v for k, v in g.items() if k != "base_lr"} | {"lr": g["base_lr"]}
                                for g in groups], cfg, ds_config)
    engine = None
    if cfg.deepspeed:  # ZeRO partitions optimiser state (2) and parameters (3) across the workers
        engine, optimizer, _, _ = training_deepspeed().initialize(model=module, optimizer=optimizer, config=ds_config)
        wrapped = engine
        if checkpoint:  # the moments live partitioned across ranks: each rank loads its own partition
            with checkpoint.as_directory() as ckpt:
                if (Path(ckpt) / DEEPSPEED_STATE).exists():
                    engine.load_checkpoint(str(Path(ckpt) / DEEPSPEED_STATE), tag="state", load_module_strict=False,
                                           load_lr_scheduler_states=False)
                    state["optimizer_restored"] = True
    else:
        kwargs = {"parallel_strategy_kwargs": {"find_unused_parameters": True}} if world > 1 else {}
        wrapped = ray.train.torch.prepare_model(wrapped, **kwargs)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
            state["optimizer_restored"] = True
    steps_per_epoch = max(1, config["n_train"] // cfg.batch_size)
    phases = learner.phases(module, cfg.max_steps or cfg.epochs * steps_per_epoch)
    total = phases[-1].end
    nodes = [None] * world  # where each rank runs (logged; the multi-node test checks it)
    node = ray.get_runtime_context().get_node_id()
    if world > 1:
        torch.distributed.all_gather_object(nodes, node)
    else:
        nodes = [node]
    state["worker_nodes"] = nodes
    state["timeline"]["built"] = time.time()
    torch.manual_seed(config["seed"] + cfg.seed_offset + 1000 * rank + state["step"])
    shard = ray.train.get_dataset_shard("train")
    step = saved = state["step"]

    @contextlib.contextmanager
    def tracked():  # rank 0's MLflow calls: a server that stops answering stops the stage with one message
        try:
            with reaching(config["tracking_uri"], lambda: _outage_note(config, state, step, saved)):
                yield
        except TrackingUnavailable as exc:
            _record_outage(config, str(exc))
            raise

    run = None
    if rank == 0:
        with tracked():
            run = _open_mlflow(config, learner, module, trainable, state)
    state["timeline"]["tracked"] = time.time()
    started = time.perf_counter()
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
                if not accumulated:  # the phase and LR of the optimiser step these micro-batches make
                    phase = phase_at(phases, step)
                    learner.phase = phase.name
                    for group, spec in zip(optimizer.param_groups, groups, strict=True):
                        # a group may scale its rate per phase (e.g. the heads once the visual phase is over)
                        group["lr"] = phase.lr(step, cfg.warmup_steps, spec["base_lr"]) \
                            * spec.get("phase_scale", {}).get(phase.name, 1.0)
                terms, batch_tokens = _micro_step(learner, wrapped, module, batch, cfg, engine)
                accumulated.append(terms)
                samples += micro * world
                tokens += batch_tokens * world
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
                if "first_step" not in state["timeline"]:
                    state["timeline"]["first_step"] = time.time()
                metrics = {k2: sum(a[k2] for a in accumulated) / len(accumulated) for k2 in accumulated[0]}
                metrics.update(lr=optimizer.param_groups[0]["lr"], grad_norm=float(grad_norm))
                accumulated = []
                elapsed = time.perf_counter() - started
                metrics.update(samples_per_s=samples / elapsed, tokens_per_s=tokens / elapsed)
                state["history"].append({"step": step, **{k2: round(v, 6) for k2, v in metrics.items()}})
                if run is not None:  # blocks while MLflow's client retries: a server restart is ridden out
                    with tracked():
                        run.log_metrics({k2.replace("loss_", "loss/"): v for k2, v in metrics.items()}, step=step)
                _maybe_fail(config, cfg, step, rank)
                if step % cfg.checkpoint_every == 0 or step == total:
                    final = step == total
                    if final:
                        state["timeline"]["last_step"] = time.time()
                    evaluation = learner.evaluate(wrapped, module, final)  # every rank: it may all-reduce
                    if final:
                        state["timeline"]["evaluated"] = time.time()
                    scalars = {k2: v for k2, v in evaluation.items() if isinstance(v, int | float)}
                    if evaluation:
                        state["evaluation"] = evaluation
                        if run is not None:
                            with tracked():
                                run.log_metrics(scalars, step=step)
                    _report(learner, module, optimizer, engine, state | {"step": step}, metrics | scalars, rank,
                            run, final=final, tracked=tracked)
                    saved = step
                if step >= total:
                    break
    except BaseException:
        if run is not None:  # the server may be why we are here: the rerun reopens the run and ends it
            with contextlib.suppress(Exception):
                run.end_run(status="FAILED")
        raise
    if run is not None:
        with tracked():
            run.end_run()


def _outage_note(config: dict[str, Any], state: dict, step: int, saved: int) -> str:
    """What a stage stopped by an MLflow outage tells its user."""
    where, then = ((f"its last checkpoint is step {saved}", "resumes from that checkpoint") if saved
                   else ("before its first checkpoint", "starts again from step 0"))
    into = f" and logs into MLflow run {state['mlflow_run_id']}" if state.get("mlflow_run_id") else ""
    return (f"{config['stage']} stopped at step {step} ({where}). When the server answers again, rerun the stage: it "
            f"{then}{into}.")


def _micro_step(learner, wrapped, module, batch: dict[str, torch.Tensor], cfg: LoopConfig, engine
                ) -> tuple[dict[str, float], int]:
    with torch.autocast("cuda" if cfg.use_gpu else "cpu", dtype=torch.bfloat16, enabled=bf16_enabled(cfg)):
        loss, terms, tokens = learner.loss(wrapped, module, batch)
    if engine is not None:
        engine.backward(loss)  # scales by 1 / gradient_accumulation_steps itself
        engine.step()  # a no-op except at the accumulation boundary
    else:
        (loss / cfg.grad_accum).backward()
    return {"loss": loss.item()} | terms, tokens


def _outage_file(storage_path: str, name: str):
    """(filesystem, path) of where rank 0 records that MLflow did not answer, in Ray Train run `name`'s storage (local
    or s3://)."""
    return filesystem(f"{storage_path.rstrip('/')}/{name}/{OUTAGE_MARKER}")


def _record_outage(config: dict[str, Any], said: str) -> None:
    try:
        fs, path = _outage_file(config["storage_path"], config["run_name"])
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(path, said.encode())
    except Exception as exc:  # only a shortcut for the retry: the outage's own message must still reach the user
        log.warning("could not record the MLflow outage for Ray Train's retry (%s); the retry meets it itself", exc)


def _recorded_outage(config: dict[str, Any]) -> str | None:
    """The outage this fit's earlier attempt stopped at, if one did (`fit` clears it before each fit)."""
    try:
        fs, path = _outage_file(config["storage_path"], config["run_name"])
        return fs.cat_file(path).decode() if fs.exists(path) else None
    except Exception:  # a worker may hold no credentials for the storage (Ray Train's own filesystem carries them)
        return None


def clear_outage(storage_path: str, name: str) -> None:
    fs, path = _outage_file(storage_path, name)
    if fs.exists(path):
        fs.rm_file(path)


def _maybe_fail(config: dict[str, Any], cfg: LoopConfig, step: int, rank: int) -> None:
    """Fault injection for the resume tests: rank 0's first attempt raises at `fail_at_step`.

    Rank 0, after it has logged the step: a peer failing first could have the group stopped before rank 0 logs,
    and the resume test compares that step's loss before the failure with its loss after the resume.
    """
    marker = Path(config["storage_path"]) / f".failed_once_{config['stage']}"
    if cfg.fail_at_step and rank == 0 and step == cfg.fail_at_step and not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(step))
        raise RuntimeError(f"injected failure at step {step} (fail_at_step)")


def _open_mlflow(config, learner, module, trainable: dict[str, int], state: dict):
    import mlflow

    # a restarted run continues its MLflow run; a new one is a child of the pipeline's run
    provenance = config.get("provenance", {})
    bf16 = bf16_enabled(learner.cfg)
    tags = provenance | host_tags(learner.cfg.use_gpu) | {"train.dtype": "bf16" if bf16 else "fp32"}
    run = start_stage_run(config["tracking_uri"], config["stage"], state.get("mlflow_run_id"), tags=tags,
                          commit=provenance.get("git.commit"))
    if not state.get("mlflow_run_id"):
        mlflow.log_params(flatten({config["stage"]: config["train"]} | learner.logged_params(module)))
        mlflow.log_params({f"trainable.{k}": v for k, v in trainable.items()} | {"bf16.used": bf16})
    state["mlflow_run_id"] = run.info.run_id
    return mlflow


def _report(learner, module, optimizer, engine, state: dict, metrics: dict, rank: int, run, final: bool,
            tracked: Callable[[], contextlib.AbstractContextManager]) -> None:
    import ray.train

    weights = None
    if engine is not None and engine.zero_optimization_stage() == 3:
        # every rank takes part in gathering the partitioned parameters; rank 0 receives them
        weights = module.state_dict() | (engine._zero3_consolidated_16bit_state_dict() or {})
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:  # the trained parts are small and identical on every rank: rank 0 saves them
            learner.save(module, Path(tmp), weights)
            if engine is None:  # DDP: the whole state; ZeRO's partitions are written by every rank below
                save_optimizer(optimizer, Path(tmp))
            (Path(tmp) / TRAINER_STATE).write_text(json.dumps(state) + "\n")
            if final and run is not None:  # the model, before DeepSpeed's partitions join the folder
                with tracked():
                    run.log_artifacts(tmp, artifact_path=learner.artifact_path)
        if engine is not None:  # collective: every rank writes its optimiser partition; Ray merges the folders
            engine.save_checkpoint(str(Path(tmp) / DEEPSPEED_STATE), tag="state", exclude_frozen_parameters=True)
        if rank == 0 or engine is not None:
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        ray.train.report({"step": state["step"], **scalars}, checkpoint=checkpoint)


# -- the driver ------------------------------------------------------------------------------------------

# the code a training run executes: a rerun of a stage whose code changed must not resume the old run's checkpoint
# (it would republish the old weights as the new stage's, or fail to load them into a changed model)
CODE_ROOTS: tuple[Path, ...] = tuple(Path(__file__).resolve().parents[2] / name for name in ("model", "pipelines"))


def run_name(stage: str, payload: dict[str, Any], folders: Iterable[Path] = (),
             code: tuple[Path, ...] = CODE_ROOTS) -> str:
    """The Ray Train run name: the stage plus a fingerprint of everything the run learns from and runs.

    Restarting the same stage on the same inputs and code finds the same name and resumes from its last
    checkpoint; a changed config, input or source file (`code`: every .py below these folders) starts a fresh
    run (resuming an old run's weights into a changed model would fail, or silently mix runs)."""
    digest = hashlib.sha256(json.dumps({"stage": stage, **payload}, sort_keys=True, default=str).encode())
    digest.update(code_fingerprint(code).encode())
    for folder in folders:
        digest_files(digest, ((p.name, p) for p in sorted(Path(folder).rglob("*")) if p.is_file()))
    return f"{stage}-{digest.hexdigest()[:12]}"


def code_fingerprint(roots: tuple[Path, ...]) -> str:
    """sha256 over the relative path and bytes of every .py file below `roots`."""
    digest = hashlib.sha256()
    for root in roots:
        digest_files(digest, ((f"{root.name}/{p.relative_to(root).as_posix()}", p)
                               for p in sorted(Path(root).rglob("*.py"))))
    return digest.hexdigest()


def digest_files(digest, files: Iterable[tuple[str, Path]]) -> None:
    """Each file's name, then its bytes (read in chunks: corpus shards are large), into `digest`."""
    for name, path in files:
        digest.update(name.encode())
        with path.open("rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(chunk)


def training_storage(stage: str, storage_path: str, where) -> str:
    """Checked at a training stage's start (`where`: its pipelines.cluster.Placement), before any data work:
    rank 0 logs to MLflow and every worker writes checkpoints, so both must be where the workers are.
    Returns the storage Ray Train uses; pass that to `fit`."""
    where.require(stage, {"MLflow store (MLFLOW_TRACKING_URI)": tracking_store_path(tracking_uri())})
    return where.train_storage(stage, storage_path)


# how often Ray Train's controller asks the workers how they are (Ray's default: 2 s): a pass whose workers had
# finished waited up to that long to be noticed (benchmarks/pass_cost.py, the final report: 3.1 -> 1.2 s at 0.5 s,
# 1.5 -> 0.85 s at 0.2 s; at 0.1 s steps were slower, at 0.2 s not measurably: RESULTS.md, thirty-seventh pass)
HEALTH_CHECK_ENV, HEALTH_CHECK_INTERVAL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2"
# Ray Train's preemption watcher (an actor a pass: a process that starts and imports Ray, ~2 s of CPU) watches for
# nodes being drained, as a cloud's spot nodes are; an instance on this machine alone has none to drain
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def controller_env(where: Placement) -> dict[str, str]:
    """What Ray Train's controller is started with (it reads these from the driver's environment at `fit`): the
    health-check interval, and the preemption watcher off where every node is this machine (`where`, the stage's
    placement). A variable already set in the environment still decides."""
    wanted = {HEALTH_CHECK_ENV: HEALTH_CHECK_INTERVAL_S}
    if not where.remote:
        wanted[PREEMPTION_WATCHER_ENV] = "0"
    return {k: v for k, v in wanted.items() if k not in os.environ}


@contextlib.contextmanager
def environment(extra: dict[str, str]):
    """`extra` in os.environ for the block only: a later pass, or a test in the same process, starts from as it was."""
    os.environ.update(extra)
    try:
        yield
    finally:
        for key in extra:
            os.environ.pop(key, None)


def fit(stage: str, learner: str, cfg: LoopConfig, datasets: dict[str, Any], loop_config: dict[str, Any],
        storage_path: str, name: str, where: Placement):
    """One Ray Train run of `train_loop_per_worker` for `learner`; its result (with a final checkpoint).
    `storage_path` is what `training_storage` returned at the stage's start, `where` the placement it checked."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, WorkerGroupError
    from ray.train.torch import TorchTrainer

    retries = retry_settings()

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"stage": stage, "learner": learner, "train": asdict(cfg), "tracking_uri": tracking_uri(),
                           "provenance": code_tags(), "storage_path": storage_path, "run_name": name, **loop_config},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(**ray_storage(storage_path), name=name,
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             worker_runtime_env={"env_vars": retries} if retries else None),
        datasets=datasets,
    )
    clear_outage(storage_path, name)  # a rerun after an outage resumes: its workers must not stop at the old one
    try:
        with environment(controller_env(where)):
            result = trainer.fit()
    except WorkerGroupError as exc:  # an MLflow outage is one line for the user, not the workers' tracebacks
        outage = next((e for e in exc.worker_failures.values() if isinstance(e, TrackingUnavailable)), None)
        if outage is None:
            raise
        raise TrackingUnavailable(f"{stage}: {outage}") from None
    if result.checkpoint is None:
        raise RuntimeError(f"{stage} finished without a checkpoint; see the Ray Train logs above")
    return result


def worker_counts(state: dict[str, Any]) -> dict[str, int]:
    """How many training workers ran, on how many nodes (from the final checkpoint's state)."""
    nodes = state.get("worker_nodes", [])
    return {"workers": len(nodes), "nodes": len(set(nodes))}


def publish(result, out_dir: Path, check: Callable[[Path], Any]) -> dict[str, Any]:
    """Copy the final checkpoint to `out_dir` (a DVC out) through a temporary folder; its trainer state."""
    with atomic_dir(out_dir) as tmp:
        with result.checkpoint.as_directory() as ckpt:
            shutil.copytree(ckpt, tmp)
        state = json.loads((tmp / TRAINER_STATE).read_text())
        # the DVC out is the model; optimiser state (whole or ZeRO partitions) stays in the Ray Train run
        (tmp / OPTIMIZER_FILE).unlink(missing_ok=True)
        shutil.rmtree(tmp / DEEPSPEED_STATE, ignore_errors=True)
        check(tmp)  # e.g. refuse to publish a checkpoint that does not load
    return state


@dataclass(frozen=True)
class TrainingPass:
    """What a trainer's driver prepares for one pass: the learner ("module:Class"), its Ray datasets, the loop's
    extra config, the Ray Train run name (a rerun with the same name resumes) and the check a checkpoint must pass
    before it is published (e.g. that it loads)."""

    learner: str
    datasets: dict[str, Any]
    loop_config: dict[str, Any]
    name: str
    check: Callable[[Path], Any]


def train_and_publish(stage: str, cfg: LoopConfig, storage_path: str, out_dir: Path,
                      prepare: Callable[[Placement], TrainingPass]) -> tuple[TrainingPass, dict[str, Any]]:
    """The skeleton every trainer (FaceInsight, the specialist, the parser) runs: where the workers are and their
    storage, checked before any data work; the driver's own data (`prepare`); one Ray Train run; the final
    checkpoint published to `out_dir`. Returns the prepared pass and the published checkpoint's trainer state."""
    stamps = {"process": _process_start(), "start": time.time()}
    where = placement()
    storage = training_storage(stage, storage_path, where)  # fails here, not after the data work
    stamps["placed"] = time.time()
    job = prepare(where)
    stamps["prepared"] = time.time()
    result = fit(stage, job.learner, cfg, job.datasets, job.loop_config, storage, job.name, where)
    stamps["trained"] = time.time()
    state = publish(result, out_dir, job.check)
    stamps["published"] = time.time()
    return job, state | {"seconds": pass_seconds(stamps, state.get("timeline", {}))}


# a pass's phases: (name, from stamp, to stamp); the driver's stamps and rank 0's (one clock on one machine; on a
# cluster the nodes' clocks may differ by their skew)
PASS_PHASES = (
    ("process_and_imports", "process", "start"),  # interpreter start, the stage's imports
    ("ray_and_checks", "start", "placed"),  # ray.init (or joining a cluster), storage and tracking checks
    ("driver_data", "placed", "prepared"),  # the driver's data: Ray Datasets built (and encoded), val faces read
    ("workers_start", "prepared", "worker_start"),  # Ray Train's controller, the worker group, torch.distributed
    ("model_build", "worker_start", "built"),  # imports in the worker, the model, optimiser, DDP / DeepSpeed
    ("mlflow_open", "built", "tracked"),  # rank 0 opens its MLflow run and logs the params
    ("first_step", "tracked", "first_step"),  # the shard's data pipeline starts; one optimiser step
    ("steps", "first_step", "last_step"),  # every later step, with the checkpoints between
    ("final_evaluation", "last_step", "evaluated"),  # the learner's evaluation at the end
    ("final_report", "evaluated", "trained"),  # the final checkpoint and metrics; the workers and controller stop
    ("publish", "trained", "published"),  # the checkpoint copied to the DVC out and checked to load
)


def _process_start() -> float:
    """When this process started, for its first pass; a later pass in the same process (train_variant's finetune
    after its align) starts its timeline at its own call, so it does not count the earlier pass as imports."""
    global _PROCESS_COUNTED
    if _PROCESS_COUNTED:
        return time.time()
    import psutil

    _PROCESS_COUNTED = True
    return psutil.Process().create_time()


_PROCESS_COUNTED = False


def pass_seconds(driver: dict[str, float], worker: dict[str, float]) -> dict[str, float]:
    """Where a pass's wall time went: seconds per PASS_PHASES entry whose two stamps (time.time()) were taken."""
    at = driver | worker
    return {name: round(at[end] - at[begin], 2) for name, begin, end in PASS_PHASES if begin in at and end in at}


def ray_storage(storage_path: str) -> dict[str, Any]:
    """RunConfig storage arguments (an explicit filesystem for s3:// at a custom endpoint)."""
    filesystem, path = arrow_filesystem(storage_path)
    return {"storage_path": path} | ({"storage_filesystem": filesystem} if filesystem else {})
