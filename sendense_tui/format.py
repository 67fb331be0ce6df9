"""Small text helpers shared by screens and the CLI: sizes, rates, times."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.text import Text

_UNITS = ("B", "K", "M", "G", "T", "P")


def human_bytes(value: float | int | None) -> str:
    """1536 -> '1.5K'; binary units, at most 4 significant characters."""
    if value is None:
        return "-"
    number = float(value)
    for unit in _UNITS:
        if abs(number) < 1024 or unit == _UNITS[-1]:
            if unit == "B":
                return f"{int(number)}B"
            return f"{number:.1f}{unit}" if number < 10 else f"{number:.0f}{unit}"
        number /= 1024
    return f"{number:.0f}P"  # pragma: no cover - loop always returns


def human_rate(rate: float | None) -> str:
    if not rate:
        return "-"
    return f"{human_bytes(rate)}/s"


def human_duration(seconds: float | None) -> str:
    """Compact duration: 45s, 12m, 1h05m, 2d03h."""
    if seconds is None:
        return "-"
    total = max(0, round(seconds))
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s" if minutes < 10 else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def short_time(value: datetime | None, now: datetime | None = None) -> str:
    """'09:14:03' today (UTC), '11-23 17:02' on other days. Always UTC, never local."""
    value = as_utc(value)
    if value is None:
        return "-"
    value = value.astimezone(UTC)
    if now is not None and as_utc(now).astimezone(UTC).date() == value.date():  # type: ignore[union-attr]
        return value.strftime("%H:%M:%S")
    return value.strftime("%m-%d %H:%M")


def export_limits(
    idle_seconds: int | None, expires_at: datetime | None, now: datetime | None = None
) -> str:
    """An NBD export's limits: 'idle 30m, ends 17:00:00' (see short_time)."""
    idle = f"idle {human_duration(idle_seconds)}" if idle_seconds else "no idle limit"
    return f"{idle}, ends {short_time(expires_at, now)}" if expires_at else idle


def percent(done: int, total: int) -> float | None:
    if total <= 0:
        return None
    return max(0.0, min(100.0, 100.0 * done / total))


def progress_bar(done: int, total: int, width: int = 10) -> Text:
    """A block-character bar (no braille: it survives any SSH terminal) plus percent."""
    pct = percent(done, total)
    if pct is None:
        return Text("-".ljust(width + 5), style="dim")
    filled = round(width * pct / 100)
    text = Text()
    text.append("█" * filled, style="bold green")
    text.append("░" * (width - filled), style="dim")
    text.append(f" {pct:3.0f}%")
    return text


LEVEL_STYLES: dict[str, str] = {
    "debug": "dim",
    "info": "",
    "warning": "bold yellow",
    "error": "bold red",
    "critical": "bold white on red",
}

STATE_STYLES: dict[str, str] = {
    "running": "bold green",
    "queued": "cyan",
    "paused": "yellow",
    "succeeded": "green",
    "failed": "bold red",
    "failed_unprotected": "bold white on red",
    "cancelled": "yellow",
}


def level_text(level: str) -> Text:
    return Text(level, style=LEVEL_STYLES.get(level, ""))


#: how a state reads where a column is narrow (the state itself everywhere else)
STATE_LABELS: dict[str, str] = {
    # the work landed (good restore points) but its lock could not be set
    "failed_unprotected": "unprotected",
}


def state_text(state: str) -> Text:
    return Text(STATE_LABELS.get(state, state), style=STATE_STYLES.get(state, ""))
