"""Fixtures every area uses: catalog on both backends, a fixed clock, settings, engines.

- ``catalog_url`` runs a test once on SQLite and once on MariaDB (test ids
  ``[sqlite]`` and ``[mariadb]``); each run gets a fresh, empty database.
- ``catalog``: a Catalog on that URL, connected and migrated.
- ``clock``: a FixedClock at 2026-11-24 09:00 UTC; move it with ``advance``.
- ``settings``: default settings rooted in a tmp state directory (SQLite).
- ``engine_factory`` / ``engine``: an Engine on a tmp state dir with the
  ``catalog_url``; closed at teardown.

At the end of the run a line says how many tests ran on each catalog backend,
and says loudly when the MariaDB ones were skipped.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from engine.catalog import Catalog
from engine.clock import SYSTEM_CLOCK, Clock, FixedClock
from engine.config import JobSettings, Settings, default_settings, sqlite_url
from engine.daemon import NO_DAEMON_ENV
from engine.runtime import Engine

BACKENDS = ("sqlite", "mariadb")
#: tests that take one of these run on MariaDB only; they count as MariaDB tests
_MARIADB_FIXTURES = {"mariadb_server", "mariadb_url", "mariadb_private"}


# -- catalog ---------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL to a fresh, empty catalog database: SQLite file or MariaDB database."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "catalog-db" / "catalog.db")
    return str(request.getfixturevalue("mariadb_url"))


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    """A connected and migrated catalog."""
    cat = Catalog(catalog_url).open()
    try:
        yield cat
    finally:
        cat.dispose()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Defaults rooted in a tmp state directory: SQLite catalog, local repository."""
    return default_settings(tmp_path / "state")


EngineFactory = Callable[..., Engine]


@pytest.fixture
def engine_factory(catalog_url: str, tmp_path: Path) -> Iterator[EngineFactory]:
    """Build Engines on the test's catalog; each one is closed at teardown.

    ``engine_factory(clock=FixedClock(), owner="a", jobs=JobSettings(...),
    start=False, **settings_overrides)``. Several engines built by one test
    share the catalog (like two appliances) but have their own state dirs.
    """
    engines: list[Engine] = []

    def make(
        *,
        clock: Clock = SYSTEM_CLOCK,
        owner: str | None = None,
        jobs: JobSettings | None = None,
        start: bool = False,
        **overrides: Any,
    ) -> Engine:
        state_dir = tmp_path / f"state-{len(engines)}"
        base = replace(default_settings(state_dir), db_url=catalog_url)
        if jobs is not None:
            overrides["jobs"] = jobs
        engine = Engine(replace(base, **overrides), clock=clock, owner=owner)
        engines.append(engine)
        engine.open()
        if start:
            engine.start()
        return engine

    try:
        yield make
    finally:
        for engine in reversed(engines):
            engine.close()


@pytest.fixture
def engine(engine_factory: EngineFactory, clock: FixedClock) -> Engine:
    """An opened (not started) Engine on the test's catalog with the fixed clock."""
    return engine_factory(clock=clock, owner="test-engine")


# -- which backends ran ----------------------------------------------------------

_BACKEND_KEY = pytest.StashKey[dict[str, str]]()
_OUTCOMES_KEY = pytest.StashKey[dict[str, Counter[str]]]()
_SKIP_REASONS_KEY = pytest.StashKey[dict[str, set[str]]]()


def pytest_configure(config: pytest.Config) -> None:
    # No test starts a background `sendense daemon` by accident (the console and
    # `--no-wait` commands would): work runs where it is started, as tests expect.
    # Tests of the daemon unset it (tests/engine/test_daemon.py).
    os.environ[NO_DAEMON_ENV] = "1"
    config.stash[_BACKEND_KEY] = {}
    config.stash[_OUTCOMES_KEY] = {name: Counter() for name in BACKENDS}
    config.stash[_SKIP_REASONS_KEY] = {name: set() for name in BACKENDS}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    backends = config.stash[_BACKEND_KEY]
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "catalog_url" in callspec.params:
            backends[item.nodeid] = str(callspec.params["catalog_url"])
        elif _MARIADB_FIXTURES & set(getattr(item, "fixturenames", ())):
            backends[item.nodeid] = "mariadb"
        if item.nodeid in backends:
            # carried on every report, so the count is right when pytest-xdist runs
            # the tests in workers and only reports reach this process
            item.user_properties.append(("catalog_backend", backends[item.nodeid]))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    config = _config
    if config is None:
        return
    backend = dict(report.user_properties).get("catalog_backend")
    backend = backend or config.stash[_BACKEND_KEY].get(report.nodeid)
    if backend is None:
        return
    outcomes = config.stash[_OUTCOMES_KEY][backend]
    if report.when == "setup" and not report.passed:
        outcomes["skipped" if report.skipped else "error"] += 1
        if report.skipped and isinstance(report.longrepr, tuple):
            config.stash[_SKIP_REASONS_KEY][backend].add(str(report.longrepr[2]))
    elif report.when == "call":
        outcomes[report.outcome] += 1
        if report.skipped and isinstance(report.longrepr, tuple):
            config.stash[_SKIP_REASONS_KEY][backend].add(str(report.longrepr[2]))
    elif report.when == "teardown" and report.failed:
        outcomes["teardown error"] += 1


_config: pytest.Config | None = None


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    global _config
    _config = session.config


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if _OUTCOMES_KEY not in config.stash:
        return
    outcomes = config.stash[_OUTCOMES_KEY]
    if not any(outcomes.values()):
        return

    def describe(name: str) -> str:
        counts = outcomes[name]
        total = counts["passed"] + counts["failed"] + counts["skipped"] + counts["error"]
        detail = ", ".join(f"{n} {what}" for what, n in sorted(counts.items()) if n)
        return f"{name}={total} tests" + (f" ({detail})" if detail else "")

    terminalreporter.write_sep("-", "catalog backends")
    terminalreporter.write_line(
        "catalog backends exercised: " + ", ".join(describe(name) for name in BACKENDS)
    )
    maria = outcomes["mariadb"]
    if maria["skipped"] and not (maria["passed"] or maria["failed"]):
        reasons = "; ".join(sorted(config.stash[_SKIP_REASONS_KEY]["mariadb"])) or "?"
        terminalreporter.write_line(
            f"!!! MariaDB catalog tests were ALL SKIPPED ({reasons}): "
            "the catalog was only tested on SQLite !!!",
            red=True,
            bold=True,
        )
    elif maria["skipped"]:
        terminalreporter.write_line(
            f"note: {maria['skipped']} MariaDB catalog tests were skipped", yellow=True
        )
