"""`dvc repro` for real, in a temporary copy of the repository, on smoke-sized params."""

import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.smoke_repo import SMOKE, SMOKE_VISUAL_STEPS, run, smoke_repo

pytestmark = pytest.mark.slow


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    return smoke_repo(tmp_path / "repo")


def test_dvc_repro_runs_the_dag_then_is_a_no_op(repo_copy):
    # as `make run` runs it: the Ray stages share one instance (the later, plain `dvc repro`s start their own)
    out = run([sys.executable, "-m", "pipelines.ray_session", sys.executable, "-m", "dvc", "repro"], repo_copy)
    tasks = ("attributes", "age_gender_race", "expression")
    for stage in ("ingest", "mine_knowledge", "train_parser", "build_corpus", "train_tokenizer", "align", "finetune",
                  *(f"finetune_task@{t}" for t in tasks), "train_variant@no_map", *(f"evaluate@{t}" for t in tasks),
                  "report"):
        assert f"Running stage '{stage}'" in out, stage
    parser_metrics = json.loads((repo_copy / "metrics" / "parser.json").read_text())
    assert parser_metrics["epochs"] == 2 and 0 <= parser_metrics["val_miou"] <= 1
    assert (repo_copy / "models" / "parser" / "model.safetensors").exists()
    knowledge = json.loads((repo_copy / "data" / "knowledge" / "knowledge.json").read_text())
    assert knowledge["n_train"] > 0 and len(knowledge["conditional"]) == 40
    assert (repo_copy / "plots" / "knowledge" / "conditional.png").exists()
    metrics = json.loads((repo_copy / "metrics" / "ingest.json").read_text())
    assert metrics["datasets"]["celebamask_hq"]["kept"] == SMOKE["celebamask_hq"] - 2  # two crafted defects
    assert metrics["total"]["quarantined"] == 9
    assert (repo_copy / "data" / "manifest" / "manifest.parquet").exists()
    assert (repo_copy / "plots" / "ingest" / "contact_sheet.png").exists()
    assert (repo_copy / "dvc.lock").exists()

    corpus = json.loads((repo_copy / "metrics" / "corpus.json").read_text())
    assert corpus["faces_written"] == sum(d["kept"] for d in metrics["datasets"].values())
    assert corpus["quarantined"]["ingest"] and sum(corpus["quarantined"]["ingest"].values()) == 9
    assert sorted(p.name for p in (repo_copy / "data" / "corpus").iterdir()) == [
        "quarantine.parquet", "shards.json", "test", "train", "val"]
    assert len(list((repo_copy / "data" / "corpus" / "train").glob("part-*.parquet"))) == corpus["shards"] - 2

    assert json.loads((repo_copy / "metrics" / "tokenizer.json").read_text())["round_trip"]
    assert (repo_copy / "models" / "tokenizer" / "tokenizer.json").exists()
    align = json.loads((repo_copy / "metrics" / "train_align.json").read_text())
    history = json.loads((repo_copy / "plots" / "train" / "align.json").read_text())
    assert align["steps"] == 16 + SMOKE_VISUAL_STEPS and len(history) == align["steps"]
    visual, whole = history[:SMOKE_VISUAL_STEPS], history[SMOKE_VISUAL_STEPS:]
    assert all("loss_lm" not in h and "loss_bce" in h for h in visual) and all("loss_lm" in h for h in whole)
    # it learns: the LM term (the summed loss also holds the answer heads' class-weighted cross-entropy, which
    # swings by 2x between batches of 8 faces: the summed loss's last step can sit within 20% of its first)
    lm = [h["loss_lm"] for h in whole]
    assert sum(lm[-4:]) / 4 < 0.8 * lm[0], lm
    registry = json.loads((repo_copy / "registry" / "faceinsight.json").read_text())
    assert registry["uri"] == "models:/faceinsight@candidate" and registry["version"] == "1"
    assert (repo_copy / "models" / "faceinsight" / "model.safetensors").exists()

    # evaluation on the test faces, every system a row of the results table, the gate's verdict stated
    for task in tasks:
        headline = json.loads((repo_copy / "metrics" / "eval" / f"{task}.json").read_text())
        assert headline["faces"] > 0 and {"majority", "faceinsight", "faceinsight_tuned", "variant_no_map"} <= set(
            headline)
        tuned = json.loads((repo_copy / "metrics" / "train_finetune_task" / f"{task}.json").read_text())
        assert tuned["steps"] == 4 and tuned["train_records"] > 0
    assert (repo_copy / "plots" / "eval" / "attributes" / "balanced_accuracy.png").exists()
    assert (repo_copy / "plots" / "eval" / "expression" / "expression_confusion.csv").exists()
    results = (repo_copy / "reports" / "results.md").read_text()
    assert "| FaceInsight (generated answers) |" in results and "| Majority class (train split) |" in results
    assert "## Fine-tuned setting" in results
    assert "| FaceInsight fine-tuned on the task (generated answers) |" in results
    assert "| FaceInsight without the parsing map |" in results and "**The parsing map helps.**" in results
    variant = json.loads((repo_copy / "metrics" / "train_variant" / "no_map.json").read_text())
    assert variant["align"]["steps"] == 16 + SMOKE_VISUAL_STEPS and variant["finetune"]["steps"] == 4
    verdict = json.loads((repo_copy / "metrics" / "report.json").read_text())
    assert verdict["champion"] or verdict["reasons"]  # promoted, or the report says why not
    assert ("is now `champion`" in results) == verdict["champion"]

    runs_name_what_produced_them(repo_copy)

    again = run([sys.executable, "-m", "dvc", "repro"], repo_copy)
    assert "Running stage" not in again and "up to date" in again

    status = run([sys.executable, "-m", "dvc", "status"], repo_copy)
    assert "up to date" in status
    shown = run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], repo_copy)
    assert '"kept"' in shown

    params = yaml.safe_load((repo_copy / "params.yaml").read_text())
    params["build_corpus"]["records"]["knowledge_turns"] = 1
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    only_corpus = run([sys.executable, "-m", "dvc", "repro", "build_corpus"], repo_copy)
    assert "Running stage 'build_corpus'" in only_corpus and "Running stage 'train_parser'" not in only_corpus
    assert json.loads((repo_copy / "metrics" / "corpus.json").read_text())["turns_by_kind"]["knowledge"] < \
        corpus["turns_by_kind"]["knowledge"]

    params["ingest"]["synthetic"]["utkface"] = 25
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = run([sys.executable, "-m", "dvc", "repro", "mine_knowledge"], repo_copy)  # not the whole DAG again
    assert "Running stage 'ingest'" in changed
    # the manifest changed, so mine_knowledge re-ran; CelebAMask-HQ's train labels did not, nor does what it mines
    # from them; the answer heads' class counts are UTKFace's (and RAF-DB's) faces, so those follow the new faces
    assert "Running stage 'mine_knowledge'" in changed
    mined = json.loads((repo_copy / "data" / "knowledge" / "knowledge.json").read_text())
    counts, before = mined.pop("class_counts"), knowledge.pop("class_counts")
    assert mined == knowledge
    assert counts["expression"] == before["expression"] and sum(counts["race"]) > sum(before["race"])
    metrics = json.loads((repo_copy / "metrics" / "ingest.json").read_text())
    assert metrics["datasets"]["utkface"]["kept"] == 25


def runs_name_what_produced_them(repo: Path) -> None:
    """Every MLflow run of the DAG names the commit (clean), its DVC stage with the hashes dvc.lock recorded for that
    stage's deps, the machine and the dtype; no tag says `unknown` (issue 19)."""
    from mlflow import MlflowClient

    from pipelines.provenance import host_tags

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    head = run(["git", "rev-parse", "HEAD"], repo).strip()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    stages = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(stages) >= 8 and not [r.info.run_name for r in runs if "unknown" in r.data.tags.values()]
    for r in stages:
        tags = r.data.tags
        assert tags["git.commit"] == head and tags["git.dirty"] == "false", (r.info.run_name, tags)
        locked = {f"dvc.dep.{d['path']}": d["md5"] for d in lock[tags["dvc.stage"]]["deps"]}
        assert locked == {k: v for k, v in tags.items() if k.startswith("dvc.dep.")}, r.info.run_name
        assert tags["host.cpu"] == host_tags()["host.cpu"] and tags["train.dtype"] in ("bf16", "fp32")
