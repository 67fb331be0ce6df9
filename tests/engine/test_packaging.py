"""A non-editable install finds everything: stylesheets, migrations, the CLI.

Builds the wheel from a copy of the source (so the shared checkout gets no
build/ litter), installs it into a private directory and runs the console
headless from there, with the source tree out of reach.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STYLES = sorted(p.name for p in (ROOT / "styles").glob("*.tcss"))

RUN_APP = """
import asyncio, sys, tempfile
from pathlib import Path
import sendense_tui.app as app_module
assert "{root}" not in app_module.__file__, app_module.__file__
from sendense_tui.app import SendenseApp
from sendense_tui.demo import build_demo_engine, seed_demo_catalog, demo_clock

state = Path(tempfile.mkdtemp())
clock = demo_clock()
engine = build_demo_engine(state, clock)
seed_demo_catalog(engine, clock)

async def main():
    app = SendenseApp(engine, clock=clock, live=False)
    async with app.run_test(size=(80, 24)) as pilot:
        for key in "12345678":
            await pilot.press(key)
            await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        # the stylesheet was found: the dashboard's panels got their border
        assert app.stylesheet.rules, "no CSS rules loaded"
    return app.return_code

asyncio.run(main())
engine.close()
print("console ok")
"""


@pytest.mark.slow
def test_wheel_ships_styles_and_migrations_and_runs_installed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("engine", "sendense_tui", "sendense_api", "styles"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(wheels), str(src)],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    (wheel,) = wheels.glob("sendense-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for style in STYLES:
        assert f"sendense_tui/styles/{style}" in names, style
    assert "sendense_tui/styles/app.tcss" in names
    assert "engine/catalog/migrations/versions/0001_initial_schema.py" in names
    assert "engine/catalog/migrations/script.py.mako" in names
    assert "sendense_tui/commands/jobs.py" in names
    assert "sendense_api/routes/chains.py" in names

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
         str(wheel)],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENDENSE_", "PYTHONPATH"))}
    env.update(PYTHONPATH=str(target), XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    # -P: no script directory or cwd on sys.path, so the source tree is out of reach
    app = subprocess.run(
        [sys.executable, "-P", "-c", RUN_APP.replace("{root}", str(ROOT))],
        cwd=target, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert app.returncode == 0, app.stderr
    assert "console ok" in app.stdout
    version = subprocess.run(
        [sys.executable, "-P", "-m", "sendense_tui.cli", "version"],
        cwd=target, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("sendense ")
    # the HTTP API's routes come from the wheel too (the daemon builds the app at start)
    api = subprocess.run(
        [sys.executable, "-P", "-c",
         "import sendense_api.app as a, importlib; "
         "[importlib.import_module('sendense_api.routes.' + n) for n in a.ROUTERS]; "
         "print(a.__file__)"],
        cwd=target, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert api.returncode == 0, api.stderr
    assert api.stdout.startswith(str(target))
