import numpy as np
import pytest
import torch

from pipelines.parser_training import ParserTrainConfig, confusion_matrix, segmentation_scores
from pipelines.training.schedule import lr_at


def test_confusion_and_scores_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 2, 0, 1]])
    c = confusion_matrix(pred, target, 4).numpy()
    assert c.tolist() == [[1, 1, 0, 0], [0, 3, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    s = segmentation_scores(c)
    # IoU: class0 1/(1+1+1)=1/3, class1 3/(3+1)=3/4, class2 2/(2+1)=2/3; class 3 absent, not averaged
    assert s["miou"] == pytest.approx(np.mean([1 / 3, 3 / 4, 2 / 3]))
    assert s["pixel_accuracy"] == pytest.approx(6 / 8)
    assert s["f1"]["0"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1)) and s["iou"]["3"] is None


def test_lr_warms_up_then_decays():
    lrs = [lr_at(s, 100, 10, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False)) and lrs[-1] > 0.05


def test_config_validates():
    with pytest.raises(ValueError, match="divide by num_workers"):
        ParserTrainConfig(batch_size=33, num_workers=2)


def test_soft_dice_is_near_zero_when_right_and_pushes_towards_the_truth():
    from pipelines.parser_training import soft_dice_loss

    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, 1:3, 1:3] = 2
    right = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 20
    assert soft_dice_loss(right, labels).item() < 0.01
    logits = torch.zeros(1, 3, 4, 4, requires_grad=True)
    soft_dice_loss(logits, labels).backward()
    # raising class 2's logit where class 2 is true lowers the loss
    assert logits.grad[0, 2, 1, 1] < 0 and logits.grad[0, 2, 0, 0] > 0


@pytest.mark.slow
def test_parser_learns_with_ray_train_and_logs_to_mlflow(synthetic_roots, ray_local, tmp_path, monkeypatch):
    import mlflow

    from model.face_parser import FaceParserConfig, load_parser
    from pipelines.datasets.celebamask_hq import read_celebamask_hq
    from pipelines.parser_training import train_parser

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    records = read_celebamask_hq(str(synthetic_roots["celebamask_hq"])).records
    cfg = ParserTrainConfig(parser=FaceParserConfig(image_size=64, base_channels=8), epochs=16, batch_size=16,
                            lr=0.01, warmup_steps=10, min_val_miou=0.0)
    result = train_parser(records, cfg, seed=0, out_dir=tmp_path / "parser", storage_path=str(tmp_path / "ray"))
    # an untrained parser scores ~0.01 mIoU; ~160 steps on 160 faces reach 0.14-0.2 (by augmentation draw)
    assert result["val_miou"] > 0.1 and result["val_pixel_accuracy"] > 0.8
    assert set(result["val_f1"]) >= {"skin", "hair", "l_eye", "r_eye"}
    parser = load_parser(tmp_path / "parser")
    assert parser.cfg.base_channels == 8
    mlflow.set_tracking_uri(uri)
    found = mlflow.search_runs(experiment_names=["faceinsight"], output_format="list")
    runs = [r for r in found if "dvc.stage" in r.data.tags]
    [parent] = [r for r in found if "pipeline.commit" in r.data.tags]  # the pipeline's run, per commit
    assert len(runs) == 1 and runs[0].data.tags["dvc.stage"] == "train_parser"
    assert runs[0].data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert runs[0].data.metrics["test_miou"] == pytest.approx(result["test_miou"])
    assert runs[0].data.params["train_parser.epochs"] == "16"
