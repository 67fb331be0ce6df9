"""Live capacity: samples, thresholds that fire once, forecasts, shared filesystems.

What "used %" means here: ``used / (used + free)`` — psutil's ``percent``.
ext4 keeps a reserve for root (5 % by default) that is in ``total`` but not
in ``free``; counting against ``used + free`` answers the question operators
ask, "how much can I still write", and reaches 100 % when writes fail.

How it runs: one thread samples every repository each ``poll_seconds``; a
watchdog observer watches each repository directory and, after a write,
schedules one more sample ``debounce_seconds`` later (writes in between do
not push it back), so a threshold crossing shows within about a second.

Levels: ok < warning < critical < full, from the repository's thresholds (or
the configured defaults). Free space under ``min_free_bytes`` is at least
"critical". Each change of level publishes one event (``capacity.threshold_crossed``
upwards, ``capacity.threshold_cleared`` downwards) and is stored in
``Repository.capacity_level``, so a restart does not fire it again.
A repository at "full" takes no new backups or copies: ``ensure_room`` raises
``RepositoryFullError`` naming the numbers.

Every repository, local ones included (a local path can be a FUSE directory or
a stale bind mount), is measured in its own worker with a timeout, all side by
side under one deadline: one that does not answer becomes ``unresponsive`` with
the time it was last seen, within one poll, while the others keep updating; its
reading keeps the last good figures so screens show them with their age.

Forecasts are fitted on daily peaks (the fullest sample of each 24 h window),
never on the minutes of a backup burst, and only once there are 24 h of samples
(counted from the first backup that landed inside them, so a first full is not
taken for a trend); until then the forecast says why.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psutil
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from engine.catalog.capacity import CapacityStore, Sample, SpaceBreakdown, history_of
from engine.catalog.changes import ChangeStore
from engine.catalog.models import Repository
from engine.catalog.repositories import RepositoryStore
from engine.clock import SYSTEM_CLOCK, Clock
from engine.config import CapacitySettings
from engine.errors import Action, CatalogUnavailable, SendenseError
from engine.events import Event, EventBus
from engine.services.probe import (
    Probe,
    ProbeTimeout,
    RepositoryCheckError,
    run_with_timeout,
    start_probe,
)
from engine.units import human_bytes

log = logging.getLogger(__name__)

# watchdog 7 races its own recursive watch when nested directories appear quickly (a
# backup creates chains/<vm>/<disk>/<timestamp>) and warns that it re-registers the same
# path; harmless, but it would print a multi-line warning on the operator's terminal.
warnings.filterwarnings(
    "ignore", message=r"Callback with id .* already exists", category=RuntimeWarning
)

LEVELS = ("ok", "warning", "critical", "full")
_EVENT_LEVEL = {"ok": "info", "warning": "warning", "critical": "error", "full": "critical"}
#: how long a capacity reading (statvfs) may take, for every kind of repository
READING_TIMEOUT = 5.0
#: figures older than this show their age
STALE_AFTER = timedelta(minutes=3)
FORECAST_WINDOW = timedelta(days=7)
#: growth below this many bytes per day counts as "not growing"
FLAT_BYTES_PER_DAY = 1024 * 1024
FORECAST_HORIZON_DAYS = 3650
#: no "days until full" before this much history (counted from a first backup)
FORECAST_MIN_HISTORY = timedelta(hours=24)
NEED_HISTORY = "forecast after 24 h of history"
#: after a write-triggered sample, one more this much later (delayed frees)
SETTLE_SECONDS = 2.0
#: the space breakdown of every repository is a pass over every backup and copy
#: (0.2-0.4 s of a 100,000-point catalog): it is used again while the catalog shows
#: no change and no lock counted in it expired, for at most this long
BREAKDOWN_REUSE = timedelta(seconds=30)


def _size_of(reading: Reading | None) -> int | None:
    """The filesystem size a reading saw (None: not measured)."""
    return reading.total if reading is not None and reading.total else None


def _stored_size(latest: Sample | None) -> int:
    """The filesystem size for the reserve when nothing was measured: the last stored
    sample's, else as good as unbounded (the reserve's ceiling applies)."""
    return latest.total_bytes if latest is not None else 1 << 62


class RepositoryFullError(SendenseError):
    """The repository passed its "full" threshold: no new backups or copies."""


@dataclass(frozen=True)
class Thresholds:
    warning: float
    critical: float
    full: float
    min_free: int

    def percent_level(self, percent: float) -> str:
        """The level the used percent alone gives."""
        if percent >= self.full:
            return "full"
        if percent >= self.critical:
            return "critical"
        if percent >= self.warning:
            return "warning"
        return "ok"

    def level(self, percent: float, free: int) -> str:
        level = self.percent_level(percent)
        if free < self.min_free and LEVELS.index(level) < LEVELS.index("critical"):
            level = "critical"
        return level

    def reserve_raised(self, percent: float, free: int) -> bool:
        """True when the reserve (min_free), not the percent, set the level."""
        return self.level(percent, free) != self.percent_level(percent)


@dataclass(frozen=True)
class Reading:
    repository_id: int
    name: str
    path: str
    taken_at: datetime
    total: int = 0
    used: int = 0
    free: int = 0
    #: used / (used + free), 0..100
    percent: float = 0.0
    level: str = "ok"
    #: st_dev of the filesystem (repositories with the same one share capacity)
    device: int | None = None
    #: None when measured; a sentence when it could not be (unresponsive, missing)
    error: str | None = None
    #: the filesystem did not answer in time (a hung server, a frozen FUSE directory)
    unresponsive: bool = False
    #: with an error: the last reading that had figures, shown with its age
    last_good: Reading | None = None

    @property
    def figures(self) -> Reading | None:
        """The reading whose numbers to show: this one, or the last good one."""
        return self if self.error is None else self.last_good

    def figures_age(self, now: datetime) -> timedelta | None:
        """How old the figures are when they are stale (the repository did not answer,
        or they were measured longer than ``STALE_AFTER`` ago); None when fresh."""
        figures = self.figures
        if figures is None:
            return None
        age = max(timedelta(0), now - figures.taken_at)
        return age if self.error is not None or age > STALE_AFTER else None


@dataclass(frozen=True)
class Forecast:
    #: bytes per day from a linear fit of daily peaks (None: too little history)
    growth_per_day: float | None
    days_until_full: float | None
    full_at: datetime | None
    #: "growing" | "not growing" | "not enough history"
    trend: str
    #: bytes that scheduled expiries will free in the horizon
    scheduled_release_bytes: int = 0
    #: why there is no "days until full" yet, as the screens say it
    reason: str | None = None

    def describe(self) -> str:
        if self.trend != "growing" or self.days_until_full is None:
            return self.reason or self.trend
        if self.days_until_full >= FORECAST_HORIZON_DAYS:
            return "full in more than 10 years"
        return f"full in {self.days_until_full:.0f} days"


@dataclass
class RepositoryCapacity:
    """Everything the capacity screen shows for one repository."""

    repository: Repository
    reading: Reading | None
    thresholds: Thresholds
    forecast: Forecast
    breakdown: SpaceBreakdown
    history: list[Sample | None] = field(default_factory=list)
    shared_with: list[str] = field(default_factory=list)


def usage(path: str) -> tuple[int, int, int, float, int]:
    """(total, used, free, percent, st_dev) of the filesystem holding ``path``."""
    du = psutil.disk_usage(path)
    dev = os.stat(path).st_dev
    # psutil's own percent is the same ratio rounded to 0.1: too coarse for big disks
    percent = du.used * 100 / (du.used + du.free) if du.used + du.free else 0.0
    return du.total, du.used, du.free, percent, dev


def linear_fit(points: list[tuple[float, float]]) -> float | None:
    """Slope of the least-squares line through (x, y) points, None if undefined."""
    n = len(points)
    if n < 2:
        return None
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    var = sum((p[0] - mx) ** 2 for p in points)
    if var == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in points) / var


def daily_peaks(samples: list[Sample]) -> list[Sample]:
    """The fullest sample of each 24 h window counted back from the newest sample,
    oldest first: what the repository holds once each day's backups have landed,
    whatever a backup's minutes of writing (and their dense samples) looked like."""
    if not samples:
        return []
    newest = samples[-1].taken_at
    peaks: dict[int, Sample] = {}
    for s in samples:
        window = int((newest - s.taken_at) / FORECAST_MIN_HISTORY)
        best = peaks.get(window)
        if best is None or s.used_bytes >= best.used_bytes:
            peaks[window] = s
    return [peaks[w] for w in sorted(peaks, reverse=True)]


