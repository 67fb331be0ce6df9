"""Sane bounds for every day, hour and count an operator can set, and safe expiries.

The engine checks these itself (the CLI's argument parsing, the console and the
HTTP API all end up here), so a number that is out of range is refused with one
sentence naming the setting, the allowed range and what to do, never a
traceback or an ``OverflowError`` deep in a job. Expiries are computed with
``expiry_after``, which refuses a date past what Python and the catalog hold
instead of overflowing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from engine.errors import ValidationError
from engine.units import plural


@dataclass(frozen=True)
class Bound:
    """An inclusive range for one setting, with the words to name it."""

    what: str
    low: int
    high: int
    unit: str = ""

    def range_text(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.low}-{self.high}{unit}"

    def check(self, value: object, *, hint: str | None = None) -> int:
        """The value as an int; ValidationError when it is not a whole number in range."""
        if isinstance(value, bool) or not isinstance(value, int):
            try:
                number = int(str(value).strip())
            except (TypeError, ValueError):
                raise ValidationError(
                    f"{self.what} must be a whole number ({self.range_text()}), not {value!r}",
                    hint=hint or f"give a number from {self.low} to {self.high}",
                ) from None
        else:
            number = value
        if not self.low <= number <= self.high:
            shown = str(number) if len(str(number)) <= 24 else f"{str(number)[:20]}…"
            raise ValidationError(
                f"{self.what} must be {self.range_text()}, not {shown}",
                hint=hint or f"give a number from {self.low} to {self.high}",
            )
        return number

    def problem(self, value: object) -> str | None:
        """The sentence ``check`` would raise, or None (for per-field validation)."""
        try:
            self.check(value)
        except ValidationError as exc:
            return exc.message
        return None


#: 100 years: longer than any retention law asks, far inside what dates can hold
MAX_DAYS = 36_500
MAX_HOURS = MAX_DAYS * 24
#: more points than any repository keeps; far inside a 32-bit catalog integer
MAX_COUNT = 100_000

LOCK_DAYS = Bound("a lock period", 1, MAX_DAYS, "days")
#: a policy's own lock period; 0 means "the repository's period only"
POLICY_LOCK_DAYS = Bound("a policy's lock period", 0, MAX_DAYS, "days")
GRACE_HOURS = Bound("the grace period", 0, 72, "hours")
FULL_EVERY = Bound("a new full every N backups", 1, MAX_COUNT)
RETENTION_COUNT = Bound("a retention count", 0, MAX_COUNT)
LATEST_COUNT = Bound("the number of latest points to copy", 1, MAX_COUNT)
MAX_AGE_HOURS = Bound("the maximum copy age", 1, MAX_HOURS, "hours")
REVERIFY_DAYS = Bound("the re-verification period", 1, MAX_DAYS, "days")


def expiry_after(start: datetime, *, days: int = 0, hours: int = 0) -> datetime:
    """``start`` plus a period, or ValidationError when the date would overflow (past
    the year 9999) instead of an OverflowError wherever the sum is taken."""
    try:
        return start + timedelta(days=days, hours=hours)
    except (OverflowError, ValueError):
        raise ValidationError(
            f"a period of {plural(days, 'day')} and {plural(hours, 'hour')} from "
            f"{start:%Y-%m-%d} ends "
            "past the last date a calendar holds",
            hint=f"lock periods are at most {MAX_DAYS} days",
        ) from None


def latest_allowed(now: datetime) -> datetime:
    """The latest expiry a lock may be given from ``now`` (``MAX_DAYS`` ahead)."""
    return expiry_after(now, days=MAX_DAYS)
