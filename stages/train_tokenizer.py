"""DVC stage `train_tokenizer`: the tiny preset's byte-level BPE, trained on the corpus' train split.

    python -m stages.train_tokenizer [--params params.yaml]

Real presets use their LLM's own tokenizer; this one is what `tiny` trains with (models/tokenizer).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipelines.storage import write_json_atomic
from pipelines.tokenizer import TokenizerConfig, build_tokenizer
from stages.common import CorpusDir, ParamsFile, run_cli, stage, stage_config

app = typer.Typer(add_completion=False)


@app.command(help=__doc__)
@stage("train_tokenizer")
def main(
    params: ParamsFile = Path("params.yaml"),
    corpus: CorpusDir = Path("data/corpus"),
    out: Annotated[Path, typer.Option(help="The tokenizer folder (DVC out).")] = Path("models/tokenizer"),
    metrics: Annotated[Path, typer.Option(help="Vocabulary size and a round-trip check.")] = Path(
        "metrics/tokenizer.json"),
) -> None:
    cfg, _ = stage_config(TokenizerConfig, "tokenizer", params)
    result = build_tokenizer(corpus, cfg, out)
    if not result["round_trip"]:
        raise RuntimeError("the trained tokenizer does not decode corpus text back to itself")
    write_json_atomic(metrics, result)
    print(json.dumps(result))


if __name__ == "__main__":
    run_cli(app)
