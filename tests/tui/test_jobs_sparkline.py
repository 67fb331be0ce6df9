"""The Jobs screen's throughput sparkline: fed by progress messages, seeded from the
job row, shown only where it fits (times come from the fixed clock, never the wall)."""

from __future__ import annotations

from datetime import timedelta

from textual.widgets import DataTable

from engine.clock import FixedClock
from engine.events import Event
from engine.runtime import Engine
from sendense_tui.app import SendenseApp
from sendense_tui.messages import JobProgress
from sendense_tui.screens.jobs import SPARK_CELLS, JobsScreen, RateHistory
from sendense_tui.widgets.gauge import SPARK
from tests.tui.conftest import settle

WIDE = (120, 40)
MiB = 1024**2


def _job_id(engine: Engine, title: str) -> int:
    return next(j.id for j in engine.job_store.list() if j.title == title)


def _progress(job_id: int, at, rate: float) -> JobProgress:  # type: ignore[no-untyped-def]
    return JobProgress(
        Event(
            kind="job.progress",
            message="x",
            source="jobs",
            job_id=job_id,
            at=at,
            record=False,
            data={
                "bytes_done": 6 * 1024**3,
                "bytes_total": 8 * 1024**3,
                "rate": rate,
                "eta_seconds": 20.0,
            },
        )
    )


def _spark(app: SendenseApp, job_id: int) -> str:
    table = app.screen.query_one("#active", DataTable)
    return str(table.get_cell(str(job_id), "spark"))


async def test_rising_rates_grow_the_sparkline(make_app, demo_engine: Engine, clock) -> None:
    job_id = _job_id(demo_engine, "backup db01/disk0 (incremental)")
    app: SendenseApp = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("6")
        await settle(pilot)
        assert isinstance(app.screen, JobsScreen)
        seen = [_spark(app, job_id)]
        # from the seeded row: the average since start, then the current 96 MiB/s
        assert seen[0] == " " * (SPARK_CELLS - 2) + "▁█"
        for second, rate in enumerate((20, 60, 100, 140, 180, 220), start=1):
            app.post_message(_progress(job_id, clock.now() + timedelta(seconds=second), rate * MiB))
            await pilot.pause()
            seen.append(_spark(app, job_id))
        line = seen[-1]
        assert len(set(seen)) == len(seen), "every new second redraws the line"
        assert len(line) == SPARK_CELLS
        assert line.endswith("█")
        rising = line.strip()[-6:]
        assert [SPARK.index(c) for c in rising] == sorted(SPARK.index(c) for c in rising)
        row = app.screen.query_one("#active", DataTable).get_row(str(job_id))
        assert "220M/s" in [str(cell) for cell in row]


async def test_a_burst_within_one_second_is_one_sample(make_app, demo_engine, clock) -> None:
    job_id = _job_id(demo_engine, "backup db01/disk0 (incremental)")
    app: SendenseApp = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("6")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, JobsScreen)
        before = len(screen.rates[str(job_id)])
        later = clock.now() + timedelta(seconds=5)
        for tenth, rate in enumerate((10, 30, 50)):
            app.post_message(_progress(job_id, later + timedelta(seconds=tenth / 10), rate * MiB))
            await pilot.pause()
        history = screen.rates[str(job_id)]
        assert len(history) == before + 1
        assert history.rates[-1] == 30 * MiB


async def test_narrow_terminal_drops_the_column_and_keeps_the_history(
    make_app, demo_engine: Engine, clock: FixedClock
) -> None:
    job_id = _job_id(demo_engine, "copy web01 → archive-smb")
    app: SendenseApp = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("6")
        await settle(pilot)
        table = app.screen.query_one("#active", DataTable)
        assert "spark" not in [c.key.value for c in table.ordered_columns]
        job_column = next(c for c in table.ordered_columns if c.key.value == "job")
        assert job_column.width >= 19, "the job title keeps its room at 80 columns"
        # progress still lands while the column is hidden, and the history keeps it
        app.post_message(_progress(job_id, clock.now() + timedelta(seconds=1), 200 * MiB))
        await pilot.pause()
        await pilot.resize_terminal(*WIDE)
        await settle(pilot)
        table = app.screen.query_one("#active", DataTable)
        assert [c.key.value for c in table.ordered_columns][6] == "spark"
        assert _spark(app, job_id).endswith("▂▂█")
        assert str(table.get_row(str(job_id))[0]) == str(job_id)
        await pilot.resize_terminal(80, 24)
        await settle(pilot)
        assert "spark" not in [c.key.value for c in table.ordered_columns]


def test_history_keeps_the_newest_samples_and_scales_from_zero() -> None:
    clock = FixedClock()
    history = RateHistory(size=30)
    for second in range(40):
        history.add(clock.now() + timedelta(seconds=second), float(second))
    assert history.rates == [float(s) for s in range(10, 40)]
    # a late sample (older than the newest) changes nothing
    history.add(clock.now(), 1000.0)
    assert history.rates[-1] == 39.0
    steady = RateHistory()
    for second in range(3):
        steady.add(clock.now() + timedelta(seconds=second), 50.0 * MiB)
    # a steady rate is a row of tall blocks, not noise around its own average
    assert str(steady.spark(5)) == "  ███"
