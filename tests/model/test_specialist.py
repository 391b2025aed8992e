import numpy as np
import pytest
import torch

from model.specialist import SpecialistCNN, SpecialistConfig, load_specialist, save_specialist


def labels(n: int, **known) -> dict[str, torch.Tensor]:
    out = {"attributes": torch.full((n, 40), -1), **{k: torch.full((n,), -1) for k in ("age", "gender", "race",
                                                                                        "expression")}}
    out.update({k: torch.as_tensor(v) for k, v in known.items()})
    return out


def test_losses_only_where_labels_exist():
    torch.manual_seed(0)
    model = SpecialistCNN(SpecialistConfig(width=8))
    images = torch.rand(4, 3, 64, 64)
    _, terms = model.losses(model(images), labels(4, expression=[0, 3, -1, 6]))
    assert set(terms) == {"loss_expression"}
    loss, terms = model.losses(model(images), labels(4, age=[30, -1, 5, 70], gender=[0, 1, -1, -1]))
    assert set(terms) == {"loss_age", "loss_gender"}
    loss.backward()
    assert model.heads["age"].weight.grad.abs().sum() > 0 and model.heads["race"].weight.grad is None


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_overfits_a_few_faces_and_round_trips(tmp_path, norm):
    torch.manual_seed(0)
    model = SpecialistCNN(SpecialistConfig(width=8, norm=norm))
    images = np.random.default_rng(0).integers(0, 255, (8, 64, 64, 3), np.uint8)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    y = labels(8, expression=list(range(7)) + [3], gender=[0, 1] * 4, age=[2, 9, 21, 30, 44, 58, 76, 110])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(200):
        loss, _ = model.losses(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pred = model.predict(images)
    assert (pred["expression"] == y["expression"].numpy()).mean() == 1.0
    assert (pred["gender"] == y["gender"].numpy()).mean() == 1.0
    # age in one-year classes, the last one 99 and over: the median class lands on each face's year; at the ends the
    # soft target (sigma 3 years) is cut off on one side, so its median sits a little inside
    err = np.abs(pred["age"] - np.minimum(y["age"].numpy(), 99))
    assert err[1:-1].max() <= 1 and err[[0, -1]].max() <= 3, pred["age"]
    save_specialist(model, tmp_path / "s")
    again = load_specialist(tmp_path / "s").predict(images)
    assert all(np.array_equal(again[k], pred[k]) for k in pred)


def _rare_set(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Faces whose attribute 4 (Bald) is a bright square, positive on 5% of them; every other attribute -1-free 0."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 120, (n, 32, 32, 3)).astype(np.uint8)
    attrs = np.zeros((n, 40), np.int64)
    attrs[:, 4] = rng.random(n) < 0.05
    images[attrs[:, 4] == 1, 8:24, 8:24] = 250
    return torch.from_numpy(images), torch.from_numpy(attrs)


def _train(images: torch.Tensor, attrs: torch.Tensor, weights) -> SpecialistCNN:
    torch.manual_seed(0)
    # GroupNorm, the slower learner: at 60 steps plain BCE still says "no" to the rare attribute, the collapse that
    # pos_weight and val thresholds are for (BatchNorm learns this bright square in 60 steps either way)
    model = SpecialistCNN(SpecialistConfig(image_size=32, width=8, norm="group"))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = images.permute(0, 3, 1, 2).float() / 255.0
    for step in range(60):
        idx = torch.arange(step * 32, step * 32 + 32) % len(x)
        loss, _ = model.losses(model(x[idx]), labels(32, attributes=attrs[idx]), weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def test_a_rare_attribute_is_learned_with_pos_weight_where_plain_bce_says_no():
    images, attrs = _rare_set(400, 0)
    weights = SpecialistCNN.balance_weights(labels(400, attributes=attrs))
    ratio = float((attrs[:, 4] == 0).sum() / attrs[:, 4].sum())  # negatives per positive, clipped at 20
    assert abs(float(weights["attributes"][4]) - min(ratio, 20.0)) < 1e-4 and float(weights["attributes"][0]) == 1.0
    test_images, test_attrs = _rare_set(400, 1)

    def balanced(model: SpecialistCNN) -> float:
        pred = model.predict(test_images.numpy())["attributes"][:, 4]
        truth = test_attrs[:, 4].numpy()
        return 0.5 * ((pred[truth == 1] == 1).mean() + (pred[truth == 0] == 0).mean())

    plain = _train(images, attrs, None)
    assert plain.predict(test_images.numpy())["attributes"][:, 4].sum() == 0  # all "no": balanced accuracy 0.5
    assert balanced(plain) == 0.5
    assert balanced(_train(images, attrs, weights)) > 0.9


def test_val_thresholds_are_saved_with_the_weights(tmp_path):
    images, attrs = _rare_set(400, 2)
    model = _train(images, attrs, None)  # unweighted: its 0 threshold misses the rare positives

    def balanced() -> float:
        pred = model.predict(images.numpy())["attributes"][:, 4]
        truth = attrs[:, 4].numpy()
        return 0.5 * ((pred[truth == 1] == 1).mean() + (pred[truth == 0] == 0).mean())

    before = balanced()
    chosen = model.fit_thresholds(images.numpy(), attrs.numpy())
    assert (chosen[:4] == 0).all() and chosen[4] < 0  # no positives: 0 kept; the rare one: a lower bar
    assert before == 0.5 and balanced() > 0.65  # the same logits, a better bar
    save_specialist(model, tmp_path / "m")
    assert torch.equal(load_specialist(tmp_path / "m").attribute_threshold, model.attribute_threshold)


def test_the_config_names_its_normalisation():
    with pytest.raises(ValueError, match="norm must be group or batch"):
        SpecialistConfig(norm="layer")
    norms = {type(m) for m in SpecialistCNN(SpecialistConfig(width=8, norm="group")).modules()}
    assert torch.nn.GroupNorm in norms and torch.nn.BatchNorm2d not in norms


def test_the_attribute_weight_scales_the_attribute_term_alone():
    torch.manual_seed(0)
    model = SpecialistCNN(SpecialistConfig(width=8)).eval()  # BatchNorm's running statistics: one output for both
    out = model(torch.rand(4, 3, 64, 64))
    y = labels(4, attributes=torch.randint(0, 2, (4, 40)), age=[30, -1, 5, 70])
    one, plain = model.losses(out, y)
    ten, weighted = model.losses(out, y, attribute_weight=10.0)
    assert weighted["loss_attributes"] == pytest.approx(10 * plain["loss_attributes"])
    assert weighted["loss_age"] == plain["loss_age"]
    assert float(ten - one) == pytest.approx(9 * plain["loss_attributes"], rel=1e-5)
