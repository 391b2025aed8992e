"""What every stage shares: reading its params section and reporting failures as one clear line."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from pipelines.config import build, load_params
from pipelines.ray_runtime import stop_without_waiting_at_exit

T = TypeVar("T")

# the options several stages take, said once (each stage's default path is the DVC layout's)
ParamsFile = Annotated[Path, typer.Option("--params", help="The params file (params.yaml: this stage's section).")]
CorpusDir = Annotated[Path, typer.Option("--corpus", help="The corpus (build_corpus).")]
KnowledgeFile = Annotated[Path, typer.Option("--knowledge", help="knowledge.json (mine_knowledge).")]
RegistryFile = Annotated[Path, typer.Option("--registry", help="The registered version (finetune).")]
TokenizerDir = Annotated[Path, typer.Option("--tokenizer", help="The tiny preset's tokenizer (train_tokenizer).")]
Storage = Annotated[str, typer.Option("--storage", help="Ray Train run storage (a path or s3:// URL).")]


def stage_config(cls: type[T], section: str, params_path: Path) -> tuple[T, dict[str, Any]]:
    """The typed config of one params.yaml section, and the whole params mapping."""
    params = load_params(params_path)
    return build(cls, params.get(section), section), params


def present(path: Path) -> Path | None:
    """An optional input: the path where it exists (a stage that made it ran), else None."""
    return path if path.exists() else None


def stage(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A stage's command, run by run_stage under `name`, formatted with its options ("evaluate@{task}")."""
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)  # typer reads the options from the wrapped signature
        def command(**options: Any) -> Any:
            return run_stage(name.format(**options), lambda: fn(**options))
        return command
    return wrap


def run_stage(name: str, fn: Callable[[], Any]) -> Any:
    """Run a stage body; a known failure becomes a one-paragraph message and exit code 1."""
    logging.basicConfig(level=logging.INFO, format=f"[{name}] %(message)s")
    try:
        result = fn()
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"\n[{name}] FAILED: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    stop_without_waiting_at_exit()  # it finished: no late error message to wait for
    return result
