"""GFS retention: a simulated year of daily backups keeps exactly the expected points,
and the per-chain plan never breaks a chain (table-driven, no filesystem needed)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from engine.catalog.models import Backup
from engine.errors import ValidationError
from engine.services.retention import Point, RetentionRules, gfs_keep, plan_chain


def daily(start: date, end: date) -> list[Point]:
    """One backup a day at 02:00 UTC, ids counting from 1."""
    points, day, n = [], start, 1
    while day <= end:
        points.append(Point(n, datetime(day.year, day.month, day.day, 2, tzinfo=UTC)))
        day += timedelta(days=1)
        n += 1
    return points


def days(*texts: str) -> set[date]:
    return {date.fromisoformat(t) for t in texts}


def sundays_2025_from_jan_12() -> set[date]:
    d, out = date(2025, 1, 12), set()
    while d.year == 2025:
        out.add(d)
        d += timedelta(days=7)
    return out


YEAR_2025 = (date(2025, 1, 1), date(2025, 12, 31))

CASES = [
    pytest.param(
        YEAR_2025,
        {"keep_last": 3, "daily": 7, "weekly": 4, "monthly": 6, "yearly": 2},
        days(
            *(f"2025-12-{d}" for d in range(25, 32)),
            "2025-12-21",
            "2025-12-14",
            "2025-11-30",
            "2025-10-31",
            "2025-09-30",
            "2025-08-31",
            "2025-07-31",
        ),
        id="typical-gfs",
    ),
    pytest.param(
        YEAR_2025, {"keep_last": 10}, days(*(f"2025-12-{d}" for d in range(22, 32))), id="last-10"
    ),
    pytest.param(
        (date(2024, 7, 1), date(2025, 6, 30)),
        {"monthly": 12, "yearly": 5},
        days(
            "2025-06-30",
            "2025-05-31",
            "2025-04-30",
            "2025-03-31",
            "2025-02-28",
            "2025-01-31",
            "2024-12-31",
            "2024-11-30",
            "2024-10-31",
            "2024-09-30",
            "2024-08-31",
            "2024-07-31",
        ),
        id="monthly-across-new-year",
    ),
    pytest.param(
        YEAR_2025,
        # 53 ISO weeks have points (2025-W01 … 2025-W52 and 2026-W01 for Dec 29-31)
        {"weekly": 52},
        {date(2025, 12, 31)} | sundays_2025_from_jan_12(),
        id="weekly-52-iso-weeks",
    ),
    pytest.param(YEAR_2025, {"yearly": 3}, days("2025-12-31"), id="yearly-one-year-of-data"),
    pytest.param(
        YEAR_2025,
        {"daily": 400},
        {date(2025, 1, 1) + timedelta(days=i) for i in range(365)},
        id="more-days-than-points",
    ),
]


@pytest.mark.parametrize(("span", "rules", "expected"), CASES)
def test_gfs_over_a_simulated_year_keeps_exactly_the_expected_points(
    span: tuple[date, date], rules: dict[str, int], expected: set[date]
) -> None:
    points = daily(*span)
    keep = gfs_keep(points, RetentionRules.from_dict(rules))
    kept_days = {p.time.date() for p in points if p.id in keep}
    assert kept_days == expected
    assert len(keep) == len(expected)


def test_every_kept_point_says_which_rules_keep_it() -> None:
    points = daily(*YEAR_2025)
    rules = RetentionRules.from_dict(
        {"keep_last": 3, "daily": 7, "weekly": 4, "monthly": 6, "yearly": 2}
    )
    keep = gfs_keep(points, rules)
    by_day = {p.time.date(): keep.get(p.id) for p in points}
    assert by_day[date(2025, 12, 31)] == [
        "last 3",
        "daily 2025-12-31",
        "weekly 2026-W01",
        "monthly 2025-12",
        "yearly 2025",
    ]
    assert by_day[date(2025, 12, 21)] == ["weekly 2025-W51"]
    assert by_day[date(2025, 9, 30)] == ["monthly 2025-09"]
    assert by_day[date(2025, 12, 20)] is None


def test_several_backups_a_day_keep_the_newest_of_the_day() -> None:
    base = datetime(2026, 3, 2, tzinfo=UTC)
    points = [Point(i + 1, base + timedelta(hours=6 * i)) for i in range(8)]  # 2 days x 4
    keep = gfs_keep(points, RetentionRules(daily=2))
    assert sorted(keep) == [4, 8]


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"keep_last": -1}, "cannot be negative"),
        ({"hourly": 3}, "unknown retention rule"),
        ({"daily": "many"}, "whole number"),
    ],
)
def test_bad_retention_rules_are_refused_with_the_reason(
    rules: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        RetentionRules.from_dict(rules)


def test_retention_that_keeps_nothing_is_recognised() -> None:
    assert RetentionRules.from_dict({}).keeps_nothing
    assert RetentionRules.from_dict({"keep_last": 0, "daily": 0}).keeps_nothing
    assert not RetentionRules.from_dict({"yearly": 1}).keeps_nothing


# -- per-chain plan: merge, never break ---------------------------------------------------


def chain(n: int, chain_id: int = 1) -> list[Backup]:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        Backup(
            id=chain_id * 100 + i,
            chain_id=chain_id,
            kind="full" if i == 0 else "incremental",
            position=i,
            path=f"c{chain_id}/{i}.qcow2",
            point_time=t0 + timedelta(days=i),
        )
        for i in range(n)
    ]


def actions(points: list[Backup], kept: list[int], merges: bool = True) -> list[str]:
    keep = {points[i].id: ["test"] for i in kept}
    out, _ops = plan_chain(points, keep, merges_allowed=merges)
    return [out[p.id][0] for p in points]


@pytest.mark.parametrize(
    ("n", "kept", "merges", "expected", "ops"),
    [
        (4, [], True, ["delete"] * 4, [("delete", 0, 4)]),
        (5, [3, 4], True, ["merge", "merge", "merge", "keep", "keep"], [("merge", 3, 3)]),
        (5, [0, 1], True, ["keep", "keep", "delete", "delete", "delete"], [("delete", 2, 3)]),
        # a gap between kept points stays: the later kept point builds on it
        (5, [1, 4], True, ["merge", "keep", "keep", "keep", "keep"], [("merge", 1, 1)]),
        # immutable target: no merges, the chain stays whole until nothing in it is kept
        (5, [3, 4], False, ["keep"] * 5, []),
        (5, [0], False, ["keep", "delete", "delete", "delete", "delete"], [("delete", 1, 4)]),
    ],
)
def test_chain_plan_merges_the_head_and_deletes_the_tail_never_the_middle(
    n: int,
    kept: list[int],
    merges: bool,
    expected: list[str],
    ops: list[tuple[str, int, int]],
) -> None:
    points = chain(n)
    assert actions(points, kept, merges) == expected
    keep = {points[i].id: ["test"] for i in kept}
    _out, plan_ops = plan_chain(points, keep, merges_allowed=merges)
    assert [
        (o.kind, points.index(next(p for p in points if p.id == o.backup_id)), len(o.removes))
        for o in plan_ops
    ] == ops


def test_a_kept_gap_point_names_the_point_that_needs_it() -> None:
    points = chain(4)
    keep = {points[0].id: ["last 2"], points[3].id: ["last 2"]}
    out, _ = plan_chain(points, keep, merges_allowed=True)
    assert out[points[1].id] == ("keep", [f"#{points[3].id} builds on it (incremental chain)"])
