"""The Restore screen on seeded rows (no real mount: the browser reads a fixture folder)."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.text import Text
from textual.widgets import DataTable

from engine.catalog.restore import RestoreStore
from engine.runtime import Engine
from sendense_tui.app import SendenseApp
from tests.engine.fsimages import MTIME, backup_chain_rows


def read_seeded_mounts(engine: Engine) -> None:
    """A mount row seeded by hand has no exporter behind it: its filesystems are plain
    folders. This engine's file-restore service reads those folders directly (the
    same listing and search code a real mount's folders go through); a row that names
    an exporter is read as a real mount, and fails as one."""
    import fnmatch

    from engine.errors import SendenseError
    from engine.safepath import clean_relative, resolve_no_symlinks
    from engine.services.file_restore import Entry
    from engine.services.restore_browse import _entry, _walk

    service = engine.file_restore
    real_ls, real_search = service.ls, service.search

    def seeded(mount_id: int) -> Any:
        mount = next((m for m in service.list_mounts() if m.id == mount_id), None)
        return None if mount is None or mount.exporter_pid is not None else mount

    def ls(mount_id: int, path: str = "") -> list[Entry]:
        try:
            return real_ls(mount_id, path)
        except Exception:
            mount = seeded(mount_id)
            if mount is None:
                raise
        if not path:
            return [
                Entry(
                    name=f.name, path=f.name, kind="dir", size=f.size, mtime=None, detail=f.fs_type
                )
                for f in mount.filesystems
            ]
        name, _, rest = path.partition("/")
        fs = mount.filesystem(name)
        target = resolve_no_symlinks(fs.path, clean_relative(rest))
        entries = [_entry(p, f"{path}/{p.name}") for p in sorted(target.iterdir())]
        entries.sort(key=lambda e: (e.kind != "dir", e.name))
        return entries

    def search(mount_id: int, pattern: str, *, limit: int) -> list[Entry]:
        try:
            return real_search(mount_id, pattern, limit=limit)
        except SendenseError:
            mount = seeded(mount_id)
            if mount is None:
                raise
        wildcard = any(ch in pattern for ch in "*?[")
        needle = pattern.lower() if wildcard else f"*{pattern.lower()}*"
        found = []
        for f in mount.filesystems:
            for item, rel in _walk(Path(f.path), (f.name,)):
                if fnmatch.fnmatchcase(rel[-1].lower(), needle):
                    found.append(_entry(item, "/".join(rel)))
                    if len(found) >= limit:
                        return found
        return found

    service.ls = ls  # type: ignore[method-assign]
    service.search = search  # type: ignore[method-assign]


def _seed(engine: Engine, tmp_path: Path) -> int:
    read_seeded_mounts(engine)
    now = engine.clock.now()
    point = backup_chain_rows(engine.catalog, tmp_path / "repo", now=now)
    fs = tmp_path / "fixture-fs"
    (fs / "etc").mkdir(parents=True)
    (fs / "etc" / "hosts").write_bytes(b"127.0.0.1 localhost\n")
    (fs / "readme.txt").write_bytes(b"x" * 2048)
    for p in (fs / "etc" / "hosts", fs / "readme.txt", fs / "etc"):
        os.utime(p, (MTIME, MTIME))
    store = RestoreStore(engine.catalog)
    row = store.add_mount(
        backup_id=point,
        state="mounted",
        base_dir=str(tmp_path / "m"),
        owner="elsewhere:1:x",
        filesystems=[
            {
                "name": "p1",
                "number": 1,
                "fs_type": "ext4",
                "state": "mounted",
                "path": str(fs),
                "size": 24 << 20,
            }
        ],
        created_at=now,
        last_used_at=now,
        expires_at=now + timedelta(minutes=42),
    )
    store.add_export(
        backup_id=point,
        export_name="web01-sda",
        socket_path=None,
        tcp_host="127.0.0.1",
        tcp_port=10809,
        uri="nbd://127.0.0.1:10809/web01-sda",
        pid=None,
        persistent=True,
        state="running",
        owner="elsewhere:1:x",
        started_at=now,
        idle_seconds=1800,
        last_active_at=now,
        expires_at=now + timedelta(hours=8),
    )
    return row.id


async def test_restore_screen_browses_seeded_mount(
    make_app: Callable[..., SendenseApp], demo_engine: Engine, tmp_path: Path
) -> None:
    _seed(demo_engine, tmp_path)
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("7")
        await pilot.pause()
        screen = app.screen
        for _ in range(50):
            if screen.draws:
                break
            await pilot.pause(0.05)
        where = str(screen.query_one("#where").render())
        assert "expires in 42" in where
        files = screen.query_one("#files")
        assert files.row_count == 1  # p1 at the top
        screen.path = "p1"
        screen.refresh_now()
        for _ in range(50):
            await pilot.pause(0.05)
            if files.row_count == 2:
                break
        assert [k.value for k in files.rows] == ["p1/etc", "p1/readme.txt"]


def test_restore_screen_snapshot(
    snap_compare, make_app, demo_engine: Engine, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from tests.tui.conftest import keys_then_settle

    _seed(demo_engine, tmp_path)
    assert snap_compare(make_app(), terminal_size=(100, 30), run_before=keys_then_settle("7"))


@pytest.mark.parametrize("size", [(80, 24), (100, 30), (120, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
async def test_restore_points_and_files_are_readable(
    make_app: Callable[..., SendenseApp],
    demo_engine: Engine,
    tmp_path: Path,
    clock,  # type: ignore[no-untyped-def]
    size: tuple[int, int],
) -> None:
    """Every column of the points list is wide enough for its text, and the
    browser sits beside the points (wide) or below them (narrow)."""
    from sendense_tui.demo import seed_demo_chains
    from tests.tui.conftest import settle

    seed_demo_chains(demo_engine, clock)
    _seed(demo_engine, tmp_path)
    app = make_app()
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        await pilot.press("7")
        await settle(pilot)
        screen = app.screen
        points = screen.query_one("#points", DataTable)
        assert points.row_count > 10
        for column in points.columns.values():
            cells = [str(cell) for cell in points.get_column(column.key)]
            assert column.width >= max(len(cell) for cell in cells), column.label
        left, right = screen.query_one("#left").region, screen.query_one("#right").region
        if size[0] >= 110:
            assert left.right <= right.x and left.y == right.y
        else:
            assert left.bottom <= right.y and left.width == size[0]
        assert points.region.height >= 5 and screen.query_one("#files").region.height >= 5
        # Enter on the browser opens the folder under the cursor
        screen.query_one("#files", DataTable).focus()
        await pilot.press("enter")
        await settle(pilot)
        files = screen.query_one("#files", DataTable)
        assert [k.value for k in files.rows] == ["p1/etc", "p1/readme.txt"]


async def test_N_exports_the_selected_point_and_shows_its_uri(
    make_app: Callable[..., SendenseApp], demo_engine: Engine, tmp_path: Path
) -> None:
    """Real qemu-nbd on a unix socket: first the point's file is missing (the
    notification names it, nothing is exported), then a real qcow2 is served."""
    from tests.engine.fsimages import sh
    from tests.tui.conftest import settle

    _seed(demo_engine, tmp_path)
    point = demo_engine.chain_store.list_backups()[0][0]
    qcow2 = tmp_path / "repo" / "web01" / "sda" / "0000.qcow2"
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("7")
        await settle(pilot)
        screen = app.screen
        screen.query_one("#points", DataTable).focus()
        await pilot.press("N")
        await settle(pilot)
        messages = [n.message for n in app._notifications]
        assert any(
            f"restore point {point.id}" in m and "web01/sda/0000.qcow2" in m and "missing" in m
            for m in messages
        )
        assert [x for x in demo_engine.exports.list() if x.name == f"point-{point.id}"] == []

        qcow2.parent.mkdir(parents=True)
        sh("qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "16M")
        await pilot.press("N")
        await settle(pilot)
        try:
            mine = [x for x in demo_engine.exports.list() if x.name == f"point-{point.id}"]
            assert len(mine) == 1 and mine[0].uri.startswith("nbd+unix:///")
            exports = screen.query_one("#exports", DataTable)
            uris = [str(exports.get_row_at(i)[0]) for i in range(exports.row_count)]
            assert mine[0].uri in uris
            assert any(mine[0].uri in n.message for n in app._notifications)
        finally:
            for x in demo_engine.exports.list():
                if x.name == f"point-{point.id}":
                    demo_engine.exports.stop(x.id)
        await pilot.press("question_mark")
        await settle(pilot)
        rows = {row.description: row.keys for row in app.screen.rows}  # type: ignore[attr-defined]
        assert rows["Serve the selected restore point read-only over NBD (a unix socket)"] == "N"


async def test_f_finds_files_in_the_mount_by_name_and_esc_returns_to_the_listing(
    make_app: Callable[..., SendenseApp], demo_engine: Engine, tmp_path: Path
) -> None:
    from tests.tui.conftest import settle

    _seed(demo_engine, tmp_path)
    (tmp_path / "fixture-fs" / "etc" / "nginx").mkdir()
    (tmp_path / "fixture-fs" / "etc" / "nginx" / "nginx.conf").write_bytes(b"events {}\n")
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("7")
        await settle(pilot)
        screen = app.screen
        files = screen.query_one("#files", DataTable)
        files.focus()
        await pilot.press("f")
        search = screen.query_one("#search")
        assert search.display and screen.focused is search
        # Esc inside the box closes it and gives the listing the keys again
        await pilot.press("escape")
        await settle(pilot)
        assert not search.display and screen.focused is files and app.screen is screen

        await pilot.press("f", *"NGINX", "enter")
        await settle(pilot)
        assert [k.value for k in files.rows] == ["p1/etc/nginx", "p1/etc/nginx/nginx.conf"]
        assert str(files.get_row_at(1)[1]) == "p1/etc/nginx/nginx.conf"
        assert "search 'NGINX' · 2 found" in str(screen.query_one("#where").render())
        assert screen.focused is files and not search.display
        # Enter on a file found marks it for extraction
        files.move_cursor(row=1)
        await pilot.press("enter")
        await settle(pilot)
        assert screen.marked == {"p1/etc/nginx/nginx.conf"}

        await pilot.press("escape")
        await settle(pilot)
        assert [k.value for k in files.rows] == ["p1"]
        assert "expires in" in str(screen.query_one("#where").render())
        assert app.screen is screen

        # Enter on a folder found opens it
        await pilot.press("f", *"nginx", "enter")
        await settle(pilot)
        files.move_cursor(row=0)
        await pilot.press("enter")
        await settle(pilot)
        assert [k.value for k in files.rows] == ["p1/etc/nginx/nginx.conf"]
        assert "/p1/etc/nginx" in str(screen.query_one("#where").render())

        await pilot.press("question_mark")
        await settle(pilot)
        rows = {row.description: row.keys for row in app.screen.rows}  # type: ignore[attr-defined]
        assert (
            rows["Find files in the whole shown mount by name (a word, or wildcards like *.conf)"]
            == "f"
        )


async def test_a_real_mount_that_went_away_is_reported_not_listed_empty(
    make_app: Callable[..., SendenseApp], demo_engine: Engine, tmp_path: Path
) -> None:
    """A mount whose exporter died leaves its mount-point folders behind: the browser
    must show the engine's "gone" sentence, not read those folders as the backup."""
    mount_id = _seed(demo_engine, tmp_path)
    RestoreStore(demo_engine.catalog).update_mount(mount_id, exporter_pid=2**22 + 17)
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("7")
        screen = app.screen
        for _ in range(50):
            if screen.draws:
                break
            await pilot.pause(0.05)
        screen.path = "p1"
        screen.refresh_now()
        status = screen.query_one("#status")
        for _ in range(50):
            await pilot.pause(0.05)
            if "is gone" in str(status.render()):
                break
        assert "is gone" in str(status.render())
        assert "p1/etc" not in [k.value for k in screen.query_one("#files").rows]


