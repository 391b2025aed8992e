"""The FaceInsight trainer with real Ray Train and MLflow: learning, checkpoints, resume, registry."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from model.config import RECIPES
from pipelines.corpus.records import encode_png
from pipelines.training.faceinsight_training import TrainConfig, TrainInputs, run_training
from pipelines.training.loop import (
    HEALTH_CHECK_ENV,
    PASS_PHASES,
    PREEMPTION_WATCHER_ENV,
    _process_start,
    bf16_enabled,
    controller_env,
    environment,
    load_optimizer,
    pass_seconds,
    save_optimizer,
)
from tests.model.conftest import SMALL

MODEL = SMALL.to_dict()


def test_train_config_validates():
    with pytest.raises(ValueError, match="divide by num_workers x grad_accum"):
        TrainConfig(batch_size=10, num_workers=2, grad_accum=2)
    with pytest.raises(ValueError, match="recipe"):
        TrainConfig(recipe="everything")
    with pytest.raises(ValueError, match=r"train.tasks: unknown \['faces'\]"):
        TrainConfig(tasks=("attributes", "faces"))
    with pytest.raises(ValueError, match=r"train.kinds: unknown \['captions'\]"):
        TrainConfig(kinds=("captions",))
    with pytest.raises(ValueError, match="bf16 must be true, false or auto"):
        TrainConfig(bf16="yes")
    # FaceInsight's records by default: all about the photo; another person's answers (text_qa) only when named
    assert "text_qa" not in TrainConfig().kinds and {"yes_no", "generic", "knowledge"} <= set(TrainConfig().kinds)
    assert TrainConfig(kinds=("description", "text_qa")).kinds == ("description", "text_qa")
    with pytest.raises(ValueError, match="visual_steps must be >= 0"):
        TrainConfig(visual_steps=-1)


def test_a_visual_phase_comes_first_with_its_own_schedule_where_the_model_has_heads(corpus):
    from model.config import AlignmentConfig
    from model.faceinsight import FaceInsight
    from model.tokenizer import load_tokenizer
    from pipelines.training.faceinsight_training import FaceInsightLearner
    from pipelines.training.schedule import lr_at, phase_at

    task = FaceInsightLearner({"train": {"visual_steps": 30, "warmup_steps": 5, "lr": 0.01}, "stage": "align"})
    tokenizer, knowledge = load_tokenizer(corpus["tokenizer"]), corpus["knowledge"]
    phases = task.phases(FaceInsight(SMALL, tokenizer, knowledge), 100)
    assert [(p.name, p.start, p.end) for p in phases] == [("visual", 0, 30), ("main", 30, 130)]
    assert phase_at(phases, 29).name == "visual" and phase_at(phases, 30).name == "main"
    assert phase_at(phases, 130).name == "main"  # past the end: the last phase
    # each phase warms up and decays on its own: the first main step is a warm-up step, not the visual tail
    main = phase_at(phases, 30)
    assert main.lr(30, 5, 0.01) == pytest.approx(0.002) == lr_at(0, 100, 5, 0.01)
    assert phase_at(phases, 29).lr(29, 5, 0.01) == lr_at(29, 30, 5, 0.01) < 0.001
    no_heads = dataclasses.replace(SMALL, alignment=AlignmentConfig(
        gcn_hidden=16, use_cooccurrence=False, use_constraints=False, answer_heads=False))
    plain = task.phases(FaceInsight(no_heads, tokenizer, knowledge), 100)  # nothing to train without the LM
    assert [(p.name, p.start, p.end) for p in plain] == [("main", 0, 100)]


def test_after_the_visual_phase_the_heads_and_what_they_read_learn_at_a_share_of_the_rate(corpus):
    """visual_lr_after: the image tower, map encoder, projectors and heads get their own groups, scaled in the main
    phase only; the LM and the modules that write verdicts into the text keep the full rate. 1.0 keeps two groups."""
    from model.faceinsight import FaceInsight
    from model.tokenizer import load_tokenizer
    from pipelines.training.faceinsight_training import FaceInsightLearner

    model = FaceInsight(SMALL, load_tokenizer(corpus["tokenizer"]), corpus["knowledge"])
    model.apply_recipe(RECIPES["full"])
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    train = {"visual_steps": 30, "lr": 0.01, "projector_lr": 0.002}
    plain = FaceInsightLearner({"train": train, "stage": "align"}).param_groups(model)
    assert [g["name"] for g in plain] == ["main", "projector"] and not any("phase_scale" in g for g in plain)
    split = FaceInsightLearner({"train": train | {"visual_lr_after": 0.1}, "stage": "align"}).param_groups(model)
    named = {g["name"]: g for g in split}
    assert sorted(named) == ["main", "main_visual", "projector_visual"]  # every projector parameter is visual
    assert sorted(id(p) for g in split for p in g["params"]) == sorted(trainable)  # each parameter once
    visual = {id(p) for g in split if g["name"].endswith("_visual") for p in g["params"]}
    assert {id(p) for p in model.vision.parameters()} <= visual and {id(p) for p in model.cooccurrence.parameters()} \
        <= visual and {id(p) for p in model.answer_embedding.parameters()} <= visual
    assert not visual & {id(p) for p in model.llm.parameters()}
    assert not visual & {id(p) for p in model.knowledge_embedding.parameters()}
    assert named["main_visual"]["phase_scale"] == {"main": 0.1} and named["projector_visual"]["base_lr"] == 0.002
    # a model without heads (the general variant) has no visual phase: nothing of it is scaled
    alignment = dataclasses.replace(SMALL.alignment, use_cooccurrence=False, use_constraints=False,
                                    answer_heads=False)
    general = FaceInsight(dataclasses.replace(SMALL, alignment=alignment), load_tokenizer(corpus["tokenizer"]),
                          corpus["knowledge"])
    general.apply_recipe(RECIPES["full"])
    groups = FaceInsightLearner({"train": train | {"visual_lr_after": 0.1}, "stage": "align"}).param_groups(general)
    assert [g["name"] for g in groups] == ["main", "projector"] and not any("phase_scale" in g for g in groups)
    with pytest.raises(ValueError, match="visual_lr_after"):
        TrainConfig(visual_lr_after=1.5)


def test_bf16_auto_follows_the_hardware():
    from pipelines.training.loop import bf16_enabled, native_bf16

    assert bf16_enabled(TrainConfig(bf16=True)) and not bf16_enabled(TrainConfig(bf16=False))
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert bf16_enabled(TrainConfig(bf16="auto")) == native == native_bf16(False)
    assert not native_bf16(True) or torch.cuda.is_available()  # no GPU here: auto never turns it on for one


def test_a_task_filter_keeps_only_that_tasks_records(ray_local, corpus):
    """finetune_task@<task> trains on its task's records only (the fixture corpus is all attributes)."""
    from pipelines.training.corpus_data import corpus_dataset

    encoder = small_encoder(corpus)
    split = corpus["root"] / "train"
    assert corpus_dataset(split, encoder, tasks=("attributes",)).count() == corpus["records"]
    assert corpus_dataset(split, encoder, tasks=("expression",)).count() == 0


