"""Copy rules screen: list, validation messages in the form, add and remove, and each
rule's next run and state (failures in a row, alert level)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from textual.widgets import DataTable, Input, Select, Static

from engine.runtime import Engine
from sendense_tui.screens.copy_rules import CopyRulesScreen
from sendense_tui.widgets.confirm import ConfirmDialog
from tests.tui.conftest import settle


async def _open(pilot) -> CopyRulesScreen:
    screen = CopyRulesScreen()
    pilot.app.push_screen(screen)
    await settle(pilot)
    return screen


def _repos(engine: Engine, tmp_path: Path) -> None:
    for name in ("cr-main", "cr-offsite"):
        path = tmp_path / name
        path.mkdir()
        engine.repository_store.add(name=name, kind="local", path=str(path), now=engine.clock.now())


async def test_form_refuses_same_source_and_destination_then_adds(
    make_app, demo_engine: Engine, tmp_path: Path
) -> None:
    _repos(demo_engine, tmp_path)
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await _open(pilot)
        before = screen.query_one("#rules", DataTable).row_count
        await pilot.press("a")
        assert screen.query_one("#form").display
        screen.query_one("#name", Input).value = "to-offsite"
        screen.query_one("#source", Select).value = "cr-main"
        screen.query_one("#destination", Select).value = "cr-main"
        screen.save()
        await settle(pilot)
        error = str(screen.query_one("#form-error", Static).render())
        assert "source and destination are both 'cr-main'" in error
        assert demo_engine.copies.list_rules() == [] or all(
            r.name != "to-offsite" for r in demo_engine.copies.list_rules()
        )

        screen.query_one("#destination", Select).value = "cr-offsite"
        screen.save()
        await settle(pilot)
        assert not screen.query_one("#form").display
        table = screen.query_one("#rules", DataTable)
        assert table.row_count == before + 1
        rule = demo_engine.copies.get_rule("to-offsite")
        assert str(table.get_row(str(rule.id))[1]) == "cr-main → cr-offsite"

        table.focus()
        table.move_cursor(row=table.get_row_index(str(rule.id)))
        await pilot.press("d")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("y")
        await settle(pilot)
        assert all(r.name != "to-offsite" for r in demo_engine.copies.list_rules())


async def test_rules_show_next_run_and_failing_state(
    make_app, demo_engine: Engine, tmp_path: Path
) -> None:
    # seeded: db01-offsite, scheduled "30 1 * * *", failed 3 times, its alert raised
    _repos(demo_engine, tmp_path)
    store, repos = demo_engine.copy_store, demo_engine.repository_store
    main, offsite = repos.get("cr-main"), repos.get("cr-offsite")
    now = demo_engine.clock.now()
    ids = {}
    for name, mode, enabled in (
        ("after", "immediate", True),
        ("by-hand", "manual", True),
        ("paused", "scheduled", False),
    ):
        ids[name] = store.add_rule(
            name=name,
            now=now,
            source_repository_id=main.id,
            destination_repository_id=offsite.id,
            mode=mode,
            schedule="0 4 * * *" if mode == "scheduled" else None,
            enabled=enabled,
        ).id
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open(pilot)
        table = screen.query_one("#rules", DataTable)
        seeded = demo_engine.copies.get_rule("db01-offsite")
        row = table.get_row(str(seeded.id))
        # the demo clock is 2026-11-24 09:00 UTC: the next 01:30 is tomorrow's
        assert str(row[3]) == "tomorrow 01:30"
        assert str(row[4]).startswith("⚠ 3 failed · warning")
        assert str(table.get_row(str(ids["after"]))[3]) == "after backups"
        assert str(table.get_row(str(ids["by-hand"]))[3]) == "manual"
        assert str(table.get_row(str(ids["paused"]))[3]) == "disabled"
        assert str(table.get_row(str(ids["after"]))[4]).startswith("ok")

        # a run moves the scheduler's mark: the screen shows the engine's next run
        demo_engine.schedule_store.take_due(
            f"schedule:copy_rule:{seeded.id}",
            None,
            datetime(2026, 11, 24, 13, 30, tzinfo=UTC),
            now,
            schedule=seeded.schedule,
        )
        await pilot.press("r")
        await settle(pilot)
        assert str(table.get_row(str(seeded.id))[3]) == "13:30"
