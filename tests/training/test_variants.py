"""train_variant: a baseline / ablation trained as FaceInsight is (align, then finetune) with one change."""

from __future__ import annotations

import json

import pytest

from pipelines.training.stage import train_variant
from pipelines.training.variants import ablation_budget, trained_variants, variant_configs
from tests.model.conftest import SMALL

PASS = {"max_steps": 6, "batch_size": 8, "lr": 0.005, "warmup_steps": 1, "max_tokens": 160, "checkpoint_every": 6,
        "torch_threads": 1}


def params(variants: dict) -> dict:
    model = SMALL.to_dict()
    return {"seed": 0, "model": model, "align": {"recipe": "full", **PASS},
            "finetune": {"recipe": "finetune", **PASS, "max_steps": 3, "checkpoint_every": 3}, "variants": variants}


def test_variant_configs_refuse_a_bad_override():
    with pytest.raises(ValueError, match="variants.bad.model"):
        variant_configs(params({"bad": {"label": "x", "model": {"use_seg_mapp": False}}}))
    with pytest.raises(ValueError, match="label"):
        variant_configs(params({"blank": {"label": " "}}))


def test_the_ablation_budget_changes_step_counts_only():
    assert ablation_budget({}) == {"align": {}, "finetune": {}}  # absent: the variants train as FaceInsight does
    budget = {"align": {"visual_steps": 10, "max_steps": 4}, "finetune": {"max_steps": 2}}
    assert ablation_budget({"ablation_budget": budget}) == budget
    with pytest.raises(ValueError, match="ablation_budget.align: lr would change how the variants train"):
        ablation_budget({"ablation_budget": {"align": {"lr": 0.1}}})
    with pytest.raises(ValueError, match="under align / finetune"):
        ablation_budget({"ablation_budget": {"finetune_task": {"max_steps": 2}}})
    with pytest.raises(ValueError, match=r"ablation_budget.align: give step counts by name .* got 300"):
        ablation_budget({"ablation_budget": {"align": 300}})
    # a smaller budget without FaceInsight retrained at it would leave the ablations nothing fair to be judged by
    with pytest.raises(ValueError, match="keep the `reference` variant"):
        variant_configs({**params({"no_map": {"label": "x"}}), "ablation_budget": budget})
    listed = {**params({"no_map": {"label": "x"}, "reference": {"label": "y"}}), "ablation_budget": budget}
    assert set(variant_configs(listed)) == {"no_map", "reference"}


def test_trained_variants_finds_each_model_or_names_the_stage_to_run(tmp_path):
    listed = params({"no_map": {"label": "without the map", "model": {"use_seg_map": False}}})
    with pytest.raises(FileNotFoundError, match=r"dvc repro train_variant@no_map"):
        trained_variants(listed, tmp_path)
    (tmp_path / "no_map" / "model").mkdir(parents=True)
    assert trained_variants(listed, tmp_path) == {"no_map": ("without the map", tmp_path / "no_map" / "model")}


@pytest.mark.slow
def test_a_variant_trains_both_passes_with_its_change(ray_local, corpus, tmp_path, monkeypatch):
    from model.faceinsight import FaceInsight

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    p = params({"no_map": {"label": "No map", "model": {"use_seg_map": False}, "kinds": ["yes_no"]},
                "broken": {"label": "Broken", "kinds": ["captions"]}, "reference": {"label": "Reference"}})
    p["ablation_budget"] = {"align": {"max_steps": 5}, "finetune": {"max_steps": 2}}  # fewer steps than align's 6
    out = tmp_path / "variants" / "no_map"
    result = train_variant("no_map", p, corpus["root"], corpus["tokenizer"], corpus["knowledge_file"], out,
                           tmp_path / "m.json", tmp_path / "curve.json", str(tmp_path / "ray"))
    assert result["align"]["steps"] == 5 and result["finetune"]["steps"] == 2
    curve = json.loads((tmp_path / "curve.json").read_text())
    assert [h["step"] for h in curve] == list(range(1, 8))  # one curve across both passes
    assert [h["pass"] for h in curve] == ["align"] * 5 + ["finetune"] * 2
    model = FaceInsight.from_pretrained(out / "model")
    assert not model.cfg.use_seg_map and model.seg_encoder is None  # the variant's change
    assert FaceInsight.from_pretrained(out / "align").seg_encoder is None
    assert json.loads((tmp_path / "m.json").read_text())["label"] == "No map"

    # a variant that cannot train leaves no folder behind and says what is wrong
    with pytest.raises(ValueError, match="train.kinds"):
        train_variant("broken", p, corpus["root"], corpus["tokenizer"], corpus["knowledge_file"],
                      tmp_path / "variants" / "broken", tmp_path / "b.json", tmp_path / "b_curve.json",
                      str(tmp_path / "ray"))
    assert not (tmp_path / "variants" / "broken").exists() and not (tmp_path / "b.json").exists()
    with pytest.raises(ValueError, match="not in params.yaml"):
        train_variant("missing", p, corpus["root"], corpus["tokenizer"], corpus["knowledge_file"], out,
                      tmp_path / "x.json", tmp_path / "x_curve.json", str(tmp_path / "ray"))