async def test_crafted_file_names_are_shown_escaped_and_never_as_markup(
    make_app: Callable[..., SendenseApp], demo_engine: Engine, tmp_path: Path
) -> None:
    """A guest's file names in the browser, the search results and the path line:
    control characters escaped (no row forged, no terminal escape), and markup in a
    name (a link that would run an action) shown as the characters it is."""
    from sendense_tui.format import printable
    from tests.tui.conftest import settle

    _seed(demo_engine, tmp_path)
    etc = tmp_path / "fixture-fs" / "etc"
    crafted = [
        "evil\nforged-row",
        "\x1b[2Jwipe",
        "cr\rhidden",
        "bad\udcffbyte",
        "csi\x9b31m",
        "[@click=app.quit]quit",
        "[bold red]loud",
    ]
    for name in crafted:
        (etc / name).write_bytes(b"x")
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("7")
        await settle(pilot)
        screen = app.screen
        screen.path = "p1/etc"
        screen.refresh_now()
        await settle(pilot)
        files = screen.query_one("#files", DataTable)
        shown = [files.get_row(key)[1] for key in files.rows]
        assert {str(cell) for cell in shown} == {printable(n) for n in [*crafted, "hosts"]}
        assert all(isinstance(cell, Text) for cell in shown)  # text, never parsed as markup
        assert "[@click=app.quit]quit" in {str(cell) for cell in shown}
        assert all(not cell.spans and not cell.style for cell in shown)  # "[bold red]": no style
        # what reaches the terminal: no raw escape, no carriage return, one line per row
        svg = app.export_screenshot()
        assert "\x1b" not in svg and "\r" not in svg and "\x9b" not in svg
        assert "\\x1b[2Jwipe" in svg.replace("&#160;", " ")

        # the same names as search results
        await pilot.press("f", *"i", "enter")
        await settle(pilot)
        found = {str(files.get_row(key)[1]) for key in files.rows}
        assert "p1/etc/\\x1b[2Jwipe" in found and "p1/etc/evil\\nforged-row" in found


