"""
The layout tells the architecture (docs/ARCHITECTURE.md): every module is
listed there in one line and nothing listed is missing, no module is over
500 lines, and imports flow one way between the layers.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "maxq"
MAX_LINES = 500
# Files the table describes: code and the data shipped beside it.
DESCRIBED = ("*.py", "*.sh", "*.json")

# A layer may not import these (the left of the arrow never sees the right).
FORBIDDEN = {
    "maxq/store/": ("maxq.engine", "maxq.api", "maxq.scheduler", "maxq.service",
                    "maxq.cluster", "maxq.launch", "maxq.drain", "maxq.cli"),
    "maxq/engine/": ("maxq.api", "maxq.scheduler", "maxq.service", "maxq.cluster",
                     "maxq.launch", "maxq.drain", "maxq.cli", "maxq.store.sqlite",
                     "maxq.store.postgres", "twisted.web", "klein"),
    "maxq/model.py": ("maxq.engine", "maxq.store", "twisted", "klein"),
    "maxq/api/": ("maxq.scheduler", "maxq.service", "maxq.store.sqlite",
                  "maxq.store.postgres"),
    "maxq/ui/": ("maxq.scheduler", "maxq.service", "maxq.store", "maxq.cli"),
    "maxq/ui/layout.py": ("maxq.engine", "maxq.store", "maxq.api", "twisted", "klein"),
}


def _modules() -> list[str]:
    found = set()
    for pattern in DESCRIBED:
        found.update(str(p.relative_to(ROOT)) for p in PACKAGE.rglob(pattern))
    return sorted(found)


def _described() -> list[str]:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    return re.findall(r"^\| `(maxq/[^`]+)` \|", text, re.M)


def test_every_module_is_described_once_and_nothing_else():
    described = _described()
    assert len(described) == len(set(described)), "a module is described twice"
    assert sorted(described) == _modules()


@pytest.mark.parametrize("module", [m for m in _modules() if m.endswith(".py")])
def test_no_module_is_over_the_line_limit(module):
    lines = (ROOT / module).read_text().count("\n")
    assert lines <= MAX_LINES, f"{module} has {lines} lines"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_imports_flow_one_way(layer):
    paths = ([ROOT / layer] if layer.endswith(".py")
             else sorted((ROOT / layer).rglob("*.py")))
    wrong = [(str(p.relative_to(ROOT)), name) for p in paths for name in _imports(p)
             if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[layer])]
    assert wrong == []


def test_the_import_check_sees_a_wrong_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from maxq.api.app import Api\nimport maxq.scheduler\n")
    assert {"maxq.api.app", "maxq.scheduler"} <= _imports(bad)
