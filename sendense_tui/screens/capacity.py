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

from dataclasses import dataclass
from datetime import datetime, timedelta

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


def card(item: RepositoryCapacity, now: datetime, width: int = 100) -> Text:
    repo, reading, th = item.repository, item.reading, item.thresholds
    level = level_of(item)
    colour = LEVEL_COLOURS.get(level, "white")
    unresponsive = is_unresponsive(item)
    age = reading.figures_age(now) if reading is not None else None
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(printable(repo.name), style="bold")
    text.append(f"  {KINDS.get(repo.kind, repo.kind)}", style="dim")
    text.append("  ")
    if unresponsive:
        text.append(" UNRESPONSIVE ", style="bold reverse red")
    else:
        text.append(f" {level.upper()} ", style=f"bold reverse {colour}")
    if not repo.enabled:
        text.append("  disabled", style="dim")
    if item.shared_with:
        shared = printable(", ".join(item.shared_with))
        text.append(f"  shares its filesystem with {shared}", style="italic")
    text.append("\n")
    bar = max(10, min(40, width - 44))
    figures = reading.figures if reading is not None else None
    if figures is None or (reading is not None and reading.error and not unresponsive):
        text.append(gauge(None, "unknown", bar))
        text.append("  ")
        text.append(
            printable(reading.error) if reading and reading.error else "not measured yet",
            style="dim",
        )
    else:
        stale = age is not None
        text.append(gauge(figures.percent, level, bar, (th.warning, th.critical, th.full)))
        text.append(f" {figures.percent:5.1f}%", style="dim" if stale else f"bold {colour}")
        text.append(
            f"  used {human_bytes(figures.used)}  free {human_bytes(figures.free)}"
            f"  total {human_bytes(figures.total)}",
            style="dim" if stale else "",
        )
        if age is not None:
            text.append(f"  {age_text(age)}", style="bold yellow" if unresponsive else "dim")
    if unresponsive and figures is not None and reading is not None and reading.error:
        text.append(f"\n{printable(reading.error)}", style="red")
    text.append("\n")
    history = [s.used_bytes if s else None for s in item.history]
    text.append("24h ", style="dim")
    text.append(sparkline(history, width=bar))
    fc = item.forecast
    if fc.growth_per_day is not None and fc.trend == "growing":
        text.append(f"  +{human_bytes(fc.growth_per_day)}/day", style="bold")
    text.append(f"  {fc.describe()}")
    if fc.full_at is not None:
        text.append(f" ({_date(fc.full_at)})", style="dim")
    text.append("\n")
    b = item.breakdown
    text.append("backups ", style="dim")
    text.append(human_bytes(b.used))
    text.append("  reclaimable now ", style="dim")
    text.append(human_bytes(b.reclaimable_now))
    text.append("  later ", style="dim")
    text.append(human_bytes(b.reclaimable_later))
    if b.reclaimable_later_at:
        text.append(f" from {_date(b.reclaimable_later_at)}")
    text.append("  locked ", style="dim")
    text.append(human_bytes(b.locked))
    if b.locked_until:
        text.append(f" until {_date(b.locked_until)}")
    text.append(
        f"\nthresholds {th.warning:g}/{th.critical:g}/{th.full:g} %"
        f"  min free {human_bytes(th.min_free)}",
        style="dim",
    )
    if level == "full":
        text.append("\nFULL: no new backups or copies until space is freed", style="bold red")
    return text


class CapacityScreen(SendenseScreen):
    MODE = "capacity"
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
        return CapacityData(now, items, total, used, free)

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
        width = self.size.width or 100
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
            self.call_after_refresh(self._fill, data, width)
            return
        self._fill(data, width)

    def _fill(self, data: CapacityData, width: int) -> None:
        for item in data.items:
            text = card(item, data.now, width)
            key = item.repository.id
            if self._texts.get(key) == text.markup:
                continue  # unchanged: no redraw, no flicker
            self._texts[key] = text.markup
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
