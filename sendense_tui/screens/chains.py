"""Chains: VM -> disk -> restore points, with sizes, state, lock and verification badges.

Keys: ``b`` back up a disk now (asks for the source path or URI), ``R`` restore
the selected point as a whole disk (asks for the target), ``c`` consolidate the
selected chain (merge its oldest point into a new full), ``d`` delete the
selected point (the dialog lists every later point that goes with it), ``i``
show what qemu-img reports about the point's file, ``F`` fix orphans after a crash
(remove stale partial files, import finished points the catalog never recorded;
asks first, never touches a locked file).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from rich.cells import cell_len
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static, Tree
from textual.widgets.tree import TreeNode

from engine.errors import ValidationError
from engine.services.backup import DiskSource
from engine.services.chains import ChainView, DeletePlan, PointView, VmSummary
from engine.services.changes import Tracking
from engine.services.imports import FixReport
from engine.services.policies import KnownSource
from engine.views import Backup
from sendense_tui.actions import bindings_for
from sendense_tui.details import chain_detail, point_detail
from sendense_tui.format import human_bytes, plural, printable, safe_text, short_time
from sendense_tui.screens.base import SendenseScreen
from sendense_tui.styles import STYLES_DIR
from sendense_tui.widgets.bad_point import read_point
from sendense_tui.widgets.confirm import ConfirmDialog
from sendense_tui.widgets.quiet import show
from sendense_tui.widgets.tables import LIST_BINDINGS, ListControls, matches


class ChainsTree(ListControls, Tree[tuple[str, Any]]):
    """The VM -> disk -> point tree, filtered, ordered and moved in as every list
    (the screen builds it; this widget holds the filter and the order)."""

    BINDINGS: ClassVar[list[Any]] = LIST_BINDINGS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.list_name = "chains"
        #: (chains shown, chains in all), set by the screen as it builds the tree
        self.shown_total = (0, 0)
        self._building = False

    @contextmanager
    def building(self) -> Iterator[None]:
        """Add many nodes, then lay the tree out once: Textual invalidates and
        refreshes the whole tree at every node added (a thousand points: a tenth
        of a second of the UI thread for that alone)."""
        self._building = True
        try:
            yield
        finally:
            self._building = False
            self._invalidate()

    def _invalidate(self) -> None:
        if not self._building:
            super()._invalidate()

    def process_label(self, label: str | Text) -> Text:
        """The screen's labels are one-line Texts made for the tree: taken as they
        are (Textual copies every label to keep its first line)."""
        if isinstance(label, Text) and "\n" not in label.plain:
            return label
        return super().process_label(label)

    def sort_columns(self) -> list[tuple[str, str]]:
        return [("vm", "VM"), ("size", "size on disk"), ("newest", "newest point")]

    def counts(self) -> tuple[int, int]:
        return self.shown_total

    def relist(self) -> None:
        screen = self.screen
        if isinstance(screen, ChainsScreen):
            screen.redraw()

    def move_to(self, row: int) -> None:
        if self.last_line >= 0:
            self.cursor_line = row % (self.last_line + 1)

    def get_label_width(self, node: TreeNode[tuple[str, Any]]) -> int:
        """The label's cells and its toggle, counted without rendering the label:
        Textual renders every label of the tree to find the widest at each rebuild
        (500 VMs and their placeholders: a tenth of a second on the UI thread)."""
        label = node.label
        width = label.cell_len if isinstance(label, Text) else cell_len(label)
        if not node.allow_expand:
            return width
        return width + cell_len(self.ICON_NODE_EXPANDED if node.is_expanded else self.ICON_NODE)


@dataclass
class ChainsData:
    now: datetime
    #: the chains and points of the VMs shown open (every VM on a small catalog)
    views: list[ChainView]
    #: every VM in a line (its points are loaded when it is opened)
    vms: list[VmSummary] = field(default_factory=list)
    #: the catalog is small enough to show every VM open, as it always was
    open_all: bool = True
    #: the tree's rows, drawn by the worker for a tree as wide as it was then (a
    #: thousand points' labels took a tenth of a second of the UI thread): point id
    #: -> label, chain id -> label and state, folded VM -> label
    compact: bool = False
    point_labels: dict[int, Text] = field(default_factory=dict)
    chain_labels: dict[int, Text] = field(default_factory=dict)
    states: dict[int, str] = field(default_factory=dict)
    vm_labels: dict[str, Text] = field(default_factory=dict)

    def draw(self, compact: bool) -> ChainsData:
        """Draw every row's label for a tree ``compact`` or not."""
        self.compact = compact
        for view in self.views:
            self.states[view.chain.id] = view.state
            self.chain_labels[view.chain.id] = _chain_label(view)
            for p in view.points:
                self.point_labels[p.backup.id] = point_label(
                    p.backup, self.now, p.locked, p.unprotected, compact=compact
                )
        loaded = {v.chain.vm_name for v in self.views}
        self.vm_labels = {s.vm: _folded_label(s) for s in self.vms if s.vm not in loaded}
        return self

    def label_of(self, point: PointView, compact: bool) -> Text:
        """A point's row, drawn now only when the tree's layout changed since."""
        label = self.point_labels.get(point.backup.id) if compact == self.compact else None
        if label is None:
            b = point.backup
            label = point_label(b, self.now, point.locked, point.unprotected, compact=compact)
        return label


