"""The four long listings (``backup list``, ``chain show``, ``jobs list``, ``events``)
only read (issue 16): on a catalog in use they leave the state directory exactly as
it was (the catalog's file, its modes, no default repository added, nothing cleaned
up or repaired), load none of the services, tools, job runner or daemon, and a
catalog they cannot read as it is (missing, or at an older schema) is refused with
the same sentence and exit code as before, untouched."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from bench.seed import Fleet, seed
from engine.catalog.db import SCHEMA_HEAD
from engine.config import default_settings
from engine.runtime import Engine
from tests.tui.test_cli import _downgrade_one_revision
from tests.tui.test_cli_start import imported, run_and_list_modules, run_sendense

ROOT = Path(__file__).resolve().parents[2]
LISTINGS = [["backup", "list"], ["chain", "show"], ["jobs", "list"], ["events"]]
FLEET = Fleet(repositories=2, vms=3, disks=2, points=4, jobs=12, events=20)
#: what a listing must not load: the services that write, the tools, jobs, the daemon,
#: the console, the API and the migrations
NOT_LOADED = (
    "engine.services.backup",
    "engine.services.chains",
    "engine.services.images",
    "engine.tools",
    "engine.jobs",
    "engine.writers",
    "engine.daemon",
    "textual",
    "rich",
    "fastapi",
    "alembic",
    "psutil",
    "watchdog",
    "croniter",
    "cryptography",
)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A state directory in use: a default repository (the CLI made it), a seeded
    catalog, a restore mount directory nobody accounts for."""
    state = tmp_path / "state"
    assert run_sendense(state, "repo", "list").returncode == 0
    engine = Engine(default_settings(state)).open()
    try:
        seed(engine, FLEET, say=False)
    finally:
        engine.close()
    (state / "restore" / "m999").mkdir(parents=True)
    return state


def _snapshot(state: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every entry under ``state``: mode, size, mtime and content digest of each file,
    mode of each directory (SQLite's -wal and -shm come and go with each connection,
    changing their directory's mtime: the content lives in the database file)."""
    found: dict[str, tuple[int, int, int, str]] = {}
    for path in sorted([state, *state.rglob("*")]):
        if path.name.endswith(("-wal", "-shm")):
            continue
        st = path.lstat()
        if path.is_dir():
            found[str(path.relative_to(state))] = (st.st_mode, 0, 0, "")
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        found[str(path.relative_to(state))] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return found


def test_listings_write_nothing_into_the_state_directory(state: Path) -> None:
    # a mode an engine that writes would repair (engine.private): a listing leaves it
    os.chmod(state / "catalog.db.created", 0o644)
    before = _snapshot(state)
    assert "catalog.db" in before and "restore/m999" in before
    for argv in LISTINGS:
        for form in (["--limit", "5"], ["--limit", "5", "--json"], ["--all", "--json"]):
            done = run_sendense(state, *argv, *form)
            assert done.returncode == 0, (argv, form, done.stderr)
            assert _snapshot(state) == before, (argv, form)
    # the listings read what is there
    shown = json.loads(run_sendense(state, "backup", "list", "--json", "--limit", "100").stdout)
    assert len(shown) == FLEET.restore_points


def test_listings_load_only_what_a_listing_needs(state: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENDENSE_")}
    for argv in LISTINGS:
        seen = run_and_list_modules(["--state-dir", str(state), *argv, "--json"], env)
        assert seen["code"] == 0
        loaded = imported(seen, NOT_LOADED)
        assert loaded == [], f"`sendense {' '.join(argv)}` imported {loaded}"


@pytest.mark.parametrize("argv", LISTINGS, ids=" ".join)
def test_a_listing_refuses_a_catalog_at_an_older_schema_and_leaves_it(
    state: Path, argv: list[str]
) -> None:
    older = _downgrade_one_revision(state)
    before = _snapshot(state)
    done = run_sendense(state, *argv, "--json")
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[0] == (
        f"sendense: catalog sqlite:///{state / 'catalog.db'} is at schema {older}, older "
        f"than this Sendense ({SCHEMA_HEAD}); this command only reads and left it untouched"
    )
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert _snapshot(state) == before


@pytest.mark.parametrize("argv", LISTINGS, ids=" ".join)
def test_a_listing_refuses_a_missing_catalog_and_creates_none(state: Path, argv: list[str]) -> None:
    (state / "catalog.db").unlink()
    done = run_sendense(state, *argv)
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith(f"sendense: catalog file {state / 'catalog.db'} is missing")
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not (state / "catalog.db").exists()