def forecast(
    samples: list[Sample],
    now: datetime,
    full_percent: float,
    releases: list[tuple[datetime, int]] | None = None,
    landings: list[datetime] | None = None,
) -> Forecast:
    """Days until ``full_percent`` from the growth of daily peaks, minus scheduled releases.

    ``landings`` are the times backups and copies landed in the repository. The
    history counts from the first one that lands inside the sampled span (the
    samples before it are an empty repository, not a trend), and no days are
    promised before ``FORECAST_MIN_HISTORY`` of it: minutes (or hours) after a first
    backup there is only a burst, never "full in 0 days". ``releases`` are (date,
    bytes) that expiring locks/retention will free; used space drops by them then.
    """
    releases = sorted(r for r in (releases or []) if r[0] > now)
    release_total = sum(b for _, b in releases)
    if samples and landings:
        inside = [t for t in landings if samples[0].taken_at < t <= samples[-1].taken_at]
        if inside:
            samples = [s for s in samples if s.taken_at >= min(inside)]
    if len(samples) < 2 or samples[-1].taken_at - samples[0].taken_at < FORECAST_MIN_HISTORY:
        return Forecast(None, None, None, "not enough history", release_total, NEED_HISTORY)
    first = samples[0].taken_at
    peaks = daily_peaks(samples)
    slope = linear_fit(
        [((s.taken_at - first).total_seconds() / 86400, float(s.used_bytes)) for s in peaks]
    )
    if slope is None:
        return Forecast(None, None, None, "not enough history", release_total, NEED_HISTORY)
    if slope < FLAT_BYTES_PER_DAY:
        return Forecast(slope, None, None, "not growing", release_total)
    latest = samples[-1]
    limit = full_percent / 100 * (latest.used_bytes + latest.free_bytes)
    used = float(latest.used_bytes)
    t = 0.0  # days after now
    for when, size in [*releases, (now + timedelta(days=FORECAST_HORIZON_DAYS), 0)]:
        seg_end = max(t, (when - now).total_seconds() / 86400)
        reach = t + max(0.0, limit - used) / slope
        if reach <= seg_end:
            return Forecast(slope, reach, now + timedelta(days=reach), "growing", release_total)
        used += slope * (seg_end - t) - size
        t = seg_end
    return Forecast(slope, float(FORECAST_HORIZON_DAYS), None, "growing", release_total)


