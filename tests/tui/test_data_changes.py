"""The console never dies from a data change: under every screen, while it is shown
and refreshing live, repositories, chains, policies, copy rules, jobs, restore mounts
and NBD exports come and go through the engine (real catalog rows, real directories,
a real QCOW2 file of a real ext4 disk, a real FUSE/loop mount, a real qemu-nbd), and
after each change the screen is still there, nothing raised, and its rows follow.

The Dashboard used to crash within a refresh of a repository coming or going
(``DuplicateIds: 'gauge-1'``: rows removed and mounted again under the same ids).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Tree

from engine.runtime import Engine
from engine.services.policies import PolicySpec
from engine.services.repositories import RepositorySpec
from sendense_tui.app import SendenseApp
from sendense_tui.screens.base import SendenseScreen
from sendense_tui.screens.dashboard import RepoGauge
from tests.engine.fsimages import Part, backup_chain, build_disk, loops_on, mounts_under

pytestmark = [pytest.mark.root, pytest.mark.slow]

#: screen -> how to reach it, and the kinds of thing it lists
SCREENS: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {
    "dashboard": ((), frozenset({"repo"})),
    "repositories": (("2",), frozenset({"repo"})),
    "capacity": (("3",), frozenset({"repo"})),
    "chains": (("4",), frozenset({"chain", "point"})),
    "policies": (("5",), frozenset({"policy"})),
    "jobs": (("6",), frozenset({"job"})),
    "restore": (("7",), frozenset({"point", "mount", "export"})),
    "events": (("8",), frozenset({"event"})),
    "copy_rules": (("5", "c"), frozenset({"rule"})),
}


def _keys(screen: SendenseScreen, selector: str, kind: str) -> set[str]:
    return {f"{kind}:{key.value}" for key in screen.query_one(selector, DataTable).rows}


def shown(screen: SendenseScreen) -> set[str]:
    """What the screen lists now, as ``kind:id`` tokens."""
    mode = screen.MODE
    if mode == "dashboard":
        return {f"repo:{w.id.removeprefix('gauge-')}" for w in screen.query(RepoGauge) if w.id}
    if mode == "repositories":
        return _keys(screen, "#repositories", "repo")
    if mode == "capacity":
        return {f"repo:{w.id.removeprefix('cap-')}" for w in screen.query(".capacity-card") if w.id}
    if mode == "chains":
        tree = screen.query_one("#chains-tree", Tree)
        found, stack = set(), [tree.root]
        while stack:
            node = stack.pop()
            stack.extend(node.children)
            if isinstance(node.data, tuple) and node.data[0] in ("chain", "point"):
                found.add(f"{node.data[0]}:{node.data[1]}")
        return found
    if mode == "policies":
        return _keys(screen, "#policies", "policy")
    if mode == "jobs":
        return _keys(screen, "#active", "job")
    if mode == "restore":
        return (
            _keys(screen, "#points", "point")
            | _keys(screen, "#mounts", "mount")
            | _keys(screen, "#exports", "export")
        )
    if mode == "events":
        return _keys(screen, "#events", "event")
    if mode == "copy_rules":
        return _keys(screen, "#rules", "rule")
    raise AssertionError(f"no probe for screen {mode}")


async def refreshed(pilot: Any, screen: SendenseScreen) -> None:
    """Wait until the screen drew data read after now (twice: a refresh already in
    flight may have read the catalog before the change)."""
    start = screen.draws
    screen.refresh_now()
    for _ in range(400):
        await pilot.pause(0.02)
        if screen.draws >= start + 2 and not screen.busy:
            break
        if not screen.busy:
            screen.refresh_now()
    else:
        raise AssertionError(f"{screen.MODE} did not refresh")
    await pilot.pause()


@pytest.fixture
def raw_disk(tmp_path: Path) -> Path:
    return build_disk(tmp_path / "disk.raw", [Part("ext4", 8, {"etc/hostname": b"web01\n"})])


@pytest.mark.parametrize("mode", list(SCREENS))
async def test_things_come_and_go_under_every_screen(
    mode: str,
    demo_engine: Engine,
    tmp_path: Path,
    raw_disk: Path,
) -> None:
    engine = demo_engine
    keys, kinds = SCREENS[mode]
    # live: the screen refreshes on its own timer and on engine events, as in use
    app = SendenseApp(engine, clock=engine.clock, refresh_seconds=0.05, live=True)
    mine: set[str] = set()

    def kind(token: str) -> str:
        return token.partition(":")[0]

    async with app.run_test(size=(80, 24)) as pilot:
        for key in keys:
            await pilot.press(key)
            await pilot.pause()
        screen = app.screen
        assert isinstance(screen, SendenseScreen) and mode == screen.MODE
        await refreshed(pilot, screen)
        baseline = shown(screen)

        async def check(step: str) -> None:
            await refreshed(pilot, screen)
            assert app.is_running and app.screen is screen, f"{mode}: gone after {step}"
            errors = [n.message for n in app._notifications if n.severity == "error"]
            assert errors == [], f"{mode}: after {step}: {errors}"
            now_shown = shown(screen)
            if "event" in kinds:
                newest = engine.audit.query(min_level="info", limit=1)[0]
                assert f"event:{newest.id}" in now_shown, f"{mode}: after {step}"
                return
            listed = {t for t in now_shown - baseline if kind(t) in kinds}
            assert listed == {t for t in mine if kind(t) in kinds}, f"{mode}: after {step}"

        def add_repo(name: str) -> int:
            folder = tmp_path / name
            folder.mkdir()
            repo = engine.repositories.add(
                RepositorySpec(name=name, path=str(folder)), actor="test"
            )
            mine.add(f"repo:{repo.id}")
            return repo.id

        def remove_repo(repo_id: int) -> None:
            engine.repositories.remove(repo_id, actor="test")
            mine.discard(f"repo:{repo_id}")

        # -- things come ----------------------------------------------------------------
        first = add_repo("extra-a")
        await check("a repository added")
        add_repo("extra-b")
        add_repo("extra-c")
        await check("two repositories added at once")

        chain_dir = tmp_path / "chain-repo"
        chain_dir.mkdir()
        points = backup_chain(
            engine.catalog, chain_dir, [raw_disk], now=engine.clock.now(), repo_name="chain-repo"
        )
        mine |= {
            f"repo:{points.repository_id}",
            f"chain:{points.chain_id}",
            f"point:{points.full_id}",
        }
        await check("a chain with a real point file")

        policy = engine.policies.add(
            PolicySpec(
                name="churn",
                schedule="0 2 * * *",
                target="extra-a",
                sources=PolicySpec.sources_from([f"churn:sda={raw_disk}"]),
                retention={"keep_last": 3},
            ),
            actor="test",
        )
        mine.add(f"policy:{policy.id}")
        await check("a policy added")

        rule = engine.copies.add_rule(
            name="churn-copy", source="chain-repo", destination="extra-b", actor="test"
        )
        mine.add(f"rule:{rule.id}")
        await check("a copy rule added")

        job = engine.jobs.submit("verify", "verify churn", {"scope": "all"}, actor="test")
        mine.add(f"job:{job.id}")
        await check("a job queued")

        mount = engine.file_restore.mount(points.full_id)
        mine.add(f"mount:{mount.id}")
        export = engine.exports.start(points.full_id, actor="test")
        mine.add(f"export:{export.id}")
        try:
            await check("a real mount and a real NBD export")
        finally:
            # -- and go ----------------------------------------------------------------------
            engine.exports.stop(export.id, actor="test")
            mine.discard(f"export:{export.id}")
            await check("the export stopped")
            engine.file_restore.unmount(mount.id, actor="test")
            mine.discard(f"mount:{mount.id}")
            await check("the mount removed")
        assert mounts_under(tmp_path) == [] and loops_on(tmp_path) == []

        engine.jobs.cancel(job.id, actor="test")
        mine.discard(f"job:{job.id}")
        await check("the job cancelled")

        engine.copies.remove_rule(rule.id, actor="test")
        mine.discard(f"rule:{rule.id}")
        await check("the copy rule removed")

        engine.policies.remove(policy.id, actor="test")
        mine.discard(f"policy:{policy.id}")
        await check("the policy removed")

        engine.chains.delete_point(points.full_id, actor="test", wait=False)
        # the point goes; its chain stays listed as retired until its repository goes
        mine.discard(f"point:{points.full_id}")
        await check("the chain's only point deleted with its file")
        assert not any(chain_dir.rglob("*.qcow2"))

        # one goes and another comes within one refresh: a new row, never a reused id
        remove_repo(first)
        add_repo("extra-d")
        await check("a repository removed and another added together")
        for token in sorted(t for t in mine if kind(t) == "repo"):
            remove_repo(int(token.partition(":")[2]))
        mine.discard(f"chain:{points.chain_id}")
        await check("every added repository removed")
        assert app.is_running


async def test_the_dashboard_follows_repositories_churning_on_every_refresh(
    make_app: Callable[..., SendenseApp], demo_engine: Engine, tmp_path: Path
) -> None:
    """The crash as it was seen: repositories added and removed faster than the
    Dashboard refreshes, for many refreshes in a row."""
    engine = demo_engine
    app = SendenseApp(engine, clock=engine.clock, refresh_seconds=0.01, live=True)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        assert isinstance(screen, SendenseScreen)
        await refreshed(pilot, screen)
        baseline = shown(screen)
        live: list[int] = []
        for n in range(12):
            folder = tmp_path / f"churn-{n}"
            folder.mkdir()
            live.append(
                engine.repositories.add(RepositorySpec(name=f"churn-{n}", path=str(folder))).id
            )
            if n % 2:
                engine.repositories.remove(live.pop(0))
            await pilot.pause(0.01)  # a refresh may land between any two changes
        await refreshed(pilot, screen)
        assert app.is_running and app.screen is screen
        assert shown(screen) - baseline == {f"repo:{i}" for i in live}
        assert [n.message for n in app._notifications if n.severity == "error"] == []
