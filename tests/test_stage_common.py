"""stages/common.py: the `stage` decorator runs a command's body under its stage name and turns a known
failure into one line and exit code 1; the shared options keep their names."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from stages.common import ParamsFile, stage


def test_stage_names_the_failing_stage_with_its_options_and_exits_1():
    app = typer.Typer(add_completion=False)

    @app.command()
    @stage("evaluate@{task}")
    def main(task: str = typer.Option(...), params: ParamsFile = Path("params.yaml")) -> None:
        if task == "bad":
            raise ValueError(f"{params}: no such section")
        print(f"ran {task} with {params}")

    runner = CliRunner()
    ok = runner.invoke(app, ["--task", "attributes", "--params", "p.yaml"])
    assert ok.exit_code == 0 and "ran attributes with p.yaml" in ok.output
    failed = runner.invoke(app, ["--task", "bad"])
    assert failed.exit_code == 1
    assert "[evaluate@bad] FAILED: params.yaml: no such section" in failed.output + (failed.stderr or "")
