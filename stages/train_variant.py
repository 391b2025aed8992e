"""DVC stage `train_variant@<name>`: a baseline or an ablation, trained as FaceInsight is (align, then
finetune, the same sections of params.yaml) with the one change params.yaml `variants.<name>` names, for the
step counts of params.yaml `ablation_budget` where it gives them; the default variants:

    reference        FaceInsight itself at the ablation budget (the row the others are judged against)
    general          the general MLLM: the same architecture on the same images, captions (record kind
                     `description`), questions about the photo (`generic`) and face questions about someone
                     described in words (`text_qa`: answer forms without faces), no parsing map, no
                     co-occurrence head, no constraint loss
    no_map           FaceInsight without the parsing map
    no_cooccurrence  without the co-occurrence module (and so without the constraint loss it feeds)
    no_constraints   without the constraint loss

    python -m stages.train_variant --variant no_map [--params params.yaml]

Writes models/variants/<name>/{align,model}; evaluate@<task> asks models/variants/<name>/model the same
questions as FaceInsight and the report puts it in a row of its own. Ray Train as in align/finetune.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.config import load_params
from pipelines.training.stage import print_summary, storage_path, train_variant
from stages.common import CorpusDir, KnowledgeFile, ParamsFile, Storage, TokenizerDir, run_cli, stage

app = typer.Typer(add_completion=False)


@app.command(help=__doc__)
@stage("train_variant@{variant}")
def main(
    variant: Annotated[str, typer.Option(help="A name in params.yaml `variants`.")],
    params: ParamsFile = Path("params.yaml"),
    corpus: CorpusDir = Path("data/corpus"),
    tokenizer: TokenizerDir = Path("models/tokenizer"),
    knowledge: KnowledgeFile = Path("data/knowledge/knowledge.json"),
    out: Annotated[Path, typer.Option(help="Default models/variants/<name> (DVC out).")] = None,
    metrics: Annotated[Path, typer.Option(help="Default metrics/train_variant/<name>.json.")] = None,
    history: Annotated[Path, typer.Option(help="Default plots/train/variant_<name>.json.")] = None,
    storage: Storage = "runs/ray",
) -> None:
    result = train_variant(variant, load_params(params), corpus, tokenizer, knowledge,
                           out or Path("models/variants") / variant,
                           metrics or Path("metrics/train_variant") / f"{variant}.json",
                           history or Path("plots/train") / f"variant_{variant}.json", storage_path(storage))
    print_summary({"variant": variant, "align_final_loss": result["align"]["final_loss"],
                   "finetune_final_loss": result["finetune"]["final_loss"]})


if __name__ == "__main__":
    run_cli(app)
