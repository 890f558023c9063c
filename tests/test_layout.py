"""The import path is the file path: every first-party import resolves in the checkout.

Checked statically, without importing or installing anything, the way an IDE,
pyright, mypy or ``git grep`` see the tree: ``streamcell.a.b`` must be the file
``ROOT/streamcell/a/b.py`` (or a package ``ROOT/streamcell/a/b/``) under exactly
one of the source roots that pyproject.toml names.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
REPO = Path(__file__).resolve().parents[1]


def source_roots() -> list[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    roots = config["tool"]["pytest"]["ini_options"]["pythonpath"]
    mypy_roots = config["tool"]["mypy"]["mypy_path"]
    pyright_roots = config["tool"]["pyright"]["extraPaths"]
    assert mypy_roots == pyright_roots == [r for r in roots if r != "tests"]
    return mypy_roots


def resolve(module: str) -> list[Path]:
    """Where ``module`` lives in the checkout (every root that has it)."""
    parts = module.split(".")
    found = []
    for root in source_roots():
        base = REPO / root / Path(*parts)
        if base.with_suffix(".py").is_file() or base.is_dir():
            found.append(base)
    return found


def first_party_imports() -> dict[str, set[str]]:
    """Modules named by import statements in the tree: module -> files naming it."""
    names: dict[str, set[str]] = {}
    files = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in files:
        tree = ast.parse((REPO / rel).read_text(), rel)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods = [node.module]
                # `from streamcell.core import state` names the module streamcell.core.state
                mods += [f"{node.module}.{a.name}" for a in node.names if resolve_quiet(node, a)]
            else:
                continue
            for mod in mods:
                if mod == "streamcell" or mod.startswith("streamcell."):
                    names.setdefault(mod, set()).add(rel)
    return names


def resolve_quiet(node: ast.ImportFrom, alias: ast.alias) -> bool:
    return bool(node.module and resolve(f"{node.module}.{alias.name}"))


def test_every_first_party_import_is_a_file_under_one_root() -> None:
    imports = first_party_imports()
    assert "streamcell.core.state" in imports  # the walk found the tree
    unresolved = {
        m: sorted(f)[:3] for m, f in imports.items() if m != "streamcell" and not resolve(m)
    }
    assert not unresolved, f"imports that are no file in the checkout: {unresolved}"
    ambiguous = {m: resolve(m) for m in imports if m != "streamcell" and len(resolve(m)) > 1}
    assert not ambiguous, f"modules found under more than one root: {ambiguous}"


def test_streamcell_is_a_namespace_package_in_every_root() -> None:
    for root in source_roots():
        package = REPO / root / "streamcell"
        assert package.is_dir(), f"{root}/ holds no streamcell/ folder"
        assert not (package / "__init__.py").exists(), f"{package} must stay a namespace"


@pytest.mark.skipif(sys.platform != "linux", reason="git grep path check is for Linux CI")
def test_git_grep_on_a_dotted_path_finds_its_file() -> None:
    """What a newcomer types: the module's dotted path, as a path, finds the file."""
    for module in ("streamcell.core.state", "streamcell.service.pipeline", "streamcell.cli"):
        path = module.replace(".", "/") + ".py"
        out = subprocess.run(
            ["git", "ls-files", f"*{path}"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.split()
        assert len(out) == 1, f"{path}: {out}"
