"""The Chains and Restore screens on a catalog too large to show whole (issue 16):
Chains lists VMs and reads a VM's disks and points when it is opened; Restore reads
one page of points at a time and asks the catalog when filtered.

The catalog comes from the benchmarks' generator (``bench.seed``, through the
engine's own stores, no randomness) on a fixed clock: 150 VMs x 2 disks x 8
points = 2,400 restore points, past ``OPEN_ALL_POINTS`` and many pages of
``POINTS_PAGE``, seeded in seconds (the 100,000-point fleet is for bench/).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Static, Tree

from bench.seed import START, Fleet, seed
from engine.clock import FixedClock
from engine.runtime import Engine
from sendense_tui.app import SendenseApp
from sendense_tui.demo import build_demo_engine
from sendense_tui.screens.chains import OPEN_ALL_POINTS, ChainsScreen
from sendense_tui.screens.restore import POINTS_PAGE, RestoreScreen
from tests.tui.conftest import keys_then_settle, settle

FLEET = Fleet(repositories=3, vms=150, disks=2, points=8, jobs=0, events=0)


@pytest.fixture
def fleet_clock() -> FixedClock:
    return FixedClock(START + timedelta(days=10))


@pytest.fixture
def fleet_engine(tmp_path: Path, fleet_clock: FixedClock) -> Iterator[Engine]:
    assert FLEET.restore_points > OPEN_ALL_POINTS and FLEET.restore_points > 3 * POINTS_PAGE
    engine = build_demo_engine(tmp_path / "state", fleet_clock)
    seed(engine, FLEET, say=False)
    yield engine
    engine.close()


@pytest.fixture
def fleet_app(fleet_engine: Engine, fleet_clock: FixedClock) -> SendenseApp:
    app = SendenseApp(fleet_engine, clock=fleet_clock, live=False)
    app.animation_level = "none"
    return app


def test_chains_on_a_large_catalog_with_one_vm_opened(snap_compare, fleet_app) -> None:
    # the VMs folded with their totals; vm0001 opened (the first j puts the cursor
    # on vm0000, the second on vm0001, Space opens it) shows its disks and points
    assert snap_compare(
        fleet_app, terminal_size=(80, 24), run_before=keys_then_settle("4", "j", "j", "space")
    )


def test_restore_on_a_large_catalog_second_page(snap_compare, fleet_app) -> None:
    assert snap_compare(
        fleet_app,
        terminal_size=(80, 24),
        run_before=keys_then_settle("7", "right_square_bracket"),
    )


def _children(node: Any) -> list[Any]:
    return [child.data for child in node.children]


async def test_opening_a_vm_reads_its_disks_and_points_only(
    fleet_app: SendenseApp, fleet_engine: Engine
) -> None:
    async with fleet_app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("4")
        await settle(pilot)
        screen = fleet_app.screen
        assert isinstance(screen, ChainsScreen)
        tree = screen.query_one("#chains-tree", Tree)
        vms = [f"vm{i:04d}" for i in range(FLEET.vms)]
        assert _children(tree.root) == [("vm", vm) for vm in vms]
        assert screen._points == {}  # no point read below the VMs
        assert "vm0000  2 disks · 16 pts" in str(tree.root.children[0].label)

        await pilot.press("j", "j", "j", "j", "space")  # open vm0003 (from no cursor)
        await settle(pilot)
        expected = fleet_engine.chains.overview_of_vms(["vm0003"])
        opened = tree.root.children[3]
        assert opened.data == ("vm", "vm0003") and opened.is_expanded
        assert _children(opened) == [("chain", v.chain.id) for v in expected]
        for disk, view in zip(opened.children, expected, strict=True):
            assert _children(disk) == [("point", p.backup.id) for p in view.points]
        assert set(screen._points) == {p.backup.id for v in expected for p in v.points}
        assert len(screen._points) == FLEET.disks * FLEET.points
        # the other VMs stay folded and unread
        assert not tree.root.children[4].is_expanded
        assert _children(tree.root.children[4]) == [("loading", "vm0004")]

        await pilot.press("space")  # fold it again: its points are let go
        await settle(pilot)
        assert screen._points == {}
        assert not tree.root.children[3].is_expanded


async def test_restore_pages_through_every_point_and_filters_in_the_catalog(
    fleet_app: SendenseApp, fleet_engine: Engine
) -> None:
    every = [str(p.backup_id) for p in fleet_engine.file_restore.points()]
    async with fleet_app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("7")
        await settle(pilot)
        screen = fleet_app.screen
        assert isinstance(screen, RestoreScreen)
        table = screen.query_one("#points", DataTable)
        title = screen.query_one("#points-title", Static)

        def shown() -> list[str]:
            return [str(key.value) for key in table.rows]

        assert shown() == every[:POINTS_PAGE]
        assert str(title.render()).startswith(f"Points 1-{POINTS_PAGE} of 2,400")
        await pilot.press("right_square_bracket")
        await settle(pilot)
        assert shown() == every[POINTS_PAGE : 2 * POINTS_PAGE]
        assert str(title.render()).startswith(f"Points {POINTS_PAGE + 1}-{2 * POINTS_PAGE} ")
        await pilot.press("left_square_bracket", "left_square_bracket")  # not before 1
        await settle(pilot)
        assert shown() == every[:POINTS_PAGE]
        for _ in range(FLEET.restore_points // POINTS_PAGE + 2):  # not past the end
            await pilot.press("right_square_bracket")
        await settle(pilot)
        assert shown() == every[-POINTS_PAGE:]

        # the filter finds a VM on any page: the catalog is asked, not the page
        await pilot.press("slash", *"vm0149", "enter")
        await settle(pilot)
        vm0149 = [str(p.backup_id) for p in fleet_engine.file_restore.points(vm_name="vm0149")]
        assert shown() == vm0149 and len(vm0149) == FLEET.disks * FLEET.points

        # a time as the list shows it narrows the catalog's answer too
        await pilot.press("escape")
        await pilot.press("slash", *"vm0149 2026-01-08", "enter")
        await settle(pilot)
        newest = [
            str(p.backup_id)
            for p in fleet_engine.file_restore.points(vm_name="vm0149")
            if f"{p.point_time:%Y-%m-%d}" == "2026-01-08"
        ]
        assert shown() == newest and len(newest) == FLEET.disks
