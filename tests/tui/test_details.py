"""Enter on a row of every list opens its detail view with the whole of it: an
event's message, a job's error, hint and log, a point's files and verification
history, an export's URI (``c`` copies it with OSC 52), a repository, a policy, a
copy rule. The rows are cut at 80 columns; the detail view never is."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from textual.widgets import DataTable, Tree

from engine.clock import FixedClock
from engine.runtime import Engine
from sendense_tui.app import SendenseApp
from sendense_tui.widgets.detail import DetailScreen
from tests.tui.conftest import keys_then_settle, settle

#: a message far longer than the Events column at 80x24, with its key words at the end
LONG_MESSAGE = (
    "copy of point #41 to offsite-nfs failed after 3 attempts: the destination refused "
    "the write (No space left on device) while 11.2G of 12G were still to go; the "
    "partial file was removed and the rule backs off for 20 minutes TAIL-WORDS-HERE"
)
JOB_ERROR = (
    "copy db01/vda #41 to offsite-nfs failed: no space left on offsite-nfs\n"
    "  -> free 9G on offsite-nfs (sendense policy apply) or lower the copy rule's latest count"
)


def words(text: str) -> str:
    return " ".join(text.split())


def shown(app: SendenseApp) -> str:
    screen = app.screen
    assert isinstance(screen, DetailScreen), f"no detail view on top: {screen!r}"
    return screen.content


async def _open(app: SendenseApp, pilot: object, *keys: str) -> str:
    await keys_then_settle(*keys)(pilot)  # type: ignore[arg-type]
    return shown(app)


def _long_event(engine: Engine, clock: FixedClock) -> int:
    entry = engine.audit.append(
        at=clock.now() - timedelta(seconds=30),
        level="error",
        source="copy",
        kind="copy.failed",
        message=LONG_MESSAGE,
        data={"attempts": 3},
        repository_id=engine.repository_store.get("offsite-nfs").id,
    )
    return entry.id


async def test_enter_on_an_event_shows_its_whole_message_and_esc_closes(
    make_app: Callable[..., SendenseApp], demo_engine: Engine, clock: FixedClock
) -> None:
    entry_id = _long_event(demo_engine, clock)
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await keys_then_settle("8")(pilot)
        table = app.screen.query_one("#events", DataTable)
        # the row is cut: the list never shows the end of the message
        assert "TAIL-WORDS-HERE" not in str(table.get_row_at(0)[3].plain[: table.size.width])
        text = await _open(app, pilot, "enter")
        assert f"Event #{entry_id}" in app.screen.title_text  # type: ignore[attr-defined]
        assert words(LONG_MESSAGE) in words(text)
        assert "copy.failed" in text and "attempts" in text
        assert "repository offsite-nfs" in words(text)  # named, not an id
        await pilot.press("escape")
        await settle(pilot)
        assert app.screen.MODE == "events"  # type: ignore[attr-defined]
        # q closes it too, and does not leave the section
        await _open(app, pilot, "enter")
        await pilot.press("q")
        await settle(pilot)
        assert app.screen.MODE == "events"  # type: ignore[attr-defined]


async def test_enter_on_a_failed_job_shows_its_error_hint_and_log(
    make_app: Callable[..., SendenseApp], demo_engine: Engine, clock: FixedClock
) -> None:
    store = demo_engine.job_store
    now = clock.now()
    job = store.create(
        "copy", "copy db01/vda #41 → offsite-nfs (a long title that is cut)", now=now
    )
    store.claim(job.id, "demo-appliance:1", now, timedelta(days=1))
    store.finish(job.id, "demo-appliance:1", "failed", now, error=JOB_ERROR)
    for message in ("started: copy db01/vda #41", "attempt 3 of 3 failed: ENOSPC"):
        demo_engine.audit.append(
            at=now, level="info", source="copy", kind="job.note", message=message, job_id=job.id
        )
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await keys_then_settle("6")(pilot)
        finished = app.screen.query_one("#finished", DataTable)
        finished.focus()
        finished.move_cursor(row=finished.get_row_index(str(job.id)))
        text = words(await _open(app, pilot, "enter"))
        assert words("copy db01/vda #41 → offsite-nfs (a long title that is cut)") in text
        assert "error copy db01/vda #41 to offsite-nfs failed: no space left on offsite-nfs" in text
        assert (
            "what to do free 9G on offsite-nfs (sendense policy apply) or lower the copy "
            "rule's latest count"
        ) in text
        assert "Log (2)" in text
        assert "started: copy db01/vda #41" in text and "attempt 3 of 3 failed: ENOSPC" in text
        # another job's log lines are not this job's
        assert "backup web01/disk0 (full)" not in text


async def test_enter_on_a_point_shows_its_files_and_verification_history(
    make_app: Callable[..., SendenseApp], demo_engine: Engine, clock: FixedClock
) -> None:
    from sendense_tui.demo import seed_demo_chains

    seed_demo_chains(demo_engine, clock)
    view = next(
        v
        for v in demo_engine.chains.overview()
        if v.chain.vm_name == "web01" and len(v.points) == 4
    )
    point = view.points[-1].backup
    full = view.points[0].backup
    offsite = demo_engine.repository_store.get("offsite-nfs")
    copy = demo_engine.copy_store.create_copy(
        backup_id=point.id,
        destination_repository_id=offsite.id,
        path=point.path,
        size=point.file_size,
        now=clock.now(),
    )
    demo_engine.copy_store.add_verification(
        outcome="mismatch",
        started_at=clock.now() - timedelta(hours=1),
        finished_at=clock.now() - timedelta(minutes=50),
        copy_id=copy.id,
        detail="sha256 differs from the one recorded when it was written",
        bytes_read=123 << 20,
    )
    demo_engine.copy_store.add_verification(
        outcome="ok",
        started_at=clock.now() - timedelta(days=2),
        finished_at=clock.now() - timedelta(days=2),
        backup_id=point.id,
        bytes_read=410 << 20,
    )
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await keys_then_settle("4")(pilot)
        tree = app.screen.query_one("#chains-tree", Tree)
        node = next(n for n in _nodes(tree) if n.data == ("point", point.id))
        tree.move_cursor(node)
        text = words(await _open(app, pilot, "enter"))
        root = demo_engine.repository_store.get("primary").path
        # its own file, every file it is read through down to the full, and its copy
        assert f"{root}/{point.path}" in "".join(text.split())
        assert "".join(f"{root}/{full.path}".split()) in "".join(text.split())
        assert f"reads through #{full.id}" in text
        assert "copy · offsite-nfs" in text
        assert "Verification history (2)" in text
        assert "copy in offsite-nfs mismatch" in text
        assert "sha256 differs from the one recorded when it was written" in text
        # c copies the point's path
        assert app.screen.copy_value == f"{root}/{point.path}"  # type: ignore[attr-defined]


def _nodes(tree: Tree[object]) -> list[object]:
    out, stack = [], [tree.root]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(reversed(node.children))
    return out


async def test_enter_on_a_chain_shows_every_badge_and_on_a_vm_folds_it(
    make_app: Callable[..., SendenseApp], demo_engine: Engine, clock: FixedClock
) -> None:
    from sendense_tui.demo import seed_demo_chains

    seed_demo_chains(demo_engine, clock)
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await keys_then_settle("4")(pilot)
        tree = app.screen.query_one("#chains-tree", Tree)
        sdb = next(
            n
            for n in _nodes(tree)
            if isinstance(n.data, tuple) and n.data[0] == "chain" and "sdb" in str(n.label)
        )
        tree.move_cursor(sdb)
        text = words(await _open(app, pilot, "enter"))
        assert "[UNPROTECTED]" in text  # cut from the tree's line at 80 columns
        assert "Points (oldest first)" in text
        await pilot.press("escape")
        await settle(pilot)
        vm = next(n for n in _nodes(tree) if n.data == ("vm", "db01"))
        tree.move_cursor(vm)
        assert vm.is_expanded
        await keys_then_settle("enter")(pilot)
        assert not isinstance(app.screen, DetailScreen) and not vm.is_expanded


async def test_enter_on_an_export_shows_its_uri_and_c_copies_it_with_osc52(
    make_app: Callable[..., SendenseApp], demo_engine: Engine, tmp_path: Path
) -> None:
    from tests.tui.test_restore_screen import _seed

    _seed(demo_engine, tmp_path)
    uri = "nbd://127.0.0.1:10809/web01-sda"
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await keys_then_settle("7")(pilot)
        written: list[str] = []
        driver = app._driver
        assert driver is not None
        real_write = driver.write
        driver.write = lambda data: (written.append(data), real_write(data))[1]  # type: ignore[method-assign]
        app.screen.query_one("#exports", DataTable).focus()
        text = await _open(app, pilot, "enter")
        assert uri in "".join(text.split())
        assert "qemu-img info" in text
        await keys_then_settle("c")(pilot)
        assert app.clipboard == uri
        osc52 = f"\x1b]52;c;{base64.b64encode(uri.encode()).decode()}\a"
        assert osc52 in written, "the URI was not sent to the terminal as OSC 52"


async def test_enter_on_a_repository_policy_and_copy_rule_opens_their_details(
    make_app: Callable[..., SendenseApp], demo_engine: Engine
) -> None:
    from engine.services.policies import PolicySpec

    demo_engine.policies.add(
        PolicySpec(
            name="nightly",
            schedule="0 2 * * *",
            target="primary",
            sources=PolicySpec.sources_from(["web01:sda=/dev/vg/web01-sda"]),
            retention={"keep_last": 7},
        ),
        actor="test",
    )
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        text = words(await _open(app, pilot, "2", "enter"))
        assert "Repository archive-smb" in app.screen.title_text  # type: ignore[attr-defined]
        assert "/var/lib/sendense/mounts/archive-smb" in text
        assert "backups locked for 30 days" in text
        await keys_then_settle("escape", "5")(pilot)
        text = words(await _open(app, pilot, "enter"))
        assert "web01: sda=/dev/vg/web01-sda" in text and "3-2-1" in text
        await keys_then_settle("escape", "c")(pilot)
        text = words(await _open(app, pilot, "enter"))
        assert "route primary → offsite-nfs" in text
        assert "3 failed" in text and "mode scheduled (30 1 * * * UTC)" in text


async def test_a_long_detail_scrolls_and_keeps_its_key_line_on_screen(
    make_app: Callable[..., SendenseApp], demo_engine: Engine, clock: FixedClock
) -> None:
    store, now = demo_engine.job_store, clock.now()
    job = store.create("backup", "backup web01 (a chatty job)", now=now)
    for n in range(40):
        demo_engine.audit.append(
            at=now,
            level="info",
            source="backup",
            kind="job.note",
            message=f"step {n}",
            job_id=job.id,
        )
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await keys_then_settle("6")(pilot)
        active = app.screen.query_one("#active", DataTable)
        active.move_cursor(row=active.get_row_index(str(job.id)))
        await _open(app, pilot, "enter")
        detail = app.screen
        keys = detail.query_one("#detail-keys")
        assert keys.region.bottom <= 24 and keys.region.height == 1
        body = detail.query_one("#detail-body")
        assert body.max_scroll_y > 0 and body.scroll_y == 0
        await keys_then_settle("G")(pilot)
        assert body.scroll_y == body.max_scroll_y
        await keys_then_settle("g")(pilot)
        assert body.scroll_y == 0
