"""evaluate@<task>: every system on the task's test faces (parser-made maps): metrics, plots, MLflow.

Systems: the majority class, the specialist CNN, FaceInsight (training-free and fine-tuned on the task), every
variant in params.yaml `variants` (train_variant@<name>) and any Hugging Face model in `evaluate.hf_models`.
Writes metrics/eval/<task>.json (headline numbers, DVC metrics), reports/eval/<task>.json (everything) and
plots/eval/<task>/; the numbers also go to the registered version's MLflow run (registry/faceinsight.json).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipelines.evaluation.evaluate import TASKS, EvalConfig, evaluate_task
from pipelines.evaluation.plots import write_task_plots
from pipelines.storage import atomic_dir, write_json_atomic
from pipelines.tracking import log_eval_metrics, tracking_uri
from pipelines.training.variants import trained_variants
from stages.common import CorpusDir, KnowledgeFile, ParamsFile, RegistryFile, present, run_cli, stage, stage_config

app = typer.Typer(add_completion=False)


@app.command(help=__doc__)
@stage("evaluate@{task}")
def main(
    task: Annotated[str, typer.Option(help=f"One of {', '.join(TASKS)}.")],
    params: ParamsFile = Path("params.yaml"),
    corpus: CorpusDir = Path("data/corpus"),
    model: Annotated[Path, typer.Option(help="The trained model (finetune).")] = Path("models/faceinsight"),
    specialist: Annotated[Path, typer.Option(help="The specialist (train_specialist).")] = Path("models/specialist"),
    tuned: Annotated[Path, typer.Option(help="The task's fine-tuned model [models/finetune_task/<task>]")] = None,
    variants: Annotated[Path, typer.Option(help="train_variant's models (<name>/model).")] = Path("models/variants"),
    knowledge: KnowledgeFile = Path("data/knowledge/knowledge.json"),
    registry: RegistryFile = Path("registry/faceinsight.json"),
    out: Annotated[Path, typer.Option(help="Where metrics/, reports/ and plots/ go.")] = Path("."),
) -> None:
    if task not in TASKS:
        raise ValueError(f"--task must be one of {TASKS}, got {task!r}")
    cfg, all_params = stage_config(EvalConfig, "evaluate", params)
    tuned_dir = tuned or Path("models/finetune_task") / task
    result = evaluate_task(task, corpus, model, json.loads(knowledge.read_text()), cfg, present(specialist),
                           present(tuned_dir), trained_variants(all_params, variants))
    result["mlflow_run_id"] = log_eval_metrics(task, result, registry, tracking_uri())
    with atomic_dir(out / "plots/eval" / task) as folder:
        write_task_plots(result, folder)
    write_json_atomic(out / "reports/eval" / f"{task}.json", result)
    headline = {"task": task, "split": result["split"], "faces": result["faces"],
                **{name: s["summary"] for name, s in result["systems"].items()}}
    write_json_atomic(out / "metrics/eval" / f"{task}.json", headline)
    print(json.dumps(headline))


if __name__ == "__main__":
    run_cli(app)
