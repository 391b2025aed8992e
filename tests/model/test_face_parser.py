import json

import numpy as np
import pytest
import torch

from model.face_parser import CONFIG_FILE, WEIGHTS_FILE, FaceParser, FaceParserConfig, load_parser, save_parser


def test_shapes_and_parse():
    model = FaceParser(FaceParserConfig(image_size=32, base_channels=8, depth=2))
    logits = model(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 19, 32, 32)
    maps = model.parse(np.zeros((3, 32, 32, 3), dtype=np.uint8))
    assert maps.shape == (3, 32, 32) and maps.dtype == np.uint8 and maps.max() < 19


def test_save_load_round_trip_is_exact_and_pickle_free(tmp_path):
    torch.manual_seed(0)
    model = FaceParser(FaceParserConfig(image_size=32, base_channels=8, depth=2)).eval()
    save_parser(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["base_channels"] == 8
    head = (tmp_path / WEIGHTS_FILE).read_bytes()[:8]
    assert head[:2] != b"\x80\x04"  # not a pickle stream: safetensors starts with a header length
    loaded = load_parser(tmp_path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_missing_checkpoint_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc repro train_parser"):
        load_parser(tmp_path)


def test_config_validates():
    with pytest.raises(ValueError, match="divide by 2"):
        FaceParserConfig(image_size=30, depth=2)
    with pytest.raises(ValueError, match="groups"):
        FaceParserConfig(base_channels=10, groups=4)


def test_coordinate_channels_tell_the_left_half_from_the_right():
    """A blank face's left half is l_eye, its right half r_eye: only the position tells them apart, as for a
    mirror-augmented parser's two eyes. With the coordinate channels a few steps learn it."""
    torch.manual_seed(0)
    model = FaceParser(FaceParserConfig(image_size=32, base_channels=8, depth=2))
    target = torch.full((4, 32, 32), 4, dtype=torch.long)
    target[:, :, 16:] = 5
    images = torch.full((4, 3, 32, 32), 0.5)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(images), target).backward()
        opt.step()
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == target).float().mean().item()
    assert accuracy > 0.95


def test_a_parser_saved_before_the_coordinate_channels_loads_as_it_was(tmp_path):
    torch.manual_seed(0)
    model = FaceParser(FaceParserConfig(image_size=32, base_channels=8, depth=2, coord_channels=False)).eval()
    save_parser(model, tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    del config["coord_channels"]
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    loaded = load_parser(tmp_path)
    assert not loaded.cfg.coord_channels
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
