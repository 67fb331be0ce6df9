"""Keep a DataTable in step with fresh rows without rebuilding it every tick."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, RowKey

from sendense_tui.format import safe_cell


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
    """Make ``table`` show ``rows`` (key, cells) in order.

    When the same rows are shown in the same order (the common case on a live
    screen), only changed cells are updated. When rows come or go, the table is
    refilled in one batch and the cursor stays on the same row if it still exists.
    Every cell goes through ``safe_cell``: names from outside never reach the
    terminal as control characters or markup.
    """
    rows = [(key, [safe_cell(cell) for cell in cells]) for key, cells in rows]
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


class FlexTable(DataTable[Any]):
    """A row-cursor DataTable whose one flexible column (width None) takes the
    width the others leave, so every column stays visible at 80 columns."""

    def __init__(self, columns: Sequence[tuple[str, str, int | None]], **kwargs: Any) -> None:
        kwargs.setdefault("cursor_type", "row")
        super().__init__(**kwargs)
        self.column_specs = list(columns)
        self._flex_width = -1

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
                self.add_column(label, key=key, width=fixed or width)
            for key, cells in rows:
                self.add_row(*cells, key=key)
            if keep is not None:
                self.move_cursor(row=self.get_row_index(RowKey(keep)), animate=False)
