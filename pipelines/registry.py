"""FaceInsight in MLflow's model registry: a pyfunc that rebuilds the model through `model/`.

Input: a DataFrame with `image` (PNG/JPEG bytes), `question`, and optionally `seg_map` (PNG bytes of a
19-class map; without it the checkpoint's bundled parser, when given, or an empty map is used).
Output: `answer` and, where the model has the attribute head, `attributes` (40 probabilities).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from pipelines.images import decode_image
from pipelines.tracking import MODEL_NAME


class FaceInsightPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from model.faceinsight import FaceInsight

        self.model = FaceInsight.from_pretrained(context.artifacts["checkpoint"])
        parser = context.artifacts.get("parser")
        self.parser = None
        if parser:
            from model.face_parser import load_parser

            self.parser = load_parser(parser)

    # a DataFrame hint: MLflow then neither validates the input nor warns "Add type hints" on every import
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        import torch

        m = self.model
        size, seg_size = m.cfg.vision.image_size, m.cfg.seg.image_size
        images = np.stack([decode_image(b, size) for b in model_input["image"]])
        maps = None
        if m.seg_encoder is not None:
            if "seg_map" in model_input and model_input["seg_map"].notna().all():
                maps = np.stack([decode_image(b, seg_size, "L") for b in model_input["seg_map"]])
            elif self.parser is not None:
                side = self.parser.cfg.image_size
                small = np.stack([decode_image(b, side) for b in model_input["image"]])
                maps = self.parser.parse(small)
            else:
                maps = np.zeros((len(images), seg_size, seg_size), np.uint8)
            maps = torch.as_tensor(maps)
        answers = m.answer(images, maps, list(model_input["question"]),
                           max_new_tokens=int((params or {}).get("max_new_tokens", 48)))
        out = pd.DataFrame({"answer": answers})
        if m.cooccurrence is not None:
            probs = m.attribute_probabilities(m.preprocess(images), maps)
            out["attributes"] = [json.dumps([round(float(p), 4) for p in row]) for row in probs]
        return out


# what the served model imports to load and answer, stated: MLflow would otherwise infer it by loading the model in
# a subprocess (seconds on every registration) and its guess left out torch, the model's own framework
SERVING_PACKAGES = ("mlflow", "cloudpickle", "numpy", "pandas", "pillow", "torch", "safetensors", "tokenizers",
                    "transformers", "peft")


def serving_requirements() -> list[str]:
    """SERVING_PACKAGES pinned at this environment's versions, a local build tag (torch's `+cpu`) dropped: the
    serving machine installs the build for its own hardware."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in SERVING_PACKAGES]


def register(checkpoint: Path, run_id: str, tracking_uri: str, parser: Path | None = None,
             alias: str = "candidate") -> dict[str, Any]:
    """Log the checkpoint as a pyfunc model in `run_id`, register a new version, point `alias` at it."""
    import model as model_package

    mlflow.set_tracking_uri(tracking_uri)
    artifacts = {"checkpoint": str(checkpoint)} | ({"parser": str(parser)} if parser else {})
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(name="faceinsight", python_model=FaceInsightPyfunc(), artifacts=artifacts,
                                       code_paths=[str(Path(model_package.__file__).parent)],
                                       pip_requirements=serving_requirements(),
                                       registered_model_name=MODEL_NAME)
    version = str(info.registered_model_version)
    client = MlflowClient(tracking_uri)
    client.set_registered_model_alias(MODEL_NAME, alias, version)
    return {"name": MODEL_NAME, "version": version, "alias": alias, "uri": f"models:/{MODEL_NAME}@{alias}",
            "version_uri": f"models:/{MODEL_NAME}/{version}", "run_id": run_id, "model_uri": info.model_uri}
