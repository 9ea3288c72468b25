"""Every README code block marked ``<!-- test: NAME -->`` runs as written.

To add an example, put the marker on the line before its ```python fence; it is collected here
under NAME.  A block that imports a library this environment lacks is skipped, naming it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARKED = re.compile(r"<!-- test: (?P<name>[\w.-]+) -->\s*\n```python\n(?P<code>.*?)\n```", re.S)


def examples() -> dict[str, str]:
    """NAME → code of each marked block, in README order."""
    found = [(m["name"], m["code"]) for m in MARKED.finditer(README.read_text())]
    names = [name for name, _ in found]
    assert len(set(names)) == len(names), f"README example names repeat: {names}"
    return dict(found)


def test_readme_has_marked_examples():
    assert {"torchvision-resnet18", "timm-vit", "gpt2-lora"} <= set(examples())


@pytest.mark.parametrize("name", list(examples()))
def test_readme_example_runs(name):
    code = compile(examples()[name], f"README.md[{name}]", "exec")
    try:
        exec(code, {"__name__": f"readme_{name}"})
    except ModuleNotFoundError as err:
        if (err.name or "recede").split(".")[0] == "recede":
            raise
        pytest.skip(f"README example {name} needs {err.name}")
