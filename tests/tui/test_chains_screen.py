"""Chains screen: snapshots on seeded demo chains (fixed clock), Pilot delete with confirm."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sendense_tui.app import SendenseApp
from sendense_tui.demo import seed_demo_chains
from sendense_tui.screens.chains import ChainsScreen
from sendense_tui.widgets.confirm import ConfirmDialog
from tests.tui.conftest import keys_then_settle, settle


@pytest.fixture
def chains_app(make_app: Callable[..., SendenseApp], demo_engine, clock) -> SendenseApp:  # type: ignore[no-untyped-def]
    seed_demo_chains(demo_engine, clock)
    return make_app()


def test_chains_snapshot_wide(snap_compare, chains_app: SendenseApp) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(
        chains_app, terminal_size=(120, 40), run_before=keys_then_settle("4", "j", "j", "j")
    )


def test_chains_snapshot_narrow(snap_compare, chains_app: SendenseApp) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(
        chains_app, terminal_size=(80, 24), run_before=keys_then_settle("4", "j", "j")
    )


async def test_delete_point_asks_lists_what_goes_and_removes_rows(chains_app: SendenseApp) -> None:
    engine = chains_app.engine
    async with chains_app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("4")
        await settle(pilot)
        screen = chains_app.screen
        assert isinstance(screen, ChainsScreen)
        # db01 -> vda chain -> its full (#first), then the two incrementals
        tree = screen.query_one("#chains-tree")
        db_inc = next(
            b
            for b, c in engine.chain_store.list_backups()
            if c.vm_name == "db01" and b.position == 1
        )
        line = next(
            n
            for n in tree._tree_lines
            if n.node.data == ("point", db_inc.id)  # type: ignore[attr-defined]
        )
        tree.move_cursor(line.node)  # type: ignore[attr-defined]
        await settle(pilot)
        await pilot.press("d")
        await settle(pilot)
        dialog_text = " ".join(str(w.render()) for w in chains_app.screen.query("Static"))
        assert f"#{db_inc.id} incremental" in dialog_text
        assert f"#{db_inc.id + 1} incremental" in dialog_text  # the later point goes too
        await pilot.press("y")
        await settle(pilot)
    states = {b.id: b.state for b, _ in engine.chain_store.list_backups(include_deleted=True)}
    assert states[db_inc.id] == "deleted" and states[db_inc.id + 1] == "deleted"
    assert states[db_inc.id - 1] == "complete"


async def test_locked_full_cannot_be_deleted(chains_app: SendenseApp) -> None:
    engine = chains_app.engine
    full = next(
        b for b, c in engine.chain_store.list_backups() if c.vm_name == "db01" and b.kind == "full"
    )
    async with chains_app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("4")
        await settle(pilot)
        tree = chains_app.screen.query_one("#chains-tree")
        line = next(n for n in tree._tree_lines if n.node.data == ("point", full.id))  # type: ignore[attr-defined]
        tree.move_cursor(line.node)  # type: ignore[attr-defined]
        await settle(pilot)
        await pilot.press("d")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        # the operator is told which lock stops it (not just: nothing happened)
        messages = [n.message for n in chains_app._notifications]
        assert any(f"cannot delete point {full.id}" in m and "locked until" in m for m in messages)
    assert engine.chain_store.get_backup(full.id).state == "complete"


async def test_details_before_selection_depend_on_whether_chains_exist(
    make_app: Callable[..., SendenseApp],
    demo_engine,
    clock,  # type: ignore[no-untyped-def]
) -> None:
    async def details() -> str:
        app = make_app()
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot)
            await pilot.press("4")
            await settle(pilot)
            return str(app.screen.query_one("#chains-details").render())

    assert "No backups yet" in await details()
    seed_demo_chains(demo_engine, clock)
    text = await details()
    assert "No backups yet" not in text
    assert "Select a restore point" in text


async def test_v_queues_a_verify_job_for_the_selected_point(chains_app: SendenseApp) -> None:
    engine = chains_app.engine
    async with chains_app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("4")
        await settle(pilot)
        screen = chains_app.screen
        assert isinstance(screen, ChainsScreen)
        point = next(b for b, c in engine.chain_store.list_backups() if c.vm_name == "db01")
        tree = screen.query_one("#chains-tree")
        line = next(
            n
            for n in tree._tree_lines
            if n.node.data == ("point", point.id)  # type: ignore[attr-defined]
        )
        tree.move_cursor(line.node)  # type: ignore[attr-defined]
        await settle(pilot)
        before = {j.id for j in engine.job_store.list()}
        await pilot.press("v")
        await settle(pilot)
        jobs = [j for j in engine.job_store.list() if j.id not in before]
        assert [j.kind for j in jobs] == ["verify"]
        assert jobs[0].params["scope"] == "backup" and jobs[0].params["ref"] == point.id
        shown = [n.message for n in chains_app._notifications]
        assert f"verify job {jobs[0].id} queued (point #{point.id})" in shown
        await pilot.press("question_mark")
        await settle(pilot)
        rows = {row.description: row.keys for row in chains_app.screen.rows}  # type: ignore[attr-defined]
        assert rows["Verify the selected point or chain (queues a verify job)"] == "v"


async def test_deleting_a_point_of_a_disk_being_written_names_the_writer(
    chains_app: SendenseApp,
) -> None:
    """The console refuses at once (its worker must not hang waiting) with the same
    sentence the CLI prints, and nothing is deleted."""
    engine = chains_app.engine
    point, chain = next((b, c) for b, c in engine.chain_store.list_backups() if c.vm_name == "db01")
    async with chains_app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("4")
        await settle(pilot)
        tree = chains_app.screen.query_one("#chains-tree")
        line = next(n for n in tree._tree_lines if n.node.data == ("point", point.id))  # type: ignore[attr-defined]
        tree.move_cursor(line.node)  # type: ignore[attr-defined]
        await settle(pilot)
        # another writer (a backup from the CLI, say) holds db01/vda meanwhile
        with engine.writers.hold(
            chain.repository_id, "db01", chain.disk_name, operation="backup", actor="cli"
        ):
            await pilot.press("d")
            await settle(pilot)
            await pilot.press("y")
            await settle(pilot)
            messages = [n.message for n in chains_app._notifications]
    assert any(
        f"db01/{chain.disk_name} is being written by a backup (started" in m and "by cli" in m
        for m in messages
    ), messages
    assert engine.chain_store.get_backup(point.id).state == "complete"


def test_fix_orphans_confirmation_snapshot(snap_compare, chains_app: SendenseApp) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(chains_app, terminal_size=(80, 24), run_before=keys_then_settle("4", "F"))


async def test_fix_orphans_asks_first_then_removes_a_stale_partial(
    chains_app: SendenseApp, tmp_path: Path
) -> None:
    engine = chains_app.engine
    root = tmp_path / "scratch-repo"
    chain_dir = root / "chains" / "web09" / "sda" / "20261124T090000Z"
    chain_dir.mkdir(parents=True)
    engine.repository_store.add(
        name="scratch", kind="local", path=str(root), now=engine.clock.now()
    )
    stale = chain_dir / ".0000-full-20261124T090000Z.qcow2.partial"
    stale.write_bytes(b"left by a killed backup")
    then = time.time() - 3600
    os.utime(stale, (then, then))
    async with chains_app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("4")
        await settle(pilot)
        await pilot.press("F")
        await settle(pilot)
        assert isinstance(chains_app.screen, ConfirmDialog)
        await pilot.press("n")  # declined: nothing happens
        await settle(pilot)
        assert stale.exists()
        await pilot.press("F")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        shown = "\n".join(n.message for n in chains_app._notifications)
        await pilot.press("question_mark")
        await settle(pilot)
        rows = {row.description: row.keys for row in chains_app.screen.rows}  # type: ignore[attr-defined]
    assert not stale.exists()
    assert "removed 1 stale file(s), imported 0 orphan point(s), left 0 files alone" in shown
    assert f"removed scratch:chains/web09/sda/20261124T090000Z/{stale.name}" in shown
    assert any(keys == "F" and "orphan" in description for description, keys in rows.items())
