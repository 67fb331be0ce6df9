"""Restore: pick a restore point, mount it, browse, select files, extract; NBD exports.

Restore points (VM, disk, time, kind) beside the browser of the shown mount
(a path line and a listing with size and time; Enter opens a folder, Backspace
goes up, Space marks; ``f`` finds files in the whole mount by name and lists the
matches with their full path until Esc or Backspace; ``/`` filters the list in
focus, as on every list); on a terminal narrower than ``SIDE_BY_SIDE`` columns the
browser goes below the points. Under them: the mounts with their time before
expiry, the NBD exports with their URI, the destination box and the status line.
Keys come from the command table (``actions.py``, scope "restore").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Input, Label, ProgressBar, Static

from engine.services.exports import ExportView
from engine.services.restore_archive import archived_summary
from engine.services.restore_extract import summary as extract_summary
from engine.services.restore_views import Entry, MountView
from engine.shapes import extract_result_dict
from engine.views import FINAL_STATES, Job, PointLocation
from sendense_tui.actions import bindings_for
from sendense_tui.details import export_detail
from sendense_tui.format import human_bytes, human_duration, plural, printable, safe_text
from sendense_tui.screens.base import SendenseScreen
from sendense_tui.styles import STYLES_DIR
from sendense_tui.widgets.archive_dialog import ArchiveDialog
from sendense_tui.widgets.bad_point import read_point
from sendense_tui.widgets.confirm import ConfirmDialog
from sendense_tui.widgets.quiet import show
from sendense_tui.widgets.tables import FlexTable, ListFiltered, cursor_key, sync_rows


@dataclass
class RestoreData:
    now: datetime
    points: list[PointLocation]
    mounts: list[MountView]
    exports: list[ExportView]
    mount_id: int | None = None
    path: str = ""
    entries: list[Entry] = field(default_factory=list)
    error: str = ""
    #: the extraction job this screen queued, as last read
    extraction: Job | None = None
    #: restore points in all (``points`` is the page shown) and the page's first one
    points_total: int = 0
    points_offset: int = 0


#: narrower than this, the browser goes below the restore points
SIDE_BY_SIDE = 110
NO_MOUNT = "no mount shown: pick a restore point and press m (or Enter)"
#: most matches a search lists
SEARCH_LIMIT = 1000
#: most items not restored an extraction's notice lists (`jobs show` lists them all)
NOT_RESTORED_SHOWN = 8
#: restore points read and listed at a time (] and [ turn the pages)
POINTS_PAGE = 100
POINTS_TITLE = "Restore points · m mounts"


@dataclass
class SearchResults:
    mount_id: int
    pattern: str
    entries: list[Entry]


class SearchInput(Input):
    """The search box; Esc inside it closes the search (an Input keeps the key)."""

    BINDINGS = [Binding("escape", "close_search", "Close", show=False)]

    def action_close_search(self) -> None:
        screen = self.screen
        if isinstance(screen, RestoreScreen):
            screen.action_close_search()


class RestoreScreen(SendenseScreen):
    MODE = "restore"
    #: a 100,000-point catalog is read again only when it changed
    WATCH_CHANGES = True
    CSS_PATH = STYLES_DIR / "restore.tcss"
    BINDINGS = bindings_for("restore")

    def __init__(self) -> None:
        super().__init__()
        self.mount_id: int | None = None
        self.path = ""
        self.marked: set[str] = set()
        self.progress_text = ""
        #: the ``restore.files`` job x queued, followed until it ends
        self.extraction_id: int | None = None
        #: the matches shown instead of the folder listing, if a search ran
        self.results: SearchResults | None = None
        #: as last read, for the questions x and u ask
        self._mounts: dict[int, MountView] = {}
        self._exports: dict[int, ExportView] = {}
        #: the page of restore points shown, and the filter's words (the catalog
        #: is asked for the matching page, not every point)
        self.points_offset = 0
        self.points_words: tuple[str, ...] = ()
        self._points_total = 0

    def compose_body(self) -> ComposeResult:
        # the layout's class before the widgets are styled: set once they are, every
        # widget of the screen is styled again (0.1 s on the UI thread)
        self._fit(self.app.size.width)
        with Horizontal(id="restore-main"):
            with Vertical(id="left"):
                yield Static(POINTS_TITLE, classes="title", id="points-title")
                yield FlexTable(
                    [
                        ("vm", "VM", None),
                        ("disk", "Disk", 6),
                        ("time", "Time", 16),
                        ("kind", "Kind", 4),
                    ],
                    id="points",
                    list_name="points",
                )
            with Vertical(id="right"):
                yield Static(NO_MOUNT, id="where")
                yield FlexTable(
                    [
                        ("mark", "", 1),
                        ("name", "Name", None),
                        ("size", "Size", 9),
                        ("time", "Modified", 16),
                    ],
                    id="files",
                    list_name="files",
                )
                yield SearchInput(
                    placeholder="find by name: a word or *.conf",
                    id="search",
                )
        with Horizontal(id="restore-bottom"):
            with Vertical(id="mounts-box"):
                yield Static("Mounted · u unmounts", classes="title")
                yield FlexTable(
                    [("point", "Point", None), ("fs", "FS", 4), ("expires", "Expires", 7)],
                    id="mounts",
                    list_name="mounts",
                )
            with Vertical(id="exports-box"):
                yield Static("NBD exports · N starts · x stops", classes="title")
                yield FlexTable(
                    [("uri", "URI", None), ("state", "State", 8), ("ends", "Idle/ends", 11)],
                    id="exports",
                    list_name="exports",
                )
        with Horizontal(id="destination-row"):
            yield Label("Restore to", id="destination-label")
            yield Input(placeholder="folder, e.g. /srv/restore", id="destination", compact=True)
            yield Label("as", id="owner-label")
            # empty: the backup's owners; a user name gives everything to that user
            yield Input(placeholder="owner (optional)", id="owner", compact=True)
        yield ProgressBar(total=100, show_eta=False, id="progress")
        yield Static("", id="status")

    def on_mount(self) -> None:
        self.query_one("#progress", ProgressBar).display = False
        self.query_one("#destination", Input).cursor_blink = self.sendense.live
        self.query_one("#owner", Input).cursor_blink = self.sendense.live
        search = self.query_one("#search", Input)
        search.cursor_blink = self.sendense.live
        search.display = False
        self.query_one("#points", DataTable).focus()

    def on_resize(self, event: events.Resize) -> None:
        self._fit(event.size.width)

    def _fit(self, width: int) -> None:
        # side by side the points list and the browser each need ~50 columns
        self.set_class(width < SIDE_BY_SIDE, "narrow")

    # -- data ----------------------------------------------------------------------

    def fetch(self) -> RestoreData:
        service = self.engine.file_restore
        mounts = service.list_mounts()
        offset = self.points_offset
        points, total = service.points_page(
            offset=offset, limit=POINTS_PAGE, words=self.points_words
        )
        data = RestoreData(
            now=self.sendense.clock.now(),
            points=points,
            points_total=total,
            points_offset=offset,
            mounts=mounts,
            exports=self.engine.exports.list(),
            extraction=(
                self.engine.jobs.get(self.extraction_id) if self.extraction_id is not None else None
            ),
        )
        mount_id = self.mount_id
        if mount_id is None and mounts:
            mount_id = mounts[0].id
        if mount_id is not None and any(m.id == mount_id for m in mounts):
            data.mount_id, data.path = mount_id, self.path
            if self.results is not None and self.results.mount_id == mount_id:
                return data  # the search results stay in the listing
            try:
                data.entries = _browse(
                    self.engine, next(m for m in mounts if m.id == mount_id), self.path
                )
            except Exception as exc:
                data.error = str(exc)
        return data

    def apply(self, data: RestoreData) -> None:
        self._follow(data.extraction)
        self.mount_id = data.mount_id
        self._mounts = {m.id: m for m in data.mounts}
        self._exports = {x.id: x for x in data.exports}
        results = self.results
        if results is not None and results.mount_id != data.mount_id:
            results = self.results = None  # its mount went away
        entries = results.entries if results is not None else data.entries
        self._show_page(data)
        sync_rows(
            self.query_one("#points", DataTable),
            [
                (
                    str(p.backup_id),
                    (p.vm_name, p.disk_name, f"{p.point_time:%Y-%m-%d %H:%M}", p.kind[:4]),
                )
                for p in data.points
            ],
            ("vm", "disk", "time", "kind"),
        )
        sync_rows(
            self.query_one("#mounts", DataTable),
            [
                (
                    str(m.id),
                    (
                        _point_label(m.point) if m.point else f"point {m.backup_id}",
                        ",".join(f.fs_type for f in m.filesystems if f.state == "mounted"),
                        human_duration(m.remaining(data.now).total_seconds()),
                    ),
                )
                for m in data.mounts
            ],
            ("point", "fs", "expires"),
        )
        sync_rows(
            self.query_one("#files", DataTable),
            [
                (
                    e.path,
                    (
                        "*" if e.path in self.marked else " ",
                        # escaped before Rich sees it (Text itself drops a bare \r)
                        Text(
                            printable(e.path if results is not None else e.name)
                            + ("/" if e.kind == "dir" else ""),
                            style="bold" if e.kind == "dir" else "",
                        ),
                        human_bytes(e.size) if e.kind != "dir" else "",
                        f"{e.mtime:%Y-%m-%d %H:%M}" if e.mtime else e.detail,
                    ),
                )
                for e in entries
            ],
            ("mark", "name", "size", "time"),
        )
        sync_rows(
            self.query_one("#exports", DataTable),
            [(str(x.id), (x.uri or x.name, x.state, _limits(x, data.now))) for x in data.exports],
            ("uri", "state", "ends"),
        )
        where = self.query_one("#where", Static)
        if data.mount_id is None:
            show(where, NO_MOUNT)
        else:
            mount = next(m for m in data.mounts if m.id == data.mount_id)
            remaining = human_duration(mount.remaining(data.now).total_seconds())
            if results is not None:
                found = len(results.entries)
                show(
                    where,
                    Text.assemble(
                        (f"search '{printable(results.pattern)}' · ", "bold"),
                        (f"{found}{'+' if found >= SEARCH_LIMIT else ''} found", "bold"),
                        (f"  in mount {mount.id} · Esc returns", "dim"),
                        (f"  {len(self.marked)} marked", "dim") if self.marked else "",
                    ),
                )
                show(self.query_one("#status", Static), safe_text(data.error or self.progress_text))
                return
            show(
                where,
                Text.assemble(
                    (f"mount {mount.id} ", "bold"),
                    f"/{printable(data.path)}  ",
                    (f"expires in {remaining}", "dim"),
                    (f"  {len(self.marked)} marked", "dim") if self.marked else "",
                ),
            )
        show(self.query_one("#status", Static), safe_text(data.error or self.progress_text))

    def _show_page(self, data: RestoreData) -> None:
        """The points' title names the page when there is more than one."""
        self._points_total = data.points_total
        title = POINTS_TITLE
        if data.points_total > POINTS_PAGE or data.points_offset:
            last = data.points_offset + len(data.points)
            title = (
                f"Points {data.points_offset + 1 if data.points else 0}-{last} "
                f"of {data.points_total:,} · ] [ pages · m mounts"
            )
        show(self.query_one("#points-title", Static), title)

    def on_list_filtered(self, event: ListFiltered) -> None:
        """The points' filter asks the catalog (every point, not the page shown)."""
        if event.listing is not self.query_one("#points", DataTable):
            return
        words = tuple(event.listing.filter_words)
        if not self.points_words and self._points_total <= POINTS_PAGE:
            words = ()  # every point is listed: the list filters them itself
        if words != self.points_words:
            self.points_words, self.points_offset = words, 0
            self.refresh_now()

    def _turn_page(self, offset: int) -> None:
        if offset == self.points_offset or offset < 0 or offset >= max(1, self._points_total):
            return
        self.points_offset = offset
        table = self.query_one("#points", DataTable)
        table.focus()
        table.move_cursor(row=0)
        self.refresh_now()

    def action_next_page(self) -> None:
        """]: the next page of restore points."""
        self._turn_page(self.points_offset + POINTS_PAGE)

    def action_previous_page(self) -> None:
        """[: the previous page of restore points."""
        self._turn_page(max(0, self.points_offset - POINTS_PAGE))

    # -- actions -------------------------------------------------------------------

    def action_mount(self) -> None:
        key = cursor_key(self.query_one("#points", DataTable))
        if key is None:
            return
        service = self.engine.file_restore

        def done(view: MountView) -> None:
            self.mount_id, self.path = view.id, ""
            self.marked.clear()
            self.sendense.notify(f"mounted {view.point.label if view.point else view.id}")
            if view.note:
                self.notify(view.note, severity="warning", timeout=15)

        read_point(
            self,
            int(key),
            lambda force: service.mount(int(key), force=force),
            what="Mount",
            after=done,
        )

    def action_unmount(self) -> None:
        """u: unmount the mount in focus (else the shown one), after saying what stops."""
        focused = self.focused
        mount_id = self.mount_id
        if focused is not None and focused.id == "mounts":
            key = cursor_key(self.query_one("#mounts", DataTable))
            mount_id = int(key) if key is not None else mount_id
        mount = self._mounts.get(mount_id) if mount_id is not None else None
        if mount_id is None or mount is None:
            self.notify("No mount to unmount: m mounts the selected restore point.")
            return
        what = _point_label(mount.point) if mount.point else f"point {mount.backup_id}"
        consequence = (
            f"Its files stop being readable at {mount.base_dir}; "
            + (f"{len(self.marked)} marked file(s) are unmarked; " if self.marked else "")
            + "the backup itself is not touched. Mount it again with m."
        )

        def unmount() -> None:
            self.engine.file_restore.unmount(mount_id, actor="console")

        def done(_: Any) -> None:
            self.notify(f"Unmounted {what} (mount {mount_id}).")

        def answered(yes: bool | None) -> None:
            if not yes:
                return
            if self.mount_id == mount_id:
                self.mount_id, self.path = None, ""
                self.marked.clear()
                self.results = None
            self.run_engine(unmount, after=done, description=f"unmount {mount_id}")

        self.app.push_screen(
            ConfirmDialog(f"Unmount {what} (mount {mount_id})?", consequence, yes_label="Unmount"),
            answered,
        )

    def _file_key(self) -> str | None:
        return cursor_key(self.query_one("#files", DataTable))

    def action_search(self) -> None:
        if self.mount_id is None:
            self.query_one("#status", Static).update("mount a restore point first, then search it")
            return
        box = self.query_one("#search", Input)
        box.display = True
        box.focus()

    def action_close_search(self) -> None:
        """Esc: close the search box, then the results; with neither, the app's Back."""
        box = self.query_one("#search", Input)
        if not box.display and self.results is None:
            self.sendense.action_escape()
            return
        box.display = False
        self.results = None
        self.query_one("#files", DataTable).focus()
        self.refresh_now()

    def _run_search(self, pattern: str) -> None:
        mount_id = self.mount_id
        if mount_id is None or not pattern:
            return
        engine = self.engine

        def show(entries: list[Entry]) -> None:
            if self.mount_id != mount_id:
                return
            self.results = SearchResults(mount_id, pattern, entries)
            self.query_one("#search", Input).display = False
            self.query_one("#files", DataTable).focus()

        self.run_engine(
            lambda: _search(engine, mount_id, pattern), after=show, description="search"
        )

    def action_open(self) -> None:
        focused = self.focused
        if focused is not None and focused.id == "mounts":
            key = cursor_key(self.query_one("#mounts", DataTable))
            if key is not None:
                self.mount_id, self.path = int(key), ""
                self.marked.clear()
                self.refresh_now()
            return
        if focused is not None and focused.id == "points":
            self.action_mount()
            return
        if focused is not None and focused.id == "exports":
            self.action_export_details()
            return
        key = self._file_key()
        if key is None:
            return
        if self.results is not None:
            entry = next((e for e in self.results.entries if e.path == key), None)
            if entry is not None and entry.kind != "dir":
                self.action_mark()  # a file found: mark it for extraction
                return
            self.results = None  # a folder found: open it
        self.path = key
        self.refresh_now()

    def action_up(self) -> None:
        if self.results is not None:
            self.results = None
            self.refresh_now()
            return
        if self.path:
            self.path = self.path.rpartition("/")[0]
            self.refresh_now()

    def action_mark(self) -> None:
        key = self._file_key()
        if key is None or "/" not in key:
            return
        self.marked.symmetric_difference_update({key})
        self.refresh_now()

    def action_extract(self) -> None:
        mount_id = self.mount_id
        box = self.query_one("#destination", Input)
        destination = box.value.strip()
        if mount_id is None:
            return
        if not destination or not Path(destination).is_absolute():
            self.query_one("#status", Static).update("enter an absolute destination folder first")
            box.focus()
            return
        key = self._file_key()
        paths = sorted(self.marked) or ([key] if key else [])
        if not paths:
            return
        owner = self.query_one("#owner", Input).value.strip() or None
        engine = self.engine

        def queued(job: Job) -> None:
            self.extraction_id = job.id
            self.progress_text = f"extraction queued as job {job.id} (Jobs shows it; c cancels)"
            bar = self.query_one("#progress", ProgressBar)
            bar.display = True
            bar.update(total=100, progress=0)

        # the job checks the selection and the destination first and refuses a bad one
        # with its sentence; it then runs in the job runner: Jobs shows it, c cancels it
        self.run_engine(
            lambda: engine.file_restore.submit_extract(
                mount_id, paths, destination, owner=owner, actor="console"
            ),
            after=queued,
            description="extract",
        )

    def action_save_archive(self) -> None:
        """The selection as one archive file (the ``restore.archive`` job): a dialog
        asks for the file name and the format; the bar and status line follow the job
        as they follow an extraction."""
        mount_id = self.mount_id
        under_cursor = self._file_key()
        paths = sorted(self.marked) or ([under_cursor] if under_cursor else [])
        if mount_id is None or not paths:
            return
        folder = self.query_one("#destination", Input).value.strip() or "/root"
        name = paths[0].rsplit("/", 1)[-1] if len(paths) == 1 else "restore"
        what = paths[0] if len(paths) == 1 else plural(len(paths), "item")
        engine = self.engine

        def queued(job: Job) -> None:
            self.extraction_id = job.id
            self.progress_text = f"archive queued as job {job.id} (Jobs shows it; c cancels)"

        def answered(choice: tuple[str, str] | None) -> None:
            if not choice or not choice[0]:
                return
            output, fmt = choice
            self.run_engine(
                lambda: engine.file_restore.submit_archive(
                    mount_id,
                    paths,
                    output,
                    kind="zip" if fmt == "zip" else "tar",
                    zstd=fmt == "tar.zst",
                    actor="console",
                ),
                after=queued,
                description="save as archive",
            )

        suggested = str(Path(folder) / f"{name}.tar")
        self.app.push_screen(ArchiveDialog(what, suggested), answered)

    def _follow(self, job: Job | None) -> None:
        """The extraction job's progress in the bar; its outcome in the status line."""
        if job is None or job.id != self.extraction_id:
            return
        bar = self.query_one("#progress", ProgressBar)
        if job.state not in FINAL_STATES:
            total = job.bytes_total
            bar.display = True
            bar.update(total=100, progress=100 * job.bytes_done / total if total else 0)
            return
        bar.display = False
        self.extraction_id = None
        result = job.result or {}
        if job.state != "succeeded":
            why = f": {job.error}" if job.error else ""
            self.progress_text = f"extraction job {job.id} {job.state}{why}"
            return
        self.marked.clear()
        if "output" in result:  # a saved archive (restore.archive)
            self.progress_text = archived_summary(result)
            return
        shown = extract_result_dict(result, job.id)
        missing = shown["not_restored"]
        self.progress_text = f"{extract_summary(shown)} to {shown['destination']}" + (
            f"; {len(missing)} NOT restored (listed; jobs show {job.id})" if missing else ""
        )
        if shown["note"]:
            self.notify(printable(shown["note"]), timeout=15)
        if missing:
            lines = [f"{item['path']}: {item['reason']}" for item in missing[:NOT_RESTORED_SHOWN]]
            if len(missing) > NOT_RESTORED_SHOWN:
                lines.append(f"... and {len(missing) - NOT_RESTORED_SHOWN} more")
            self.notify(
                printable("\n".join(lines)),
                title=f"{plural(len(missing), 'item')} not restored",
                severity="warning",
                timeout=30,
            )

    def action_export(self) -> None:
        key = cursor_key(self.query_one("#points", DataTable))
        if key is None:
            self.notify("Select a restore point first.", severity="warning")
            return
        backup_id = int(key)

        def done(view: ExportView) -> None:
            self.notify(
                f"exported point {backup_id}: {view.uri} (root only; stops after "
                f"{human_duration(view.idle_seconds)} without a client, "
                f"{_ends(view, self.sendense.clock.now())} UTC at the latest)"
            )
            if view.note:
                self.notify(view.note, severity="warning", timeout=15)

        read_point(
            self,
            backup_id,
            lambda force: self.engine.exports.start(backup_id, actor="console", force=force),
            what="Export",
            after=done,
        )

    def action_stop_export(self) -> None:
        """x: stop the selected NBD export, after saying who loses what."""
        key = cursor_key(self.query_one("#exports", DataTable))
        export = self._exports.get(int(key)) if key is not None else None
        if export is None:
            self.notify("No NBD export to stop: N exports the selected restore point.")
            return
        if export.state != "running":
            self.notify(f"NBD export {export.name} is already {export.state}.")
            return
        what = export.point_label or f"point {export.backup_id}"

        def done(view: ExportView) -> None:
            self.notify(f"Stopped NBD export {view.name} of {what}: {view.uri} is gone.")

        self.app.push_screen(
            ConfirmDialog(
                f"Stop NBD export {export.name}?",
                f"{export.uri} stops serving {what}: a client reading it now (a VM booted "
                "from it, a copy in progress) loses the disk at once. The backup itself is "
                "not touched.",
                yes_label="Stop export",
            ),
            lambda yes: (
                yes
                and self.run_engine(
                    lambda: self.engine.exports.stop(export.id, actor="console"),
                    after=done,
                    description=f"stop export {export.id}",
                )
            ),
        )

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # while typing a destination, letters are text, not commands
        typing = isinstance(self.focused, Input)
        return not (
            typing
            and action
            in (
                "mount",
                "mark",
                "extract",
                "save_archive",
                "unmount",
                "export",
                "stop_export",
                "up",
                "search",
                "next_page",
                "previous_page",
            )
        )

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        # Enter on a list: the table takes the key first and says "selected"
        if event.data_table.id in ("points", "mounts", "files"):
            event.stop()
            self.action_open()
        elif event.data_table.id == "exports":
            event.stop()
            self.action_export_details()

    def action_export_details(self) -> None:
        """Enter on an export: its whole URI (c copies it), socket, limits, how to read it."""
        key = cursor_key(self.query_one("#exports", DataTable))
        export = self._exports.get(int(key)) if key is not None else None
        if export is not None:
            self.app.push_screen(export_detail(export, self.sendense.clock.now()))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.input.id == "search":
            self._run_search(event.value.strip())
        else:
            self.action_extract()


def _point_label(point: PointLocation) -> str:
    return f"{point.vm_name}/{point.disk_name} {point.point_time:%m-%d %H:%M}"


def _browse(engine: Any, mount: MountView, path: str) -> list[Entry]:
    """The listing of ``path`` in the mount."""
    return list(engine.file_restore.ls(mount.id, path))


def _search(engine: Any, mount_id: int, pattern: str) -> list[Entry]:
    """Matches of ``pattern`` in the mount (at most SEARCH_LIMIT)."""
    return list(engine.file_restore.search(mount_id, pattern, limit=SEARCH_LIMIT))


def _ends(export: ExportView, now: datetime) -> str:
    """When an export ends at the latest (UTC): '17:00' today, else '11-25'."""
    if export.expires_at is None:
        return "-"
    ends = export.expires_at.astimezone(UTC)
    return f"{ends:%H:%M}" if ends.date() == now.astimezone(UTC).date() else f"{ends:%m-%d}"


def _limits(export: ExportView, now: datetime) -> str:
    """An export's idle timeout and when it ends at the latest: '30m/17:00'."""
    idle = human_duration(export.idle_seconds) if export.idle_seconds else "-"
    return f"{idle}/{_ends(export, now)}"
