import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.evaluation.gate import against_champion, gate
from pipelines.evaluation.report import ReportConfig, value

ROOT = Path(__file__).resolve().parents[2]
GATE = {"attributes.mean_balanced_accuracy": 0.55, "age_gender_race.age_mae": 10.0, "expression.uar": 0.2}


def evals(bal=0.6, mae=8.0, uar=0.3, base=(0.5, 12.0, 0.143)) -> dict:
    def task(name, ours, theirs, keys):
        return {"task": name, "split": "test", "faces": 10, "map_sources": ["parser"],
                "systems": {"faceinsight": {"summary": dict(zip(keys, ours, strict=True))},
                            "majority": {"summary": dict(zip(keys, theirs, strict=True))}}}
    return {"attributes": task("attributes", [bal, 0.1], [base[0], 0.0], ["mean_balanced_accuracy",
                                                                        "rule_violation_rate"]),
            "age_gender_race": task("age_gender_race", [mae], [base[1]], ["age_mae"]),
            "expression": task("expression", [uar], [base[2]], ["uar"])}


def test_gate_thresholds_majority_and_champion():
    cfg = ReportConfig(gate=GATE)
    assert gate(evals(), cfg, None) == (True, [])
    ok, why = gate(evals(bal=0.52), cfg, None)
    assert not ok and any("at least 0.55" in r for r in why)
    ok, why = gate(evals(mae=11.0), cfg, None)  # lower is better for MAE
    assert not ok and any("at most 10.0" in r for r in why)
    ok, why = gate(evals(uar=0.25, base=(0.5, 12.0, 0.3)), cfg, None)
    assert not ok and any("majority" in r for r in why)
    # a champion with its numbers alone (no per-face answers in its run): compared by point values, and said so
    better_champion = {"attributes.mean_balanced_accuracy": 0.7, "age_gender_race.age_mae": 7.0, "expression.uar": 0.4}
    ok, why = gate(evals(), cfg, against_champion(evals(), sorted(GATE), "3", better_champion))
    assert not ok and any("champion (version 3)" in r and "compared by point values: the champion's run has no "
                          "per-face answers" in r for r in why), why
    worse_champion = {"attributes.mean_balanced_accuracy": 0.56, "age_gender_race.age_mae": 9.0, "expression.uar": 0.25}
    assert gate(evals(), cfg, against_champion(evals(), sorted(GATE), "3", worse_champion)) == (True, [])
    assert not gate(evals(), cfg, against_champion(evals(), sorted(GATE), "3", {k: value(evals(), "faceinsight", k)
                                                                                for k in GATE}))[0]  # a tie
    with pytest.raises(ValueError, match="unknown metric"):
        ReportConfig(gate={"attributes.nonsense": 1.0})


