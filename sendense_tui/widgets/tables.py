"""The console's lists: one behaviour for every list, in one place.

Every list (a ``FlexTable``, or the Chains tree through ``ListControls``) takes
the same keys from the command table (scope "list"): ``/`` filters it as you
type (the screen's ``FilterBar`` under the list; Enter keeps the filter, Esc
clears it), ``o`` orders it by the next column (the header shows ▲/▼; ``O``
reverses; clicking a header orders by that column) and ``j``/``k``, ``g``/``G``,
Home/End move in it. ``sync_rows`` keeps a table in step with fresh rows without
rebuilding it every tick, and a table keeps every row it was given, so a filter
or an order is applied again at each refresh and undone without a fetch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.geometry import Size
from textual.message import Message
from textual.widget import Widget
from textual.widgets import DataTable, Input, Label, Static
from textual.widgets.data_table import CellDoesNotExist, CellKey, RowKey

from sendense_tui.actions import bindings_for
from sendense_tui.format import safe_cell

#: the keys every list takes (filter, order, vim motions), from the command table
LIST_BINDINGS: list[BindingType] = bindings_for("list")

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGTPE]?)(?:i?B)?$", re.IGNORECASE)
_DIGITS = re.compile(r"(\d+)")


def plain(cell: object) -> str:
    """What a cell says, without its styles."""
    return cell.plain if isinstance(cell, Text) else str(cell)


def sort_value(text: str) -> tuple[Any, ...]:
    """An order for what people read: sizes by bytes ("900M" before "2G"), numbers
    inside text by value ("job 9" before "job 10"), letters without case."""
    text = text.strip()
    size = _SIZE.match(text)
    if size is not None:
        power = "KMGTPE".find(size.group(2).upper()) + 1 if size.group(2) else 0
        return (0, float(size.group(1)) * 1024**power, ())
    parts = tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part)
        for part in _DIGITS.split(text.casefold())
        if part
    )
    return (1, 0.0, parts)


def matches(words: Sequence[str], cells: Sequence[object]) -> bool:
    """Every word of the filter appears in some cell (case does not matter)."""
    line = "\t".join(plain(cell) for cell in cells).casefold()
    return all(word in line for word in words)


class ListFiltered(Message):
    """A list's filter or order changed (a screen that filters in its fetch, such
    as Events, or that builds the list itself, such as Chains, listens)."""

    def __init__(self, listing: ListControls) -> None:
        super().__init__()
        self.listing = listing


class ListControls:
    """Filter, order and motions of a list widget. The widget sets
    ``BINDINGS = LIST_BINDINGS`` (Textual reads bindings from widget classes only)
    and implements ``relist``, ``sort_columns``, ``counts``, ``move_to``."""

    #: the filter text ("" shows every row)
    filter_text: str = ""
    #: index into ``sort_columns()``; None: the order the data came in
    sort_index: int | None = None
    sort_reverse: bool = False
    #: what the filter bar calls the list ("points", "finished jobs")
    list_name: str = "list"

    # -- what a list widget provides ---------------------------------------------

    def relist(self) -> None:
        """Show the rows again under the current filter and order."""

    def sort_columns(self) -> list[tuple[str, str]]:
        """(key, label) of each column the list can be ordered by."""
        return []

    def counts(self) -> tuple[int, int]:
        """(rows shown, rows in all)."""
        return (0, 0)

    def move_to(self, row: int) -> None:
        """Put the cursor on ``row`` (negative: from the end)."""

    # -- shared --------------------------------------------------------------------

    @property
    def filter_words(self) -> list[str]:
        return self.filter_text.casefold().split()

    @property
    def sort_key(self) -> str | None:
        columns = self.sort_columns()
        if self.sort_index is None or not 0 <= self.sort_index < len(columns):
            return None
        return columns[self.sort_index][0]

    def sort_label(self) -> str:
        columns = self.sort_columns()
        key = self.sort_key
        if key is None:
            return ""
        label = dict(columns).get(key, key) or key
        return f"{label} {'▼' if self.sort_reverse else '▲'}"

    def set_filter(self, text: str) -> None:
        if text == self.filter_text:
            return
        self.filter_text = text
        self._changed()

    def order_by(self, key: str) -> None:
        """Order by ``key``; the same column again reverses the order."""
        keys = [k for k, _ in self.sort_columns()]
        if key not in keys:
            return
        index = keys.index(key)
        if self.sort_index == index:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_index, self.sort_reverse = index, False
        self._changed()

    def _changed(self) -> None:
        self.relist()
        widget: Widget = self  # type: ignore[assignment]
        widget.post_message(ListFiltered(self))
        screen = widget.screen
        bar = next(iter(screen.query(FilterBar)), None)
        if bar is not None and bar.target is self:
            bar.show_count()

    def action_filter(self) -> None:
        widget: Widget = self  # type: ignore[assignment]
        bar = next(iter(widget.screen.query(FilterBar)), None)
        if bar is not None:
            bar.open(self)

    def action_sort(self) -> None:
        """Next column; after the last, back to the order the data came in."""
        count = len(self.sort_columns())
        if count == 0:
            return
        index = -1 if self.sort_index is None else self.sort_index
        self.sort_index = None if index + 1 >= count else index + 1
        self.sort_reverse = False
        self._changed()
        widget: Widget = self  # type: ignore[assignment]
        widget.notify(f"ordered by {self.sort_label() or 'the default order'}", timeout=2)

    def action_sort_reverse(self) -> None:
        if self.sort_index is None:
            self.sort_index = 0
            self.sort_reverse = True
        else:
            self.sort_reverse = not self.sort_reverse
        self._changed()

    def action_first(self) -> None:
        self.move_to(0)

    def action_last(self) -> None:
        self.move_to(-1)


def cursor_key(table: DataTable[Any]) -> str | None:
    """The key of the row under the cursor, or None for an empty table."""
    if table.row_count == 0:
        return None
    try:
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
    except CellDoesNotExist:
        return None
    return row_key.value


def sync_rows(
    table: DataTable[Any], rows: Sequence[tuple[str, Sequence[Any]]], columns: Sequence[str]
) -> None:
    """Make ``table`` show ``rows`` (key, cells) in order (a ``FlexTable``: the
    ones its filter lets through, in its order, and it keeps them all).

    When the same rows are shown in the same order (the common case on a live
    screen), only changed cells are updated. When rows come or go, the table is
    refilled in one batch and the cursor stays on the same row if it still exists.
    Every cell goes through ``safe_cell``: names from outside never reach the
    terminal as control characters or markup.
    """
    safe = [(key, [safe_cell(cell) for cell in cells]) for key, cells in rows]
    if isinstance(table, FlexTable):
        table.all_rows = safe
        table.all_columns = list(columns)
        safe = table.arrange_rows(safe)
    _show(table, safe, columns)


def _show(
    table: DataTable[Any], rows: Sequence[tuple[str, Sequence[Any]]], columns: Sequence[str]
) -> None:
    wanted = [key for key, _ in rows]
    current = [key.value for key in table.rows]
    if wanted == current:
        for key, cells in rows:
            old = table.get_row(key)
            for column, new, before in zip(columns, cells, old, strict=False):
                if str(new) != str(before) or type(new) is not type(before):
                    table.update_cell(key, column, new)
        return
    keep = cursor_key(table)
    with table.app.batch_update():
        table.clear()
        for key, cells in rows:
            table.add_row(*cells, key=key)
        if keep is not None and keep in wanted:
            table.move_cursor(row=table.get_row_index(RowKey(keep)), animate=False)


class FlexTable(ListControls, DataTable[Any]):
    """A row-cursor list whose one flexible column (width None) takes the width the
    others leave, so every column stays visible at 80 columns; it filters, orders
    and moves as every list does (``ListControls``)."""

    BINDINGS: ClassVar[list[Any]] = LIST_BINDINGS

    def __init__(
        self,
        columns: Sequence[tuple[str, str, int | None]],
        *,
        list_name: str = "list",
        local_filter: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("cursor_type", "row")
        super().__init__(**kwargs)
        self.column_specs = list(columns)
        self._flex_width = -1
        self.list_name = list_name
        #: False: the screen filters in its fetch (Events searches the whole log)
        self.local_filter = local_filter
        #: every row the screen gave (``sync_rows``), before the filter
        self.all_rows: list[tuple[str, list[Any]]] = []
        self.all_columns: list[str] = [key for key, _, _ in columns]

    # -- filter and order ----------------------------------------------------------

    def sort_columns(self) -> list[tuple[str, str]]:
        return [(key, label) for key, label, _ in self.column_specs if label]

    def arrange_rows(self, rows: list[tuple[str, list[Any]]]) -> list[tuple[str, list[Any]]]:
        words = self.filter_words if self.local_filter else []
        shown = [row for row in rows if matches(words, row[1])] if words else list(rows)
        key = self.sort_key
        if key is not None and key in self.all_columns:
            at = self.all_columns.index(key)
            shown.sort(
                key=lambda row: sort_value(plain(row[1][at])) if at < len(row[1]) else (2,),
                reverse=self.sort_reverse,
            )
        return shown

    def counts(self) -> tuple[int, int]:
        return (self.row_count, len(self.all_rows))

    def relist(self) -> None:
        self._relabel()
        _show(self, self.arrange_rows(self.all_rows), self.all_columns)

    def move_to(self, row: int) -> None:
        if self.row_count:
            self.move_cursor(row=row % self.row_count, animate=False)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        self.order_by(event.column_key.value or "")

    def label_of(self, key: str, label: str) -> str:
        """A column's header, with ▲/▼ when the list is ordered by it."""
        if key == self.sort_key:
            return f"{label}{'▼' if self.sort_reverse else '▲'}"
        return label

    def _relabel(self) -> None:
        for key, label, _ in self.column_specs:
            column = self.columns.get(key)  # type: ignore[call-overload]
            wanted = self.label_of(key, label)
            if column is not None and column.label.plain != wanted:
                column.label = Text(wanted)
                self.refresh()

    # -- width ---------------------------------------------------------------------

    def _sized(self) -> bool:
        """Every column has its width and no row has a label: nothing is measured."""
        return not self._labelled_row_exists and not any(
            column.auto_width for column in self.columns.values()
        )

    def _update_dimensions(self, new_rows: Iterable[RowKey]) -> None:
        """DataTable measures every cell of every new row on the UI thread to size its
        columns (0.2 s for the Events screen's 500 rows); a FlexTable's columns are
        sized already and its rows are one line each, so only the height changes."""
        if not self._sized() or any(self.rows[k].auto_height for k in new_rows if k in self.rows):
            super()._update_dimensions(new_rows)
            return
        header = self.header_height if self.show_header else 0
        self.virtual_size = Size(
            sum(column.get_render_width(self) for column in self.columns.values())
            + self._row_label_column_width,
            self._total_row_height + header,
        )

    def _update_column_widths(self, updated_cells: set[CellKey]) -> None:
        """An updated cell changes no width either (see ``_update_dimensions``)."""
        if not self._sized():
            super()._update_column_widths(updated_cells)
            return
        self._require_update_dimensions = True

    def flex_width(self, total: int) -> int:
        fixed = sum(width or 0 for _, _, width in self.column_specs)
        padding = 2 * self.cell_padding * len(self.column_specs)
        return max(8, total - fixed - padding - 2)  # 2: room for a vertical scrollbar

    def on_mount(self) -> None:
        self._layout(self.app.size.width)

    def on_resize(self, event: Any) -> None:
        self._layout(event.size.width)

    def _layout(self, total: int) -> None:
        width = self.flex_width(total)
        if width == self._flex_width:
            return
        self._flex_width = width
        keep = cursor_key(self)
        rows = [(key.value, self.get_row(key)) for key in self.rows]
        with self.app.batch_update():
            self.clear(columns=True)
            for key, label, fixed in self.column_specs:
                self.add_column(self.label_of(key, label), key=key, width=fixed or width)
            for row_key, cells in rows:
                self.add_row(*cells, key=row_key)
            if keep is not None:
                self.move_cursor(row=self.get_row_index(RowKey(keep)), animate=False)


