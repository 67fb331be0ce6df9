"""Cron expressions (five fields, UTC): the one check every schedule goes through.

Policies, scheduled copy rules and the verification schedule in the config all
use ``cron_error``. Besides the syntax it refuses an expression that never fires
(``0 1 31 2 *``: there is no 31 February), which would otherwise be saved and
then make every "when does it run next" raise.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

#: a schedule with no run within this many years is refused as never firing
HORIZON_YEARS = 5


def cron_error(schedule: str | None, *, now: datetime | None = None) -> str | None:
    """None when ``schedule`` is a five-field cron expression that fires; else a
    sentence saying what is wrong with it."""
    text = (schedule or "").strip()
    if not text:
        return "a schedule is needed (cron, e.g. '0 2 * * *' for 02:00 every day)"
    if len(text.split()) != 5:
        return (
            f"{text!r} is not a cron expression: it needs five fields "
            "(minute hour day-of-month month day-of-week), e.g. '0 2 * * *'"
        )
    from croniter import CroniterError, croniter

    if not croniter.is_valid(text):
        return f"{text!r} is not a valid cron expression (e.g. '0 2 * * *' for 02:00 daily)"
    start = now or datetime.now(UTC)
    try:
        croniter(text, start, max_years_between_matches=HORIZON_YEARS).get_next(datetime)
    except (CroniterError, ValueError, OverflowError):
        return (
            f"{text!r} never fires: no time in the next {HORIZON_YEARS} years matches it "
            "(is the day of the month in that month, e.g. not 31 February?)"
        )
    return None


def cron_iter(schedule: str, start: datetime) -> Any:
    """croniter's iterator over ``schedule``'s times after ``start``, imported on first
    use: its import runs ``file`` on the Python binary (platform.architecture), a cost
    every ``sendense`` call paid whether or not it read a schedule."""
    from croniter import croniter

    return croniter(schedule, start)
