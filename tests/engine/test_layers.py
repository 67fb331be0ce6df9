"""The front ends ask services, never the catalog beneath them.

Every module of the console/CLI (``sendense_tui``) and the HTTP API (``sendense_api``)
is parsed with ``ast``: an import of ``engine.catalog`` (the tables, the stores, the
SQL) or an attribute access ending in ``_store`` (``engine.job_store``...) is a front
end reaching past the services, and fails here with its file and line. Record types
and state vocabularies come from ``engine.views``; data a screen needs and no service
gives is a small service method.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
FRONT_ENDS = ("sendense_tui", "sendense_api")

#: modules allowed past the services, and why
EXEMPT = {
    # the demo's seed writes history no operator action can make (jobs that ran last
    # week, failed copy attempts, old capacity samples) straight into a demo catalog
    "sendense_tui/demo.py",
}


def _violations(source: str, filename: str) -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.Attribute) and node.attr.endswith("_store"):
            found.append(f"{filename}:{node.lineno}: .{node.attr}")
            continue
        else:
            continue
        for name in names:
            if name == "engine.catalog" or name.startswith("engine.catalog."):
                found.append(f"{filename}:{node.lineno}: import {name}")
    return found


def _front_end_modules() -> list[Path]:
    return sorted(p for d in FRONT_ENDS for p in (REPO_ROOT / d).rglob("*.py"))


def test_front_ends_reach_the_engine_through_services_only() -> None:
    modules = _front_end_modules()
    assert len(modules) > 40  # the walk found the front ends
    found: list[str] = []
    for path in modules:
        name = path.relative_to(REPO_ROOT).as_posix()
        if name not in EXEMPT:
            found += _violations(path.read_text(), name)
    assert found == [], "front ends reaching past the services:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        "from engine.catalog.models import Job",
        "import engine.catalog.db",
        "from engine.catalog import Catalog",
        "def f(engine):\n    return engine.job_store.get(1)",
        "x = self.engine.capacity_store",
    ],
)
def test_the_check_catches_each_way_past_the_services(source: str) -> None:
    assert _violations(source, "hostile.py") != []


@pytest.mark.parametrize(
    "source",
    [
        "from engine.views import Job",
        "from engine.catalogue_tools import x",  # a name that only starts alike
        "store = engine.jobs\nstore.list()",
        "restore = 1",
    ],
)
def test_the_check_leaves_service_calls_alone(source: str) -> None:
    assert _violations(source, "fine.py") == []
