"""The import rules of docs/architecture.md, read from the source with ``ast`` (nothing is
imported): a module imports only recede packages of its own layer or a lower one, and no
library module (layers 0–3) imports argparse or yaml.

One module below the front-ends reads YAML: :mod:`recede.config`, the run layer's one reader
and writer of YAML (a results folder's ``config.yaml``, presets), under its size and nesting
limits (:data:`YAML_READER`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS: dict[str, int] = {
    # 0: the core and plain helpers: no recede import above them
    "core": 0,
    "keywords": 0,
    "_environment": 0,
    # 1: algorithms on the core: BP-modified, measurement and the time model, horizon selection, theory
    "bpm": 1,
    "measure": 1,
    "horizon": 1,
    "theory": 1,
    # 2: what is trained: model families, datasets, wrapping, methods by name
    "models": 2,
    "data": 2,
    "wrap": 2,
    "methods": 2,
    # 3: the run layer: training loops, results folders, processes
    "runs": 3,
    "parallel": 3,
    # 4: front-ends: the command line and its configuration files, paper reproductions,
    # other frameworks' integrations, and the package's own namespace (recede.MPC, ...)
    "config": 3,
    "cli": 4,
    "reproduce": 4,
    "integrations": 4,
    "__main__": 4,
    "__init__": 4,
}
LIBRARY = 3
"""Layers 0..LIBRARY are library code: no argparse, no yaml."""
COMMAND_LINE = {"argparse", "yaml"}

YAML_READER = "recede.config"
"""The one library module that may import yaml (it applies the limits every YAML value gets)."""


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "recede").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _layer(module: str) -> int:
    """The layer of ``recede.X...`` by X (the package's own ``recede`` namespace is layer 4)."""
    parts = module.split(".")
    return LAYERS["__init__" if len(parts) == 1 else parts[1]]


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (lazy imports too): recede
    modules by name (``from recede import data`` is ``recede.data``; a name of the package's
    own namespace, ``from recede import __version__``, is ``recede`` and not checked), others
    by top-level name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; recede uses absolute imports"
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names
            ]
        else:
            continue
        for name in names:
            found.add(name if name.startswith("recede") else name.split(".")[0])
    return found


def violations() -> set[tuple[str, str]]:
    """(module, import) for every import the rules forbid."""
    modules = _modules()
    out = set()
    for module, path in modules.items():
        layer = _layer(module)
        for name in _imports(path, modules):
            if name.startswith("recede."):
                if _layer(name) > layer:
                    out.add((module, ".".join(name.split(".")[:2])))
            elif name in COMMAND_LINE and layer <= LIBRARY and (module, name) != (YAML_READER, "yaml"):
                out.add((module, name))
    return out


def test_every_package_has_a_layer():
    """A new package must be placed in docs/architecture.md's layers (and here) first."""
    unplaced = sorted({m.split(".")[1] for m in _modules() if "." in m} - set(LAYERS))
    assert not unplaced, f"give {unplaced} a layer in LAYERS and in docs/architecture.md"


def test_imports_follow_the_layers():
    new = sorted(violations())
    assert not new, "imports against docs/architecture.md's layers:\n" + "\n".join(f"  {m} imports {i}" for m, i in new)


def test_the_core_imports_nothing_above_it():
    """Stated on its own: core imports no recede package but core (so the engine, blocks and
    BP-modified's inputs never depend on the run layer, the CLI or the reproductions)."""
    modules = _modules()
    for module in (m for m in modules if m.startswith("recede.core")):
        above = {
            n for n in _imports(modules[module], modules) if n.startswith("recede.") and not n.startswith("recede.core")
        }
        assert not above, f"{module} imports {sorted(above)}"


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import argparse\n", {("recede.core.x", "argparse")}),
        ("def f():\n    import yaml\n", {("recede.core.x", "yaml")}),
        ("from recede.runs import train\n", {("recede.core.x", "recede.runs")}),
        ("from recede import methods\n", {("recede.core.x", "recede.methods")}),
        ("from recede.core.blocks import BlockNet\nimport torch\n", set()),
    ],
)
def test_the_checker_catches_a_forbidden_import(tmp_path, monkeypatch, source, expected):
    """The checker itself: a core module with each kind of forbidden import is reported."""
    fake = tmp_path / "recede" / "core"
    fake.mkdir(parents=True)
    (fake / "x.py").write_text(source)
    for name in ("runs/train.py", "methods.py", "core/blocks.py"):
        (tmp_path / "recede" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "recede" / name).write_text("")
    monkeypatch.setitem(globals(), "SRC", tmp_path)
    assert violations() == expected
