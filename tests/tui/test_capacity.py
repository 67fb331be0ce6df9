"""Capacity screen: snapshots on the seeded catalog (a day of samples, fixed clock),
and a live update that changes only the card that changed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from textual.widgets import Static

from engine.runtime import Engine
from sendense_tui.app import SendenseApp
from sendense_tui.screens.capacity import CapacityScreen
from tests.tui.conftest import keys_then_settle, settle

GiB = 1024**3


def test_capacity_screen_snapshot(snap_compare, make_app) -> None:
    assert snap_compare(make_app(), terminal_size=(100, 30), run_before=keys_then_settle("3"))


def test_capacity_screen_narrow_snapshot(snap_compare, make_app) -> None:
    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=keys_then_settle("3"))


async def test_capacity_updates_live_card_by_card(
    make_app: Callable[..., SendenseApp], demo_engine: Engine
) -> None:
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("3")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, CapacityScreen)
        primary = demo_engine.repositories.get("primary")
        offsite = demo_engine.repositories.get("offsite-nfs")
        card = screen.query_one(f"#cap-{offsite.id}", Static)
        before_other = screen._texts[primary.id]
        assert "WARNING" in str(card.content)
        # a new sample pushes offsite-nfs past full
        now = app.clock.now() + timedelta(seconds=1)
        total = 2 * 1024 * GiB
        demo_engine.capacity_store.add(
            offsite.id,
            taken_at=now,
            total_bytes=total,
            used_bytes=int(total * 0.96),
            free_bytes=int(total * 0.95) - int(total * 0.96) + 10 * GiB,
        )
        demo_engine.repository_store.update(offsite.id, now, capacity_level="full")
        screen.refresh_now()
        await settle(pilot)
        text = str(screen.query_one(f"#cap-{offsite.id}", Static).content)
        assert "FULL" in text and "no new backups or copies until space is freed" in text
        assert screen._texts[primary.id] == before_other  # untouched card


async def test_repositories_that_come_and_go_while_shown_update_the_cards_in_place(
    make_app: Callable[..., SendenseApp], demo_engine: Engine, tmp_path: Path
) -> None:
    app = make_app()
    store = demo_engine.repository_store
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("3")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, CapacityScreen)
        primary = store.get("primary")
        kept = screen.query_one(f"#cap-{primary.id}", Static)
        for n in range(3):
            path = tmp_path / f"extra{n}"
            path.mkdir()
            new = store.add(name=f"extra{n}", kind="local", path=str(path),
                            now=demo_engine.clock.now())  # fmt: skip
            await pilot.press("r")
            await settle(pilot)
            store.delete(new.id)
            path = tmp_path / f"again{n}"
            path.mkdir()
            store.add(name=f"again{n}", kind="local", path=str(path),
                      now=demo_engine.clock.now())  # fmt: skip
            await pilot.press("r")
            await settle(pilot)
            cards = {w.id for w in screen.query(".capacity-card")}
            assert cards == {f"cap-{r.id}" for r in store.list()}
        assert screen.query_one(f"#cap-{primary.id}", Static) is kept
        assert app.is_running
