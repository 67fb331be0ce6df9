"""The wall between the layers: no engine module loads Textual.

Every module under ``engine/`` is imported in a fresh Python process, one
after another, and ``sys.modules`` is checked after each import; the first
module that brings ``textual`` in is named. (One process for all of them
keeps this fast; once a module has loaded Textual the test fails anyway.)
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import engine

REPO_ROOT = Path(__file__).resolve().parents[2]

#: modules that refuse to be imported on their own, and why
NOT_IMPORTABLE_ALONE = {
    # Alembic's env script runs only inside Catalog.migrate(), with a connection
    "engine.catalog.migrations.env",
}

CHECKER = r"""
import importlib, json, sys, traceback
results = []
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
        error = None
    except Exception:
        error = traceback.format_exc(limit=3)
    banned = sorted(m for m in sys.modules if m == "textual" or m.startswith("textual."))
    results.append({"module": name, "error": error, "textual": bool(banned)})
    if banned:
        break
print(json.dumps(results))
"""


def engine_modules() -> list[str]:
    names = ["engine"]
    for info in pkgutil.walk_packages(engine.__path__, prefix="engine."):
        names.append(info.name)
    return sorted(set(names) - NOT_IMPORTABLE_ALONE)


def test_the_walk_finds_the_engine_modules() -> None:
    modules = engine_modules()
    for expected in ("engine.config", "engine.catalog.db", "engine.jobs", "engine.runtime"):
        assert expected in modules
    on_disk = {
        ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in (REPO_ROOT / "engine").rglob("*.py")
    }
    assert on_disk - NOT_IMPORTABLE_ALONE == set(modules)


def test_no_engine_module_imports_textual() -> None:
    modules = engine_modules()
    proc = subprocess.run(
        [sys.executable, "-c", CHECKER, json.dumps(modules)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    offenders = [r["module"] for r in results if r["textual"]]
    assert not offenders, f"{offenders[0]} loads textual: engine/ must not import the UI"
    broken = {r["module"]: r["error"] for r in results if r["error"]}
    assert not broken, "engine modules fail to import:\n" + "\n".join(
        f"{name}:\n{error}" for name, error in broken.items()
    )
    assert [r["module"] for r in results] == modules
