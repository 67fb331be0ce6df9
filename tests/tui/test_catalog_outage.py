"""The console when its catalog goes away: one line at the top, no crash, no
traceback, no notification per refresh; back to normal when the catalog is.

The catalog is a real throwaway MariaDB server, killed with SIGKILL and
restarted on the same data directory; the engine runs its job runner, monitors
and scheduler as the console starts them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from textual.pilot import Pilot

from engine.config import default_settings
from engine.runtime import Engine
from sendense_tui.app import SendenseApp
from sendense_tui.screens.base import CatalogBanner, SendenseScreen
from tests.plugins.mariadb import MariaDBServer

SIZE = (100, 30)


async def _until(pilot: Pilot[object], what: str, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 60
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await pilot.pause(0.1)


def _banner(app: SendenseApp) -> CatalogBanner:
    return app.screen.query_one(CatalogBanner)


async def test_a_catalog_that_goes_away_is_one_line_and_comes_back(
    tmp_path: Path, mariadb_private: MariaDBServer
) -> None:
    settings = replace(default_settings(tmp_path / "state"), db_url=mariadb_private.url())
    engine = Engine(settings).open()
    try:
        engine.start(run_scheduler=True)
        app = SendenseApp(engine, refresh_seconds=0.2)
        async with app.run_test(size=SIZE) as pilot:
            screen = app.screen
            assert isinstance(screen, SendenseScreen)
            await _until(pilot, "the first draw", lambda: screen.draws > 0)
            assert not _banner(app).display

            mariadb_private.stop(kill=True)
            await _until(pilot, "the banner", lambda: _banner(app).display)
            assert "cannot reach the database server" in _banner(app).sentence
            # a few more refreshes against the dead server: still one line, no pile of
            # notifications, and the other sections say it too
            drawn = screen.draws
            await pilot.pause(1.0)
            await pilot.press("6")
            await _until(pilot, "the Jobs banner", lambda: _banner(app).display)
            assert screen.draws == drawn
            shown = [n.message for n in app._notifications]
            assert not any("Traceback" in m for m in shown), shown
            assert not any("cannot reach" in m for m in shown), shown
            assert app.is_running

            mariadb_private.restart()
            await _until(pilot, "the banner to go", lambda: not _banner(app).display)
            jobs_screen = app.screen
            assert isinstance(jobs_screen, SendenseScreen) and jobs_screen.draws > 0
            assert app.is_running
    finally:
        engine.close()
