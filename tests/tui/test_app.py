"""Pilot tests: press keys like an operator and check what changed."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import DataTable, Input

from engine.runtime import Engine
from sendense_tui.app import SendenseApp
from sendense_tui.screens.events import EventsScreen
from sendense_tui.screens.help import HelpScreen
from sendense_tui.screens.jobs import JobsScreen
from sendense_tui.widgets.confirm import ConfirmDialog
from tests.tui.conftest import settle

SIZE = (80, 24)


def _job_id(engine: Engine, title: str) -> int:
    return next(j.id for j in engine.job_store.list() if j.title == title)


async def _select(pilot, table: DataTable, key: str) -> None:
    """Move the cursor down with `j` until it is on the row ``key``."""
    for _ in range(table.row_count):
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        if row_key.value == key:
            return
        await pilot.press("j")
    raise AssertionError(f"row {key} not found")


async def test_number_keys_switch_sections(make_app) -> None:
    app: SendenseApp = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.current_mode == "dashboard"
        for key, mode in (
            ("6", "jobs"),
            ("8", "events"),
            ("2", "repositories"),
            ("1", "dashboard"),
        ):
            await pilot.press(key)
            await settle(pilot)
            assert app.current_mode == mode
        await pilot.press("6")
        await settle(pilot)
        assert isinstance(app.screen, JobsScreen)


async def test_help_lists_the_live_bindings(make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("6")
        await settle(pilot)
        await pilot.press("question_mark")
        await settle(pilot)
        assert isinstance(app.screen, HelpScreen)
        text = "\n".join(f"{row.keys} {row.description}" for row in app.screen.rows)
        assert "Cancel job" in text
        assert "Retry failed or cancelled job" in text
        assert "Leave the console" in text
        await pilot.press("escape")
        await settle(pilot)
        assert isinstance(app.screen, JobsScreen)


async def test_help_fits_80x24_with_list_keys_on_one_line(make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        for section in ("6", "8"):  # Jobs, Events: a DataTable has the focus
            await pilot.press(section)
            await settle(pilot)
            await pilot.press("question_mark")
            await settle(pilot)
            help_screen = app.screen
            assert isinstance(help_screen, HelpScreen)
            box = help_screen.query_one("#help")
            assert box.max_scroll_y == 0, "the help scrolls at 80x24"
            assert box.region.bottom <= SIZE[1]
            text = [f"{row.keys} {row.description}" for row in help_screen.rows]
            assert not any("Page up" in line or "Cursor left" in line for line in text)
            assert sum("pgup" in line for line in text) == 1
            await pilot.press("escape")
            await settle(pilot)


async def test_cancel_queued_job_after_yes(make_app, demo_engine: Engine) -> None:
    job_id = _job_id(demo_engine, "verify db01/disk0 chain")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("6")
        await settle(pilot)
        await _select(pilot, app.screen.query_one("#active", DataTable), str(job_id))
        await pilot.press("c")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmDialog)
        assert f"job {job_id}" in app.screen.question
        await pilot.press("y")
        await settle(pilot)
        assert demo_engine.job_store.get(job_id).state == "cancelled"
        # the row moved from the running/queued table to the finished one
        screen = app.screen
        assert isinstance(screen, JobsScreen)
        assert str(job_id) not in {k.value for k in screen.query_one("#active", DataTable).rows}
        assert str(job_id) in {k.value for k in screen.query_one("#finished", DataTable).rows}


async def test_no_in_the_dialog_leaves_the_job_alone(make_app, demo_engine: Engine) -> None:
    job_id = _job_id(demo_engine, "backup mail01/disk0 (full)")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("6")
        await settle(pilot)
        await _select(pilot, app.screen.query_one("#active", DataTable), str(job_id))
        await pilot.press("c")
        await settle(pilot)
        await pilot.press("n")
        await settle(pilot)
        assert isinstance(app.screen, JobsScreen)
        assert demo_engine.job_store.get(job_id).state == "queued"


async def test_pause_resume_and_retry_keys(make_app, demo_engine: Engine) -> None:
    queued = _job_id(demo_engine, "backup mail01/disk0 (full)")
    failed = _job_id(demo_engine, "copy db01 → offsite-nfs")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("6")
        await settle(pilot)
        active = app.screen.query_one("#active", DataTable)
        await _select(pilot, active, str(queued))
        await pilot.press("p")
        await settle(pilot)
        assert demo_engine.job_store.get(queued).state == "paused"
        await _select(pilot, active, str(queued))
        await pilot.press("u")
        await settle(pilot)
        assert demo_engine.job_store.get(queued).state == "queued"
        finished = app.screen.query_one("#finished", DataTable)
        finished.focus()
        await _select(pilot, finished, str(failed))
        await pilot.press("R")
        await settle(pilot)
        assert demo_engine.job_store.get(failed).state == "queued"


async def test_engine_error_is_one_readable_notification(make_app, demo_engine: Engine) -> None:
    """Retrying a succeeded job is refused by the engine: a notification, no crash."""
    done = _job_id(demo_engine, "backup web01/disk0 (full)")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("6")
        await settle(pilot)
        finished = app.screen.query_one("#finished", DataTable)
        finished.focus()
        await _select(pilot, finished, str(done))
        await pilot.press("R")
        await settle(pilot)
        messages = [n.message for n in app._notifications]
        assert any("succeeded" in m and "failed or cancelled" in m for m in messages), messages
        assert not any("Traceback" in m for m in messages)
        assert app.is_running


async def test_filter_events_and_escape_clears(make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("8")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, EventsScreen)
        table = screen.query_one("#events", DataTable)
        everything = table.row_count
        assert everything == 13  # the debug entry is hidden at level info
        await pilot.press("slash")
        await pilot.press(*"offsite")
        await settle(pilot)
        assert isinstance(app.focused, Input)
        assert table.row_count == 4
        messages = [str(table.get_row(k)[3]) for k in table.rows]
        assert all("offsite" in m for m in messages)
        await pilot.press("escape")
        await settle(pilot)
        assert table.row_count == everything
        assert app.focused is table
        assert app.current_mode == "events"  # Esc cleared the filter, it did not leave


async def test_level_and_source_filters(make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("8")
        await settle(pilot)
        table = app.screen.query_one("#events", DataTable)
        await pilot.press("l")  # info -> warning
        await settle(pilot)
        levels = {str(table.get_row(k)[1]) for k in table.rows}
        assert levels == {"warning", "error", "critical"}
        await pilot.press("s")  # all -> first source seen (capacity)
        await settle(pilot)
        assert {str(table.get_row(k)[2]) for k in table.rows} == {"capacity"}


async def test_theme_toggle(make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.theme == "textual-dark"
        await pilot.press("t")
        assert app.theme == "textual-light"
        await pilot.press("t")
        assert app.theme == "textual-dark"


async def test_light_theme_from_settings(tmp_path, clock) -> None:
    from sendense_tui.demo import build_demo_engine

    engine = build_demo_engine(tmp_path / "s", clock, theme="light")
    try:
        app = SendenseApp(engine, clock=clock, live=False)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert app.theme == "textual-light"
    finally:
        engine.close()


async def test_q_goes_back_then_quits(make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("8")
        await settle(pilot)
        await pilot.press("q")
        await settle(pilot)
        assert app.current_mode == "dashboard"
        assert app.is_running
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0
    assert not app.is_running


async def test_palette_runs_a_screen_command(make_app) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("8")
        await settle(pilot)
        await pilot.press("colon")
        await settle(pilot)
        await pilot.press(*"minimum level")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, EventsScreen)
        assert screen.level == "warning"


async def test_live_progress_messages_update_cells(demo_engine: Engine, clock) -> None:
    """An engine thread publishes progress; the Jobs row shows it (no refresh needed)."""
    import threading

    from engine.events import Event

    job_id = _job_id(demo_engine, "backup db01/disk0 (incremental)")
    app = SendenseApp(demo_engine, clock=clock, live=True, refresh_seconds=3600)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("6")
        await settle(pilot)

        def publish() -> None:
            for done in range(1, 101):
                demo_engine.bus.publish(
                    Event(
                        kind="job.progress",
                        message="x",
                        source="jobs",
                        job_id=job_id,
                        record=False,
                        data={
                            "bytes_done": done * 80 * 1024**2,
                            "bytes_total": 8 * 1024**3,
                            "rate": 50.0 * 1024**2,
                            "eta_seconds": 0.0 if done == 100 else 60.0,
                        },
                    )
                )

        thread = threading.Thread(target=publish)
        thread.start()
        thread.join()
        await settle(pilot)
        table = app.screen.query_one("#active", DataTable)
        row = table.get_row(str(job_id))
        assert "98%" in str(row[3])
        assert str(row[5]) == "50M/s"


HANGUP_SCRIPT = """
import asyncio, os, signal, sys
from pathlib import Path
from sendense_tui.app import SendenseApp
from sendense_tui.demo import build_demo_engine, demo_clock, seed_demo_catalog

out = Path(sys.argv[1])
clock = demo_clock()
engine = build_demo_engine(out.parent / "state", clock)
seed_demo_catalog(engine, clock)

async def main():
    app = SendenseApp(engine, clock=clock, live=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if not app.is_running:
                break
    return app

app = asyncio.run(main())
engine.close()
out.write_text(f"{app.return_code} {app.terminal_lost}")
"""


def test_sighup_leaves_the_console_and_stops_the_engine(tmp_path) -> None:
    """A real SIGHUP (the SSH session went away) ends the app with 129 instead of
    killing the process, so the engine gets closed."""
    import subprocess
    import sys

    out = tmp_path / "result"
    proc = subprocess.run(
        [sys.executable, "-c", HANGUP_SCRIPT, str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == "129 True"
