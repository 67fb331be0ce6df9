"""A dead repository never freezes anything, and forecasts wait for history.

The dead repository is a real FUSE directory (``tests.plugins.fusedir``) registered
as a *local* repository and frozen with SIGSTOP, as a hung FUSE server or a stale
mount does it: every statvfs into it blocks in the kernel. Forecasts run on the
real catalog with a FixedClock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from engine.catalog.capacity import Sample
from engine.catalog.models import Backup, Chain, Repository
from engine.clock import FixedClock
from engine.config import CapacitySettings, default_settings
from engine.events import Event
from engine.runtime import Engine
from engine.services.capacity import NEED_HISTORY, forecast, linear_fit
from engine.services.probe import RepositoryCheckError
from tests.plugins.fusedir import FuseDir

MiB = 1024 * 1024


@pytest.fixture
def eng(tmp_path: Path) -> Iterator[Engine]:
    settings = replace(
        default_settings(tmp_path / "state"),
        capacity=CapacitySettings(min_free_bytes=0, poll_seconds=3600, debounce_seconds=0.2),
    )
    engine = Engine(settings, clock=FixedClock()).open()
    try:
        yield engine
    finally:
        engine.close()


def _probe_threads(repo: Repository) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"probe:capacity:{repo.id}"]


# -- a frozen repository --------------------------------------------------------------


@pytest.mark.root
def test_a_frozen_fuse_repository_turns_unresponsive_and_never_holds_the_others(
    eng: Engine, fuse_dir: FuseDir, tmp_path: Path
) -> None:
    healthy_dir = tmp_path / "healthy"
    healthy_dir.mkdir()
    now = eng.clock.now()
    frozen = eng.repository_store.add(
        name="frozen", kind="local", path=str(fuse_dir.path), now=now, state="ready"
    )
    healthy = eng.repository_store.add(
        name="healthy", kind="local", path=str(healthy_dir), now=now, state="ready"
    )
    seen: list[Event] = []
    eng.bus.subscribe(seen.append, kinds=("repository.",))
    eng.capacity.reading_timeout = 1.0
    before = {r.name: r for r in eng.capacity.sample_all()}
    assert before["frozen"].error is None and before["frozen"].total > 0

    fuse_dir.freeze()
    try:
        readings = {r.name: r for r in eng.capacity.sample_all()}
        # the frozen one: unresponsive within this one poll, keeping its last figures
        stuck = readings["frozen"]
        assert stuck.unresponsive and stuck.error == ("repository frozen did not answer within 1 s")
        assert stuck.figures == before["frozen"]
        assert stuck.figures_age(eng.clock.now() + timedelta(minutes=5)) == timedelta(minutes=5)
        # the healthy one was read in the same poll, side by side
        assert readings["healthy"].error is None and readings["healthy"].total > 0
        row = eng.repositories.get("frozen")
        assert row.state == "unresponsive"
        assert row.state_detail is not None
        assert row.state_detail.startswith("repository frozen did not answer within 1 s")
        assert [e.kind for e in seen] == ["repository.unresponsive"]
        assert eng.repositories.get("healthy").state == "ready"

        # later polls and readings do not pile up threads on the stuck statvfs: one
        # outstanding reading per repository, the next ones fail at once
        for _ in range(5):
            again = eng.capacity.sample(frozen)
            assert again.unresponsive and "still does not answer" in (again.error or "")
            assert again.figures == before["frozen"]
        assert len(_probe_threads(frozen)) == 1
        assert eng.capacity.sample(healthy).error is None

        # nothing is written into it: the capacity gate refuses before any mount check
        with pytest.raises(RepositoryCheckError, match="repository frozen does not answer"):
            eng.repositories.ready_for_new_data("frozen")
        # its Test says so within the probe's timeout instead of hanging
        report = eng.repositories.test_repository("frozen")
        assert not report.ok and "did not answer" in (report.error or "")
    finally:
        fuse_dir.thaw()

    # back: the stuck thread finishes, the next reading is fresh, the state too
    for t in _probe_threads(frozen):
        t.join(timeout=30)
    back = eng.capacity.sample(frozen)
    assert back.error is None and back.total > 0
    assert eng.repositories.get("frozen").state == "ready"
    assert [e.kind for e in seen][-1] == "repository.responsive"


@pytest.mark.root
def test_engine_start_skips_a_frozen_local_repository_instead_of_hanging(
    tmp_path: Path, fuse_dir: FuseDir
) -> None:
    """What every `backup run`, console and daemon start does: prepare each enabled
    repository. A frozen one is read (bounded), marked unresponsive and left alone."""
    settings = replace(
        default_settings(tmp_path / "state"),
        capacity=CapacitySettings(min_free_bytes=0, poll_seconds=3600),
    )
    engine = Engine(settings).open()
    try:
        engine.repository_store.add(
            name="frozen", kind="local", path=str(fuse_dir.path), now=engine.clock.now()
        )
        (tmp_path / "healthy").mkdir()
        engine.repository_store.add(
            name="healthy", kind="local", path=str(tmp_path / "healthy"), now=engine.clock.now()
        )
        engine.capacity.reading_timeout = 1.0
        fuse_dir.freeze()
        done = threading.Event()

        def start() -> None:
            engine.repositories.start()
            done.set()

        threading.Thread(target=start, daemon=True).start()
        # a hang is the failure; the bound is generous so a slow machine never flakes
        assert done.wait(60), "preparing the repositories hung on the frozen one"
        assert engine.repositories.get("frozen").state == "unresponsive"
        assert engine.repositories.get("healthy").state == "ready"
        assert (tmp_path / "healthy" / "chains").is_dir()  # prepared as usual
    finally:
        fuse_dir.thaw()
        engine.close()


# -- forecasts --------------------------------------------------------------------------


def _land(eng: Engine, repo: Repository, when: datetime) -> None:
    """A backup that landed in ``repo`` at ``when`` (catalog rows only)."""
    with eng.catalog.session() as s:
        chain = Chain(
            repository_id=repo.id,
            vm_name="vm",
            disk_name="sda",
            directory=f"vm/sda/{when:%s}",
            created_at=when,
        )
        s.add(chain)
        s.flush()
        s.add(
            Backup(
                chain_id=chain.id,
                kind="full",
                position=0,
                path=f"p{when:%s}",
                state="complete",
                point_time=when,
                created_at=when,
                file_size=10 * MiB,
            )
        )


def _sample(eng: Engine, repo: Repository, when: datetime, used: int, total: int) -> Sample:
    eng.capacity_store.add(
        repo.id, taken_at=when, total_bytes=total, used_bytes=used, free_bytes=total - used
    )
    return Sample(when, total, used, total - used)


def test_no_forecast_minutes_after_the_first_backup(eng: Engine, tmp_path: Path) -> None:
    now = eng.clock.now()
    repo = eng.repository_store.add(name="r", kind="local", path=str(tmp_path), now=now)
    total = 1000 * MiB
    _sample(eng, repo, now - timedelta(minutes=20), 100 * MiB, total)
    # the first full: 400 MiB written in ten minutes, sampled every 10 s by the watcher
    for i in range(61):
        when = now - timedelta(minutes=15) + timedelta(seconds=10 * i)
        _sample(eng, repo, when, 100 * MiB + i * 400 * MiB // 60, total)
    _land(eng, repo, now - timedelta(minutes=5))
    _sample(eng, repo, now, 500 * MiB, total)

    fc = eng.capacity.forecast(repo)
    assert (fc.days_until_full, fc.full_at, fc.growth_per_day) == (None, None, None)
    assert fc.describe() == NEED_HISTORY == "forecast after 24 h of history"
    [item] = eng.capacity.overview(measure=False)
    assert item.forecast.describe() == "forecast after 24 h of history"


def test_a_day_of_samples_before_a_first_backup_is_not_its_history(
    eng: Engine, tmp_path: Path
) -> None:
    """A repository watched for 30 h, whose first backup landed an hour ago: the
    hours before it are an empty repository, not a trend. A repository nobody backs
    up into, growing by itself, gets its forecast from the samples alone."""
    now = eng.clock.now()
    repo = eng.repository_store.add(name="r", kind="local", path=str(tmp_path), now=now)
    for hour in range(30, -1, -1):
        used = 100 * MiB if hour > 1 else 600 * MiB
        _sample(eng, repo, now - timedelta(hours=hour), used, 1000 * MiB)
    _land(eng, repo, now - timedelta(hours=1))
    fc = eng.capacity.forecast(repo)
    assert fc.days_until_full is None and fc.describe() == NEED_HISTORY

    other = eng.repository_store.add(name="o", kind="local", path=str(tmp_path), now=now)
    for hour in range(30, -1, -1):
        _sample(eng, other, now - timedelta(hours=hour), (500 - hour) * MiB, 1000 * MiB)
    grows = eng.capacity.forecast(other)
    assert grows.trend == "growing" and grows.growth_per_day == pytest.approx(24 * MiB, rel=0.1)


def test_three_days_of_daily_backups_fit_daily_peaks_not_the_bursts(
    eng: Engine, tmp_path: Path
) -> None:
    """Hourly samples for three days; each nightly backup adds 10 MiB in a ten-minute
    burst sampled every 10 s (the watcher's debounced samples), the last one just now.
    The growth is 10 MiB a day, whatever the dense minutes of each burst look like."""
    now = eng.clock.now()
    repo = eng.repository_store.add(name="r", kind="local", path=str(tmp_path), now=now)
    total = 1000 * MiB
    backups = [now - timedelta(days=d) for d in (3, 2, 1, 0)]

    def level(at: datetime) -> int:
        done = sum(1 for b in backups if b <= at)
        burst = next((b for b in backups if b - timedelta(minutes=10) < at < b), None)
        partial = 0
        if burst is not None:  # writing: part of tonight's 10 MiB is there already
            partial = int(10 * MiB * (1 - (burst - at) / timedelta(minutes=10)))
        return 500 * MiB + done * 10 * MiB + partial

    times = {now - timedelta(days=3, hours=2) + timedelta(hours=h) for h in range(75)}
    for b in backups:
        times |= {b - timedelta(seconds=10 * i) for i in range(61)}
    samples = [_sample(eng, repo, t, level(t), total) for t in sorted(times) if t <= now]
    for b in backups:
        _land(eng, repo, b)

    fc = eng.capacity.forecast(repo)
    assert fc.trend == "growing"
    assert fc.growth_per_day == pytest.approx(10 * MiB, rel=0.01)
    # 95 % of 1000 MiB = 950 MiB; 540 MiB used now: 41 days at 10 MiB a day
    assert fc.days_until_full == pytest.approx(41, abs=0.5)
    assert fc.describe() == "full in 41 days"
    # a fit of every sample would not say 10 MiB a day: the dense minutes of the
    # bursts weigh more than the quiet hours (so this data tells the two apart)
    t0 = samples[0].taken_at
    every = linear_fit(
        [((s.taken_at - t0).total_seconds() / 86400, float(s.used_bytes)) for s in samples]
    )
    assert every is not None and every != pytest.approx(10 * MiB, rel=0.01)


def test_forecast_without_catalog_landings_still_needs_a_day(clock: FixedClock) -> None:
    now = clock.now()
    hour = [Sample(now - timedelta(minutes=m), 100, 50 + (60 - m), 50) for m in range(60, -1, -1)]
    # an hour climbing fast: no days promised, whatever the slope
    assert forecast(hour, now, 95).describe() == NEED_HISTORY
    assert forecast(hour, now, 95).days_until_full is None
