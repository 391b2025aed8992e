import numpy as np
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


def test_overfits_a_few_faces_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = SpecialistCNN(SpecialistConfig(width=8))
    images = np.random.default_rng(0).integers(0, 255, (8, 64, 64, 3), np.uint8)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    y = labels(8, expression=list(range(7)) + [3], gender=[0, 1] * 4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss, _ = model.losses(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pred = model.predict(images)
    assert (pred["expression"] == y["expression"].numpy()).mean() == 1.0
    assert (pred["gender"] == y["gender"].numpy()).mean() == 1.0
    save_specialist(model, tmp_path / "s")
    again = load_specialist(tmp_path / "s").predict(images)
    assert all(np.array_equal(again[k], pred[k]) for k in pred)
