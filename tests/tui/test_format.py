"""The console's words for counts and times: one helper each, used everywhere."""

from __future__ import annotations

from datetime import UTC, datetime

from engine.units import plural as engine_plural
from sendense_tui.format import filesystem_lock_text, lock_text, plural, short_time


def test_counts_are_singular_for_one_and_plural_otherwise() -> None:
    assert plural is engine_plural  # one helper for the engine's messages and the console
    assert plural(1, "backup") == "1 backup"
    assert plural(2, "backup") == "2 backups"
    assert plural(0, "file") == "0 files"
    assert plural(1, "copy", "copies") == "1 copy"
    assert plural(3, "copy", "copies") == "3 copies"


def test_a_time_before_today_shows_its_date_and_one_of_another_year_its_year() -> None:
    now = datetime(2026, 12, 1, 22, 0, tzinfo=UTC)
    assert short_time(datetime(2026, 12, 1, 9, 14, 3, tzinfo=UTC), now) == "09:14:03"
    assert short_time(datetime(2026, 11, 30, 23, 59, tzinfo=UTC), now) == "11-30 23:59"
    assert short_time(datetime(2025, 12, 1, 9, 14, tzinfo=UTC), now) == "2025-12-01"
    # naive catalog times are UTC; no "now" given: never a bare time
    assert short_time(datetime(2026, 12, 1, 9, 14), None) == "12-01 09:14"


def test_lock_words_say_what_the_repository_does_and_what_its_filesystem_can() -> None:
    assert lock_text(False, 0) == "does not lock backups"
    assert lock_text(True, 1) == "locks backups for 1 day"
    assert lock_text(True, 30, 24) == "locks backups for 30 days (new ones within 24 hours)"
    assert filesystem_lock_text({"immutable": True}) == "filesystem supports immutable files"
    assert filesystem_lock_text({"immutable": False}) == "filesystem cannot make files immutable"
    assert filesystem_lock_text({}) == "filesystem not tested yet"
