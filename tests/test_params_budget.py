"""params.yaml: the specialist CNN is a same-steps baseline, so its budget follows FaceInsight's."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_the_specialist_trains_as_many_steps_as_faceinsight_at_the_same_batch():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    align, finetune, specialist = params["align"], params["finetune"], params["train_specialist"]
    faceinsight_steps = align.get("visual_steps", 0) + align["max_steps"] + finetune["max_steps"]
    assert specialist["max_steps"] == faceinsight_steps, (
        f"train_specialist.max_steps {specialist['max_steps']} != align.visual_steps + align.max_steps + "
        f"finetune.max_steps = {faceinsight_steps}: the baseline must get the steps FaceInsight gets")
    assert specialist["batch_size"] == align["batch_size"] == finetune["batch_size"]
