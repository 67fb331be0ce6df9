"""The detail views at 80x24 on the seeded catalog (fixed clock): what Enter shows
of an event, a job, a restore point, a chain and an NBD export.

Accept changes with `pytest tests/tui/test_detail_snapshots.py --snapshot-update`
only after looking at the SVGs.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from textual.pilot import Pilot
from textual.widgets import DataTable, Tree

from engine.clock import FixedClock
from engine.runtime import Engine
from tests.tui.conftest import settle
from tests.tui.test_details import JOB_ERROR, LONG_MESSAGE


def _press_on(selector: str, key: object, *before: str):  # type: ignore[no-untyped-def]
    """A run_before: go to a section, put the cursor of ``selector`` on ``key``, Enter."""

    async def run_before(pilot: Pilot[object]) -> None:
        await settle(pilot)
        for press in before:
            await pilot.press(press)
            await settle(pilot)
        widget = pilot.app.screen.query_one(selector)
        widget.focus()
        if isinstance(widget, DataTable):
            widget.move_cursor(row=widget.get_row_index(str(key)))
        elif isinstance(widget, Tree):
            stack = [widget.root]
            while stack:
                node = stack.pop()
                if node.data == key:
                    widget.move_cursor(node)
                    break
                stack.extend(node.children)
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)

    return run_before


def test_event_detail(snap_compare, make_app, demo_engine: Engine, clock: FixedClock) -> None:
    entry = demo_engine.audit.append(
        at=clock.now() - timedelta(seconds=30),
        level="error",
        source="copy",
        kind="copy.failed",
        message=LONG_MESSAGE,
        data={"attempts": 3},
    )
    assert snap_compare(
        make_app(), terminal_size=(80, 24), run_before=_press_on("#events", entry.id, "8")
    )


def test_job_detail(snap_compare, make_app, demo_engine: Engine, clock: FixedClock) -> None:
    store, now = demo_engine.job_store, clock.now()
    job = store.create("copy", "copy db01/vda #41 → offsite-nfs", now=now - timedelta(minutes=9))
    store.claim(job.id, "demo-appliance:1", now - timedelta(minutes=8), timedelta(days=1))
    store.finish(job.id, "demo-appliance:1", "failed", now - timedelta(minutes=1), error=JOB_ERROR)
    for minutes, level, message in (
        (8, "info", "started: copy db01/vda #41 → offsite-nfs"),
        (5, "warning", "attempt 1 of 3 failed: No space left on device; retrying in 2s"),
        (1, "error", "failed: copy db01/vda #41 → offsite-nfs (no space left on offsite-nfs)"),
    ):
        demo_engine.audit.append(
            at=now - timedelta(minutes=minutes),
            level=level,
            source="copy",
            kind="job.note",
            message=message,
            job_id=job.id,
        )
    assert snap_compare(
        make_app(), terminal_size=(80, 24), run_before=_press_on("#finished", job.id, "6")
    )


def test_point_detail(snap_compare, make_app, demo_engine: Engine, clock: FixedClock) -> None:
    from sendense_tui.demo import seed_demo_chains

    seed_demo_chains(demo_engine, clock)
    view = next(v for v in demo_engine.chains.overview() if v.chain.vm_name == "db01")
    point = view.points[0].backup
    demo_engine.copy_store.add_verification(
        outcome="ok",
        started_at=clock.now() - timedelta(days=1, minutes=5),
        finished_at=clock.now() - timedelta(days=1),
        backup_id=point.id,
        bytes_read=point.file_size,
    )
    assert snap_compare(
        make_app(),
        terminal_size=(80, 24),
        run_before=_press_on("#chains-tree", ("point", point.id), "4"),
    )


def test_chain_detail(snap_compare, make_app, demo_engine: Engine, clock: FixedClock) -> None:
    from sendense_tui.demo import seed_demo_chains

    seed_demo_chains(demo_engine, clock)
    view = next(v for v in demo_engine.chains.overview() if v.chain.disk_name == "sdb")
    assert snap_compare(
        make_app(),
        terminal_size=(80, 24),
        run_before=_press_on("#chains-tree", ("chain", view.chain.id), "4"),
    )


def test_export_detail(snap_compare, make_app, demo_engine: Engine, tmp_path: Path) -> None:
    from engine.catalog.restore import RestoreStore
    from tests.tui.test_restore_screen import _seed

    _seed(demo_engine, tmp_path)
    now = demo_engine.clock.now()
    point = demo_engine.chain_store.list_backups()[0][0]
    row = RestoreStore(demo_engine.catalog).add_export(
        backup_id=point.id,
        export_name=f"point-{point.id}",
        socket_path="/run/sendense/exports/point-1-a5d0c2a7e4f1.sock",
        tcp_host=None,
        tcp_port=None,
        uri=f"nbd+unix:///point-{point.id}?socket=/run/sendense/exports/point-1-a5d0c2a7e4f1.sock",
        pid=None,
        persistent=False,
        state="running",
        owner="elsewhere:1:x",
        started_at=now - timedelta(minutes=12),
        idle_seconds=1800,
        last_active_at=now - timedelta(minutes=2),
        expires_at=now + timedelta(hours=8),
    )
    assert snap_compare(
        make_app(), terminal_size=(80, 24), run_before=_press_on("#exports", row.id, "7")
    )
