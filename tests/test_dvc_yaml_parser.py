"""DVC reads dvc.yaml, dvc.lock and params.yaml through libyaml's parser (issue 17 §5: a no-op `make run`).

A repro parses them several times; libyaml cut a no-op repro from 6.7-6.8 s to 6.1 s (RESULTS.md, thirtieth pass).
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_dvc_parses_yaml_with_libyaml():
    from ruamel.yaml import YAML

    # DVC's parse_yaml asks for YAML(typ="safe"); ruamel falls back to its pure-Python parser without the C one
    assert YAML(typ="safe").Parser.__name__ == "CParser", "pip install ruamel.yaml.clib (pyproject.toml has it)"


@pytest.mark.parametrize("name", ["dvc.yaml", "dvc.lock", "params.yaml"])
def test_libyaml_reads_the_pipeline_files_as_the_pure_parser_does(name):
    from dvc.utils.serialize._yaml import parse_yaml
    from ruamel.yaml import YAML

    text = (ROOT / name).read_text()
    assert parse_yaml(text, name) == YAML(typ="safe", pure=True).load(text)
