"""Copy rules screen: list, validation messages in the form, add and remove."""

from __future__ import annotations

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
        assert table.get_row(str(rule.id))[1] == "cr-main → cr-offsite"

        table.focus()
        table.move_cursor(row=table.get_row_index(str(rule.id)))
        await pilot.press("d")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("y")
        await settle(pilot)
        assert all(r.name != "to-offsite" for r in demo_engine.copies.list_rules())