#: up to this many restore points the tree opens every VM (one read of everything);
#: above, a VM's chains and points are read when it is opened (Space)
OPEN_ALL_POINTS = 2000


class AskDialog(ModalScreen[str | None]):
    """One line of input (Enter accepts, Esc cancels)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, placeholder: str = "") -> None:
        super().__init__()
        self.question = question
        self.placeholder = placeholder

    def compose(self) -> ComposeResult:
        with Vertical(id="ask"):
            yield Static(safe_text(self.question), id="ask-question")
            yield Input(id="ask-input")
            # the examples under the box, whole: a placeholder is cut at the box's width
            if self.placeholder:
                yield Static(safe_text(f"e.g. {self.placeholder}"), id="ask-example")
            yield Static("Enter: go   Esc: cancel", id="ask-keys")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


@dataclass(frozen=True)
class BackupTarget:
    """One disk ``b`` backs up: into its own chain's repository, from its known source."""

    repository_id: int
    repository: str
    disk: str
    #: None: the catalog does not know where the disk is read from (the operator says)
    known: KnownSource | None


class BackupNowDialog(ModalScreen[list[tuple[BackupTarget, DiskSource]] | None]):
    """Names what a backup will do before it is queued: the VM, each disk, the
    repository it lands in and the source it is read from (``NAME=SOURCE``, or
    ``NAME:qcow2=SOURCE``; editable, and empty when the catalog does not know it)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, vm: str, targets: list[BackupTarget]) -> None:
        super().__init__()
        self.vm = vm
        self.targets = targets

    def compose(self) -> ComposeResult:
        disks = ", ".join(t.disk for t in self.targets)
        repos = sorted({t.repository for t in self.targets})
        with Vertical(id="ask"):
            yield Static(
                safe_text(f"Back up {self.vm} ({disks}) now into {', '.join(repos)}?", "bold"),
                id="ask-question",
            )
            for i, t in enumerate(self.targets):
                origin = (
                    f"source from {t.known.origin}" if t.known else "source not recorded: type it"
                )
                yield Static(
                    safe_text(f"{t.disk} → {t.repository} (its chain)  · {origin}"),
                    classes="backup-target",
                )
                yield Input(
                    value=t.known.disk.shown if t.known else f"{t.disk}=",
                    placeholder=f"{t.disk}=/dev/vg/disk or {t.disk}:qcow2=/path/disk.qcow2",
                    id=f"backup-source-{i}",
                )
            yield Static("", id="backup-problem")
            yield Static("Enter: back up   Esc: cancel", id="ask-keys")

    def on_mount(self) -> None:
        for i, t in enumerate(self.targets):
            if t.known is None:
                self.query_one(f"#backup-source-{i}", Input).focus()
                return

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        chosen: list[tuple[BackupTarget, DiskSource]] = []
        for i, t in enumerate(self.targets):
            box = self.query_one(f"#backup-source-{i}", Input)
            try:
                disk = DiskSource.parse(box.value.strip())
            except ValidationError as exc:
                return self._problem(box, exc.message)
            if disk.name != t.disk:
                return self._problem(box, f"the disk is {t.disk}: write {t.disk}=SOURCE")
            chosen.append((t, disk))
        self.dismiss(chosen)

    def _problem(self, box: Input, sentence: str) -> None:
        self.query_one("#backup-problem", Static).update(safe_text(sentence, "bold red"))
        box.focus()

    def action_cancel(self) -> None:
        self.dismiss(None)


#: a tree narrower than this shows points compact: badges before the size
COMPACT_TREE = 70


def point_label(
    b: Backup, now: datetime, locked: bool, unprotected: bool = False, *, compact: bool = False
) -> Text:
    """``F #3 11-18 09:00  24G (24G data) [locked] [verified]``; compact (a narrow
    tree, 80 columns): ``F #3 11-18 09:00 [locked] [verified] 24G``, so what is cut
    at the edge is the size (the details pane has it), never a badge."""
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append("F " if b.kind == "full" else "+ ", style="bold")
    text.append(f"#{b.id} {short_time(b.point_time, now)}")
    if not compact:
        text.append("  ")
        text.append(f"{human_bytes(b.file_size)} ", style="cyan")
        text.append(f"({human_bytes(b.allocated_bytes)} data)", style="dim")
    _badges(text, b, locked, unprotected)
    if compact:
        text.append(f" {human_bytes(b.file_size)}", style="cyan")
    return text


def _badges(text: Text, b: Backup, locked: bool, unprotected: bool) -> None:
    if b.state != "complete":
        text.append(f" [{b.state}]", style="bold red")
    if unprotected:
        # a lock was due but its flag is not set: the one badge that must stand out
        text.append(" [UNPROTECTED]", style="bold white on red")
    elif locked:
        text.append(" [locked]", style="bold yellow")
    if b.verify_state == "ok":
        text.append(" [verified]", style="green")
    elif b.verify_state:
        text.append(f" [{b.verify_state}]", style="bold red")


def _tracking_text(tracking: dict[str, Any] | None) -> str:
    """How a point's data was found: ``bitmap (read 16 MiB, wrote 16 MiB)``, or the
    rung and why it fell back; a tracking check that found misses says so loudly."""
    if not tracking:
        return "-"
    t = Tracking.of(tracking)
    if t is None:
        return "-"
    text = t.summary()
    missed = (t.check or {}).get("missed_blocks")
    if t.check is not None:
        text += f"; tracking check: {'MISSED ' + plural(missed, 'block') if missed else 'ok'}"
    return text


class ChainsScreen(SendenseScreen):
    MODE = "chains"
    #: a 100,000-point catalog is read again only when it changed
    WATCH_CHANGES = True
    CSS_PATH = STYLES_DIR / "chains.tcss"
    BINDINGS = bindings_for("chains")

    def __init__(self) -> None:
        super().__init__()
        self._points: dict[int, tuple[Backup, ChainView]] = {}
        #: each point's lock badge facts (locked until, lock state)
        self._point_views: dict[int, PointView] = {}
        self._chains: dict[int, ChainView] = {}
        self._shape: list[Any] = []
        self._now: datetime | None = None
        self._data: ChainsData | None = None
        #: the VMs opened on a large catalog (their points are read at each refresh)
        self._open: set[str] = set()
        self._open_all = True
        #: the tree, for the worker to read its width (it queries no widget)
        self._tree: ChainsTree | None = None

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="chains-main"):
            tree = ChainsTree("Backups", id="chains-tree")
            tree.show_root = False
            tree.auto_expand = False  # Enter opens a row's details; Space folds
            yield tree
            yield Static("Select a restore point.", id="chains-details")

    def on_mount(self) -> None:
        self._tree = self.query_one("#chains-tree", ChainsTree)
        self._tree.focus()

    # -- data --------------------------------------------------------------------

    def fetch(self) -> ChainsData:
        chains = self.engine.chains
        now = self.sendense.clock.now()
        vms = chains.vm_summaries()
        # the labels are drawn here for the tree's width as it is now
        width = self._tree.size.width if self._tree is not None else 0
        compact = 0 < width < COMPACT_TREE
        if sum(vm.points for vm in vms) <= OPEN_ALL_POINTS:
            return ChainsData(now, chains.overview(), vms, open_all=True).draw(compact)
        opened = sorted(self._open)  # a copy: the UI thread changes the set
        found = ChainsData(now, chains.overview_of_vms(opened), vms, open_all=False)
        return found.draw(compact)

    def redraw(self) -> None:
        """Build the tree again from the last data (the filter or order changed)."""
        if self._data is not None:
            self.apply(self._data)

    def _arrange(
        self, views: list[ChainView], now: datetime
    ) -> list[tuple[ChainView | VmSummary, list[Any]]]:
        """The chains the tree's filter lets through (a chain whose VM, disk,
        repository or state does not match keeps the points that do), grouped by VM
        in the tree's order."""
        tree = self.query_one("#chains-tree", ChainsTree)
        words = tree.filter_words
        shown: list[tuple[ChainView | VmSummary, list[Any]]] = []
        loaded = {v.chain.vm_name for v in views}
        for summary in self._data.vms if self._data is not None else []:
            # a VM not opened yet: one row, matched on its disks and repositories
            about = " ".join(f"{summary.vm} {d} {r} {s}" for d, r, s in summary.chains)
            if summary.vm not in loaded and (not words or matches(words, [about])):
                shown.append((summary, []))
        for view in views:
            c = view.chain
            about = f"{c.vm_name} {c.disk_name} {view.repository} {view.state}"
            if not words or matches(words, [about]):
                shown.append((view, list(view.points)))
                continue
            points = [
                p
                for p in view.points
                if matches(words, [about, point_label(p.backup, now, p.locked, p.unprotected)])
            ]
            if points:
                shown.append((view, points))
        key = tree.sort_key
        if key is not None:
            per_vm: dict[str, Any] = {}
            for shown_item, points in shown:
                if isinstance(shown_item, VmSummary):
                    per_vm[shown_item.vm] = _summary_order(shown_item, key)
                    continue
                vm = shown_item.chain.vm_name
                if key == "size":
                    per_vm[vm] = per_vm.get(vm, 0) + shown_item.physical_bytes
                elif key == "newest":
                    newest = max((p.backup.point_time for p in points), default=None)
                    if newest is not None and (vm not in per_vm or newest > per_vm[vm]):
                        per_vm[vm] = newest
                    per_vm.setdefault(vm, None)
                else:
                    per_vm[vm] = vm.casefold()

            def order(item: tuple[ChainView | VmSummary, list[Any]]) -> Any:
                value = per_vm.get(_vm_of(item[0]))
                return (value is not None, value if value is not None else 0)

            shown.sort(key=order, reverse=tree.sort_reverse)
        else:
            shown.sort(key=lambda item: _vm_of(item[0]))
        tree.shown_total = (
            sum(len(v.chains) if isinstance(v, VmSummary) else 1 for v, _ in shown),
            sum(len(s.chains) for s in self._data.vms) if self._data else len(views),
        )
        return shown

    def apply(self, data: ChainsData) -> None:
        self._data = data
        self._now = data.now
        self._open_all = data.open_all
        self._chains = {v.chain.id: v for v in data.views}
        self._points = {p.backup.id: (p.backup, v) for v in data.views for p in v.points}
        self._point_views = {p.backup.id: p for v in data.views for p in v.points}
        arranged = self._arrange(data.views, data.now)
        tree = self.query_one("#chains-tree", ChainsTree)
        compact = 0 < tree.size.width < COMPACT_TREE
        shape = [
            (tree.filter_text, tree.sort_index, tree.sort_reverse),
            *(_shape_of(v, points, data.states) for v, points in arranged),
            compact,
        ]
        empty = not data.views and not data.vms
        if shape == self._shape:
            if empty:
                self._show_details()  # first draw of an empty catalog
            return  # nothing changed: keep the tree (and the cursor) as it is
        first_draw = not self._shape
        self._shape = shape
        if first_draw and empty:
            self._show_details()  # first draw of an empty catalog
            return
        selected = tree.cursor_node.data if tree.cursor_node is not None else None
        tree.clear()
        with tree.building():
            target_line = self._build(tree, arranged, selected, data, compact)
        if target_line is not None:
            # the rebuilt tree numbers its lines at its next refresh: a node has no line
            # before that, and moving to it now would leave the cursor on line 0
            node = target_line
            tree.call_after_refresh(lambda: (tree.move_cursor(node), self._show_details()))
        self._show_details()

    def _build(
        self,
        tree: Tree[Any],
        arranged: list[tuple[ChainView | VmSummary, list[Any]]],
        selected: Any,
        data: ChainsData,
        compact: bool,
    ) -> Any:
        """Fill the cleared tree; the node that was selected, if it is still there."""
        vms: dict[str, Any] = {}
        target_line = None
        vm_node: Any
        for view, points in arranged:
            if isinstance(view, VmSummary):
                label = data.vm_labels.get(view.vm) or _folded_label(view)
                vm_node = tree.root.add(label, ("vm", view.vm))
                # what Space opens: the VM's chains are read then
                vm_node.add_leaf(Text("loading…", style="dim"), ("loading", view.vm))
                if selected == ("vm", view.vm):
                    target_line = vm_node
                continue
            chain = view.chain
            vm_node = vms.get(chain.vm_name)
            if vm_node is None:
                # opened as added (expand() would post a NodeExpanded per node)
                vm_node = tree.root.add(
                    safe_text(chain.vm_name, "bold"), ("vm", chain.vm_name), expand=True
                )
                vms[chain.vm_name] = vm_node
            disk_node = vm_node.add(
                data.chain_labels.get(chain.id) or _chain_label(view),
                ("chain", chain.id),
                expand=chain.state != "retired",
            )
            if selected == ("chain", chain.id):
                target_line = disk_node
            elif selected == ("vm", chain.vm_name) and target_line is None:
                target_line = vm_node
            for p in points:
                node = disk_node.add_leaf(data.label_of(p, compact), ("point", p.backup.id))
                if selected == ("point", p.backup.id):
                    target_line = node
        return target_line

    def on_tree_node_expanded(self, event: Tree.NodeExpanded[Any]) -> None:
        """Opening a VM of a large catalog reads its chains and points (only then)."""
        data = event.node.data
        if self._open_all or not data or data[0] != "vm" or data[1] in self._open:
            return
        self._open.add(data[1])
        self.refresh_now()

    def on_tree_node_collapsed(self, event: Tree.NodeCollapsed[Any]) -> None:
        """Folding a VM of a large catalog forgets its points (a refresh reads less)."""
        data = event.node.data
        if not self._open_all and data and data[0] == "vm" and data[1] in self._open:
            self._open.discard(data[1])
            self.refresh_now()

    # -- details -----------------------------------------------------------------

    def on_resize(self, event: events.Resize) -> None:
        # the tree's width decides the point labels' layout (apply redraws the tree
        # only when that layout changed)
        if self._shape:
            self.refresh_now()

    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted[Any]) -> None:
        self._show_details()

    def on_tree_node_selected(self, event: Tree.NodeSelected[Any]) -> None:
        event.stop()
        self.action_open_details()

    def action_open_details(self) -> None:
        """Enter: a point's files and verification history, a chain's points with
        every badge uncut; on a VM, fold or unfold it."""
        sel, now = self._selection(), self._now
        if sel is None or now is None:
            return
        kind, ref = sel
        if kind == "point" and ref in self._points:
            backup = self._points[ref][0]
            lock = _lock_text(self._point_views.get(ref))
            tracking = _tracking_text(backup.tracking)
            self.run_engine(
                lambda: self.engine.details.point(ref),
                after=lambda details: self.app.push_screen(
                    point_detail(details, lock, tracking, now)
                ),
                description=f"details of point {ref}",
            )
        elif kind == "chain" and ref in self._chains:
            chain = self._chains[ref]
            labels = [point_label(p.backup, now, p.locked, p.unprotected) for p in chain.points]
            self.app.push_screen(chain_detail(chain, labels))
        else:
            node = self.query_one("#chains-tree", Tree).cursor_node
            if node is not None:
                node.toggle()

    def _selection(self) -> tuple[str, Any] | None:
        node = self.query_one("#chains-tree", Tree).cursor_node
        return node.data if node is not None else None

    def _show_details(self, extra: str = "") -> None:
        pane = self.query_one("#chains-details", Static)
        sel = self._selection()
        now = self._now
        if sel is None or now is None:
            if now is not None and not self._chains and not (self._data and self._data.vms):
                show(pane, "No backups yet. Press b to back up a disk.")
            else:
                show(pane, "Select a restore point (j/k or the arrows) to see its details.")
            return
        kind, ref = sel
        lines: list[str] = []
        if kind == "point" and ref in self._points:
            b, view = self._points[ref]
            lines = [
                f"Point #{b.id} — {b.kind}",
                f"{view.chain.vm_name}/{view.chain.disk_name} in {view.repository}",
                f"time      {b.point_time:%Y-%m-%d %H:%M} UTC",
                f"disk      {human_bytes(b.virtual_size)} (logical)",
                f"file      {human_bytes(b.file_size)}",
                f"data      {human_bytes(b.allocated_bytes)} (allocated here)",
                f"state     {b.state}" + (f": {b.state_detail}" if b.state_detail else ""),
                f"verified  {b.verify_state or 'never'}",
                f"found by  {_tracking_text(b.tracking)}",
                f"lock      {_lock_text(self._point_views.get(b.id))}",
                f"checksum  {(b.checksum or '-')[:16]}…",
                f"file      {b.path}",
                "",
                "i: qemu-img info   v: verify",
                "R: restore disk   d: delete",
            ]
        elif kind == "chain" and ref in self._chains:
            v = self._chains[ref]
            lines = [
                f"Chain #{v.chain.id} — {v.chain.vm_name}/{v.chain.disk_name}",
                f"repository {v.repository}",
                f"state      {v.state}",
                f"points     {len(v.points)}",
                f"logical    {human_bytes(v.logical_bytes)} per point, "
                f"{human_bytes(v.logical_total)} in all",
                f"physical   {human_bytes(v.physical_bytes)} in files",
                f"allocated  {human_bytes(v.allocated_bytes)} of data",
            ]
            notes = [f"! {v.chain.state_detail}"] if v.chain.state_detail else []
            notes += [f"! {line}" for line in v.damage()]
            if notes:
                lines += ["", *notes]
            lines += ["", "c: consolidate   v: verify   b: back up now"]
        elif kind == "vm":
            lines = [f"VM {ref}", "", "b: back up a disk now"]
        if extra:
            lines += ["", extra]
        # names and tool output from outside: shown as text, escapes made visible
        show(pane, Text(printable("\n".join(lines), keep_newlines=True)))

    # -- actions -------------------------------------------------------------------

    def _point(self) -> tuple[Backup, ChainView] | None:
        sel = self._selection()
        if sel is not None and sel[0] == "point" and sel[1] in self._points:
            return self._points[sel[1]]
        self.notify("Select a restore point first (j/k or arrows).", severity="warning")
        return None

    def _chain(self) -> ChainView | None:
        sel = self._selection()
        if sel is not None and sel[0] == "chain":
            return self._chains.get(sel[1])
        if sel is not None and sel[0] == "point" and sel[1] in self._points:
            return self._points[sel[1]][1]
        self.notify("Select a chain (a disk) first.", severity="warning")
        return None

    def action_point_info(self) -> None:
        found = self._point()
        if found is None:
            return
        backup = found[0]

        def show(details: dict[str, Any]) -> None:
            rows = [
                f"{c['file']}: {human_bytes(c['actual_size'])}"
                + (f" -> {c['backing']}" if c["backing"] else " (full)")
                + (f"\n  REFUSED: {c['problem']}" if c.get("problem") else "")
                for c in details["chain"]
            ]
            if "error" in details:
                rows.append(f"qemu-img: {details['error']}")
            self._show_details("headers (catalog order):\n" + "\n".join(rows))

        self.run_engine(
            lambda: self.engine.chains.point_details(backup.id),
            after=show,
            description=f"qemu-img info of point {backup.id}",
        )

    def action_verify(self) -> None:
        sel = self._selection()
        if sel is not None and sel[0] == "point" and sel[1] in self._points:
            scope, ref, what = "backup", sel[1], f"point #{sel[1]}"
        elif sel is not None and sel[0] == "chain" and sel[1] in self._chains:
            v = self._chains[sel[1]].chain
            scope, ref, what = "chain", sel[1], f"chain {v.vm_name}/{v.disk_name}"
        else:
            self.notify("Select a restore point or a chain first.", severity="warning")
            return
        self.run_engine(
            lambda: self.engine.verifier.submit(scope, ref, actor="console"),
            after=lambda job: self.notify(f"verify job {job.id} queued ({what})"),
            description=f"verify {what}",
        )

    def action_delete_point(self) -> None:
        found = self._point()
        if found is None:
            return
        backup, view = found

        def answered(yes: bool | None) -> None:
            if yes:
                self.run_engine(
                    # a disk being written refuses at once, naming its writer
                    lambda: self.engine.chains.delete_point(backup.id, actor="console", wait=False),
                    after=lambda p: (self.notify(f"Deleted: {p.sentence()}"), self.refresh_now()),
                    description=f"delete point {backup.id}",
                )

        def ask(plan: DeletePlan) -> None:
            goes = "\n".join(
                f"  #{b.id} {b.kind} {b.point_time:%Y-%m-%d %H:%M} ({human_bytes(b.file_size)})"
                for b in plan.goes
            )
            tail = " This removes the whole chain." if plan.chain_ends else ""
            consequence = f"These files are deleted for good:\n{goes}\n{tail}".rstrip()
            self.app.push_screen(
                ConfirmDialog(
                    f"Delete point #{backup.id} of {view.chain.vm_name}/{view.chain.disk_name}?",
                    consequence,
                    yes_label="Delete",
                ),
                answered,
            )

        # what goes with the point is read from the catalog: off the UI thread
        self.run_engine(
            lambda: self.engine.chains.delete_plan(backup.id),
            after=ask,
            description=f"what deleting point {backup.id} removes",
        )

    def action_consolidate(self) -> None:
        view = self._chain()
        if view is None:
            return
        if len(view.points) < 2:
            self.notify("Nothing to consolidate: the chain has one point.")
            return
        first, second = view.points[0].backup, view.points[1].backup

        def submit() -> tuple[Any, str | None]:
            job = self.engine.chains.submit_consolidate(view.chain.id, actor="console")
            disk = self.engine.chains.disk_of(view.chain.id)
            return job, self.engine.writers.busy_sentence([disk])

        def answered(yes: bool | None) -> None:
            if yes:
                self.run_engine(
                    submit,
                    after=lambda done: self.notify(
                        f"Consolidation queued as job {done[0].id}." + _waits(done[1])
                    ),
                    description=f"consolidate chain {view.chain.id}",
                )

        self.app.push_screen(
            ConfirmDialog(
                f"Consolidate {view.chain.vm_name}/{view.chain.disk_name}?",
                f"Point #{second.id} becomes the new full; point #{first.id} "
                f"({first.point_time:%Y-%m-%d %H:%M}) is merged into it and removed.",
                yes_label="Consolidate",
            ),
            answered,
        )

    def action_fix_chains(self) -> None:
        def done(report: FixReport) -> None:
            lines = [f"{report.sentence()}."]
            lines += [f"removed {r}" for r in report.removed[:5]]
            lines += [f"imported: {c.sentence()}" for c in report.chains if c.points][:5]
            lines += [f"left alone {r}" for r in report.left_alone[:5]]
            self.notify(
                "\n".join(lines),
                title="Fix orphans",
                severity="warning" if report.left_alone else "information",
                timeout=30,
            )
            self.refresh_now()

        def answered(yes: bool | None) -> None:
            if yes:
                self.run_engine(
                    lambda: self.engine.imports.fix(actor="console"),
                    after=done,
                    description="fix orphans in the chain directories",
                )

        self.app.push_screen(
            ConfirmDialog(
                "Fix orphans in every repository?",
                "Stale partial files (left by an interrupted backup, copy or consolidation) "
                "are deleted, and finished points the catalog never recorded are imported "
                "when they extend a valid chain. Locked files are never touched, and nothing "
                "is done in a repository while a job runs there.",
                yes_label="Fix",
            ),
            answered,
        )

    def _backup_targets(self) -> tuple[str, list[ChainView]] | None:
        """What ``b`` backs up: the selected chain (a point's or a disk's), or on a VM
        row every current chain of that VM, each into its own repository."""
        sel = self._selection()
        if sel is not None and sel[0] == "vm" and not self._open_all and sel[1] not in self._open:
            node = self.query_one("#chains-tree", Tree).cursor_node
            if node is not None:
                node.expand()  # its disks are read now
            self.notify(f"Reading {sel[1]}'s disks: press b again once they show.")
            return None
        if sel is not None and sel[0] == "vm":
            views = [
                v
                for v in self._chains.values()
                if v.chain.vm_name == sel[1] and v.chain.state != "retired"
            ]
            if not views:
                self.notify(f"{sel[1]} has no current chain to back up.", severity="warning")
                return None
            return str(sel[1]), sorted(views, key=lambda v: (v.chain.disk_name, v.repository))
        view = self._chain()
        if view is None:
            return None
        return view.chain.vm_name, [view]

    def action_backup_now(self) -> None:
        found = self._backup_targets()
        if found is None:
            return
        vm, views = found
        policies = self.engine.policies

        def targets() -> list[BackupTarget]:
            return [
                BackupTarget(
                    v.chain.repository_id,
                    v.repository,
                    v.chain.disk_name,
                    policies.known_source(v.chain.repository_id, vm, v.chain.disk_name),
                )
                for v in views
            ]

        def answered(chosen: list[tuple[BackupTarget, DiskSource]] | None) -> None:
            if not chosen:
                return
            by_repo: dict[int, list[DiskSource]] = {}
            for target, disk in chosen:
                by_repo.setdefault(target.repository_id, []).append(disk)

            def submit() -> list[tuple[Any, str | None]]:
                done = []
                for repo_id, disks in by_repo.items():
                    job = self.engine.backups.submit(repo_id, vm, disks, actor="console")
                    busy = self.engine.writers.busy_sentence(self.engine.backups.disks_of_job(job))
                    done.append((job, busy))
                return done

            def queued(done: list[tuple[Any, str | None]]) -> None:
                for job, busy in done:
                    self.notify(f"Backup queued as job {job.id}: {job.title}." + _waits(busy))

            self.run_engine(submit, after=queued, description=f"back up {vm}")

        self.run_engine(
            targets,
            after=lambda found: self.app.push_screen(BackupNowDialog(vm, found), answered),
            description=f"sources of {vm}",
        )

    def action_restore_disk(self) -> None:
        found = self._point()
        if found is None:
            return
        backup, view = found

        def answered(target: str | None) -> None:
            if not target:
                return
            fmt = "qcow2" if target.endswith(".qcow2") else "raw"
            read_point(
                self,
                backup.id,
                lambda force: self.engine.restores.submit(
                    backup.id, target, fmt=fmt, force=force, actor="console"
                ),
                what="Restore",
                after=lambda job: self.notify(f"Restore queued as job {job.id}."),
            )

        self.app.push_screen(
            AskDialog(
                f"Restore point #{backup.id} of {view.chain.vm_name}/{view.chain.disk_name} to:",
                "/restore/disk.raw (.qcow2 for qcow2) or nbd+unix:///x?socket=/run/t.sock",
            ),
            answered,
        )