class _Watcher(FileSystemEventHandler):
    def __init__(self, repository_id: int, poke: Callable[[int], None]) -> None:
        self.repository_id = repository_id
        self.poke = poke

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        self.poke(self.repository_id)


class CapacityMonitor:
    def __init__(
        self,
        repositories: RepositoryStore,
        store: CapacityStore,
        bus: EventBus,
        settings: CapacitySettings,
        *,
        clock: Clock = SYSTEM_CLOCK,
        reading_timeout: float = READING_TIMEOUT,
        changes: ChangeStore | None = None,
    ) -> None:
        self.repositories = repositories
        #: whether the catalog moved (None: every overview counts the space again)
        self.changes = changes
        #: the last breakdowns of every repository: (change mark, when, breakdowns)
        self._breakdowns: tuple[Any, datetime, dict[int, SpaceBreakdown]] | None = None
        #: seconds a repository's statvfs may take before it counts as unresponsive
        self.reading_timeout = reading_timeout
        self.store = store
        self.bus = bus
        self.settings = settings
        self.clock = clock
        self._readings: dict[int, Reading] = {}
        self._pending: dict[int, float] = {}
        self._settle: dict[int, float] = {}
        #: last evaluated (level, unresponsive) per repository
        self._known: dict[int, tuple[str, bool]] = {}
        self._lock = threading.RLock()
        self._eval_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer: Any = None
        self._watches: dict[int, tuple[str, Any]] = {}
        self.samples_taken = 0

    # -- thresholds -------------------------------------------------------------

    def thresholds(self, repo: Repository, filesystem_bytes: int | None = None) -> Thresholds:
        """``filesystem_bytes``: the size of its filesystem, for the proportional reserve
        (unknown: the last sample's, else the 5 GiB ceiling)."""
        s = self.settings
        if filesystem_bytes is None and repo.min_free_bytes is None and s.min_free_bytes is None:
            filesystem_bytes = _stored_size(self.store.latest(repo.id))
        return self._thresholds(repo, filesystem_bytes)

    def _thresholds(self, repo: Repository, filesystem_bytes: int | None) -> Thresholds:
        s = self.settings
        return Thresholds(
            warning=repo.warning_percent if repo.warning_percent is not None else s.warning_percent,
            critical=(
                repo.critical_percent if repo.critical_percent is not None else s.critical_percent
            ),
            full=repo.full_percent if repo.full_percent is not None else s.full_percent,
            min_free=s.reserve(filesystem_bytes or 0, repo.min_free_bytes),
        )

    # -- sampling ------------------------------------------------------------------

    def measure(self, repo: Repository) -> Reading:
        """Read the filesystem now, in a worker with a timeout (``measure_many``)."""
        return self.measure_many([repo])[0]

    def measure_many(self, repos: list[Repository]) -> list[Reading]:
        """Read every repository's filesystem side by side, each in its own worker,
        all under one deadline of ``reading_timeout``.

        Any path can hang in statvfs (an NFS or CIFS server gone, a frozen FUSE
        directory, a stale bind mount), local ones included, and such a thread cannot
        be killed: it is left behind, and while it is stuck the repository's next
        readings fail at once instead of starting another thread (one outstanding
        reading per repository). A repository that does not answer gets an error
        reading that keeps its last good figures; the others are read as usual."""
        now = self.clock.now()
        started: list[tuple[Repository, Probe | Reading]] = []
        for repo in repos:
            path = repo.path
            try:
                probe = start_probe(
                    f"capacity:{repo.id}",
                    functools.partial(usage, path),
                    label=f"repository {repo.name}",
                )
                started.append((repo, probe))
            except ProbeTimeout as exc:
                started.append((repo, self._failed(repo, now, exc.message, unresponsive=True)))
        deadline = time.monotonic() + self.reading_timeout
        out: list[Reading] = []
        for repo, item in started:
            if isinstance(item, Reading):
                out.append(item)
                continue
            try:
                total, used, free, pct, dev = item.result(deadline - time.monotonic())
            except ProbeTimeout:
                why = f"repository {repo.name} did not answer within {self.reading_timeout:g} s"
                out.append(self._failed(repo, now, why, unresponsive=True))
            except RepositoryCheckError as exc:
                out.append(self._failed(repo, now, exc.message))
            except FileNotFoundError:
                out.append(self._failed(repo, now, f"{repo.path} does not exist"))
            except OSError as exc:
                out.append(self._failed(repo, now, f"{repo.path}: {exc.strerror}"))
            else:
                level = self.thresholds(repo, total).level(pct, free)
                out.append(
                    Reading(repo.id, repo.name, repo.path, now, total, used, free, pct, level, dev)
                )
        return out

    def _failed(
        self, repo: Repository, now: datetime, error: str, *, unresponsive: bool = False
    ) -> Reading:
        """An error reading that keeps the last figures known (memory, else the catalog)."""
        with self._lock:
            previous = self._readings.get(repo.id)
        last_good = previous.figures if previous is not None else None
        if last_good is None:
            latest = self.store.latest(repo.id)
            if latest is not None:
                last_good = self.stored_reading(repo, latest)
        return Reading(
            repo.id,
            repo.name,
            repo.path,
            now,
            error=error,
            unresponsive=unresponsive,
            last_good=last_good,
        )

    @staticmethod
    def stored_reading(repo: Repository, latest: Sample) -> Reading:
        """A stored sample as a reading (no device known)."""
        pct = latest.used_bytes * 100 / max(1, latest.used_bytes + latest.free_bytes)
        return Reading(
            repo.id,
            repo.name,
            repo.path,
            latest.taken_at,
            latest.total_bytes,
            latest.used_bytes,
            latest.free_bytes,
            pct,
            repo.capacity_level or "ok",
        )

    def sample(self, ref: int | str | Repository, *, store: bool = True) -> Reading:
        """Measure one repository, store the sample, fire threshold events on a change."""
        repo = ref if isinstance(ref, Repository) else self.repositories.get(ref)
        return self._record(repo, self.measure(repo), store=store)

    def sample_many(self, repos: list[Repository], *, store: bool = True) -> list[Reading]:
        """Measure several repositories side by side (``measure_many``) and record each."""
        out = []
        for repo, reading in zip(repos, self.measure_many(repos), strict=True):
            try:
                out.append(self._record(repo, reading, store=store))
            except CatalogUnavailable:
                raise  # the other repositories cannot be recorded either
            except Exception:
                log.exception("capacity sample of %s failed", repo.name)
        return out

    def _record(self, repo: Repository, reading: Reading, *, store: bool = True) -> Reading:
        self.samples_taken += 1
        with self._lock:
            self._readings[repo.id] = reading
        if reading.error is None:
            if store:
                self.store.add(
                    repo.id,
                    taken_at=reading.taken_at,
                    total_bytes=reading.total,
                    used_bytes=reading.used,
                    free_bytes=reading.free,
                )
            self._evaluate(repo, reading)
        else:
            self._unresponsive(repo, reading)
        return reading

    def _evaluate(self, repo: Repository, reading: Reading) -> None:
        with self._eval_lock:
            # unchanged level of a responsive repository: no catalog round trip
            if self._known.get(repo.id) == (reading.level, False):
                return
            current = self.repositories.get(repo.id)
            old, new = current.capacity_level or "ok", reading.level
            fields: dict[str, Any] = {"last_seen_at": reading.taken_at}
            if current.state == "unresponsive":
                fields["state"] = "mounted" if current.kind != "local" else "ready"
                fields["state_detail"] = None
            self._known[repo.id] = (new, False)
            if current.state == "unresponsive":
                self.bus.publish(
                    Event(
                        kind="repository.responsive",
                        message=f"repository {repo.name} answers again",
                        level="info",
                        source="capacity",
                        repository_id=repo.id,
                    )
                )
            if old == new:
                if current.state == "unresponsive":
                    self.repositories.update(repo.id, reading.taken_at, **fields)
                return
            fields["capacity_level"] = new
            self.repositories.update(repo.id, reading.taken_at, **fields)
        th = self.thresholds(repo, reading.total)
        free, total = human_bytes(reading.free), human_bytes(reading.total)
        numbers = f"{reading.percent:.1f} % used, {free} free of {total}"
        data = {
            "level": new,
            "previous": old,
            "percent": round(reading.percent, 2),
            "used": reading.used,
            "free": reading.free,
            "total": reading.total,
        }
        if LEVELS.index(new) > LEVELS.index(old):
            limit = {"warning": th.warning, "critical": th.critical, "full": th.full}[new]
            tail = ": no new backups or copies until space is freed" if new == "full" else ""
            past = f"is past its {new} threshold ({limit:g} %)"
            if th.reserve_raised(reading.percent, reading.free):
                # the percent is fine; what is short is the free space it keeps back
                past = (
                    f"has less free space than its {human_bytes(th.min_free)} reserve "
                    f"(min free), so it is {new}"
                )
                data["reserve"] = th.min_free
            self.bus.publish(
                Event(
                    kind="capacity.threshold_crossed",
                    message=f"repository {repo.name} {past}: {numbers}{tail}",
                    level=_EVENT_LEVEL[new],
                    source="capacity",
                    repository_id=repo.id,
                    data=data,
                )
            )
        else:
            still = "" if new == "ok" else f"; still at {new}"
            self.bus.publish(
                Event(
                    kind="capacity.threshold_cleared",
                    message=f"repository {repo.name} is back below its {old} threshold: "
                    f"{numbers}{still}",
                    level="info",
                    source="capacity",
                    repository_id=repo.id,
                    data=data,
                )
            )

    def _unresponsive(self, repo: Repository, reading: Reading) -> None:
        # a local directory that is missing keeps its state (the repository checks say
        # why); one that does not answer is as unresponsive as a hung server
        if repo.kind not in ("nfs", "cifs") and not reading.unresponsive:
            return
        with self._eval_lock:
            self._known.pop(repo.id, None)
        current = self.repositories.get(repo.id)
        if current.state == "unresponsive":
            return
        seen = current.last_seen_at
        if reading.last_good is not None and (seen is None or reading.last_good.taken_at > seen):
            seen = reading.last_good.taken_at  # answered since (unchanged levels skip the row)
        when = seen.strftime("%Y-%m-%d %H:%M UTC") if seen else "never"
        self.repositories.update(
            repo.id,
            reading.taken_at,
            state="unresponsive",
            state_detail=f"{reading.error}; last seen {when}",
        )
        self.bus.publish(
            Event(
                kind="repository.unresponsive",
                message=f"repository {repo.name} does not answer ({reading.error}); "
                f"last seen {when}",
                level="error",
                source="capacity",
                repository_id=repo.id,
            )
        )

    def sample_all(self) -> list[Reading]:
        """One poll: every enabled repository, side by side, within ``reading_timeout``."""
        return self.sample_many(self.repositories.list(enabled_only=True))

    def reading(self, repository_id: int) -> Reading | None:
        with self._lock:
            return self._readings.get(repository_id)

    def last_known_all(self, repos: list[Repository]) -> dict[int, Reading]:
        """``last_known`` of each of ``repos`` (stored samples in one query), by id."""
        latest = self.store.latest_by_repository()
        found: dict[int, Reading] = {}
        for repo in repos:
            reading = self.reading(repo.id)
            if reading is None and repo.id in latest:
                reading = self.stored_reading(repo, latest[repo.id])
            if reading is not None:
                found[repo.id] = reading
        return found

    def last_known(self, repo: Repository) -> Reading | None:
        """This run's reading of ``repo``, else its last stored sample (what a list of
        repositories shows before the first poll)."""
        reading = self.reading(repo.id)
        if reading is None:
            latest = self.store.latest(repo.id)
            if latest is not None:
                reading = self.stored_reading(repo, latest)
        return reading

    def forget_before(self, before: datetime) -> int:
        """Drop every stored sample taken before ``before`` (the demo's history is
        stamped with made-up past times: readings from it would invent growth)."""
        return self.store.forget_before(before)

    # -- the "full" gate ------------------------------------------------------------------

    def ensure_room(self, ref: int | str | Repository) -> Reading:
        """Raise RepositoryFullError when the repository is at its "full" threshold, and
        RepositoryCheckError when it does not answer (a write there would hang).

        Backup and copy services call this before starting to write."""
        repo = ref if isinstance(ref, Repository) else self.repositories.get(ref)
        reading = self.sample(repo)
        if reading.unresponsive:
            raise RepositoryCheckError(
                f"repository {repo.name} does not answer ({reading.error}): nothing is "
                "written there until it does",
                reason="unresponsive",
                action=Action(
                    "test_repository",
                    "check the server or the filesystem behind it, then test it again",
                    repo.name,
                ),
            )
        if reading.error is None and reading.level == "full":
            th = self.thresholds(repo)
            raise RepositoryFullError(
                f"repository {repo.name} is full ({reading.percent:.1f} % used, limit "
                f"{th.full:g} %, {human_bytes(reading.free)} free): it takes no new backups or "
                "copies until space is freed",
                hint="delete released backups, move chains to another repository, "
                "or raise its full threshold",
            )
        return reading

    # -- shared filesystems, forecast, overview ----------------------------------------------

    def shared_groups(self, readings: list[Reading] | None = None) -> list[list[str]]:
        """Names of repositories on one filesystem (same device), groups of two or more."""
        if readings is None:
            with self._lock:
                readings = list(self._readings.values())
        groups: dict[int, list[str]] = {}
        for r in readings:
            if r.device is not None and r.error is None:
                groups.setdefault(r.device, []).append(r.name)
        return [sorted(names) for names in groups.values() if len(names) > 1]

    def totals(self, readings: list[Reading] | None = None) -> tuple[int, int, int]:
        """(total, used, free) over all repositories, each filesystem counted once."""
        if readings is None:
            with self._lock:
                readings = list(self._readings.values())
        seen: dict[int, Reading] = {}
        for r in readings:
            if r.error is None and r.total:
                # no device known (a stored sample): count it on its own
                seen.setdefault(r.device if r.device is not None else -r.repository_id, r)
        return (
            sum(r.total for r in seen.values()),
            sum(r.used for r in seen.values()),
            sum(r.free for r in seen.values()),
        )

    def forecast(self, repo: Repository, breakdown: SpaceBreakdown | None = None) -> Forecast:
        now = self.clock.now()
        since = now - FORECAST_WINDOW
        samples = self.store.samples(repo.id, since=since, until=now)
        if breakdown is None:
            breakdown = self.store.breakdown(repo.id, now)
        landings = self.store.landings(repo.id, since=since, until=now)
        return forecast(
            samples, now, self.thresholds(repo).full, breakdown.scheduled_releases, landings
        )

    def breakdowns(self, now: datetime) -> dict[int, SpaceBreakdown]:
        """Every repository's space breakdown, in one grouped pass over the catalog,
        or the last one while it still holds: the catalog's change mark is the same,
        no lock counted in it has expired since, and it is under BREAKDOWN_REUSE old
        (the Dashboard and the Capacity screen both show it)."""
        if self.changes is None:
            return self.store.breakdowns(now)
        mark = self.changes.mark()  # read first: a change after it is a new mark
        kept = self._breakdowns
        if kept is not None and kept[0] == mark and kept[1] <= now < kept[1] + BREAKDOWN_REUSE:
            found = kept[2]
            expiries = [b.first_expiry for b in found.values() if b.first_expiry is not None]
            if not expiries or now < min(expiries):
                return found
        found = self.store.breakdowns(now)
        self._breakdowns = (mark, now, found)
        return found

    def overview(
        self,
        *,
        history_span: timedelta = timedelta(days=1),
        buckets: int = 48,
        measure: bool = True,
    ) -> list[RepositoryCapacity]:
        """One entry per repository for the capacity screen, from a few grouped
        queries over every repository (not a handful per repository: 50 repositories
        of a 100,000-point catalog took over a second)."""
        now = self.clock.now()
        repos = self.repositories.list()
        if measure:
            self.sample_many([r for r in repos if r.enabled and self.reading(r.id) is None])
        latest = self.store.latest_by_repository()
        readings: list[Reading] = []
        for repo in repos:
            reading = self.reading(repo.id)
            if reading is None and repo.id in latest:
                reading = self.stored_reading(repo, latest[repo.id])
            if reading is not None:
                readings.append(reading)
        shared = self.shared_groups(readings)
        by_id = {r.repository_id: r for r in readings}
        since = now - FORECAST_WINDOW
        samples = self.store.samples_by_repository(since=min(since, now - history_span), until=now)
        landings = self.store.landings_by_repository(since=since, until=now)
        breakdowns = self.breakdowns(now)
        out = []
        for repo in repos:
            breakdown = breakdowns.get(repo.id, SpaceBreakdown())
            size = _size_of(by_id.get(repo.id))
            if (
                size is None
                and repo.min_free_bytes is None
                and self.settings.min_free_bytes is None
            ):
                size = _stored_size(latest.get(repo.id))
            thresholds = self._thresholds(repo, size)
            repo_samples = samples.get(repo.id, [])
            out.append(
                RepositoryCapacity(
                    repository=repo,
                    reading=by_id.get(repo.id),
                    thresholds=thresholds,
                    forecast=forecast(
                        [x for x in repo_samples if x.taken_at >= since],
                        now,
                        thresholds.full,
                        breakdown.scheduled_releases,
                        landings.get(repo.id, []),
                    ),
                    breakdown=breakdown,
                    history=history_of(
                        repo_samples, since=now - history_span, until=now, buckets=buckets
                    ),
                    shared_with=next(
                        ([n for n in g if n != repo.name] for g in shared if repo.name in g), []
                    ),
                )
            )
        return out

    # -- background ----------------------------------------------------------------------

    def poke(self, repository_id: int) -> None:
        """Something was written in the repository: sample it again soon (debounced)."""
        with self._lock:
            if repository_id not in self._pending:
                self._pending[repository_id] = time.monotonic() + self.settings.debounce_seconds
                self._wake.set()

    def watch_all(self) -> None:
        """(Re)build the watchdog watches from the enabled repositories."""
        if self._observer is None:
            return
        wanted = {r.id: r for r in self.repositories.list(enabled_only=True)}
        with self._lock:
            for rid in list(self._watches):
                path, watch = self._watches[rid]
                if rid not in wanted or wanted[rid].path != path:
                    with contextlib.suppress(Exception):
                        self._observer.unschedule(watch)
                    del self._watches[rid]
        for rid, repo in wanted.items():
            reading = self.reading(rid)
            if rid in self._watches or (reading is not None and reading.unresponsive):
                continue  # a frozen directory would hang the observer's own lock
            handler = _Watcher(rid, self.poke)

            def schedule(h: _Watcher = handler, p: str = repo.path) -> Any:
                return self._observer.schedule(h, p, recursive=True) if os.path.isdir(p) else None

            try:
                watch = run_with_timeout(f"watch {repo.name}", schedule, self.reading_timeout)
            except (RepositoryCheckError, OSError) as exc:
                log.warning("cannot watch %s: %s", repo.path, exc)
                continue
            if watch is None:
                continue
            with self._lock:
                self._watches[rid] = (repo.path, watch)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._observer = Observer()
        self._observer.daemon = True
        self._observer.start()
        self.watch_all()
        self._thread = threading.Thread(target=self._run, name="capacity-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._observer is not None:
            try:
                self._observer.stop()
                self._observer.join(timeout=5)
            except Exception:
                pass
            self._observer = None
        self._watches.clear()

    def _run(self) -> None:
        next_poll = time.monotonic()
        next_downsample = time.monotonic() + 3600
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_poll:
                try:
                    self.sample_all()
                    self.watch_all()
                except CatalogUnavailable:
                    pass  # logged once by the catalog; the next poll tries again
                next_poll = time.monotonic() + self.settings.poll_seconds
            if now >= next_downsample:
                try:
                    self.store.downsample(self.clock.now())
                except CatalogUnavailable:
                    pass  # logged once by the catalog
                except Exception:
                    log.exception("capacity downsampling failed")
                next_downsample = now + 3600
            with self._lock:
                now = time.monotonic()
                due = [rid for rid, t in self._pending.items() if t <= now]
                for rid in due:
                    del self._pending[rid]
                    # some filesystems (xfs) free deleted space a moment later: look again
                    self._settle.setdefault(rid, now + SETTLE_SECONDS)
                settle = [rid for rid, t in self._settle.items() if t <= now and rid not in due]
                for rid in settle:
                    del self._settle[rid]
                wake_at = min([next_poll, *self._pending.values(), *self._settle.values()])
            for rid in [*due, *settle]:
                try:
                    self.sample(rid)
                except CatalogUnavailable:
                    pass  # logged once by the catalog
                except Exception:
                    log.exception("capacity sample of repository %s failed", rid)
            if due or settle:
                continue
            self._wake.wait(max(0.0, wake_at - time.monotonic()))
            self._wake.clear()
