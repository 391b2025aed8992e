"""`faceinsight`: ask the trained model about a face image.

    faceinsight ask IMAGE "Is this person smiling?" [--model models/faceinsight] [--parser models/parser] [--json]

The model is a checkpoint folder (`models/faceinsight`, what `finetune` writes) or a registry URI
(`models:/faceinsight@candidate`, loaded through MLflow). The parsing map is made by the face parser,
never taken from ground truth.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

app = typer.Typer(add_completion=False, help=__doc__)


@app.callback()
def main() -> None:
    """FaceInsight from the command line (more commands come with the evaluation stages)."""


def _image(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    if not path.exists():
        raise typer.BadParameter(f"{path}: no such image")
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR))


@app.command()
def ask(
    image: Annotated[Path, typer.Argument(help="A face image (any format PIL reads).")],
    question: Annotated[str, typer.Argument(help="The question, e.g. 'Is this person wearing glasses?'")],
    model: Annotated[str, typer.Option(help="Checkpoint folder or models:/ URI.")] = "models/faceinsight",
    parser: Annotated[Path, typer.Option(help="The face parser (train_parser's output).")] = Path("models/parser"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON with the 40 attribute probabilities.")] = False,
) -> None:
    """Answer one question about one image."""
    if model.startswith("models:/"):
        import mlflow
        import pandas as pd

        from pipelines.tracking import tracking_uri

        mlflow.set_tracking_uri(tracking_uri())
        out = mlflow.pyfunc.load_model(model).predict(pd.DataFrame({"image": [image.read_bytes()],
                                                                    "question": [question]}))
        answer = out["answer"][0]
        attributes = json.loads(out["attributes"][0]) if "attributes" in out else None
    else:
        import torch

        from model.face_parser import load_parser
        from model.faceinsight import FaceInsight
        from model.labels import CELEBA_ATTRIBUTES

        m = FaceInsight.from_pretrained(model)
        pixels = _image(image, m.cfg.vision.image_size)[None]
        maps = None
        if m.seg_encoder is not None:
            p = load_parser(parser)
            maps = torch.as_tensor(p.parse(_image(image, p.cfg.image_size)[None]))
        answer = m.answer(pixels, maps, [question])[0]
        attributes = None
        if m.cooccurrence is not None:
            probs = m.attribute_probabilities(m.preprocess(pixels), maps)[0]
            attributes = {n: round(float(v), 4) for n, v in zip(CELEBA_ATTRIBUTES, probs, strict=True)}
    if as_json:
        print(json.dumps({"question": question, "answer": answer, "attributes": attributes}))
    else:
        print(answer)


if __name__ == "__main__":
    app()
