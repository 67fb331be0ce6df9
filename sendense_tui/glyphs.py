"""ASCII drawing for terminals that cannot show box-drawing and symbol characters.

``SENDENSE_ASCII=1`` (or ``TERM=linux``/``vt100``/``vt102``/``vt220``; ``SENDENSE_ASCII=0``
turns it off) draws the console with ASCII only. One table, :data:`GLYPHS`, maps every
non-ASCII character the console draws (its own gauges, sparklines, marks and
separators, Textual's borders, tree guides and scroll bars, Rich's ellipsis) to one
ASCII character of the same width; :class:`AsciiFilter` applies it to every line a
widget renders, so borders, screenshots and what goes down the wire agree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from rich.segment import Segment
from textual.color import Color
from textual.filter import LineFilter

#: terminals whose fonts lack box drawing (the Linux console, serial terminals)
ASCII_TERMS = frozenset({"linux", "vt100", "vt102", "vt220"})

#: every non-ASCII glyph the console draws -> its ASCII stand-in (one cell each)
GLYPHS: dict[str, str] = {
    # marks and punctuation
    "✓": "+",
    "✔": "+",
    "✗": "x",
    "✘": "x",
    "…": "~",
    "·": "-",
    "•": "*",
    "→": ">",
    "←": "<",
    "↑": "^",
    "↓": "v",
    "—": "-",
    "\u2013": "-",  # en dash
    "“": '"',
    "”": '"',
    "\u2018": "'",  # single quotes
    "\u2019": "'",
    "▶": ">",
    "▼": "v",
    "▸": ">",
    "▾": "v",
    "●": "*",
    "○": "o",
    "⚠": "!",
    "≥": ">",
    "≤": "<",
    # gauges, progress bars, sparklines (low to high)
    "█": "#",
    "▉": "#",
    "▊": "|",
    "▋": "|",
    "▌": "|",
    "▍": "|",
    "▎": "|",
    "▏": "|",
    "▐": "|",
    "░": ".",
    "▒": ":",
    "▓": "#",
    "▁": "_",
    "▂": "_",
    "▃": "-",
    "▄": "-",
    "▅": "=",
    "▆": "=",
    "▇": "#",
    "▀": "-",
    "▔": "-",
    "━": "=",
    "╸": "=",
    "╺": "=",
    # borders and tree guides
    "─": "-",
    "│": "|",
    "┃": "|",
    "┆": "|",
    "┊": "|",
    "╌": "-",
    "╍": "-",
    "═": "=",
    "║": "|",
    "╭": "+",
    "╮": "+",
    "╰": "+",
    "╯": "+",
    "┌": "+",
    "┐": "+",
    "└": "+",
    "┘": "+",
    "├": "+",
    "┤": "+",
    "┬": "+",
    "┴": "+",
    "┼": "+",
    "┏": "+",
    "┓": "+",
    "┗": "+",
    "┛": "+",
    "┣": "+",
    "┫": "+",
    "╔": "+",
    "╗": "+",
    "╚": "+",
    "╝": "+",
    "╠": "+",
    "╣": "+",
    "╞": "+",
    "╡": "+",
}

_TABLE = str.maketrans(GLYPHS)


def ascii_wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Whether to draw with ASCII: SENDENSE_ASCII says so, else the terminal type."""
    env = os.environ if environ is None else environ
    forced = env.get("SENDENSE_ASCII", "").strip().lower()
    if forced in ("1", "yes", "true", "on"):
        return True
    if forced in ("0", "no", "false", "off"):
        return False
    return env.get("TERM", "").strip().lower() in ASCII_TERMS


def to_ascii(text: str) -> str:
    """``text`` with every glyph of the table replaced (same width, cell for cell)."""
    return text.translate(_TABLE)


class AsciiFilter(LineFilter):
    """Replaces the table's glyphs in every rendered line (borders included)."""

    def apply(self, segments: list[Segment], background: Color) -> list[Segment]:
        return [
            Segment(to_ascii(text), style, control) if not control else segment
            for segment in segments
            for text, style, control in (segment,)
        ]