@pytest.mark.root
async def test_R_extracts_as_a_restore_files_job_that_jobs_shows(
    make_app: Callable[..., SendenseApp], demo_engine: Engine, tmp_path: Path
) -> None:
    """A real mount of a real backup: R queues the marked file as a ``restore.files``
    job (the Jobs screen lists it, c there cancels it), the job runner restores it,
    and the screen says what was restored once the job has ended."""
    import pwd
    import time

    from tests.engine.fsimages import Part, backup_chain, build_disk
    from tests.tui.conftest import settle

    raw = build_disk(tmp_path / "disk.raw", [Part("ext4", 16, {"docs/report.txt": b"q\n" * 500})])
    (tmp_path / "repo").mkdir()
    now = demo_engine.clock.now()
    point = backup_chain(demo_engine.catalog, tmp_path / "repo", [raw], now=now).full_id
    view = demo_engine.file_restore.mount(point)
    out = tmp_path / "out"
    app = make_app()
    async with app.run_test(size=(140, 40)) as pilot:
        await settle(pilot)
        await pilot.press("7")
        await settle(pilot)
        screen = app.screen
        screen.mount_id, screen.path = view.id, "p1/docs"  # type: ignore[attr-defined]
        screen.marked = {"p1/docs/report.txt"}  # type: ignore[attr-defined]
        screen.query_one("#destination").value = str(out)  # type: ignore[attr-defined]
        screen.query_one("#owner").value = "nobody"  # type: ignore[attr-defined]
        screen.query_one("#files").focus()
        await pilot.press("R")
        await settle(pilot)
        [job] = demo_engine.jobs.list(kind="restore.files")
        assert job.state == "queued" and job.actor == "console"
        assert "queued as job" in str(screen.query_one("#status").render())
        # the demo's seeded jobs are rows only (no runnable params): out of the way
        for other in demo_engine.jobs.list(states=("queued", "running", "paused")):
            if other.id != job.id:
                demo_engine.jobs.cancel(other.id)
        demo_engine.jobs.start()
        deadline = time.monotonic() + 60
        while demo_engine.jobs.get(job.id).state not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline
            await pilot.pause(0.1)
        screen.refresh_now()  # type: ignore[attr-defined]
        await settle(pilot)
        status = str(screen.query_one("#status").render())

        # again: the file is there already; the screen says it was NOT restored
        screen.marked = {"p1/docs/report.txt"}  # type: ignore[attr-defined]
        screen.query_one("#files").focus()
        await pilot.press("R")
        await settle(pilot)
        again = max(j.id for j in demo_engine.jobs.list(kind="restore.files"))
        while demo_engine.jobs.get(again).state not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline
            await pilot.pause(0.1)
        screen.refresh_now()  # type: ignore[attr-defined]
        await settle(pilot)
        second = str(screen.query_one("#status").render())
        notices = [n.message for n in app._notifications]
    assert demo_engine.jobs.get(job.id).state == "succeeded"
    assert (out / "report.txt").read_bytes() == b"q\n" * 500
    assert "restored 1 file" in status and str(out) in status
    # the owner box gave the file to that user
    assert (out / "report.txt").stat().st_uid == pwd.getpwnam("nobody").pw_uid
    assert "restored 0 files" in second and "1 NOT restored" in second
    assert any("report.txt: already exists" in n for n in notices)


