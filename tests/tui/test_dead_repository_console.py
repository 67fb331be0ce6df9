"""A dead repository never freezes the console or the CLI.

The dead repository is a real FUSE directory (``tests.plugins.fusedir``) added as
a local repository and frozen with SIGSTOP. The console runs with its capacity
monitor polling; the CLI runs as a real ``sendense`` process with a timeout (a
hang is the failure, not a slow answer).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from engine.clock import FixedClock
from engine.config import CapacitySettings, default_settings
from engine.runtime import Engine
from sendense_tui.app import SendenseApp
from sendense_tui.screens.dashboard import DashboardScreen, RepoGauge, RepoGaugeLine
from tests.plugins.fusedir import FuseDir
from tests.plugins.loopfs import LoopFsFactory
from tests.tui.conftest import keys_then_settle

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
#: what a CLI command may take on a loaded two-core machine before it counts as hung
HANG = 90


async def _until(pilot: Pilot[object], what: str, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 60
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await pilot.pause(0.1)


def _line(app: SendenseApp, repo_id: int) -> RepoGaugeLine | None:
    screen = app.screen
    if not isinstance(screen, DashboardScreen):
        return None
    for gauge in screen.query(f"#gauge-{repo_id}").results(RepoGauge):
        return gauge.line
    return None


@pytest.mark.root
async def test_console_shows_a_frozen_repository_unresponsive_and_keeps_the_others_live(
    tmp_path: Path, fuse_dir: FuseDir, loop_fs: LoopFsFactory
) -> None:
    healthy_fs = loop_fs("ext4", size_mb=32)
    settings = replace(
        default_settings(tmp_path / "state"),
        capacity=CapacitySettings(min_free_bytes=0, poll_seconds=0.5, debounce_seconds=0.2),
    )
    engine = Engine(settings).open()
    try:
        now = engine.clock.now()
        frozen = engine.repository_store.add(
            name="frozen", kind="local", path=str(fuse_dir.path), now=now
        )
        healthy = engine.repository_store.add(
            name="healthy", kind="local", path=str(healthy_fs.mountpoint), now=now
        )
        engine.capacity.reading_timeout = 1.0
        engine.start(run_scheduler=False)
        app = SendenseApp(engine, refresh_seconds=0.2)
        async with app.run_test(size=(100, 30)) as pilot:
            await _until(
                pilot,
                "both repositories measured",
                lambda: all(
                    (line := _line(app, r.id)) is not None and line.percent is not None
                    for r in (frozen, healthy)
                ),
            )
            figures = _line(app, frozen.id)
            assert figures is not None and not figures.unresponsive

            fuse_dir.freeze()
            frozen_at = engine.clock.now()
            # within one poll: the first poll that starts after the freeze marks it
            await _until(
                pilot,
                "a poll after the freeze",
                lambda: (
                    (r := engine.capacity.reading(healthy.id)) is not None
                    and r.taken_at > frozen_at
                    and (f := engine.capacity.reading(frozen.id)) is not None
                    and f.taken_at == r.taken_at
                ),
            )
            stuck = engine.capacity.reading(frozen.id)
            assert stuck is not None and stuck.unresponsive
            await _until(
                pilot,
                "UNRESPONSIVE on the Dashboard",
                lambda: (line := _line(app, frozen.id)) is not None and line.unresponsive,
            )
            line = _line(app, frozen.id)
            assert line is not None
            shown = line.render(100).plain
            assert "UNRESPONSIVE" in shown and " ago" in shown
            assert f"{figures.percent:.1f}%" in shown  # its last figures, with their age

            # the other repository's figures still change while this one is stuck
            before = _line(app, healthy.id)
            assert before is not None
            healthy_fs.fill("grow.bin", 8 * MiB)
            await _until(
                pilot,
                "the healthy repository's new figures",
                lambda: (
                    (now_line := _line(app, healthy.id)) is not None and now_line.free < before.free
                ),
            )
            after = _line(app, healthy.id)
            assert after is not None and not after.unresponsive

            # the same word on the Capacity and Repositories screens
            await pilot.press("3")
            await _until(
                pilot,
                "UNRESPONSIVE on the Capacity screen",
                lambda: (
                    "UNRESPONSIVE" in str(app.screen.query_one(f"#cap-{frozen.id}", Static).content)
                ),
            )
            card = str(app.screen.query_one(f"#cap-{frozen.id}", Static).content)
            assert "did not answer within 1 s" in card or "still does not answer" in card
            await pilot.press("2")
            await _until(
                pilot,
                "unresponsive on the Repositories screen",
                lambda: (
                    "unresponsive"
                    in str(app.screen.query_one(DataTable).get_row(str(frozen.id))[3])
                ),
            )
            table = app.screen.query_one(DataTable)
            table.move_cursor(row=table.get_row_index(str(frozen.id)))
            await pilot.pause()
            detail = str(app.screen.query_one("#repo-detail", Static).content)
            assert "last figures" in detail and " ago" in detail  # stale, with its age

            # Test on it: "testing…" at once, then its result within the probe timeout
            await pilot.press("T")  # Test (key of the repositories scope)
            assert "testing" in str(table.get_row(str(frozen.id))[3])
            await _until(
                pilot,
                "the test's result",
                lambda: any(n.title == "Test failed" for n in app._notifications),
            )
            [failed] = [n for n in app._notifications if n.title == "Test failed"]
            assert "frozen" in failed.message and "answer" in failed.message

            fuse_dir.thaw()
            await _until(
                pilot,
                "the frozen repository back",
                lambda: engine.repositories.get("frozen").state == "ready",
            )
            await pilot.press("1")
            await _until(
                pilot,
                "the Dashboard line back",
                lambda: (
                    (line := _line(app, frozen.id)) is not None
                    and not line.unresponsive
                    and line.percent is not None
                ),
            )
            assert app.is_running
    finally:
        fuse_dir.thaw()
        engine.close()


def _cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command; a hang raises TimeoutExpired and fails the test."""
    return subprocess.run(
        [sys.executable, "-m", "sendense_tui.cli", *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=HANG,
        cwd=ROOT,
        env={**os.environ, "NO_COLOR": "1"},
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.root
def test_cli_answers_with_a_frozen_repository_and_marks_it_unresponsive(
    tmp_path: Path, fuse_dir: FuseDir
) -> None:
    state = tmp_path / "state"
    healthy = tmp_path / "healthy"
    for name, path in (("frozen", fuse_dir.path), ("healthy", healthy)):
        added = _cli(state, "repo", "add", name, "--path", str(path), "--create")
        assert added.returncode == 0, added.stderr
    disk = tmp_path / "disk.raw"
    disk.write_bytes(os.urandom(1 * MiB))
    assert _cli(state, "repo", "list").returncode == 0  # figures on record, as a poll leaves

    fuse_dir.freeze()
    try:
        listed = _cli(state, "repo", "list")
        assert listed.returncode == 0, listed.stderr
        rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
        assert " unresponsive " in rows["frozen"] and " ago)" in rows["frozen"]
        assert " ready " in rows["healthy"] and "ago" not in rows["healthy"]

        as_json = {r["name"]: r for r in json.loads(_cli(state, "repo", "list", "--json").stdout)}
        assert as_json["frozen"]["unresponsive"] is True
        assert as_json["frozen"]["figures_age_seconds"] is not None
        assert as_json["frozen"]["total_bytes"] > 0  # its last figures
        assert as_json["healthy"]["unresponsive"] is False

        shown = _cli(state, "repo", "show", "healthy")
        assert shown.returncode == 0, shown.stderr
        assert "state      ready" in shown.stdout
        assert "forecast   forecast after 24 h of history" in shown.stdout

        dead = _cli(state, "repo", "show", "frozen")
        assert dead.returncode == 0, dead.stderr
        assert "state      unresponsive: repository frozen did not answer" in dead.stdout
        assert " ago)" in dead.stdout

        # a backup into the healthy one runs, and the command ends after it
        backup = _cli(
            state, "backup", "run", "--repo", "healthy", "--vm", "vm1", "--disk", f"sda={disk}"
        )
        assert backup.returncode == 0, backup.stderr
        assert "vm1/sda: full" in backup.stdout
        # one into the frozen one fails with a sentence instead of hanging
        refused = _cli(
            state, "backup", "run", "--repo", "frozen", "--vm", "vm2", "--disk", f"sda={disk}"
        )
        assert refused.returncode != 0
        assert "repository frozen does not answer" in refused.stderr
        assert "Traceback" not in refused.stderr
    finally:
        fuse_dir.thaw()

    back = {r["name"]: r for r in json.loads(_cli(state, "repo", "list", "--json").stdout)}
    assert back["frozen"]["state"] == "ready" and back["frozen"]["unresponsive"] is False


# -- how it looks (deterministic: a stand-in hung statvfs on the seeded catalog) ----------


@pytest.fixture
def archive_stuck(demo_engine: Engine, clock: FixedClock) -> Iterator[None]:
    """archive-smb stops answering 12 minutes after its last sample. Snapshots need
    fixed figures and a fixed clock, which a real frozen FUSE directory cannot give:
    its statvfs is stood in for by one that blocks (the real FUSE tests are above)."""
    from engine.services import capacity as capacity_mod

    release = threading.Event()

    def hung(path: str) -> tuple[int, int, int, float, int]:
        release.wait()
        raise OSError(5, "released")

    real = capacity_mod.usage
    capacity_mod.usage = hung  # type: ignore[assignment]
    try:
        clock.advance(timedelta(minutes=12))
        demo_engine.capacity.reading_timeout = 0.1
        demo_engine.capacity.sample(demo_engine.repositories.get("archive-smb"))
        yield
    finally:
        capacity_mod.usage = real
        release.set()


@pytest.mark.parametrize("keys", [(), ("3",), ("2",)], ids=["dashboard", "capacity", "repos"])
def test_unresponsive_repository_snapshot_with_a_stand_in_hung_statvfs(
    snap_compare: Any, make_app: Callable[..., SendenseApp], archive_stuck: None, keys: tuple
) -> None:
    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=keys_then_settle(*keys))
