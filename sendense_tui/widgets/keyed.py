"""Keyed updates of a list of widgets: the one way a screen's rows follow the data.

Removing every row and mounting them again with the same ids crashes the console
(``DuplicateIds``): a removal completes later, so the new widget meets the old
one. :func:`reconcile` removes the rows whose key went, mounts rows for new keys
in their place, and keeps (and reorders) the others, so a row that stays is the
same widget and keeps its state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from textual.widget import Widget


def reconcile(
    box: Widget,
    kind: type[Widget],
    ids: Sequence[str],
    make: Callable[[str], Widget],
    *,
    after: Widget | str | None = None,
) -> None:
    """Make ``box``'s ``kind`` children be exactly ``ids``, in that order; ``make(id)``
    builds a missing one; the first goes after ``after`` (a widget or a selector)."""
    present = {w.id: w for w in box.query_children(kind) if w.id is not None}
    if not present and ids:
        # the first fill (a screen's first data): one mount for every row, not one
        # each (50 repositories' rows took a quarter second mounted one by one)
        widgets = [make(wid) for wid in ids]
        if after is None:
            box.mount_all(widgets)
        else:
            box.mount_all(widgets, after=after)
        return
    for wid, stale in present.items():
        if wid not in ids:
            stale.remove()
    previous: Widget | str | None = after
    for wid in ids:
        widget = present.get(wid)
        if widget is None:
            widget = make(wid)
            if previous is None:
                box.mount(widget)
            else:
                box.mount(widget, after=previous)
        elif isinstance(previous, Widget) and previous.id in present:
            box.move_child(widget, after=previous)
        previous = widget
