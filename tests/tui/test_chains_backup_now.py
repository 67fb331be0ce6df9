"""Chains ``b`` backs up what the row shows: the selected chain's disk into that chain's
repository (on a VM row, each disk into its own chain's repository), from the source
the catalog knows, and its dialog names VM, disks, repositories and sources first.

Real backups: raw disks of a few MiB, real qemu-img, repositories in real directories.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from textual.widgets import Input, Static, Tree

from engine.clock import FixedClock
from engine.config import CapacitySettings, default_settings
from engine.runtime import Engine
from engine.services.backup import DiskSource
from engine.services.policies import PolicySpec
from engine.services.repositories import RepositorySpec
from sendense_tui.app import SendenseApp
from sendense_tui.demo import DEMO_OWNER
from sendense_tui.screens.chains import BackupNowDialog, ChainsScreen
from tests.tui.conftest import settle

MiB = 1024**2


def _disk(path: Path, fill: bytes) -> Path:
    with open(path, "wb") as f:
        f.truncate(4 * MiB)
        f.seek(MiB)
        f.write(fill * (256 * 1024 // len(fill)))
    return path


@pytest.fixture
def two_repo_engine(tmp_path: Path, clock: FixedClock) -> Iterator[Engine]:
    """web01: sda in "alpha", sdb in "beta"; "aaa-first" (alphabetically first, where
    the old ``b`` landed) holds nothing."""
    settings = dataclasses.replace(
        default_settings(tmp_path / "state"),
        capacity=dataclasses.replace(CapacitySettings(), min_free_bytes=0),
    )
    engine = Engine(settings, clock=clock, owner=DEMO_OWNER).open()
    for name in ("aaa-first", "alpha", "beta"):
        (tmp_path / name).mkdir()
        engine.repositories.add(RepositorySpec(name, "local", path=str(tmp_path / name)))
    sda = _disk(tmp_path / "web01-sda.raw", b"sda-1")
    sdb = _disk(tmp_path / "web01-sdb.raw", b"sdb-1")
    for repo, disk in (
        ("alpha", DiskSource("sda", str(sda))),
        ("beta", DiskSource("sdb", str(sdb))),
    ):
        run = engine.backups.run(repo, "web01", [disk], mode="full")
        assert run.ok, run.sentence()
    clock.advance(timedelta(hours=1))
    yield engine
    engine.close()


def _chains_by_repo(engine: Engine) -> dict[str, list[tuple[str, str, int]]]:
    out: dict[str, list[tuple[str, str, int]]] = {}
    for view in engine.chains.overview():
        out.setdefault(view.repository, []).append(
            (view.chain.vm_name, view.chain.disk_name, len(view.points))
        )
    return out


def _run_queued(engine: Engine) -> None:
    """Run every queued backup job as the job runner would (here, in this thread)."""
    for job in engine.job_store.list(states=("queued",), limit=50):
        p = job.params
        run = engine.backups.run(
            int(p["repository"]),
            p["vm"],
            [DiskSource(d["name"], d["source"], d["fmt"]) for d in p["disks"]],
        )
        assert run.ok, run.sentence()
        engine.job_store.claim(job.id, DEMO_OWNER, engine.clock.now(), timedelta(hours=1))
        engine.job_store.finish(job.id, DEMO_OWNER, "succeeded", engine.clock.now())


async def _open_chains(app: SendenseApp, pilot) -> tuple[ChainsScreen, Tree]:  # type: ignore[no-untyped-def]
    await settle(pilot)
    await pilot.press("4")
    await settle(pilot)
    screen = app.screen
    assert isinstance(screen, ChainsScreen)
    return screen, screen.query_one("#chains-tree", Tree)


def _dialog_text(dialog: BackupNowDialog) -> str:
    return "\n".join(str(s.render()) for s in dialog.query(Static))


async def test_b_on_a_vm_row_backs_each_disk_up_into_its_own_chains_repository(
    two_repo_engine: Engine, clock: FixedClock
) -> None:
    engine = two_repo_engine
    before = _chains_by_repo(engine)
    assert before == {"alpha": [("web01", "sda", 1)], "beta": [("web01", "sdb", 1)]}
    app = SendenseApp(engine, clock=clock, live=False)
    async with app.run_test(size=(120, 40)) as pilot:
        _screen, tree = await _open_chains(app, pilot)
        await pilot.press("j")  # the first line: the VM
        await settle(pilot)
        assert tree.cursor_node is not None and tree.cursor_node.data == ("vm", "web01")
        await pilot.press("b")
        await settle(pilot)
        dialog = app.screen
        assert isinstance(dialog, BackupNowDialog)
        text = _dialog_text(dialog)
        assert "Back up web01 (sda, sdb) now into alpha, beta?" in text
        assert "sda → alpha" in text and "sdb → beta" in text
        assert "aaa-first" not in text
        sources = [box.value for box in dialog.query(Input)]
        assert sources == [
            f"sda={engine.settings.state_dir.parent / 'web01-sda.raw'}",
            f"sdb={engine.settings.state_dir.parent / 'web01-sdb.raw'}",
        ]
        await pilot.press("enter")
        await settle(pilot)
        assert not isinstance(app.screen, BackupNowDialog)
    queued = engine.job_store.list(states=("queued",), limit=50)
    assert sorted(j.title for j in queued) == [
        "back up web01 (sda) to alpha",
        "back up web01 (sdb) to beta",
    ]
    _run_queued(engine)
    # each disk got an incremental in its own chain; nothing landed anywhere else
    assert _chains_by_repo(engine) == {
        "alpha": [("web01", "sda", 2)],
        "beta": [("web01", "sdb", 2)],
    }
    assert list((engine.settings.state_dir.parent / "aaa-first").rglob("*.qcow2*")) == []


async def test_b_on_a_point_row_uses_that_chain_and_its_policy_source(
    two_repo_engine: Engine, clock: FixedClock, tmp_path: Path
) -> None:
    engine = two_repo_engine
    # the policy that backs sdb up into beta names the source (and wins over the point's)
    moved = _disk(tmp_path / "web01-sdb-moved.raw", b"sdb-2")
    engine.policies.add(
        PolicySpec(
            name="web-nightly",
            schedule="0 2 * * *",
            target="beta",
            sources=PolicySpec.sources_from([f"web01:sdb={moved}"]),
        )
    )
    sdb_point = next(v for v in engine.chains.overview() if v.chain.disk_name == "sdb").points[0]
    app = SendenseApp(engine, clock=clock, live=False)
    async with app.run_test(size=(120, 40)) as pilot:
        _screen, tree = await _open_chains(app, pilot)
        line = next(n for n in tree._tree_lines if n.node.data == ("point", sdb_point.backup.id))
        tree.move_cursor(line.node)
        await settle(pilot)
        await pilot.press("b")
        await settle(pilot)
        dialog = app.screen
        assert isinstance(dialog, BackupNowDialog)
        text = _dialog_text(dialog)
        assert "Back up web01 (sdb) now into beta?" in text
        assert "source from policy web-nightly" in text
        assert [box.value for box in dialog.query(Input)] == [f"sdb={moved}"]
        await pilot.press("enter")
        await settle(pilot)
    [job] = engine.job_store.list(states=("queued",), limit=50)
    assert job.title == "back up web01 (sdb) to beta"
    assert job.params["disks"][0]["source"] == str(moved)


async def test_b_asks_for_a_source_the_catalog_does_not_know(
    two_repo_engine: Engine, clock: FixedClock, tmp_path: Path
) -> None:
    """A point that recorded no source format (an older point): the box is empty
    but for the disk name, and Enter on it queues nothing until a source is typed."""
    engine = two_repo_engine
    view = next(v for v in engine.chains.overview() if v.chain.disk_name == "sda")
    point = view.points[0].backup
    tracking = dict(point.tracking or {})
    tracking.pop("source_format", None)
    engine.chain_store.update_backup(point.id, tracking=tracking)
    app = SendenseApp(engine, clock=clock, live=False)
    async with app.run_test(size=(120, 40)) as pilot:
        _screen, tree = await _open_chains(app, pilot)
        line = next(n for n in tree._tree_lines if n.node.data == ("chain", view.chain.id))
        tree.move_cursor(line.node)
        await settle(pilot)
        await pilot.press("b")
        await settle(pilot)
        dialog = app.screen
        assert isinstance(dialog, BackupNowDialog)
        assert "source not recorded: type it" in _dialog_text(dialog)
        box = dialog.query_one(Input)
        assert box.value == "sda=" and box.has_focus
        await pilot.press("enter")
        await settle(pilot)
        assert app.screen is dialog  # refused: no source
        assert "is not NAME=SOURCE" in _dialog_text(dialog) or "sda" in _dialog_text(dialog)
        assert engine.job_store.list(states=("queued",), limit=50) == []
        box.value = f"sda={tmp_path / 'web01-sda.raw'}"
        await pilot.press("enter")
        await settle(pilot)
    [job] = engine.job_store.list(states=("queued",), limit=50)
    assert job.title == "back up web01 (sda) to alpha"


async def test_cursor_stays_on_the_selected_point_when_new_points_land(
    two_repo_engine: Engine, clock: FixedClock, tmp_path: Path
) -> None:
    engine = two_repo_engine
    sdb_point = next(v for v in engine.chains.overview() if v.chain.disk_name == "sdb").points[0]
    app = SendenseApp(engine, clock=clock, live=False)
    async with app.run_test(size=(120, 40)) as pilot:
        screen, tree = await _open_chains(app, pilot)
        line = next(n for n in tree._tree_lines if n.node.data == ("point", sdb_point.backup.id))
        tree.move_cursor(line.node)
        await settle(pilot)
        for n in range(2):
            # a new point above the selected one (sda) and one after it (sdb)
            for repo, disk in (("alpha", "sda"), ("beta", "sdb")):
                source = DiskSource(disk, str(tmp_path / f"web01-{disk}.raw"))
                assert engine.backups.run(repo, "web01", [source]).ok
            clock.advance(timedelta(hours=1))
            screen.refresh_now()
            await settle(pilot)
            assert tree.cursor_node is not None
            assert tree.cursor_node.data == ("point", sdb_point.backup.id), n
            assert f"Point #{sdb_point.backup.id}" in str(
                screen.query_one("#chains-details", Static).render()
            )


def test_a_source_the_catalog_cannot_vouch_for_is_not_guessed(two_repo_engine: Engine) -> None:
    """The last point's source names hidden credentials, or its format was never
    recorded: no source (the dialog asks). A bitmap at the point means qcow2."""
    engine = two_repo_engine
    view = next(v for v in engine.chains.overview() if v.chain.disk_name == "sda")
    point = view.points[-1].backup
    repo = view.chain.repository_id
    known = engine.policies.known_source(repo, "web01", "sda")
    assert known is not None and known.disk.fmt == "raw" and known.origin == f"point #{point.id}"
    assert engine.policies.known_source(repo, "web01", "sdb") is None  # sdb is in beta
    engine.chain_store.update_backup(point.id, source="nbd://backup:***@agent/web01-sda")
    assert engine.policies.known_source(repo, "web01", "sda") is None
    tracking = {k: v for k, v in (point.tracking or {}).items() if k != "source_format"}
    engine.chain_store.update_backup(point.id, source=point.source, tracking=tracking)
    assert engine.policies.known_source(repo, "web01", "sda") is None
    engine.chain_store.update_backup(point.id, tracking={**tracking, "bitmap": "sendense-1"})
    known = engine.policies.known_source(repo, "web01", "sda")
    assert known is not None and known.disk.fmt == "qcow2"
