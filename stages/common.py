"""What every stage shares: reading its params section and reporting failures as one clear line."""

from __future__ import annotations

import atexit
import functools
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

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


def run_cli(app: typer.Typer) -> NoReturn:
    """A stage process's entry point: the command, then its exit without the interpreter's teardown.

    A stage that imported torch, transformers, MLflow and Ray spends ~1.8 s of CPU at exit tearing their modules
    down one object at a time (benchmarks/RESULTS.md), on every stage of every run; nothing in that teardown is
    output. What an exit must still do is done first: every exit hook (Ray's stop, logging's flush, ours), then
    the standard streams. Where a thread of ours is still working, or the exit carries a message rather than a
    code, Python's own exit runs instead, as it would without this."""
    try:
        app()  # typer (click) ends with SystemExit carrying the command's exit code
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    if code is None:
        code = 0
    if not isinstance(code, int) or _threads_still_working() or not hasattr(atexit, "_run_exitfuncs"):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _threads_still_working() -> bool:
    """A thread Python's exit would wait for (non-daemon, alive): its work must end as it would have."""
    return any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.current_thread())