def test_optimizer_state_round_trips_without_pickle(tmp_path):
    net = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW([{"params": [net.weight], "lr": 0.1}, {"params": [net.bias], "lr": 0.01}])
    for _ in range(3):
        net(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
    save_optimizer(opt, tmp_path)
    fresh = torch.optim.AdamW([{"params": [net.weight], "lr": 1.0}, {"params": [net.bias], "lr": 1.0}])
    load_optimizer(fresh, tmp_path)
    a, b = opt.state_dict(), fresh.state_dict()
    assert [g["lr"] for g in b["param_groups"]] == [0.1, 0.01]
    for idx in a["state"]:
        for name, value in a["state"][idx].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][idx][name])), name


@pytest.fixture
def tracking(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


CFG = TrainConfig(recipe="full", max_steps=24, batch_size=8, lr=5e-3, warmup_steps=3, max_tokens=160,
                  kinds=("yes_no",), checkpoint_every=8, torch_threads=1, max_failures=1)


def train(corpus, tmp_path, cfg=CFG, stage="align", init_from=None, name="run"):
    inputs = TrainInputs(corpus=corpus["root"], tokenizer_dir=corpus["tokenizer"], knowledge=corpus["knowledge"],
                         model=MODEL, init_from=init_from)
    return run_training(stage, cfg, inputs, 0, tmp_path / name / "model", str(tmp_path / name / "ray"))


def runs(uri: str) -> list:
    """The stage runs (children of the pipeline run)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("faceinsight")
    found = client.search_runs([exp.experiment_id]) if exp else []
    stages = [r for r in found if "dvc.stage" in r.data.tags]
    parents = {r.info.run_id for r in found if "pipeline.commit" in r.data.tags}
    assert all(r.data.tags.get("mlflow.parentRunId") in parents for r in stages)
    return stages


@pytest.fixture(scope="module")
def trained(ray_local, corpus, tmp_path_factory) -> dict:
    """One `align` pass of CFG with its own MLflow store, trained once for the tests that read it (the learning
    test's assertions, the resume test's clean reference, the model the registry test fine-tunes)."""
    root = tmp_path_factory.mktemp("trained")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        result = train(corpus, root)
    return {"result": result, "tracking": uri, "model": root / "run" / "model"}


@pytest.mark.slow
def test_training_learns_checkpoints_and_logs(trained):
    result, tracking, model_dir = trained["result"], trained["tracking"], trained["model"]
    assert result["steps"] == 24
    history = result["history"]
    assert [h["step"] for h in history] == list(range(1, 25))
    first, last = np.mean([h["loss"] for h in history[:3]]), np.mean([h["loss"] for h in history[-3:]])
    assert last < 0.7 * first, (first, last)
    assert {"loss_lm", "loss_bce", "loss_constraint", "lr", "tokens_per_s"} <= set(history[-1])
    assert (model_dir / "model.safetensors").exists() and not (model_dir / "optimizer.safetensors").exists()
    [run] = runs(tracking)
    assert run.data.tags["dvc.stage"] == "align" and run.data.params["align.recipe"] == "full"
    assert int(run.data.params["trainable.vision"]) > 0 and "loss/lm" in run.data.metrics
    assert any(k.startswith("system/") for k in run.data.metrics)  # MLflow's system metrics
    from mlflow import MlflowClient

    history_lm = MlflowClient(tracking).get_metric_history(run.info.run_id, "loss/lm")
    assert len(history_lm) == 24
    artifacts = {a.path for a in MlflowClient(tracking).list_artifacts(run.info.run_id, "checkpoint")}
    assert "checkpoint/model.safetensors" in artifacts
    # the pass's timeline: every phase from the process's start to the published checkpoint, in order
    seconds = result["seconds"]
    assert list(seconds) == [name for name, _, _ in PASS_PHASES], seconds
    assert all(v >= 0 for v in seconds.values()) and seconds["steps"] > 0, seconds


def test_pass_seconds_counts_only_phases_whose_two_stamps_were_taken():
    driver = {"process": 100.0, "start": 101.5, "placed": 103.0, "prepared": 110.0, "trained": 150.0}
    worker = {"worker_start": 115.0, "built": 120.0, "tracked": 121.0}  # the workers stopped before a step
    assert pass_seconds(driver, worker) == {"process_and_imports": 1.5, "ray_and_checks": 1.5, "driver_data": 7.0,
                                            "workers_start": 5.0, "model_build": 5.0, "mlflow_open": 1.0}
    # a process's second pass (train_variant: finetune after align) does not count the first as its imports
    _process_start()
    assert abs(_process_start() - time.time()) < 1.0


def test_ray_trains_preemption_watcher_is_left_out_on_this_machine_only(monkeypatch):
    """No node of an instance on this machine alone is ever drained: no watcher actor (a process a pass). Where a
    node is elsewhere, and wherever the user set the variable, Ray Train decides as it would; the driver's environment
    is as it was after the fit."""
    from pipelines.cluster import ClusterView, Placement

    here = Placement(ClusterView("10.0.0.1", ("10.0.0.1",)))  # a local instance, or a cluster of this machine alone
    spread = Placement(ClusterView("10.0.0.1", ("10.0.0.1", "10.0.0.2")))
    for name in (PREEMPTION_WATCHER_ENV, HEALTH_CHECK_ENV):
        monkeypatch.delenv(name, raising=False)
    assert controller_env(here) == {HEALTH_CHECK_ENV: "0.2", PREEMPTION_WATCHER_ENV: "0"}
    assert controller_env(spread) == {HEALTH_CHECK_ENV: "0.2"}
    monkeypatch.setenv(PREEMPTION_WATCHER_ENV, "1")
    monkeypatch.setenv(HEALTH_CHECK_ENV, "2")
    assert controller_env(here) == {}
    monkeypatch.delenv(PREEMPTION_WATCHER_ENV)
    with environment(controller_env(here)):
        assert os.environ[PREEMPTION_WATCHER_ENV] == "0" and os.environ[HEALTH_CHECK_ENV] == "2"
    assert PREEMPTION_WATCHER_ENV not in os.environ and os.environ[HEALTH_CHECK_ENV] == "2"


@pytest.mark.slow
def test_a_failed_worker_resumes_from_its_checkpoint(trained, ray_local, corpus, tracking, tmp_path):
    clean = trained["result"]  # the same pass without the failure
    failed = train(corpus, tmp_path, dataclasses.replace(CFG, fail_at_step=12), name="failed")
    assert (tmp_path / "failed" / "ray" / ".failed_once_align").read_text() == "12"
    assert failed["steps"] == clean["steps"] == 24
    # steps 1-8 come from before the failure, 9-24 after resuming from the step-8 checkpoint
    assert [h["step"] for h in failed["history"]] == list(range(1, 25))
    assert abs(failed["final_loss"] - clean["final_loss"]) < 0.25 * clean["final_loss"]
    assert len([r for r in runs(tracking) if r.info.run_id == failed["mlflow_run_id"]]) == 1
    assert len(runs(tracking)) == 1  # one for the training, none for the restart


@pytest.mark.slow
def test_two_runs_of_the_same_pass_give_the_same_weights_bit_for_bit(trained, ray_local, corpus, tracking, tmp_path):
    """Reproducible on one machine (issue 19): seeded initial weights, data order and sampling, fixed threads. The
    first run is the module's `trained` pass (this process, this machine), the second the same pass again."""
    import torch
    from safetensors.torch import load_file

    first, second = trained["result"], train(corpus, tmp_path, CFG, name="second")
    assert len(first["history"]) == CFG.max_steps
    assert [h["loss"] for h in first["history"]] == [h["loss"] for h in second["history"]]
    a, b = (load_file(str(folder / "model.safetensors"))
            for folder in (trained["model"], tmp_path / "second" / "model"))
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
    [tags] = {frozenset((k, v) for k, v in r.data.tags.items() if k.startswith(("git.", "host.", "train.")))
              for r in runs(tracking) + runs(trained["tracking"])}  # both runs name the same code, machine and dtype
    assert dict(tags)["git.commit"] != "unknown" and dict(tags)["host.cpu"]


@pytest.mark.slow
def test_two_workers_train_together(ray_local, corpus, tracking, tmp_path):
    result = train(corpus, tmp_path, dataclasses.replace(CFG, num_workers=2, max_steps=6, checkpoint_every=6))
    assert result["steps"] == 6 and np.isfinite(result["final_loss"])
    assert result["history"][-1]["samples_per_s"] > 0


@pytest.mark.slow
def test_checkpoints_on_s3(ray_local, s3_server, corpus, tracking, tmp_path):
    import boto3

    boto3.client("s3").create_bucket(Bucket="train-runs")
    inputs = TrainInputs(corpus=corpus["root"], tokenizer_dir=corpus["tokenizer"], knowledge=corpus["knowledge"],
                         model=MODEL)
    cfg = dataclasses.replace(CFG, max_steps=4, checkpoint_every=2)
    result = run_training("align", cfg, inputs, 0, tmp_path / "model", "s3://train-runs/ray")
    assert result["steps"] == 4 and (tmp_path / "model" / "model.safetensors").exists()
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="train-runs", Prefix="ray/align-")["Contents"]]
    checkpoints = {k.split("/")[2] for k in keys if k.split("/")[2].startswith("checkpoint_2")}
    assert len(checkpoints) == 2  # steps 2 and 4, kept on S3
    assert any(k.endswith("/model.safetensors") for k in keys) and any(k.endswith("/trainer_state.json") for k in keys)


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_deepspeed_zero_on_two_cpu_workers(zero, ray_local, corpus, tracking, tmp_path):
    # a failure at step 6 resumes from the step-4 checkpoint: weights, and each rank's optimiser partition
    cfg = dataclasses.replace(CFG, num_workers=2, max_steps=8, checkpoint_every=4, deepspeed=zero, fail_at_step=6)
    result = train(corpus, tmp_path, cfg, name=zero)
    assert result["steps"] == 8 and result["final_loss"] < result["first_loss"]
    assert result["optimizer_restored"]
    ray_dir = next((tmp_path / zero / "ray").glob("align-*"))
    last = sorted(p for p in ray_dir.glob("checkpoint_*") if p.is_dir())[-1] / "deepspeed" / "state"
    # one optimiser partition per rank; DeepSpeed prefixes the names with bf16_ where bf16 is on (AMX/AVX512-BF16)
    prefix = "bf16_" if bf16_enabled(cfg) else ""
    partitions = sorted(p.name.split("_mp_rank")[0] for p in last.glob("*optim_states.pt"))
    assert partitions == [f"{prefix}zero_pp_rank_0", f"{prefix}zero_pp_rank_1"], partitions
    assert not (tmp_path / zero / "model" / "deepspeed").exists()  # the DVC out is the model alone
    # step 6 ran twice (before the failure and after resuming); the same weights, batch and Adam moments
    # give the same loss: a fresh optimiser would have taken a different step 5
    from mlflow import MlflowClient

    losses = [m.value for m in MlflowClient(tracking).get_metric_history(result["mlflow_run_id"], "loss")
              if m.step == 6]
    assert len(losses) == 2 and abs(losses[0] - losses[1]) < 1e-3 * abs(losses[0]), losses
    # the published checkpoint holds whole tensors (ZeRO-3's partitions gathered) and loads
    from model.faceinsight import FaceInsight

    loaded = FaceInsight.from_pretrained(tmp_path / zero / "model")
    assert loaded.parameter_counts() == FaceInsight(SMALL, loaded.tokenizer, corpus["knowledge"]).parameter_counts()