def _vm_of(view: ChainView | VmSummary) -> str:
    return view.vm if isinstance(view, VmSummary) else view.chain.vm_name


def _summary_order(summary: VmSummary, key: str) -> Any:
    """A folded VM's place in the tree's order, from its totals."""
    if key == "size":
        return summary.physical_bytes
    if key == "newest":
        return summary.newest
    return summary.vm.casefold()


def _shape_of(view: ChainView | VmSummary, points: list[Any], states: dict[int, str]) -> Any:
    """What a row of the tree shows (equal shapes: the tree is kept as it is)."""
    if isinstance(view, VmSummary):
        return ("vm", view.vm, view.points, view.physical_bytes, view.chains)
    return (
        view.chain.id,
        states.get(view.chain.id) or view.state,
        [
            (p.backup.id, p.backup.state, p.backup.verify_state, p.locked, p.lock_state)
            for p in points
        ],
    )


def _folded_label(summary: VmSummary) -> Text:
    """``vm0042  2 disks · 200 pts · 1.1T`` (Space opens it)."""
    label = safe_text(summary.vm, "bold")
    label.no_wrap, label.overflow = True, "ellipsis"
    label.append(
        f"  {plural(len(summary.chains), 'disk')} · {summary.points} pts · "
        f"{human_bytes(summary.physical_bytes)}",
        style="dim",
    )
    return label


def _chain_label(view: ChainView) -> Text:
    """``sda [ok] 3 pts, 24G on disk for 64G``"""
    label = Text(f"{printable(view.chain.disk_name)} ", no_wrap=True, overflow="ellipsis")
    label.append(f"[{view.state}] ", style=_state_style(view.state))
    label.append(
        f"{len(view.points)} pts, {human_bytes(view.physical_bytes)} on disk "
        f"for {human_bytes(view.logical_bytes)}",
        style="dim",
    )
    return label


def _waits(sentence: str | None) -> str:
    """What a queued job waits for, when another writer holds its disk."""
    return f" It waits: {sentence}." if sentence else ""


def _state_style(state: str) -> str:
    return {"ok": "green", "broken": "bold red", "damaged": "bold red", "retired": "dim"}.get(
        state, ""
    )


def _lock_text(view: PointView | None) -> str:
    if view is None or view.locked_until is None:
        return "none"
    until = f"{view.locked_until:%Y-%m-%d %H:%M} UTC"
    if view.unprotected:
        return f"NOT PROTECTED (flag not set; due until {until})"
    if view.lock_state == "pending":
        return f"grace period, then until {until}"
    return f"until {until}"
