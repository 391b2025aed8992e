"""Function-local imports of the project's own modules exist only to defer a heavy dependency's import.

An import inside a function hides a dependency from the reader and from `farm-studio look` (two import cycles
hid behind them once). One is allowed where it buys start-up time: the imported module pulls a heavy package
(torch, transformers, mlflow, ray, ...) at import, directly or through the project's own top-level imports,
and the importing module does not pull it already. Every other one belongs at the top of the file.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

from tests.test_dvc_deps import PACKAGES, ROOT, module_file

# what takes a second or more to import, or is an optional extra (numpy, pyarrow, PIL, yaml: a fraction of one)
HEAVY = {"torch", "transformers", "tokenizers", "safetensors", "peft", "deepspeed", "mlflow", "ray", "matplotlib",
         "scipy", "sklearn", "pandas", "boto3", "botocore", "s3fs", "moto"}


def top_level_imports(path: Path) -> set[str]:
    """Modules imported at module level (not inside a function), by full dotted name."""
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names if module_file(f"{node.module}.{a.name}")}
    return out


@cache
def heavy_at_import(name: str) -> frozenset[str]:
    """The heavy packages importing project module `name` loads."""
    path = module_file(name)
    if path is None:
        return frozenset()
    found: set[str] = set()
    for imported in top_level_imports(path):
        root = imported.split(".")[0]
        if root in HEAVY:
            found.add(root)
        elif root in PACKAGES and imported != name:
            found |= heavy_at_import(imported)
    return frozenset(found)


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def test_function_local_project_imports_only_defer_a_heavy_dependency():
    offenders = set()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            own = heavy_at_import(module_name(path))
            tree = ast.parse(path.read_text())
            for func in ast.walk(tree):
                if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for node in ast.walk(func):
                    if not (isinstance(node, ast.ImportFrom) and node.module
                            and node.module.split(".")[0] in PACKAGES):
                        continue
                    deferred = heavy_at_import(node.module) - own
                    if not deferred:
                        offenders.add(f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module} inside a "
                                      "function but defers no heavy package: move it to the top")
    assert not offenders, "\n".join(sorted(offenders))