@pytest.mark.root
async def test_A_saves_the_selection_as_an_archive_job(
    make_app: Callable[..., SendenseApp], demo_engine: Engine, tmp_path: Path
) -> None:
    """ "Save as archive" beside "extract": A asks for the file name and the format
    (the name follows the format picked), queues a ``restore.archive`` job, and the
    status line says what was saved once it has ended."""
    import tarfile
    import time
    import zipfile

    from textual.widgets import Input, RadioSet

    from sendense_tui.widgets.archive_dialog import ArchiveDialog
    from tests.engine.fsimages import Part, backup_chain, build_disk
    from tests.tui.conftest import settle

    raw = build_disk(tmp_path / "disk.raw", [Part("ext4", 16, {"docs/report.txt": b"q\n" * 500})])
    (tmp_path / "repo").mkdir()
    now = demo_engine.clock.now()
    point = backup_chain(demo_engine.catalog, tmp_path / "repo", [raw], now=now).full_id
    view = demo_engine.file_restore.mount(point)
    app = make_app()
    async with app.run_test(size=(140, 40)) as pilot:
        await settle(pilot)
        await pilot.press("7")
        await settle(pilot)
        screen = app.screen
        screen.mount_id, screen.path = view.id, "p1"  # type: ignore[attr-defined]
        screen.marked = {"p1/docs"}  # type: ignore[attr-defined]
        screen.query_one("#destination").value = str(tmp_path)  # type: ignore[attr-defined]
        screen.query_one("#files").focus()
        await pilot.press("A")
        await settle(pilot)
        dialog = app.screen
        assert isinstance(dialog, ArchiveDialog)
        name = dialog.query_one("#archive-name", Input)
        assert name.value == str(tmp_path / "docs.tar")
        formats = dialog.query_one("#archive-format", RadioSet)
        formats.focus()
        await pilot.press("down", "down", "enter")  # the third choice: zip
        await settle(pilot)
        assert name.value == str(tmp_path / "docs.zip")
        name.focus()
        await pilot.press("enter")
        await settle(pilot)
        [job] = demo_engine.jobs.list(kind="restore.archive")
        assert job.state == "queued" and job.actor == "console"
        for other in demo_engine.jobs.list(states=("queued", "running", "paused")):
            if other.id != job.id:
                demo_engine.jobs.cancel(other.id)
        demo_engine.jobs.start()
        deadline = time.monotonic() + 60
        while demo_engine.jobs.get(job.id).state not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline
            await pilot.pause(0.1)
        screen.refresh_now()  # type: ignore[attr-defined]
        await settle(pilot)
        status = str(screen.query_one("#status").render())
    assert demo_engine.jobs.get(job.id).state == "succeeded", demo_engine.jobs.get(job.id).error
    with zipfile.ZipFile(tmp_path / "docs.zip") as archive:
        assert archive.read("docs/report.txt") == b"q\n" * 500
    assert not tarfile.is_tarfile(tmp_path / "docs.zip")
    assert "archived 1 file" in status and "docs.zip" in status
