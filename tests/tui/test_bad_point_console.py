"""The console asks before it reads a bad restore point that has no verified copy.

Real qemu-nbd on a unix socket serves the (forced) point; no answer, or "no",
reads nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from textual.widgets import DataTable

from engine.runtime import Engine
from sendense_tui.app import SendenseApp
from sendense_tui.widgets.confirm import ConfirmDialog
from tests.engine.fsimages import backup_chain_rows, sh
from tests.tui.conftest import settle


async def test_export_of_a_bad_point_asks_first_and_yes_serves_it_unverified(
    make_app: Callable[..., SendenseApp], demo_engine: Engine, tmp_path: Path
) -> None:
    point = backup_chain_rows(demo_engine.catalog, tmp_path / "repo", now=demo_engine.clock.now())
    qcow2 = tmp_path / "repo" / "web01" / "sda" / "0000.qcow2"
    qcow2.parent.mkdir(parents=True)
    sh("qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "16M")
    # its last verification failed (the Restore screen lists points still "complete";
    # one marked bad is not offered there at all)
    demo_engine.copy_store.set_backup_verified(point, "chain_broken", demo_engine.clock.now())
    mine = lambda: [x for x in demo_engine.exports.list() if x.backup_id == point]  # noqa: E731
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("7")
        await settle(pilot)
        table = app.screen.query_one("#points", DataTable)
        table.focus()
        table.move_cursor(row=table.get_row_index(str(point)))
        await pilot.press("N")
        await settle(pilot)
        dialog = app.screen
        assert isinstance(dialog, ConfirmDialog)
        assert dialog.question == f"Export point #{point} anyway? It is damaged."
        assert "no verified copy" in dialog.consequence and "UNVERIFIED" in dialog.consequence
        await pilot.press("n")
        await settle(pilot)
        assert mine() == []
        await pilot.press("N")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        try:
            (served,) = mine()
            notes = [n.message for n in app._notifications]
            assert any("UNVERIFIED" in m for m in notes)
            assert any(served.uri in m for m in notes)
        finally:
            for x in mine():
                demo_engine.exports.stop(x.id)
