import numpy as np
import pytest

from model.labels import ATTRIBUTE_INDEX
from pipelines.evaluation.evaluate import specialist_predictions
from pipelines.specialist_training import SpecialistTrainConfig, train_specialist

pytestmark = pytest.mark.slow


def test_specialist_learns_on_the_shared_loop(ray_local, corpus, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from model.specialist import SpecialistConfig
    from pipelines.corpus.reader import load_faces

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = SpecialistTrainConfig(model=SpecialistConfig(image_size=32, width=8), max_steps=40, batch_size=16,
                                warmup_steps=5, checkpoint_every=20, torch_threads=1)
    result = train_specialist(corpus["root"], cfg, 0, tmp_path / "specialist", str(tmp_path / "ray"))
    assert result["steps"] == 40 and result["train_faces"] == 48
    assert result["final_loss"] < result["first_loss"]
    # Smiling is the image's brightness in this corpus: the CNN must read it off
    faces = load_faces(corpus["root"], "train", "attributes")
    pred = specialist_predictions(tmp_path / "specialist", faces, "attributes")["Smiling"]
    truth = np.array([f["labels"]["attributes"][ATTRIBUTE_INDEX["Smiling"]] for f in faces])
    assert (pred == truth).mean() > 0.9
    run = MlflowClient(uri).get_run(result["mlflow_run_id"])
    assert run.data.tags["dvc.stage"] == "train_specialist" and "loss/attributes" in run.data.metrics


def test_the_attribute_weight_must_be_positive():
    import pytest

    with pytest.raises(ValueError, match="attribute_weight must be > 0"):
        SpecialistTrainConfig(attribute_weight=0.0)