def _register(client, tmp_path: Path, numbers: dict[str, float]) -> str:
    """A version of `faceinsight` whose run carries the evaluation numbers evaluate would log."""
    import mlflow

    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "src" / "MLmodel").write_text("stand-in: the gate reads only the run's metrics\n")
    exp = client.get_experiment_by_name("faceinsight") or client.get_experiment(client.create_experiment("faceinsight"))
    run = client.create_run(exp.experiment_id, tags={"git.commit": "0123abcd" * 5, "git.dirty": "false",
                                                     "host.cpu": "AMD EPYC", "host.cpu_bf16": "avx512_bf16",
                                                     "host.gpu": "none", "train.dtype": "bf16", "other": "x"})
    for key, v in numbers.items():
        task, metric = key.split(".")
        client.log_metric(run.info.run_id, f"eval.{task}.faceinsight.{metric}", v)
    try:
        client.get_registered_model("faceinsight")
    except mlflow.exceptions.MlflowException:
        client.create_registered_model("faceinsight")
    client.log_artifacts(run.info.run_id, str(tmp_path / "src"), "model")
    version = client.create_model_version("faceinsight", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return version.version, run.info.run_id


def _report(tmp_path: Path, uri: str, version: str, run_id: str, results: dict) -> dict:
    folder = tmp_path / f"v{version}"
    (folder / "eval").mkdir(parents=True, exist_ok=True)
    for task, r in results.items():
        (folder / "eval" / f"{task}.json").write_text(json.dumps(r))
    (folder / "registry.json").write_text(json.dumps({"version": version, "run_id": run_id,
                                                     "version_uri": f"models:/faceinsight/{version}"}))
    (folder / "params.yaml").write_text(json.dumps({"seed": 0, "report": {"gate": GATE}}))
    done = subprocess.run([sys.executable, "-m", "stages.report", "--params", str(folder / "params.yaml"),
                           "--evals", str(folder / "eval"), "--registry", str(folder / "registry.json"),
                           "--corpus-metrics", str(folder / "none.json"), "--out", str(folder / "results.md"),
                           "--metrics", str(folder / "report.json")],
                          cwd=ROOT, env=os.environ | {"MLFLOW_TRACKING_URI": uri}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((folder / "report.json").read_text()) | {"md": (folder / "results.md").read_text()}


def test_report_moves_champion_only_when_earned(tmp_path):
    from mlflow import MlflowClient

    from tests.training.mlflow_server import mlflow_server

    with mlflow_server(tmp_path / "mlflow") as uri:
        client = MlflowClient(uri)
        first = evals()
        v1, r1 = _register(client, tmp_path, {"attributes.mean_balanced_accuracy": 0.6, "age_gender_race.age_mae": 8.0,
                                              "expression.uar": 0.3})
        out = _report(tmp_path, uri, v1, r1, first)
        assert out["champion"] and client.get_model_version_by_alias("faceinsight", "champion").version == v1
        assert "| FaceInsight (generated answers) | — | 0.600 |" in out["md"]
        assert "no other version holds `champion` to beat" in out["md"]
        # the same version reported again (other rows retrained): it keeps the alias and says it held it already
        out = _report(tmp_path, uri, v1, r1, first)
        assert out["champion"] and client.get_model_version_by_alias("faceinsight", "champion").version == v1
        assert "This version holds `champion` already" in out["md"] and "no other version holds" not in out["md"]
        # a worse candidate: the alias stays, and the report says why
        worse = evals(bal=0.58, mae=9.0, uar=0.25)
        v2, r2 = _register(client, tmp_path, {"attributes.mean_balanced_accuracy": 0.58,
                                              "age_gender_race.age_mae": 9.0, "expression.uar": 0.25})
        out = _report(tmp_path, uri, v2, r2, worse)
        assert not out["champion"] and client.get_model_version_by_alias("faceinsight", "champion").version == v1
        assert "does not beat the current champion" in out["md"]
        # below a threshold: not moved either
        low = evals(bal=0.7, mae=6.0, uar=0.15)
        v3, r3 = _register(client, tmp_path, {"attributes.mean_balanced_accuracy": 0.7, "age_gender_race.age_mae": 6.0,
                                              "expression.uar": 0.15})
        out = _report(tmp_path, uri, v3, r3, low)
        assert not out["champion"] and any("expression.uar" in r for r in out["reasons"])
        # a better one on every gated number: moved
        best = evals(bal=0.7, mae=6.0, uar=0.4)
        v4, r4 = _register(client, tmp_path, {"attributes.mean_balanced_accuracy": 0.7, "age_gender_race.age_mae": 6.0,
                                              "expression.uar": 0.4})
        out = _report(tmp_path, uri, v4, r4, best)
        assert out["champion"] and client.get_model_version_by_alias("faceinsight", "champion").version == v4


def _faces(results: dict, task: str, n: int = 300, seed: int = 0) -> None:
    """Per-face truth for a task (the attributes: 40 columns; expression: 7 classes)."""
    import numpy as np

    from model.labels import CELEBA_ATTRIBUTES

    rng = np.random.default_rng(seed)
    targets = CELEBA_ATTRIBUTES if task == "attributes" else ["expression"]
    classes = 2 if task == "attributes" else 7
    results[task]["truth"] = {t: rng.integers(0, classes, n).tolist() for t in targets}


def _answers(results: dict, task: str, system: str, right: float, seed: int) -> None:
    """Per-face predictions of a system that is right on a `right` share of each target's faces."""
    import numpy as np

    rng = np.random.default_rng(seed)
    classes = 2 if task == "attributes" else 7
    pred = {}
    for target, truth in results[task]["truth"].items():
        truth = np.asarray(truth)
        wrong = (truth + rng.integers(1, classes, len(truth))) % classes
        pred[target] = np.where(rng.random(len(truth)) < right, truth, wrong).tolist()
    results[task]["systems"][system]["predictions"] = pred


def test_the_fine_tuned_setting_gets_its_own_table_and_claim():
    from pipelines.evaluation.report import results_markdown

    results = evals()
    assert "Fine-tuned setting" not in results_markdown(results, {}, 0, None, (True, []), False)
    tuned = {"attributes": {"mean_balanced_accuracy": 0.7, "rule_violation_rate": 0.05},
             "age_gender_race": {"age_mae": 7.5}, "expression": {"uar": 0.2}}
    for task, summary in tuned.items():
        results[task]["systems"]["faceinsight_tuned"] = {"summary": summary}
    md = results_markdown(results, {}, 0, None, (True, []), False)
    free, fine = md.split("## Fine-tuned setting")
    assert "| FaceInsight fine-tuned on the task (generated answers) |" in fine.split("## What")[0]
    assert "fine-tuned" not in free.split("## Training-free")[1]  # the first table keeps the training-free rows
    row = next(line for line in fine.splitlines() if line.startswith("| FaceInsight fine-tuned"))
    assert "| 0.700 |" in row and "| 7.50 |" in row
    # no per-face predictions: the numbers are given, the claim is not judged
    assert "0.700 vs 0.600 (no per-face predictions: not judged)" in md
    # with them: attributes rose clearly (supported), expression fell clearly (contradicted)
    for task, ours, theirs in (("attributes", 0.6, 0.75), ("expression", 0.6, 0.3)):
        _faces(results, task)
        _answers(results, task, "faceinsight", ours, 1)
        _answers(results, task, "faceinsight_tuned", theirs, 2)
    claim = next(line for line in results_markdown(results, {}, 0, None, (True, []), False).splitlines()
                 if line.startswith("- **Fine-tuning on the task helps**"))
    assert "attributes.mean_balanced_accuracy 0.700 vs 0.600, difference +0.1" in claim
    parts = claim.split("; ")
    assert "**supported**" in parts[0] and "expression.uar" in parts[-1] and "**contradicted**" in parts[-1]


def test_variants_get_rows_by_label_and_a_sentence_per_claim():
    from pipelines.evaluation.report import results_markdown

    results = evals()  # FaceInsight: attributes 0.6 balanced accuracy, 10% rule violations, UAR 0.3
    ablations = {"no_map": ("FaceInsight without the parsing map", 0.55, 0.1, 0.2, 0.5),
                 "no_constraints": ("FaceInsight without the constraint loss", 0.6, 0.25, 0.3, 0.6),
                 "general": ("General MLLM (captions only)", 0.7, 0.1, 0.3, 0.8)}
    _faces(results, "attributes")
    _answers(results, "attributes", "faceinsight", 0.6, 1)
    for k, (name, (label, bal, viol, uar, right)) in enumerate(ablations.items()):
        results["attributes"]["systems"][f"variant_{name}"] = {
            "label": label, "summary": {"mean_balanced_accuracy": bal, "rule_violation_rate": viol}}
        _answers(results, "attributes", f"variant_{name}", right, 10 + k)
        results["expression"]["systems"][f"variant_{name}"] = {"label": label, "summary": {"uar": uar}}
    md = results_markdown(results, {}, 0, None, (True, []), False)
    table = md.split("## What")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    titles = [r.split(" | ")[0][2:] for r in rows[2:]]
    assert titles == ["Majority class (train split)", "FaceInsight (generated answers)",
                      *(ablations[n][0] for n in sorted(ablations))]  # by name, after FaceInsight
    no_map = next(line for line in md.splitlines() if line.startswith("- **The parsing map helps.**"))
    assert "0.600 vs 0.550" in no_map and "**supported**" in no_map.split(";")[0]
    general = next(line for line in md.splitlines() if line.startswith("- **A general MLLM trails"))
    assert "attributes.mean_balanced_accuracy 0.600 vs 0.700" in general and "**contradicted**" in general
    assert "could not be read" not in general  # no unread counts given
    same = next(line for line in md.splitlines() if line.startswith("- **Knowledge keeps"))
    # no rules in the reference's metrics to recount on resampled faces: the rates are stated, not judged
    assert "Without the constraint loss the rate is 25.0%" in same and "not judged" in same
    results["expression"]["systems"]["variant_general"]["metrics"] = {"expression": {"faces": 10, "unread": 8}}
    general = next(line for line in results_markdown(results, {}, 0, None, (True, []), False).splitlines()
                   if line.startswith("- **A general MLLM trails"))
    assert "Up to 80% of its answers could not be read" in general
    assert "co-occurrence module helps" not in md  # that variant was not run: no sentence about it


def test_table_cells_carry_their_interval():
    from pipelines.evaluation.report import results_markdown

    results = evals()
    results["attributes"]["systems"]["faceinsight"]["intervals"] = {
        "mean_balanced_accuracy": {"value": 0.6, "low": 0.57, "high": 0.63}}
    row = next(line for line in results_markdown(results, {}, 0, None, (True, []), False).splitlines()
               if line.startswith("| FaceInsight (generated answers)"))
    assert "| 0.600 ±0.030 |" in row


def test_judge_champion_without_a_stage(tmp_path):
    """The registry gate as a function: no registered version, a passing version (moved), a worse one (kept)."""
    from mlflow import MlflowClient

    from pipelines.evaluation.champion import judge_champion
    from pipelines.evaluation.report import results_markdown, trained_on

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    cfg = ReportConfig(gate=GATE)
    moved, reasons, entry = judge_champion(evals(), cfg, tmp_path / "none.json", uri)
    assert not moved and entry is None and "no registered version" in reasons[0]
    registry = tmp_path / "registry.json"
    v1, r1 = _register(client, tmp_path, {"attributes.mean_balanced_accuracy": 0.6, "age_gender_race.age_mae": 8.0,
                                          "expression.uar": 0.3})
    registry.write_text(json.dumps({"version": v1, "run_id": r1}))
    moved, reasons, entry = judge_champion(evals(), cfg, registry, uri)
    assert moved and reasons == [] and entry["version"] == v1
    # what made the version travels to the report: the numbers differ between CPUs and dtypes
    assert entry["provenance"] == {"git.commit": "0123abcd" * 5, "git.dirty": "false", "host.cpu": "AMD EPYC",
                                   "host.cpu_bf16": "avx512_bf16", "host.gpu": "none", "train.dtype": "bf16"}
    md = results_markdown(evals(), {}, 0, {"version_uri": "models:/faceinsight/1", "run_id": r1} | entry,
                          (True, []), True)
    assert ("Trained from git `0123abc` on AMD EPYC (bf16 instructions: avx512_bf16; GPU: none), bf16."
            in md.split("Model: ")[1].splitlines()[0])
    assert "(uncommitted changes to the report's inputs: " in md
    assert trained_on({"git.commit": "0123abcd" * 5}) == " Trained from git `0123abc`."  # a run from before the tags
    assert trained_on({}) == ""
    assert client.get_model_version_by_alias("faceinsight", "champion").version == v1
    # the report rerun on the champion itself (registry.json names its version as a string, MLflow as an int): judged on
    # the thresholds alone, not refused for not beating itself
    registry.write_text(json.dumps({"version": str(v1), "run_id": r1}))
    again, reasons, _ = judge_champion(evals(), cfg, registry, uri)
    assert again and reasons == [], reasons
    v2, r2 = _register(client, tmp_path, {"attributes.mean_balanced_accuracy": 0.58, "age_gender_race.age_mae": 9.0,
                                          "expression.uar": 0.25})
    registry.write_text(json.dumps({"version": v2, "run_id": r2}))
    moved, reasons, _ = judge_champion(evals(bal=0.58, mae=9.0, uar=0.25), cfg, registry, uri)
    assert not moved and any("champion" in r for r in reasons)
    assert client.get_model_version_by_alias("faceinsight", "champion").version == v1


def test_read_evals_names_the_missing_stage_and_corpus_summary_reads_the_metrics(tmp_path):
    from pipelines.evaluation.report import corpus_summary, read_evals

    (tmp_path / "attributes.json").write_text(json.dumps({"task": "attributes"}))
    assert read_evals(tmp_path, ("attributes",)) == {"attributes": {"task": "attributes"}}
    with pytest.raises(FileNotFoundError, match=r"dvc repro evaluate@expression"):
        read_evals(tmp_path, ("attributes", "expression"))
    metrics = tmp_path / "corpus.json"
    assert corpus_summary(metrics) == {}
    metrics.write_text(json.dumps({"faces": {"rafdb": {"train": 5, "test": 2}}, "records_total": 40}))
    assert corpus_summary(metrics) == {"rafdb test": 2, "rafdb train": 5, "records": 40}


def test_ablations_are_judged_against_faceinsight_retrained_at_their_budget():
    from pipelines.evaluation.report import results_markdown

    results = evals()  # FaceInsight (full budget): attributes 0.6 balanced accuracy, 10% rule violations
    _faces(results, "attributes")
    _answers(results, "attributes", "faceinsight", 0.9, 1)
    for k, (name, label, bal, viol, right) in enumerate((
            ("reference", "FaceInsight at the ablation budget", 0.55, 0.2, 0.6),
            ("no_map", "FaceInsight without the parsing map", 0.5, 0.2, 0.3),
            ("no_constraints", "FaceInsight without the constraint loss", 0.55, 0.3, 0.6))):
        results["attributes"]["systems"][f"variant_{name}"] = {
            "label": label, "summary": {"mean_balanced_accuracy": bal, "rule_violation_rate": viol}}
        _answers(results, "attributes", f"variant_{name}", right, 10 + k)
    results["attributes"]["systems"]["variant_reference_head"] = {"label": "FaceInsight at the ablation budget"}
    md = results_markdown(results, {}, 0, None, (True, []), False)
    titles = [r.split(" | ")[0][2:] for r in md.split("## What")[0].splitlines() if r.startswith("| ")][2:]
    assert titles[2:] == ["FaceInsight at the ablation budget", "FaceInsight at the ablation budget (its heads)",
                          "FaceInsight without the constraint loss", "FaceInsight without the parsing map"]
    no_map = next(line for line in md.splitlines() if line.startswith("- **The parsing map helps.**"))
    # against the same-budget reference (0.55), not FaceInsight's full-budget 0.6
    assert "FaceInsight at the ablation budget against FaceInsight without the parsing map" in no_map
    assert "0.550 vs 0.500" in no_map
    same = next(line for line in md.splitlines() if line.startswith("- **Knowledge keeps"))
    assert "20.0% of test faces" in same and "(FaceInsight at the ablation budget)" in same
    assert "Without the constraint loss the rate is 30.0%" in same
    assert "at a smaller budget (params.yaml `ablation_budget`)" in md


def test_rows_that_do_not_beat_the_majority_are_named_with_why():
    from pipelines.evaluation.report import results_markdown

    results = evals()
    _faces(results, "attributes")
    _faces(results, "expression")
    results["attributes"]["systems"]["majority"]["predictions"] = {
        a: [0] * len(t) for a, t in results["attributes"]["truth"].items()}
    results["expression"]["systems"]["majority"]["predictions"] = {"expression": [3] * 300}
    for name, right in (("good", 0.9), ("chance", 0.5)):
        results["attributes"]["systems"][f"variant_{name}"] = {"label": f"Variant {name}", "summary": {
            "mean_balanced_accuracy": right, "rule_violation_rate": 0.1}}
        _answers(results, "attributes", f"variant_{name}", right, 3)
    # one expression word for every face: the majority's own level
    results["expression"]["systems"]["variant_chance"] = {"label": "Variant chance", "summary": {"uar": 0.143},
                                                          "predictions": {"expression": [3] * 300}}
    md = results_markdown(results, {}, 0, None, (True, []), False)
    below = md.split("## Rows that do not beat the majority class")[1].split("## Registry gate")[0]
    lines = [line for line in below.splitlines() if line.startswith("- ")]
    assert len(lines) == 2 and all(line.startswith("- Variant chance:") for line in lines), lines
    assert "attributes.mean_balanced_accuracy" in lines[0] and "no better than the class shares" in lines[0]
    assert "expression.uar" in lines[1] and "the same answer for every face" in lines[1]
    results["attributes"]["systems"]["variant_chance"]["metrics"] = {"faces": 300, "unread": 3000}
    md = results_markdown(results, {}, 0, None, (True, []), False)
    assert "25% of its answers could not be read" in md.split("## Rows that do not beat")[1]
    del results["attributes"]["systems"]["variant_chance"], results["expression"]["systems"]["variant_chance"]
    md = results_markdown(results, {}, 0, None, (True, []), False)
    assert "Every variant and the fine-tuned setting beat the majority class" in md


def _expression_result(right: float, seed: int, faces: str = "f") -> dict:
    """evaluate@expression's result for a FaceInsight right on a `right` share of 300 faces, its uar from them."""
    import numpy as np

    from pipelines.evaluation.uncertainty import METRICS, as_arrays

    results = {"expression": {"task": "expression", "split": "test", "faces": 300,
                              "face_keys": [f"{faces}{i}:0123456789ab" for i in range(300)],
                              "systems": {"faceinsight": {}, "majority": {"summary": {"uar": 1 / 7}}}}}
    _faces(results, "expression")
    _answers(results, "expression", "faceinsight", right, seed)
    e = results["expression"]
    uar = METRICS["expression.uar"](as_arrays(e["systems"]["faceinsight"]["predictions"]), as_arrays(e["truth"]),
                                    np.arange(300))
    e["systems"]["faceinsight"]["summary"] = {"uar": uar}
    return e


def test_the_champion_is_judged_by_the_paired_interval_over_the_same_faces(tmp_path):
    """evaluate logs FaceInsight's per-face answers on the version's run; the next version's gate pairs its own with
    them: a better point value inside the noise does not move `champion`, a resolved gain does; a champion evaluated
    on other faces is compared by point values, and the reason says so."""
    from mlflow import MlflowClient

    from pipelines.evaluation.champion import judge_champion
    from pipelines.tracking import log_eval_metrics

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    cfg = ReportConfig(gate={"expression.uar": 0.2})
    registry = tmp_path / "registry.json"

    def version(result: dict) -> tuple[bool, list[str], dict]:
        v, run_id = _register(client, tmp_path, {})
        registry.write_text(json.dumps({"version": v, "run_id": run_id}))
        assert log_eval_metrics("expression", result, registry, uri) == run_id
        return judge_champion({"expression": result}, cfg, registry, uri)

    moved, reasons, entry = version(_expression_result(0.60, seed=1))
    assert moved and "against_champion" not in entry  # nothing to beat
    first = client.get_model_version_by_alias("faceinsight", "champion").version
    # a higher point value within the noise of 300 faces: kept, with the interval that says why
    close = _expression_result(0.62, seed=2)
    moved, reasons, _ = version(close)
    assert not moved and client.get_model_version_by_alias("faceinsight", "champion").version == first
    assert len(reasons) == 1 and reasons[0].startswith(f"not resolved better than the current champion (version "
                                                       f"{first})") and "95% CI" in reasons[0], reasons
    # resolved better: moved, and the report shows the paired difference
    moved, reasons, entry = version(_expression_result(0.85, seed=3))
    assert moved and reasons == []
    assert entry["against_champion"]["version"] == str(first) and entry["against_champion"]["unpaired"] == ""
    assert "**supported**" in entry["against_champion"]["lines"][0]
    md = results_markdown_for(entry)
    assert f"beats the previous champion (version {first}), by the paired 95% interval" in md
    # evaluated on other faces: point values, named as such
    moved, reasons, _ = version(_expression_result(0.70, seed=4, faces="g"))
    assert not moved and "compared by point values: the champion was evaluated on other expression faces" in reasons[0]


def results_markdown_for(entry: dict) -> str:
    from pipelines.evaluation.report import results_markdown

    return results_markdown({"expression": _expression_result(0.85, seed=3)}, {}, 0,
                            {"version_uri": "models:/faceinsight/3"} | entry, (True, []), True)


def test_the_consistency_claim_is_judged_by_the_paired_interval():
    """The constraint loss keeps answers consistent: the no-constraint ablation's share of faces that break a rule
    against the reference's, recounted on the same resampled faces, so a gap inside the noise is not resolved."""
    import numpy as np

    from pipelines.evaluation.report import results_markdown

    n = 300
    rng = np.random.default_rng(3)
    few, many = rng.random(n) < 0.05, rng.random(n) < 0.4  # the faces whose answers say straight and wavy at once
    close = few.copy()
    close[np.flatnonzero(~few)[:2]] = True  # two faces more than `few`: inside the noise

    def claim(ref_broken: np.ndarray, ablated_broken: np.ndarray) -> str:
        results = evals()
        _faces(results, "attributes", n)
        for name, broken in (("reference", ref_broken), ("no_constraints", ablated_broken)):
            pred = {a: [0] * n for a in results["attributes"]["truth"]}
            pred["Straight_Hair"], pred["Wavy_Hair"] = [1] * n, broken.astype(int).tolist()
            results["attributes"]["systems"][f"variant_{name}"] = {
                "label": name, "predictions": pred,
                "summary": {"mean_balanced_accuracy": 0.6, "rule_violation_rate": float(broken.mean())},
                "metrics": {"rules": {"per_rule": [{"kind": "exclusion", "a": "Straight_Hair", "b": "Wavy_Hair"},
                                                   {"kind": "implication", "a": "Goatee", "b": "Male"}]}}}
        md = results_markdown(results, {}, 0, None, (True, []), False)
        return next(line for line in md.splitlines() if line.startswith("- **Knowledge keeps"))

    assert "that the constraint loss lowers it: **supported**" in claim(few, many)
    assert "that the constraint loss lowers it: **contradicted**" in claim(many, few)
    assert "that the constraint loss lowers it: **not resolved at this sample size**" in claim(few, close)