class FilterInput(Input):
    """The filter box: Esc in it clears the filter (it never leaves the screen)."""

    BINDINGS: ClassVar[list[Any]] = [Binding("escape", "clear", "Clear", show=False)]

    def action_clear(self) -> None:
        bar = self.parent
        if isinstance(bar, FilterBar):
            bar.clear()


class FilterBar(Horizontal):
    """One line under a screen's lists while one of them is filtered: the text,
    how many rows it lets through, and how to clear it."""

    DEFAULT_CSS = """
    FilterBar { height: 1; display: none; background: $boost; }
    FilterBar #filter-label { width: auto; padding: 0 1; text-style: bold; }
    FilterBar #list-filter { width: 1fr; }
    FilterBar #filter-count { width: auto; padding: 0 1; color: $text-muted; }
    """

    def __init__(self) -> None:
        super().__init__(id="filter-bar")
        self.target: ListControls | None = None

    def compose(self) -> ComposeResult:
        yield Label("/", id="filter-label")
        yield FilterInput(placeholder="type to filter", id="list-filter", compact=True)
        yield Static("", id="filter-count")

    @property
    def box(self) -> FilterInput:
        return self.query_one("#list-filter", FilterInput)

    def open(self, target: ListControls) -> None:
        if self.target is not None and self.target is not target and self.target.filter_text:
            self.target.set_filter("")  # one filtered list at a time
        self.target = target
        self.display = True
        self.query_one("#filter-label", Label).update(f"/ {target.list_name}:")
        box = self.box
        box.cursor_blink = getattr(self.app, "live", True)
        with box.prevent(Input.Changed):
            box.value = target.filter_text
        box.focus()
        self.show_count()

    def show_count(self) -> None:
        target = self.target
        if target is None:
            return
        shown, total = target.counts()
        order = target.sort_label()
        count = f"{shown} of {total}" if shown != total else f"{shown} shown"
        text = count + (f" · by {order}" if order else "") + " · Esc clears"
        self.query_one("#filter-count", Static).update(text)

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if self.target is not None:
            self.target.set_filter(event.value.strip())

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter keeps the filter and goes back to the list (an empty one closes)."""
        event.stop()
        if not event.value.strip():
            self.clear()
        else:
            self._focus_target()

    def clear(self) -> None:
        target = self.target
        with self.box.prevent(Input.Changed):
            self.box.value = ""
        self.display = False
        if target is not None:
            target.set_filter("")
        self._focus_target()

    def _focus_target(self) -> None:
        target = self.target
        if isinstance(target, Widget) and target.display:
            target.focus()
