"""dvc.yaml lists, for every stage, exactly the retino modules its script imports (transitively):
a module missing there would let DVC skip a stage whose code changed."""

import ast
import shlex
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    """retino.data.dataset -> retino/data/dataset.py; a package -> its __init__.py if that holds
    code (a docstring alone changes nothing a stage does); None for other libraries."""
    if name.split(".")[0] != "retino":
        return None
    path = ROOT.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    init = path / "__init__.py"
    if init.is_file() and not _docstring_only(init):
        return init
    return None


def _docstring_only(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside functions (`from a import b` may
    import the module a.b)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def closure(script: Path) -> set[str]:
    """The retino modules `script` runs, as paths relative to the project root."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        for name in imported_modules(todo.pop()):
            path = module_file(name)
            if path is not None and path not in seen:
                seen.add(path)
                todo.append(path)
    return {str(p.relative_to(ROOT)) for p in seen}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_are_its_import_closure(stage):
    spec = STAGES[stage]
    script = next(arg for arg in shlex.split(spec["cmd"]) if arg.startswith("stages/"))
    deps = set(spec["deps"])
    assert script in deps
    listed = {d for d in deps if d.startswith("retino/")}
    expected = closure(ROOT / script)
    assert listed == expected, (
        f"dvc.yaml stage {stage!r}: add {sorted(expected - listed)}, "
        f"remove {sorted(listed - expected)}"
    )
