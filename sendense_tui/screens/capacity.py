"""Capacity: a gauge per repository coloured by threshold, used/free/total, a
sparkline of the last day, growth per day and days until full, and the four
numbers (used, reclaimable now, reclaimable later, locked until).

"Used %" is used / (used + free): the space a filesystem keeps back for root
(ext4 reserves 5 %) is not counted as free, because nothing but root can write
there. The screen says so in its footnote.

Live without flicker: each repository is one Static updated only when its
text changes; cards are rebuilt only when repositories come or go.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from rich.console import Console
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from engine.services.capacity import RepositoryCapacity
from sendense_tui.actions import bindings_for
from sendense_tui.format import age_text, human_bytes, printable
from sendense_tui.screens.base import SendenseScreen
from sendense_tui.styles import STYLES_DIR
from sendense_tui.widgets.gauge import LEVEL_COLOURS, gauge, sparkline
from sendense_tui.widgets.keyed import reconcile
from sendense_tui.widgets.quiet import show

KINDS = {"local": "local", "nfs": "NFS", "cifs": "CIFS"}
FOOTNOTE = (
    "used % = used / (used + free): space reserved for root is not counted as free. "
    "Repositories on one filesystem share capacity and are counted once in the total."
)


@dataclass
class CapacityData:
    now: datetime
    items: list[RepositoryCapacity]
    total: int
    used: int
    free: int
    #: each repository's card (its text and that text's markup, to compare), drawn
    #: by the worker: 50 cards took a quarter second of the UI thread
    cards: dict[int, tuple[Text, str]] = field(default_factory=dict)


def _date(value: datetime | None) -> str:
    return value.strftime("%b %d") if value else "-"


def level_of(item: RepositoryCapacity) -> str:
    """The threshold level a repository shows: its last good reading's, else the catalog's."""
    reading = item.reading
    return (reading.level if reading and not reading.error else None) or (
        item.repository.capacity_level or "ok"
    )


def is_unresponsive(item: RepositoryCapacity) -> bool:
    """The repository did not answer its last reading (or the catalog says so)."""
    reading = item.reading
    if reading is not None and reading.error is None:
        return False
    return bool(reading and reading.unresponsive) or item.repository.state == "unresponsive"


#: columns a card's text loses to its left border, its padding and the scrollbar
CARD_CHROME = 5


def flow(rows: list[list[Text]], width: int, gap: str = "  ") -> Text:
    """Lines of chunks: a chunk that would pass ``width`` starts a continuation
    line (indented), so at 80 columns nothing is cut; wide, a row is one line."""
    out = Text(no_wrap=True, overflow="ellipsis")
    console: Console | None = None  # made only for a chunk to wrap (rare, and not cheap)
    for number, chunks in enumerate(rows):
        if number:
            out.append("\n")
        used = 0
        for index, chunk in enumerate(chunks):
            if index and used + len(gap) + chunk.cell_len > width:
                out.append("\n  ")
                used = 2
            elif index:
                out.append(gap)
                used += len(gap)
            if used + chunk.cell_len > width:  # longer than a line itself (an error)
                console = console or Console(width=width)
                pieces = chunk.wrap(console, max(10, width - used))
                out.append_text(Text("\n" + " " * used).join(pieces))
                used += pieces[-1].cell_len if pieces else 0
                continue
            out.append_text(chunk)
            used += chunk.cell_len
    return out


def card(item: RepositoryCapacity, now: datetime, width: int = 100) -> Text:
    """One repository's card for a screen ``width`` columns wide: wide, five lines;
    under 100 columns the same figures flow onto continuation lines (compact)."""
    repo, reading, th = item.repository, item.reading, item.thresholds
    level = level_of(item)
    colour = LEVEL_COLOURS.get(level, "white")
    inner = max(30, width - CARD_CHROME)
    # the gauge leaves room for its percentage and the used/free/total figures
    bar = max(10, min(40, inner - 41))
    head = Text()
    head.append(printable(repo.name), style="bold")
    head.append(f"  {KINDS.get(repo.kind, repo.kind)}", style="dim")
    head.append("  ")
    unresponsive = is_unresponsive(item)
    age = reading.figures_age(now) if reading is not None else None
    if unresponsive:
        head.append(" UNRESPONSIVE ", style="bold reverse red")
    else:
        head.append(f" {level.upper()} ", style=f"bold reverse {colour}")
    if not repo.enabled:
        head.append("  disabled", style="dim")
    rows: list[list[Text]] = [[head]]
    if item.shared_with:
        shared = printable(", ".join(item.shared_with))
        rows[0].append(Text(f"shares its filesystem with {shared}", style="italic"))
    figures = reading.figures if reading is not None else None
    if figures is None or (reading is not None and reading.error and not unresponsive):
        gauge_row = [gauge(None, "unknown", bar)]
        gauge_row.append(
            Text(
                printable(reading.error) if reading and reading.error else "not measured yet",
                style="dim",
            )
        )
    else:
        # an unresponsive repository keeps its last figures, dimmed, with their age
        stale = age is not None
        figure_style = "dim" if stale else ""
        measured = gauge(figures.percent, level, bar, (th.warning, th.critical, th.full))
        measured.append(f" {figures.percent:5.1f}%", style="dim" if stale else f"bold {colour}")
        gauge_row = [
            measured,
            Text(f"used {human_bytes(figures.used)}", style=figure_style),
            Text(f"free {human_bytes(figures.free)}", style=figure_style),
            Text(f"total {human_bytes(figures.total)}", style=figure_style),
        ]
        if age is not None:
            gauge_row.append(Text(age_text(age), style="bold yellow" if unresponsive else "dim"))
    rows.append(gauge_row)
    if unresponsive and figures is not None and reading is not None and reading.error:
        rows.append([Text(printable(reading.error), style="red")])
    history = [s.used_bytes if s else None for s in item.history]
    spark = Text("24h ", style="dim")
    spark.append(sparkline(history, width=bar))
    trend = [spark]
    fc = item.forecast
    if fc.growth_per_day is not None and fc.trend == "growing":
        trend.append(Text(f"+{human_bytes(fc.growth_per_day)}/day", style="bold"))
    forecast = Text(fc.describe())
    if fc.full_at is not None:
        forecast.append(f" ({_date(fc.full_at)})", style="dim")
    trend.append(forecast)
    rows.append(trend)
    b = item.breakdown

    def figure(label: str, value: int, when: datetime | None = None, word: str = "") -> Text:
        text = Text(f"{label} ", style="dim")
        text.append(human_bytes(value))
        if when is not None:
            text.append(f" {word} {_date(when)}")
        return text

    rows.append(
        [
            figure("backups", b.used),
            figure("reclaimable now", b.reclaimable_now),
            figure("later", b.reclaimable_later, b.reclaimable_later_at, "from"),
            figure("locked", b.locked, b.locked_until, "until"),
        ]
    )
    rows.append(
        [
            Text(f"thresholds {th.warning:g}/{th.critical:g}/{th.full:g} %", style="dim"),
            Text(f"min free {human_bytes(th.min_free)}", style="dim"),
        ]
    )
    if level == "full":
        rows.append([Text("FULL: no new backups or copies until space is freed", style="bold red")])
    return flow(rows, inner)


class CapacityScreen(SendenseScreen):
    MODE = "capacity"
    #: read again only when the catalog changed (or REREAD_SECONDS passed), not
    #: every second: an idle console stays near no CPU
    WATCH_CHANGES = True
    CSS_PATH = STYLES_DIR / "capacity.tcss"
    BINDINGS = bindings_for("capacity")

    def __init__(self) -> None:
        super().__init__()
        self._keys: list[int] = []
        self._texts: dict[int, str] = {}

    def compose_body(self) -> ComposeResult:
        yield Static("", id="capacity-summary")
        yield VerticalScroll(id="capacity-cards")
        yield Static(FOOTNOTE, id="capacity-footnote")

    def fetch(self) -> CapacityData:
        engine = self.engine
        now = self.sendense.clock.now()
        items = engine.capacity.overview(history_span=timedelta(days=1), buckets=40, measure=False)
        readings = [i.reading for i in items if i.reading is not None]
        total, used, free = engine.capacity.totals(readings)
        width = self.size.width or 100
        cards = {}
        for item in items:
            text = card(item, now, width)
            cards[item.repository.id] = (text, text.markup)
        return CapacityData(now, items, total, used, free, cards)

    def apply(self, data: CapacityData) -> None:
        summary = Text()
        count = len(data.items)
        summary.append(f"{count} {'repository' if count == 1 else 'repositories'}", style="bold")
        if data.total:
            summary.append(
                f"  ·  {human_bytes(data.used)} used, {human_bytes(data.free)} free of "
                f"{human_bytes(data.total)}"
            )
        show(self.query_one("#capacity-summary", Static), summary)
        box = self.query_one("#capacity-cards", VerticalScroll)
        keys = [i.repository.id for i in data.items]
        if keys != self._keys:
            with self.app.batch_update():
                empty = [] if data.items else ["capacity-empty"]
                reconcile(
                    box,
                    Static,
                    empty + [f"cap-{k}" for k in keys],
                    lambda wid: (
                        Static(
                            "No repository yet. Add one on the Repositories screen (2).",
                            id=wid,
                            classes="capacity-empty",
                        )
                        if wid == "capacity-empty"
                        else Static("", id=wid, classes="capacity-card")
                    ),
                )
                self._texts = {k: v for k, v in self._texts.items() if k in keys}
            self._keys = keys
            self.call_after_refresh(self._fill, data)
            return
        self._fill(data)

    def _fill(self, data: CapacityData) -> None:
        for key, (text, markup) in data.cards.items():
            if self._texts.get(key) == markup:
                continue  # unchanged: no redraw, no flicker
            self._texts[key] = markup
            try:
                show(self.query_one(f"#cap-{key}", Static), text)
            except Exception:
                self._texts.pop(key, None)

    def engine_message(self, message: object) -> None:
        from sendense_tui.messages import EngineEvent

        if isinstance(message, EngineEvent) and message.event.kind.startswith(
            ("capacity.", "repository.")
        ):
            self.refresh_now()
