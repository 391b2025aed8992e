"""Answering questions about face images with a trained FaceInsight: what `faceinsight ask / describe / predict`
share. One code path for a checkpoint folder and a registry URI: the registry's pyfunc."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from model.labels import EXPRESSIONS, UTK_GENDERS, UTK_RACES
from pipelines.corpus.templates import Templates
from pipelines.evaluation.answers import parse_name, parse_number
from pipelines.storage import read_url
from pipelines.tracking import MODEL_NAME, tracking_uri

DEFAULT_MODEL = "models/faceinsight"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class NotAnImage(ValueError):
    """A path that is missing, empty or not an image a user handed us."""


def check_image(data: bytes, name: str) -> bytes:
    """The bytes if PIL reads them as an image; else NotAnImage naming the file and the fix."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise NotAnImage(f"{name}: the file is empty; give a JPEG or PNG face image")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.convert("RGB").load()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise NotAnImage(f"{name}: not an image PIL can read ({type(exc).__name__}); give a JPEG or PNG") from None
    return data


def read_image(path: Path) -> bytes:
    if not path.exists():
        raise NotAnImage(f"{path}: no such file")
    if path.is_dir():
        raise NotAnImage(f"{path}: a folder; `faceinsight predict` takes folders")
    return check_image(path.read_bytes(), str(path))


def resolve_model(model: str) -> str:
    """`auto`: the registry's champion if this tracking store has one, else the checkpoint `finetune` wrote."""
    if model != "auto":
        return model
    try:
        from mlflow import MlflowClient

        MlflowClient(tracking_uri()).get_model_version_by_alias(MODEL_NAME, "champion")
        return f"models:/{MODEL_NAME}@champion"
    except Exception:  # no store, no registered model or no champion alias: the local checkpoint
        return DEFAULT_MODEL


def load_predictor(model: str, parser: Path | None) -> Callable[[Any], Any]:
    """DataFrame(image bytes, question) -> DataFrame(answer[, attributes JSON])."""
    if model.startswith("models:/"):
        import mlflow

        mlflow.set_tracking_uri(tracking_uri())
        return mlflow.pyfunc.load_model(model).predict
    from model.face_parser import load_parser
    from model.faceinsight import FaceInsight
    from pipelines.registry import FaceInsightPyfunc

    if not Path(model, "faceinsight.json").exists():
        raise FileNotFoundError(f"{model}: no FaceInsight checkpoint; run `dvc repro finetune` or pass --model")
    pyfunc = FaceInsightPyfunc()
    pyfunc.model = FaceInsight.from_pretrained(model)
    pyfunc.parser = load_parser(parser) if parser is not None and pyfunc.model.seg_encoder is not None else None
    if pyfunc.model.seg_encoder is not None and pyfunc.parser is None:
        raise FileNotFoundError(f"{parser}: this model reads parsing maps and needs the face parser "
                                "(`dvc repro train_parser`, or --parser)")
    return lambda frame: pyfunc.predict(None, frame)


def describe_questions() -> dict[str, str]:
    """The corpus templates' own questions, so the model is asked what it was taught to answer."""
    d = Templates.load().data
    opened = d["demographics"]["open"]
    return {"description": d["description"]["q"][0], "age": opened["age"][0]["q"],
            "gender": opened["gender"][0]["q"], "race": opened["race"][0]["q"],
            "expression": d["expression"]["open"][0]["q"]}


def describe(predict: Callable[[Any], Any], images: list[bytes]) -> list[dict[str, Any]]:
    """Per image: the whole-face description, age, gender, race and expression (text and read value)."""
    import pandas as pd

    asked = describe_questions()
    frame = pd.DataFrame([{"image": img, "question": q} for img in images for q in asked.values()])
    out = predict(frame)
    answers = list(out["answer"])
    readers = {"age": parse_number, "gender": lambda t: parse_name(t, UTK_GENDERS),
               "race": lambda t: parse_name(t, UTK_RACES), "expression": lambda t: parse_name(t, EXPRESSIONS)}
    names = {"gender": UTK_GENDERS, "race": UTK_RACES, "expression": EXPRESSIONS}
    rows = []
    for k in range(len(images)):
        said = dict(zip(asked, answers[k * len(asked):(k + 1) * len(asked)], strict=True))
        row: dict[str, Any] = {"description": said["description"]}
        for key, read in readers.items():
            value = read(said[key])
            row[key] = value if key == "age" or value is None else names[key][value]
            row[f"{key}_answer"] = said[key]
        if "attributes" in out:
            row["attributes"] = out["attributes"][k * len(asked)]
        rows.append(row)
    return rows


class BatchDescriber:
    """A Ray Data actor: loads the model once, describes a batch of image files (unreadable ones get `error`)."""

    def __init__(self, model: str, parser: str | None):
        self.predict = load_predictor(model, Path(parser) if parser else None)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        good, rows = [], []
        for path in batch["path"]:
            try:
                good.append((path, check_image(read_url(path), path)))
                rows.append(None)
            except (NotAnImage, OSError) as exc:
                rows.append({"path": path, "error": str(exc)})
        described = iter(describe(self.predict, [data for _, data in good])) if good else iter(())
        paths = iter(path for path, _ in good)
        out = [row if row is not None else {"path": next(paths), "error": None, **next(described)} for row in rows]
        keys = ["path", "error", "description", "age", "age_answer", "gender", "gender_answer", "race", "race_answer",
                "expression", "expression_answer", "attributes"]
        return {k: [r.get(k) for r in out] for k in keys}