def test_deepspeed_training_leaves_its_inference_only_shm_op_unbuilt():
    # the op's one user is inference_all_reduce (tensor-parallel inference); building it is a C++ compile per machine
    from deepspeed.comm.torch import build_shm_op

    from pipelines.training.loop import training_deepspeed

    training_deepspeed()
    assert build_shm_op() is None  # without the mark: a compile, then the built module


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """One real `mlflow server` for this module's tests that need one (each reads only its own runs)."""
    from tests.training.mlflow_server import mlflow_server

    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.mark.slow
def test_finetune_registers_a_model_that_answers_in_a_fresh_process(trained, ray_local, corpus, tracking_server,
                                                                   tmp_path, monkeypatch):
    uri = tracking_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tuned_cfg = dataclasses.replace(CFG, recipe="finetune", max_steps=4, checkpoint_every=4)
    tuned = train(corpus, tmp_path, tuned_cfg, stage="finetune", init_from=trained["model"], name="finetune")
    from pipelines.registry import register

    entry = register(tmp_path / "finetune" / "model", tuned["mlflow_run_id"], uri)
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("faceinsight", "candidate")
    assert version.version == entry["version"] and version.run_id == tuned["mlflow_run_id"]
    # the requirements are stated, not inferred: what serving the model installs holds its framework
    import mlflow

    required = Path(mlflow.pyfunc.get_model_dependencies(entry["version_uri"])).read_text().split()
    assert {"torch", "safetensors", "tokenizers", "transformers"} <= {r.split("==")[0] for r in required}, required
    run = client.get_run(tuned["mlflow_run_id"])
    assert run.data.params["finetune.recipe"] == "finetune" and int(run.data.params["trainable.llm"]) > 0
    image = Path(tmp_path / "face.png")
    image.write_bytes(encode_png(np.full((32, 32, 3), 220, np.uint8)))
    script = (
        "import mlflow, pandas as pd, json, sys\n"
        f"mlflow.set_tracking_uri({uri!r})\n"
        "m = mlflow.pyfunc.load_model('models:/faceinsight@candidate')\n"
        f"out = m.predict(pd.DataFrame({{'image': [open({str(image)!r}, 'rb').read()], "
        "'question': ['Is this person smiling?']}))\n"
        "print(json.dumps({'answer': out['answer'][0], 'attributes': json.loads(out['attributes'][0])}))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert isinstance(said["answer"], str) and len(said["attributes"]) == 40
    assert all(0 <= p <= 1 for p in said["attributes"])
    assert RECIPES["finetune"].llm == "lora"


def test_run_name_changes_with_the_inputs_only(corpus, tmp_path):
    from pipelines.training.faceinsight_training import faceinsight_run_name as run_name

    inputs = TrainInputs(corpus=corpus["root"], tokenizer_dir=corpus["tokenizer"], knowledge=corpus["knowledge"],
                         model=MODEL)
    name = run_name("align", CFG, inputs, 0)
    assert name.startswith("align-") and name == run_name("align", CFG, inputs, 0)  # a restart resumes
    assert run_name("align", dataclasses.replace(CFG, lr=0.1), inputs, 0) != name
    assert run_name("align", CFG, inputs, 1) != name
    import shutil

    tok = tmp_path / "tok"
    shutil.copytree(corpus["tokenizer"], tok)
    (tok / "tokenizer.json").write_text((tok / "tokenizer.json").read_text().replace('"<pad>"', '"<PAD>"'))
    assert run_name("align", CFG, dataclasses.replace(inputs, tokenizer_dir=tok), 0) != name


def test_a_change_to_the_code_gives_a_fresh_training_run(tmp_path):
    """A stage rerun after a code change must not resume (and republish) the old run's checkpoint: the name
    fingerprints every source file the run executes."""
    from pipelines.training.loop import CODE_ROOTS, run_name

    assert {p.name for p in CODE_ROOTS} == {"model", "pipelines"}
    code = tmp_path / "model"
    code.mkdir()
    (code / "heads.py").write_text("WORDS = ('female',)\n")
    name = run_name("align", {"lr": 0.1}, code=(code,))
    assert name == run_name("align", {"lr": 0.1}, code=(code,))  # the same code: a restart resumes
    (code / "heads.py").write_text("WORDS = ('female', ' female')\n")
    changed = run_name("align", {"lr": 0.1}, code=(code,))
    assert changed != name
    (code / "notes.txt").write_text("not code")
    assert run_name("align", {"lr": 0.1}, code=(code,)) == changed


def test_the_training_rows_come_in_file_order_every_time(ray_local, corpus, tmp_path):
    """Reproducible training needs the same rows in the same order (and `limit` the same rows) on every run,
    whichever Ray actor finishes first: here 4 shards, read by parallel tasks, must come back in file order."""
    import pyarrow.parquet as pq

    from pipelines.training.corpus_data import CorpusEncoder, corpus_dataset

    table = pq.read_table(corpus["root"] / "train" / "part-00000.parquet")
    split = tmp_path / "train"
    split.mkdir()
    step = -(-table.num_rows // 4)
    for k in range(4):
        pq.write_table(table.slice(k * step, step), split / f"part-{k:05d}.parquet")
    encoder = small_encoder(corpus)
    expected = CorpusEncoder(**encoder)(table.select(["task", "kind", "conversations", "labels", "image",
                                                      "seg_map"]))["input_ids"]
    for _ in range(2):
        rows = corpus_dataset(split, encoder).materialize().take_all()
        assert np.array_equal(np.stack([r["input_ids"] for r in rows]), expected)
    limited = corpus_dataset(split, encoder, max_records=10).take_all()
    assert np.array_equal(np.stack([r["input_ids"] for r in limited]), expected[:10])


def test_a_short_pass_encoded_in_the_driver_trains_on_the_same_batches(ray_local, corpus):
    """A pass that reads few records skips Ray Data's encode tasks; its seeded shuffled batches stay the same."""
    from pipelines.training.corpus_data import corpus_dataset, driver_encoded_dataset, encode_records

    split = corpus["root"] / "train"
    for limit in (40, 0):
        ours = shuffled_batches(driver_encoded_dataset(encode_records(split, small_encoder(corpus), limit,
                                                                      tasks=("attributes",))))
        ray_data = shuffled_batches(corpus_dataset(split, small_encoder(corpus), limit,
                                                   tasks=("attributes",)).materialize())
        assert len(ours) == len(ray_data) == (limit or corpus["records"]) // 8
        assert same_batches(ours, ray_data)
    with pytest.raises(ValueError, match=r"no records of tasks \['expression'\].*build_corpus"):
        encode_records(split, small_encoder(corpus), 40, tasks=("expression",))


def test_an_encoding_kept_by_one_pass_gives_the_next_the_same_batches(ray_local, corpus, tmp_path):
    """The long passes' encoded records are written once and read back as the same blocks; another limit, another
    tokenizer or a write that did not finish encodes again."""
    import shutil

    import ray

    from pipelines.training.corpus_data import corpus_dataset
    from pipelines.training.encoded_cache import COMPLETE, cache_root, cached_encoding, encoding_key

    split, encoder = corpus["root"] / "train", small_encoder(corpus)
    encoded = []

    def encode():
        encoded.append(1)
        return corpus_dataset(split, encoder, workers=1).materialize()

    root = cache_root(str(tmp_path / "ray"), str(split), encoder["tokenizer_dir"])
    assert root == tmp_path / "encoded"
    key = encoding_key(split, encoder, 0, (), ())
    context = ray.data.DataContext.get_current()
    block_size, context.target_max_block_size = context.target_max_block_size, 256 * 1024  # several blocks
    try:
        first = cached_encoding(root, key, encode)
    finally:
        context.target_max_block_size = block_size
    again = cached_encoding(root, key, encode)
    assert len(encoded) == 1 and (root / key / COMPLETE).exists() and first.num_blocks() > 1  # boundaries kept
    assert again.num_blocks() == first.num_blocks() and again.count() == corpus["records"]
    assert same_batches(shuffled_batches(again), shuffled_batches(first))

    other_tokenizer = tmp_path / "tokenizer"
    shutil.copytree(encoder["tokenizer_dir"], other_tokenizer)
    (other_tokenizer / "tokenizer.json").write_text((other_tokenizer / "tokenizer.json").read_text() + " ")
    keys = {key, encoding_key(split, encoder, 10, (), ()), encoding_key(split, encoder, 0, ("description",), ()),
            encoding_key(split, {**encoder, "tokenizer_dir": str(other_tokenizer)}, 0, (), ())}
    assert len(keys) == 4
    assert encoding_key(split, encoder, corpus["records"] + 1, (), ()) == key  # a limit above the records: all
    (root / key / COMPLETE).unlink()  # as if the write had stopped half-way
    cached_encoding(root, key, encode)
    assert len(encoded) == 2 and (root / key / COMPLETE).exists()
    (root / key / "block-00000.arrow").write_bytes(b"not arrow")  # a damaged file: encoded again, not a failure
    assert cached_encoding(root, key, encode).count() == corpus["records"] and len(encoded) == 3
    assert cache_root("s3://bucket/ray", str(split), encoder["tokenizer_dir"]) is None


def small_encoder(corpus) -> dict:
    return {"tokenizer_dir": str(corpus["tokenizer"]), "chat_template": SMALL.llm.chat_template,
            "image_tokens": 16, "seg_tokens": 4, "max_tokens": 64, "image_size": 32, "seg_size": 32}


def shuffled_batches(ds) -> list[dict]:
    """A dataset's batches as a worker's shard iterates them (seeded local shuffle)."""
    return [{k: v.numpy() for k, v in b.items()} for b in ds.iter_torch_batches(
        batch_size=8, drop_last=True, local_shuffle_buffer_size=32, local_shuffle_seed=5)]


def same_batches(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


@pytest.mark.slow
def test_validation_during_training_logs_a_learning_curve_to_mlflow(trained, ray_local, corpus, tracking_server,
                                                                    tmp_path, monkeypatch):
    import shutil

    from mlflow import MlflowClient

    # the same faces as a val split (the hook only needs val faces to score)
    root = tmp_path / "corpus"
    shutil.copytree(corpus["root"], root)
    shutil.copytree(root / "train", root / "val")
    with_val = {**corpus, "root": root}
    uri = tracking_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = dataclasses.replace(CFG, max_steps=6, checkpoint_every=3, val_faces=8)
    result = train(with_val, tmp_path, cfg, name="val")
    client = MlflowClient(uri)
    for key in ("val_head_balanced_accuracy", "val_yes_no_balanced_accuracy", "val_unread_share"):
        steps = [m.step for m in client.get_metric_history(result["mlflow_run_id"], key)]
        assert steps == [3, 6], (key, steps)
        assert all(0 <= m.value <= 1 for m in client.get_metric_history(result["mlflow_run_id"], key))
    # without a val split (the module's `trained` pass) there is nothing to score and no val_ metric
    logged = MlflowClient(trained["tracking"]).get_run(trained["result"]["mlflow_run_id"]).data.metrics
    assert "loss" in logged and not any(k.startswith("val_") for k in logged)
