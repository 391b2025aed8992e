"""evaluate@<task>: every system on the task's test faces (parser-made maps): metrics, plots, MLflow.

Systems: the majority class, the specialist CNN, FaceInsight (training-free and fine-tuned on the task),
every variant in params.yaml `variants` (the general MLLM and the ablations, train_variant@<name>), and
any Hugging Face model in `evaluate.hf_models`.

Writes metrics/eval/<task>.json (the headline numbers per system, DVC metrics), reports/eval/<task>.json
(everything: per attribute / class, rule violations, confusion matrices, example answers), and
plots/eval/<task>/ (balanced accuracy per attribute, confusion matrices: PNG and CSV). The numbers also go
to MLflow, on the run of the registered model version that registry/faceinsight.json names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.evaluation.evaluate import TASKS, EvalConfig, evaluate_task
from pipelines.evaluation.plots import attribute_bars, confusion_png, confusion_rows
from pipelines.storage import atomic_dir, write_json_atomic
from pipelines.tracking import tracking_uri
from pipelines.training.variants import variant_configs
from stages.common import run_stage, stage_config

app = typer.Typer(add_completion=False)


def write_plots(result: dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    systems = result["systems"]
    if result["task"] == "attributes":
        attribute_bars(systems, folder / "balanced_accuracy.png")
        return
    best = "faceinsight" if "faceinsight" in systems else next(iter(systems))
    for target, metrics in systems[best]["metrics"].items():
        if "confusion" in metrics:
            confusion_png(metrics["confusion"], f"{target} ({best})", folder / f"{target}_confusion.png")
            confusion_rows(metrics["confusion"], folder / f"{target}_confusion.csv")


def log_to_mlflow(task: str, result: dict[str, Any], registry: Path) -> str | None:
    """The headline numbers on the registered version's run (eval.<task>.<system>.<metric>)."""
    if not registry.exists():
        return None
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric


    run_id = json.loads(registry.read_text())["run_id"]
    now = int(time.time() * 1000)
    metrics = [Metric(f"eval.{task}.{system}.{key}", float(value), now, 0)
               for system, s in result["systems"].items() for key, value in s["summary"].items() if value is not None]
    # the 95% bootstrap interval beside each number it was computed for
    metrics += [Metric(f"eval.{task}.{system}.{key}.ci95_{end}", float(ci[end]), now, 0)
                for system, s in result["systems"].items() for key, ci in s.get("intervals", {}).items()
                for end in ("low", "high") if ci[end] == ci[end]]
    client = MlflowClient(tracking_uri())
    try:
        client.get_run(run_id)
    except Exception as exc:  # a registry entry from another machine's store: say so, do not fail the stage
        print(f"[evaluate] MLflow run {run_id} of {registry} is not in this tracking store ({type(exc).__name__}); "
              "metrics not logged there")
        return None
    client.log_batch(run_id, metrics=metrics)
    return run_id


def variant_models(params: dict[str, Any], folder: Path) -> dict[str, tuple[str, Path]]:
    """name -> (label, model folder) of every variant params.yaml lists; each must have been trained."""
    out = {}
    for name, variant in variant_configs(params).items():
        model_dir = folder / name / "model"
        if not model_dir.exists():
            raise FileNotFoundError(f"{model_dir}: variant {name!r} is not trained; run `dvc repro "
                                    f"train_variant@{name}` (or remove it from params.yaml `variants`)")
        out[name] = (variant.label, model_dir)
    return out


@app.command(help=__doc__)
def main(
    task: Annotated[str, typer.Option(help=f"One of {', '.join(TASKS)}.")],
    params: Annotated[Path, typer.Option(help="The params file (section `evaluate`).")] = Path("params.yaml"),
    corpus: Annotated[Path, typer.Option(help="The corpus (build_corpus).")] = Path("data/corpus"),
    model: Annotated[Path, typer.Option(help="The trained model (finetune).")] = Path("models/faceinsight"),
    specialist: Annotated[Path, typer.Option(help="The specialist CNN baseline (train_specialist).")] = Path(
        "models/specialist"),
    tuned: Annotated[Path, typer.Option(help="The task's fine-tuned model; default models/finetune_task/<task>")
                     ] = None,
    variants: Annotated[Path, typer.Option(help="train_variant's models (<name>/model), one row each.")] = Path(
        "models/variants"),
    knowledge: Annotated[Path, typer.Option(help="Mined rules (mine_knowledge).")] = Path(
        "data/knowledge/knowledge.json"),
    registry: Annotated[Path, typer.Option(help="The registered version (finetune).")] = Path(
        "registry/faceinsight.json"),
    metrics: Annotated[Path, typer.Option(help="Headline numbers (DVC metric); default metrics/eval/<task>.json")
                       ] = None,
    report: Annotated[Path, typer.Option(help="All numbers; default reports/eval/<task>.json")] = None,
    plots: Annotated[Path, typer.Option(help="Plot folder; default plots/eval/<task>")] = None,
) -> None:
    def body() -> None:
        if task not in TASKS:
            raise ValueError(f"--task must be one of {TASKS}, got {task!r}")
        cfg, all_params = stage_config(EvalConfig, "evaluate", params)
        tuned_dir = tuned or Path("models/finetune_task") / task
        result = evaluate_task(task, corpus, model, json.loads(knowledge.read_text()), cfg,
                               specialist if specialist.exists() else None, tuned_dir if tuned_dir.exists() else None,
                               variant_models(all_params, variants))
        result["mlflow_run_id"] = log_to_mlflow(task, result, registry)
        with atomic_dir(plots or Path("plots/eval") / task) as folder:
            write_plots(result, folder)
        write_json_atomic(report or Path("reports/eval") / f"{task}.json", result)
        headline = {"task": task, "split": result["split"], "faces": result["faces"],
                    **{name: s["summary"] for name, s in result["systems"].items()}}
        write_json_atomic(metrics or Path("metrics/eval") / f"{task}.json", headline)
        print(json.dumps(headline))

    run_stage(f"evaluate@{task}", body)


if __name__ == "__main__":
    app()
