"""Update a Static only when what it shows changed.

``Static.update`` repaints its whole region even when the new content equals the
old, and a live screen updates its panels every refresh: on an idle Dashboard that
was about 4-7 KB a second down an SSH link for nothing. :func:`show` keeps a
fingerprint of the last content per widget and skips an update that would draw
the same thing again.
"""

from __future__ import annotations

import io
import weakref
from typing import Any

from rich.console import Console
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
        return (
            "text",
            content.plain,
            tuple(content.spans),
            str(content.style),
            content.justify,
            content.overflow,
            content.no_wrap,
            content.end,
        )
    # any other Rich renderable (Group, Table): compare what it prints
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
