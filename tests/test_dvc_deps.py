"""dvc.yaml: every stage's deps cover the code it runs, so an edit to that code makes the stage stale.

The closure is computed from the source (AST), following the project's own imports, function-local ones
included, from the stage module its `cmd` runs. A folder dep covers every file under it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "pipelines", "stages")


def module_file(name: str) -> Path | None:
    """model.config -> model/config.py (or a package's __init__.py); None for anything not ours."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def imports_of(path: Path) -> set[Path]:
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            for k in range(1, len(parts) + 1):  # a.b.c imports the packages a and a.b too
                target = module_file(".".join(parts[:k]))
                if target is not None:
                    found.add(target)
    return found


def closure(start: Path) -> set[Path]:
    seen, todo = set(), [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo += imports_of(path) - seen
    return seen


def stages() -> dict[str, tuple[str, list[str]]]:
    """stage name -> (the stage module its cmd runs, its deps)."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in spec.items():
        body = stage.get("do", stage)
        found = re.search(r"python -m ([\w.]+)", body["cmd"])
        assert found, f"dvc.yaml stage {name}: cmd does not run a module: {body['cmd']}"
        out[name] = (found.group(1), [d if isinstance(d, str) else next(iter(d)) for d in body.get("deps", [])])
    return out


def data_files_of(path: Path) -> set[Path]:
    """Files a module reads beside itself, `Path(__file__).with_name("templates.yaml")`: a stage depends on them too."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "with_name"
                and isinstance(node.func.value, ast.Call) and node.func.value.args
                and isinstance(node.func.value.args[0], ast.Name) and node.func.value.args[0].id == "__file__"
                and node.args and isinstance(node.args[0], ast.Constant)):
            found.add(path.with_name(node.args[0].value))
    return found


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


def test_every_stage_lists_the_code_it_imports():
    missing = {}
    for name, (module, deps) in stages().items():
        start = module_file(module)
        assert start is not None, f"dvc.yaml stage {name}: no module {module}"
        code = closure(start)
        needed = code | {f for p in code for f in data_files_of(p)}
        gaps = sorted(p.relative_to(ROOT).as_posix() for p in needed
                      if p.name != "__init__.py" and not covered(p, deps))
        if gaps:
            missing[name] = gaps
    assert not missing, "dvc.yaml deps miss modules their stage imports (add them to the stage's deps):\n" + "\n".join(
        f"  {name}: {', '.join(gaps)}" for name, gaps in missing.items())


def test_a_data_file_a_module_reads_beside_itself_is_a_dep():
    # the corpus' question templates: build_corpus must rerun when they change, not only evaluate
    assert data_files_of(ROOT / "pipelines/corpus/templates.py") == {ROOT / "pipelines/corpus/templates.yaml"}


def test_the_closure_follows_function_local_imports(tmp_path):
    # an import inside a function (kept where it defers a heavy package) is a dependency all the same
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from model.faceinsight import FaceInsight\n    return FaceInsight\n")
    assert imports_of(module) == {ROOT / "model" / "__init__.py", ROOT / "model" / "faceinsight.py"}


def test_no_stage_lists_code_it_does_not_import():
    """The other direction: a module a stage never imports is not its dep, nor inside a folder dep of our packages,
    so an edit to the renderer, or the specialist's network, does not make align (two hours) stale."""
    extra = {}
    for name, (module, deps) in stages().items():
        reached = {p.relative_to(ROOT).as_posix() for p in closure(module_file(module))}
        unused = sorted(d for d in deps if d.endswith(".py") and d not in reached)
        unused += sorted(f"{rel} (in {d}/)" for d in deps if d.split("/")[0] in PACKAGES and (ROOT / d).is_dir()
                         for rel in (f.relative_to(ROOT).as_posix() for f in (ROOT / d).rglob("*.py"))
                         if not rel.endswith("__init__.py") and rel not in reached)
        if unused:
            extra[name] = unused
    assert not extra, "dvc.yaml deps name modules their stage never imports (remove them):\n" + "\n".join(
        f"  {name}: {', '.join(unused)}" for name, unused in extra.items())

