"""Update a Static only when what it shows changed.

``Static.update`` repaints its whole region even when the new content equals the
old, and a live screen updates its panels every refresh: on an idle Dashboard that
was about 4-7 KB a second down an SSH link for nothing. :func:`show` keeps a
fingerprint of the last content per widget and skips an update that would draw
the same thing again.
"""

from __future__ import annotations

import dataclasses
import io
import weakref
from typing import Any

from rich.console import Console, Group
from rich.style import Style
from rich.table import Column, Row, Table
from rich.text import Text
from textual.widgets import Static

#: wide enough that no panel's content is cut before it is compared
_FINGERPRINT_WIDTH = 400

#: widget -> (the content object show() gave it, its fingerprint)
_shown: weakref.WeakKeyDictionary[Static, tuple[object, object]] = weakref.WeakKeyDictionary()


def fingerprint(content: Any) -> object:
    """A value equal for two contents that draw the same."""
    if isinstance(content, str):
        return ("str", content)
    if isinstance(content, Text):
        return _text(content)
    if isinstance(content, Group | Table):
        # compared by what they hold, not by printing them: a policy's 3-2-1 report
        # (a table per VM) took 80 ms to print for the comparison alone
        return _shape(content)
    # any other Rich renderable: compare what it prints
    out = io.StringIO()
    console = Console(
        file=out,
        width=_FINGERPRINT_WIDTH,
        force_terminal=True,
        color_system="truecolor",
        legacy_windows=False,
        record=False,
    )
    console.print(content)
    return ("rendered", out.getvalue())


def _text(text: Text) -> object:
    return (
        "text",
        text.plain,
        tuple(text.spans),
        str(text.style),
        text.justify,
        text.overflow,
        text.no_wrap,
        text.end,
    )


def _shape(value: Any) -> object:
    """What a Group or a Table holds, down to its cells, as comparable values. An
    object of a kind not known here stands for itself: compared by identity, a
    new one never equals the old, so a content is never wrongly taken as unchanged."""
    if isinstance(value, Text):
        return _text(value)
    if isinstance(value, str | int | float | bool | Style) or value is None:
        return value
    if isinstance(value, list | tuple):
        return tuple(_shape(item) for item in value)
    if isinstance(value, Group):
        return ("group", value.fit, _shape(value.renderables))
    if isinstance(value, Table | Column | Row):
        fields = (
            vars(value)
            if isinstance(value, Table)
            else {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        )
        return (type(value).__name__, tuple((k, _shape(v)) for k, v in sorted(fields.items())))
    return value


def show(widget: Static, content: Any) -> bool:
    """``widget.update(content)`` unless it already shows that; True if it updated.
    A widget updated some other way since (an action's message) is always updated."""
    key = fingerprint(content)
    last = _shown.get(widget)
    if last is not None and last[0] is widget.content and last[1] == key:
        return False
    _shown[widget] = (content, key)
    widget.update(content)
    return True
