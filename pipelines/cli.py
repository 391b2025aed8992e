"""`faceinsight`: ask the trained model about face images.

    faceinsight ask IMAGE "Is this person smiling?" [--model auto] [--parser models/parser] [--json]
    faceinsight describe IMAGE [--json]
    faceinsight predict INPUT_DIR_OR_S3_PREFIX OUT.parquet [--workers 2]

--model: `auto` (the default) takes the registry's `champion` if the tracking store has one, else the
checkpoint `finetune` wrote (models/faceinsight); or name a checkpoint folder or a registry URI
(`models:/faceinsight@candidate`, `models:/faceinsight/3`). The parsing map is made by the face parser,
never taken from ground truth. Any RGB image PIL reads works (any size, JPEG or PNG).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer

from model.labels import CELEBA_ATTRIBUTES
from pipelines.inference import IMAGE_SUFFIXES, BatchDescriber, NotAnImage, load_predictor, read_image, resolve_model
from pipelines.inference import describe as run_describe
from pipelines.ray_runtime import init_ray
from pipelines.storage import Store, atomic_path

app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)

ModelOption = Annotated[str, typer.Option(help="auto, a checkpoint folder, or a models:/ URI.")]
ParserOption = Annotated[Path, typer.Option(help="The face parser (train_parser's output), for checkpoint folders.")]


@app.callback()
def main() -> None:
    """FaceInsight from the command line."""
    _quiet_libraries()


def _quiet_libraries() -> None:
    """The libraries' advice to their developers (transformers' and peft's deprecations) is not the user's.
    MLflow's type-hint advice still shows: these filters do not reach it (its source is not found yet)."""
    for module in ("mlflow", "transformers", "peft"):
        warnings.filterwarnings("ignore", category=UserWarning, module=module)
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)


def _fail(message: str) -> None:
    print(f"faceinsight: {message}", file=sys.stderr)
    raise typer.Exit(1)


def _predictor(model: str, parser: Path):
    try:
        return load_predictor(resolve_model(model), parser)
    except FileNotFoundError as exc:
        _fail(str(exc))


def _image(path: Path) -> bytes:
    try:
        return read_image(path)
    except NotAnImage as exc:
        _fail(str(exc))


@app.command()
def ask(
    image: Annotated[Path, typer.Argument(help="A face image (JPEG, PNG, any size).")],
    question: Annotated[str, typer.Argument(help="The question, e.g. 'Is this person wearing glasses?'")],
    model: ModelOption = "auto",
    parser: ParserOption = Path("models/parser"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON with the 40 attribute probabilities.")] = False,
) -> None:
    """Answer one question about one image."""
    import pandas as pd

    data = _image(image)
    out = _predictor(model, parser)(pd.DataFrame({"image": [data], "question": [question]}))
    answer = out["answer"][0]
    attributes = None
    if "attributes" in out:
        probs = json.loads(out["attributes"][0])
        attributes = {n: round(float(v), 4) for n, v in zip(CELEBA_ATTRIBUTES, probs, strict=True)}
    if as_json:
        print(json.dumps({"question": question, "answer": answer, "attributes": attributes}))
    else:
        print(answer)


@app.command()
def describe(
    image: Annotated[Path, typer.Argument(help="A face image (JPEG, PNG, any size).")],
    model: ModelOption = "auto",
    parser: ParserOption = Path("models/parser"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (answers and the values read from them).")
                       ] = False,
) -> None:
    """The whole-face description, plus age, gender, race and expression."""
    row = run_describe(_predictor(model, parser), [_image(image)])[0]
    if as_json:
        print(json.dumps({k: v for k, v in row.items() if k != "attributes"}))
        return
    print(row["description"])
    for key in ("age", "gender", "race", "expression"):
        shown = row[key] if row[key] is not None else f"(unclear: {row[f'{key}_answer']!r})"
        print(f"{key:>10}: {shown}")


@app.command()
def predict(
    source: Annotated[str, typer.Argument(help="A folder or s3:// prefix of face images (searched recursively).")],
    out: Annotated[Path, typer.Argument(help="The Parquet file to write (one row per image).")],
    model: ModelOption = "auto",
    parser: ParserOption = Path("models/parser"),
    workers: Annotated[int, typer.Option(min=1, help="Model replicas (Ray actors), each with the model loaded once.")
                       ] = 2,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch an actor describes.")] = 16,
) -> None:
    """Describe every image under SOURCE with Ray Data; unreadable files get a row with `error`, none is lost."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    store = Store(source if "://" in source else str(Path(source).resolve()))  # Ray workers run elsewhere
    if not store.exists():
        _fail(f"{source}: no such folder or prefix")
    paths = sorted(f.path for rel, f in store.list().items() if rel.lower().endswith(IMAGE_SUFFIXES))
    if not paths:
        _fail(f"{source}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    resolved = resolve_model(model)
    local = not resolved.startswith("models:/")
    init_ray()
    ds = ray.data.from_items([{"path": p} for p in paths]).map_batches(
        BatchDescriber, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=min(workers, len(paths))),
        fn_constructor_kwargs={"model": str(Path(resolved).resolve()) if local else resolved,
                               "parser": str(parser.resolve()) if local else None})
    table = pa.Table.from_pylist(list(ds.iter_rows()))
    with atomic_path(out) as tmp:
        pq.write_table(table.sort_by("path"), tmp)
    errors = sum(e is not None for e in table.column("error").to_pylist())
    print(f"{len(paths)} images -> {out} ({errors} unreadable, listed with their error)")


if __name__ == "__main__":
    app()
