r"""Small text helpers shared by screens and the CLI: sizes, rates, times, and names
from outside made safe to show.

Anything that comes from outside Sendense's own code (a file name inside a
restore point, a VM or disk name, a path, an event message, a tool's error) goes
through ``printable`` before it reaches a terminal, so a crafted name cannot
forge a listing line (``\n``, ``\r``) or send terminal escapes (``\x1b[2J``).
In the console, ``safe_text`` also keeps it from being read as Rich markup (a
file named ``[@click=app.quit]x`` is shown as it is, not made a link).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from engine.names import UNSAFE_CHARS
from engine.units import plural as plural  # one helper for the engine and the console

if TYPE_CHECKING:
    from rich.text import Text

_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: Any) -> str:
    char: str = match.group()
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:
        # an undecodable byte of a file name (os.fsdecode's surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def printable(value: object, *, keep_newlines: bool = False) -> str:
    r"""``value`` as text with every control or invisible formatting character shown
    as an escape: ``\n``, ``\r``, ``\t``, ``\x1b``, ``\x9b``, ``\u202e``; an
    undecodable byte of a file name as ``\xff``. Everything else is unchanged.
    ``keep_newlines``: for text meant to have several lines (a notification and its
    hint); the lines stay, every other control character is still escaped."""
    text = value if isinstance(value, str) else str(value)
    if keep_newlines:
        return "\n".join(UNSAFE_CHARS.sub(_escape_char, line) for line in text.split("\n"))
    return UNSAFE_CHARS.sub(_escape_char, text)


def safe_text(value: object, style: str = "") -> Text:
    """A Text for the console: control characters escaped, never read as markup."""
    # rich is imported where the console needs it: the CLI's text output never does
    from rich.text import Text

    return Text(printable(value), style=style)


def safe_cell(cell: object) -> object:
    """A table cell made safe: a str becomes a Text (a DataTable reads a str as
    markup); a Text holding control characters is rebuilt with them escaped (its
    inner styles give way, its base style stays). Other cells are unchanged."""
    from rich.text import Text

    if isinstance(cell, str):
        return safe_text(cell)
    if isinstance(cell, Text) and UNSAFE_CHARS.search(cell.plain):
        return Text(printable(cell.plain), style=cell.style, justify=cell.justify)
    return cell


def safe_markup(value: object) -> str:
    """For widgets that read markup (``Static.update`` or ``Label`` with a str):
    control characters escaped and ``[`` escaped, so a name cannot style or link."""
    from rich.markup import escape as escape_markup

    return escape_markup(printable(value))


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


def as_time(value: datetime | str | None) -> datetime | None:
    """A time of a listing's row: a datetime read from the catalog, or the isoformat()
    text of one in a page the daemon answered (sendense_tui.daemon_client)."""
    if isinstance(value, str):
        return as_utc(datetime.fromisoformat(value))
    return as_utc(value)


def short_time(value: datetime | None, now: datetime | None = None) -> str:
    """'09:14:03' today (UTC), '11-23 17:02' on another day of this year, '2025-11-23'
    in another year: a time never hides that it is not today's. Always UTC."""
    value = as_utc(value)
    if value is None:
        return "-"
    value = value.astimezone(UTC)
    today = as_utc(now).astimezone(UTC).date() if now is not None else None  # type: ignore[union-attr]
    if today == value.date():
        return value.strftime("%H:%M:%S")
    if today is not None and today.year != value.year:
        return value.strftime("%Y-%m-%d")
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
    from rich.text import Text

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
    # a repository that does not answer (a hung server, a frozen FUSE directory)
    "unresponsive": "bold red",
}


def level_text(level: str) -> Text:
    from rich.text import Text

    return Text(level, style=LEVEL_STYLES.get(level, ""))


#: how a state reads where a column is narrow (the state itself everywhere else)
STATE_LABELS: dict[str, str] = {
    # the work landed (good restore points) but its lock could not be set
    "failed_unprotected": "unprotected",
}


def state_text(state: str) -> Text:
    from rich.text import Text

    return Text(STATE_LABELS.get(state, state), style=STATE_STYLES.get(state, ""))


def lock_text(immutable: bool, days: int, grace_hours: int = 0) -> str:
    """Whether a repository locks what lands on it, and for how long: "locks backups
    for 30 days", "does not lock backups" (what its filesystem can do is another
    matter: filesystem_lock_text)."""
    if not immutable:
        return "does not lock backups"
    # a grace period leaves a new file unlocked for at most that long, then locks it
    grace = f" (new ones within {plural(grace_hours, 'hour')})" if grace_hours else ""
    return f"locks backups for {plural(days, 'day')}{grace}"


def filesystem_lock_text(capabilities: dict[str, Any] | None) -> str:
    """Whether the repository's filesystem takes the immutable flag (probed once)."""
    if not capabilities or "immutable" not in capabilities:
        return "filesystem not tested yet"
    if capabilities.get("immutable"):
        return "filesystem supports immutable files"
    return "filesystem cannot make files immutable"


def age_text(age: timedelta) -> str:
    """How old a stale figure is: '45s ago', '12m ago', '1h05m ago', '2d03h ago'."""
    return f"{human_duration(age.total_seconds())} ago"
