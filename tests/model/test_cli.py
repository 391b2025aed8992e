"""`faceinsight ask / describe / predict` through the CLI's own entry (typer's runner, in this process), and once as a
user runs it: a real process whose exit status and stderr a shell sees."""

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from model.config import RECIPES
from model.face_parser import FaceParser, FaceParserConfig, save_parser
from model.faceinsight import FaceInsight
from tests.model.conftest import SMALL


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer, knowledge):
    """A checkpoint, a (random) parser and a few images of several sizes and formats."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    FaceInsight(SMALL, tokenizer, knowledge).save_pretrained(root / "model", RECIPES["full"])
    save_parser(FaceParser(FaceParserConfig(image_size=32, depth=2)), root / "parser")
    faces = root / "faces"
    (faces / "more").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), np.uint8)).save(faces / "a.png")
    Image.fromarray(rng.integers(0, 255, (120, 90, 3), np.uint8)).save(faces / "more" / "b.jpg")
    Image.fromarray(rng.integers(0, 255, (64, 64), np.uint8)).save(faces / "c.png")  # greyscale: made RGB
    (faces / "broken.jpg").write_bytes(b"not a jpeg at all")
    (faces / "notes.txt").write_text("not an image file name: skipped")
    return root


def run(*args: str):
    """The CLI in this process (an interpreter start and the torch import saved per call); exit_code, stdout, stderr
    as a shell would see them apart."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    return CliRunner().invoke(app, list(args))


def test_ask_answers_with_attribute_probabilities(saved):
    done = run("ask", str(saved / "faces" / "a.png"), "Is this person smiling?", "--model", str(saved / "model"),
               "--parser", str(saved / "parser"), "--json")
    assert done.exit_code == 0, done.output[-2000:]
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert said["question"] == "Is this person smiling?" and isinstance(said["answer"], str)
    assert len(said["attributes"]) == 40 and all(0 <= v <= 1 for v in said["attributes"].values())


@pytest.mark.parametrize("name, content, message", [
    ("missing.png", None, "no such file"), ("empty.png", b"", "empty"), ("text.png", b"hello", "not an image"),
])
def test_bad_images_get_one_line_errors(saved, tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    args = ("ask", str(path), "Is this person smiling?", "--model", str(saved / "model"), "--parser",
            str(saved / "parser"))
    if name == "missing.png":  # once as a real process: the status and the one stderr line a shell gets
        done = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                              timeout=300)
        status, stderr = done.returncode, done.stderr
    else:
        done = run(*args)
        status, stderr = done.exit_code, done.stderr
    assert status == 1 and message in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1


def test_describe_reads_every_field(saved):
    done = run("describe", str(saved / "faces" / "more" / "b.jpg"), "--model", str(saved / "model"), "--parser",
               str(saved / "parser"), "--json")
    assert done.exit_code == 0, done.output[-2000:]
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(row) >= {"description", "age", "gender", "race", "expression", "age_answer", "gender_answer"}
    assert row["gender"] in (None, "male", "female") and (row["age"] is None or isinstance(row["age"], int))


def test_predict_over_a_folder_keeps_every_image(saved, ray_local, tmp_path):
    out = tmp_path / "pred.parquet"
    result = run("predict", str(saved / "faces"), str(out), "--model", str(saved / "model"), "--parser",
                 str(saved / "parser"), "--workers", "1", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out).to_pylist()
    assert [r["path"].split("faces/")[1] for r in rows] == ["a.png", "broken.jpg", "c.png", "more/b.jpg"]
    broken = rows[1]
    assert broken["error"] and "not an image" in broken["error"] and broken["description"] is None
    assert all(r["error"] is None and isinstance(r["description"], str) for r in rows if r is not broken)
    assert len(json.loads(rows[0]["attributes"])) == 40
    assert "4 images" in result.output and "1 unreadable" in result.output
