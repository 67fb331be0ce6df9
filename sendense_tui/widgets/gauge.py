"""Capacity gauges and block sparklines, drawn as Rich text (block characters, no
braille: they survive slow SSH links and odd fonts)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text

#: capacity level -> colour of its gauge
LEVEL_COLOURS: dict[str, str] = {
    "ok": "green",
    "warning": "yellow",
    "critical": "dark_orange",
    "full": "red",
    "unknown": "grey50",
}
SPARK = "▁▂▃▄▅▆▇█"


def gauge(
    percent: float | None,
    level: str,
    width: int = 30,
    marks: Sequence[float] = (),
) -> Text:
    """``[██████████░░░░|░░|░]`` filled to ``percent``, coloured by level; ``marks``
    (threshold percentages) show as ``|`` in the empty part."""
    text = Text()
    if percent is None:
        text.append("·" * width, style="grey50")
        return text
    filled = max(0, min(width, round(percent / 100 * width)))
    colour = LEVEL_COLOURS.get(level, "white")
    text.append("█" * filled, style=colour)
    rest = []
    mark_cells = {min(width - 1, int(m / 100 * width)) for m in marks}
    for i in range(filled, width):
        rest.append("│" if i in mark_cells else "░")
    text.append("".join(rest), style="grey42")
    return text


def sparkline(
    values: Sequence[float | None],
    width: int | None = None,
    *,
    low: float | None = None,
    high: float | None = None,
) -> Text:
    """Block sparkline of ``values`` (None = no sample: a blank), scaled to their range;
    ``low``/``high`` fix either end of the scale instead (e.g. ``low=0`` for a rate,
    so a steady rate draws tall blocks, not noise); values beyond it are clamped."""
    data = list(values)
    if width is not None and len(data) > width:
        step = len(data) / width
        data = [data[int(i * step)] for i in range(width)]
    present = [v for v in data if v is not None]
    text = Text()
    if not present:
        text.append(" " * len(data))
        return text
    low = min(present) if low is None else low
    high = max(present) if high is None else high
    span = high - low
    for v in data:
        if v is None:
            text.append(" ")
        elif span <= 0:
            text.append(SPARK[0], style="cyan")
        else:
            text.append(SPARK[max(0, min(7, int((v - low) / span * 7.999)))], style="cyan")
    return text
