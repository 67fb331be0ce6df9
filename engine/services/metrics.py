"""Prometheus metrics: the engine's state in the text exposition format.

``engine.metrics.exposition()`` is what ``GET /metrics`` and ``sendense metrics``
return. Every scrape reads the state as it is now, through one collector in a
private registry, and stays cheap on big catalogs:

- repository space comes from the capacity monitor's last readings (no statvfs,
  no walk of a repository per scrape); an engine whose monitor has not read yet (a
  CLI one-shot) shows each repository's newest stored sample;
- everything else comes from a few GROUP BY queries (``engine.catalog.metrics``):
  one row per repository, disk, copy rule or job kind, never a loop over points;
- the job duration histogram and the finished-jobs counter count the jobs that
  finished since this engine started (the daemon, for a scraped one): each scrape
  reads only the jobs finished since the previous scrape, so the history of the
  catalog is never re-read, and both behave as Prometheus counters (they start
  again from zero when the daemon restarts, which ``rate()`` understands). The
  number of jobs in each state over the whole catalog is ``sendense_jobs``.

Names follow Prometheus conventions: ``sendense_`` prefix, base units in the name
(``_bytes``, ``_seconds``, ``_timestamp_seconds`` for unix times, ``_ratio`` for
0..1), ``_total`` on counters; labels ``repository``, ``vm``, ``disk``, ``rule``,
``state``, ``kind``. A repository's capacity level is one-hot (one series per
level, 1 for the current one); a disk's verification state is one series per disk
with the state as its label (six series for each of thousands of disks would
double the scrape).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from engine import __version__
from engine.catalog.jobs import FINAL_STATES
from engine.catalog.metrics import DiskFacts, MetricsStore
from engine.catalog.models import Repository
from engine.catalog.repositories import RepositoryStore
from engine.clock import SYSTEM_CLOCK, Clock
from engine.errors import CatalogUnavailable
from engine.services.capacity import LEVELS, CapacityMonitor

log = logging.getLogger(__name__)

#: the exposition's media type (text format 0.0.4)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: job duration buckets: seconds to a day (backups of big disks take hours)
DURATION_BUCKETS = (
    1.0,
    5.0,
    15.0,
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    28800.0,
    86400.0,
)
#: a job that committed its end a little after a newer one is still counted: each scrape
#: reads back this far before the newest end it saw (ids already counted are skipped)
FINISH_SLACK = timedelta(minutes=5)


def _stamp(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


class _JobTally:
    """Jobs finished since ``since``, counted once each: per (kind, state) and a duration
    histogram per kind. Fed by the rows finished since the previous scrape."""

    def __init__(self, since: datetime) -> None:
        self.since = since
        self.watermark = since
        self._counted: dict[int, datetime] = {}
        self.finished: Counter[tuple[str, str]] = Counter()
        self.buckets: dict[str, list[int]] = defaultdict(lambda: [0] * len(DURATION_BUCKETS))
        self.count: Counter[str] = Counter()
        self.sum: defaultdict[str, float] = defaultdict(float)

    def read_from(self) -> datetime:
        return self.watermark - FINISH_SLACK

    def add(
        self, job_id: int, kind: str, state: str, started: datetime | None, end: datetime
    ) -> None:
        if job_id in self._counted or end < self.since:
            return
        self._counted[job_id] = end
        self.finished[(kind, state)] += 1
        if started is not None:
            seconds = max(0.0, (end - started).total_seconds())
            for i, bound in enumerate(DURATION_BUCKETS):
                if seconds <= bound:
                    self.buckets[kind][i] += 1
            self.count[kind] += 1
            self.sum[kind] += seconds
        if end > self.watermark:
            self.watermark = end

    def forget_old(self) -> None:
        """Ids older than the slack are never read again: drop them."""
        horizon = self.read_from()
        for job_id in [i for i, end in self._counted.items() if end < horizon]:
            del self._counted[job_id]


class MetricsService:
    """``engine.metrics``: the exposition of the engine's current state."""

    def __init__(
        self,
        store: MetricsStore,
        repositories: RepositoryStore,
        capacity: CapacityMonitor,
        *,
        reverify_days: int,
        clock: Clock = SYSTEM_CLOCK,
        jobs_since: datetime | None = None,
    ) -> None:
        self.store = store
        self.repositories = repositories
        self.capacity = capacity
        #: ``[verify] reverify_days``: the window of the coverage figures
        self.reverify_days = reverify_days
        self.clock = clock
        #: the histogram and the finished counter count jobs finished from here on
        self.jobs_since = jobs_since or clock.now()
        self._tally = _JobTally(self.jobs_since)
        self._tally_lock = threading.Lock()
        self._registry: Any = None
        self._registry_lock = threading.Lock()

    # -- the exposition ----------------------------------------------------------------

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format, read now."""
        from prometheus_client import CollectorRegistry, generate_latest

        with self._registry_lock:
            if self._registry is None:
                registry = CollectorRegistry(auto_describe=False)
                registry.register(_Collector(self))
                self._registry = registry
        return bytes(generate_latest(self._registry))

    def families(self) -> list[Any]:
        """Every metric family, read now (the collector's ``collect``)."""
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("sendense_up", "1 when the catalog answered this scrape, else 0")
        info = GaugeMetricFamily(
            "sendense_build_info", "The running Sendense version (always 1)", labels=["version"]
        )
        info.add_metric([__version__], 1.0)
        try:
            families = self._catalog_families()
        except CatalogUnavailable as exc:
            log.debug("metrics without the catalog: %s", exc)
            up.add_metric([], 0.0)
            return [up, info]
        up.add_metric([], 1.0)
        return [up, info, *families]

    def _catalog_families(self) -> list[Any]:
        now = self.clock.now()
        repos = self.repositories.list()
        names = {repo.id: repo.name for repo in repos}
        return [
            *self._repository_families(repos, now),
            *self._disk_families(names),
            *self._copy_families(now),
            *self._job_families(),
            *self._lock_families(names),
            *self._coverage_families(names, now),
        ]

    # -- repositories --------------------------------------------------------------------

    def _repository_families(self, repos: list[Repository], now: datetime) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        def gauge(name: str, text: str, labels: tuple[str, ...] = ("repository",)) -> Any:
            return GaugeMetricFamily(name, text, labels=list(labels))

        size = gauge("sendense_repository_size_bytes", "Size of the repository's filesystem")
        used = gauge("sendense_repository_used_bytes", "Bytes used on the repository's filesystem")
        free = gauge("sendense_repository_free_bytes", "Bytes free on the repository's filesystem")
        ratio = gauge(
            "sendense_repository_used_ratio",
            "Used share of used + free (what can still be written)",
        )
        taken = gauge(
            "sendense_repository_reading_timestamp_seconds", "When these figures were measured"
        )
        level = gauge(
            "sendense_repository_capacity_level",
            "Capacity level (ok < warning < critical < full; full takes no new data), one-hot",
            ("repository", "state"),
        )
        unresponsive = gauge(
            "sendense_repository_unresponsive",
            "1 when the repository's filesystem did not answer its last reading",
        )
        enabled = gauge("sendense_repository_enabled", "1 when the repository is enabled")
        reclaimable = gauge(
            "sendense_repository_reclaimable_bytes",
            "Bytes retention released that no lock holds: deletable now",
        )
        locked = gauge(
            "sendense_repository_locked_bytes", "Bytes held by an immutability lock not expired"
        )
        space = self.store.space(now)
        stored = None
        for repo in repos:
            label = [repo.name]
            reading = self.capacity.reading(repo.id)
            figures = reading.figures if reading is not None else None
            values: tuple[int, int, int, datetime] | None
            if figures is not None:
                values = (figures.total, figures.used, figures.free, figures.taken_at)
                current = figures.level
            else:
                if stored is None:
                    stored = self.store.latest_samples()
                sample = stored.get(repo.id)
                values = (
                    (sample.total_bytes, sample.used_bytes, sample.free_bytes, sample.taken_at)
                    if sample is not None
                    else None
                )
                current = repo.capacity_level
            if values is not None:
                total_bytes, used_bytes, free_bytes, at = values
                size.add_metric(label, float(total_bytes))
                used.add_metric(label, float(used_bytes))
                free.add_metric(label, float(free_bytes))
                writable = used_bytes + free_bytes
                ratio.add_metric(label, used_bytes / writable if writable else 0.0)
                taken.add_metric(label, at.timestamp())
            for state in LEVELS:
                level.add_metric([repo.name, state], 1.0 if state == current else 0.0)
            not_answering = (reading is not None and reading.unresponsive) or (
                repo.state == "unresponsive"
            )
            unresponsive.add_metric(label, 1.0 if not_answering else 0.0)
            enabled.add_metric(label, 1.0 if repo.enabled else 0.0)
            facts = space.get(repo.id)
            reclaimable.add_metric(label, float(facts.reclaimable if facts else 0))
            locked.add_metric(label, float(facts.locked if facts else 0))
        return [size, used, free, ratio, taken, level, unresponsive, enabled, reclaimable, locked]

    # -- disks -------------------------------------------------------------------------

    def _disk_families(self, names: dict[int, str]) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        labels = ["repository", "vm", "disk"]
        last = GaugeMetricFamily(
            "sendense_disk_last_backup_timestamp_seconds",
            "Point time of the disk's newest complete restore point (unix time)",
            labels=labels,
        )
        seconds = GaugeMetricFamily(
            "sendense_disk_last_backup_duration_seconds",
            "How long the newest point held the source plus its checksum",
            labels=labels,
        )
        written = GaugeMetricFamily(
            "sendense_disk_last_backup_written_bytes",
            "Bytes the newest point wrote to the repository",
            labels=labels,
        )
        length = GaugeMetricFamily(
            "sendense_disk_chain_length",
            "Restore points in the disk's current chain (a full and its incrementals)",
            labels=labels,
        )
        verified = GaugeMetricFamily(
            "sendense_disk_last_verified_timestamp_seconds",
            "When a point of the disk was last verified (unix time)",
            labels=labels,
        )
        verify_state = GaugeMetricFamily(
            "sendense_disk_verification",
            "The disk's verification state (always 1; the state is the label): a damaged "
            "point's state (mismatch, missing, check_failed, chain_broken) wins, else ok once "
            "verified, else unverified",
            labels=[*labels, "state"],
        )
        for disk in self.store.disks():
            key = [names.get(disk.repository_id, str(disk.repository_id)), disk.vm, disk.disk]
            if disk.last_backup_at is not None:
                last.add_metric(key, disk.last_backup_at.timestamp())
                if disk.last_backup_seconds is not None:
                    seconds.add_metric(key, disk.last_backup_seconds)
                if disk.last_backup_bytes is not None:
                    written.add_metric(key, float(disk.last_backup_bytes))
            length.add_metric(key, float(disk.chain_length))
            if disk.last_verified_at is not None:
                verified.add_metric(key, disk.last_verified_at.timestamp())
            # one series per disk (the state in its label), not one per possible state:
            # a one-hot set would be six series for each of thousands of disks
            verify_state.add_metric([*key, _disk_verify_state(disk)], 1.0)
        return [last, seconds, written, length, verified, verify_state]

    # -- copy rules ----------------------------------------------------------------------

    def _copy_families(self, now: datetime) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        newest = GaugeMetricFamily(
            "sendense_copy_rule_last_copy_timestamp_seconds",
            "When the rule's newest completed copy finished (unix time)",
            labels=["rule"],
        )
        age = GaugeMetricFamily(
            "sendense_copy_rule_last_copy_age_seconds",
            "Age of the rule's newest completed copy (since the rule was made when it has "
            "none): its recovery point objective as it stands",
            labels=["rule"],
        )
        limit = GaugeMetricFamily(
            "sendense_copy_rule_max_age_seconds",
            "The rule's allowed copy age (max_age_hours), for rules that set one",
            labels=["rule"],
        )
        failures = GaugeMetricFamily(
            "sendense_copy_rule_failures_in_row",
            "Copy jobs of the rule failed in a row",
            labels=["rule"],
        )
        enabled = GaugeMetricFamily(
            "sendense_copy_rule_enabled", "1 when the rule is enabled", labels=["rule"]
        )
        for rule in self.store.rules():
            label = [rule.name]
            since = rule.newest_copy_at or rule.created_at
            if rule.newest_copy_at is not None:
                newest.add_metric(label, rule.newest_copy_at.timestamp())
            if since is not None:
                age.add_metric(label, max(0.0, (now - since).total_seconds()))
            if rule.max_age_hours:
                limit.add_metric(label, rule.max_age_hours * 3600.0)
            failures.add_metric(label, float(rule.failures_in_row))
            enabled.add_metric(label, 1.0 if rule.enabled else 0.0)
        return [newest, age, limit, failures, enabled]

    # -- jobs ----------------------------------------------------------------------------

    def _job_families(self) -> list[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )
        from prometheus_client.utils import floatToGoString

        jobs = GaugeMetricFamily(
            "sendense_jobs", "Jobs in the catalog by kind and state", labels=["kind", "state"]
        )
        for kind, state, count in self.store.job_counts():
            jobs.add_metric([kind, state], float(count))
        with self._tally_lock:
            tally = self._tally
            for row in self.store.jobs_finished_since(tally.read_from(), FINAL_STATES):
                tally.add(row.id, row.kind, row.state, row.started_at, row.finished_at)
            tally.forget_old()
            finished = CounterMetricFamily(
                "sendense_jobs_finished",
                "Jobs that finished since the daemon started, by kind and final state",
                labels=["kind", "state"],
            )
            for (kind, state), count in sorted(tally.finished.items()):
                finished.add_metric([kind, state], float(count))
            durations = HistogramMetricFamily(
                "sendense_job_duration_seconds",
                "Run time (start to end) of the jobs that finished since the daemon started",
                labels=["kind"],
            )
            for kind in sorted(tally.count):
                counts = tally.buckets[kind]
                buckets = [
                    (floatToGoString(bound), float(n))
                    for bound, n in zip(DURATION_BUCKETS, counts, strict=True)
                ]
                buckets.append(("+Inf", float(tally.count[kind])))
                durations.add_metric([kind], buckets, sum_value=tally.sum[kind])
        return [jobs, finished, durations]

    # -- locks and verification ------------------------------------------------------------

    def _lock_families(self, names: dict[int, str]) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        count = GaugeMetricFamily(
            "sendense_locks",
            "Immutability locks holding a file, by repository and state (pending, active, "
            "drift, failed: drift and failed mean the file is NOT protected)",
            labels=["repository", "state"],
        )
        soonest = GaugeMetricFamily(
            "sendense_lock_next_expiry_timestamp_seconds",
            "The soonest expiry of a lock holding a file in the repository (unix time)",
            labels=["repository"],
        )
        next_expiry: dict[str, datetime] = {}
        for facts in self.store.locks():
            name = names.get(facts.repository_id, str(facts.repository_id))
            count.add_metric([name, facts.state], float(facts.count))
            if facts.next_expiry is not None:
                known = next_expiry.get(name)
                next_expiry[name] = min(facts.next_expiry, known or facts.next_expiry)
        for name, at in sorted(next_expiry.items()):
            soonest.add_metric([name], at.timestamp())
        return [count, soonest]

    def _coverage_families(self, names: dict[int, str], now: datetime) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        window = f"in the last {self.reverify_days} days (reverify_days)"
        files = GaugeMetricFamily(
            "sendense_verification_files",
            "Files to verify: restore points and completed copies",
            labels=["repository"],
        )
        good = GaugeMetricFamily(
            "sendense_verification_verified_files",
            f"Files verified good {window}",
            labels=["repository"],
        )
        ratio = GaugeMetricFamily(
            "sendense_verification_coverage_ratio",
            f"Share of files verified good {window} (1 with no files)",
            labels=["repository"],
        )
        total_bytes = GaugeMetricFamily(
            "sendense_verification_bytes", "Bytes of the files to verify", labels=["repository"]
        )
        good_bytes = GaugeMetricFamily(
            "sendense_verification_verified_bytes",
            f"Bytes of the files verified good {window}",
            labels=["repository"],
        )
        bad = GaugeMetricFamily(
            "sendense_verification_failed_files",
            "Files whose last verification found them damaged or unreadable",
            labels=["repository"],
        )
        coverage = self.store.coverage(now - timedelta(days=self.reverify_days))
        for repo_id, name in sorted(names.items(), key=lambda item: item[1]):
            facts = coverage.get(repo_id)
            if facts is None:
                continue
            label = [name]
            files.add_metric(label, float(facts.files))
            good.add_metric(label, float(facts.files_verified))
            ratio.add_metric(label, facts.files_verified / facts.files if facts.files else 1.0)
            total_bytes.add_metric(label, float(facts.bytes_total))
            good_bytes.add_metric(label, float(facts.bytes_verified))
            bad.add_metric(label, float(facts.files_bad))
        return [files, good, ratio, total_bytes, good_bytes, bad]


class _Collector:
    """The one collector of the private registry: reads the engine at every scrape."""

    def __init__(self, service: MetricsService) -> None:
        self.service = service

    def collect(self) -> Iterator[Any]:
        yield from self.service.families()


def _disk_verify_state(disk: DiskFacts) -> str:
    if disk.bad_points and disk.bad_state:
        return disk.bad_state
    return "ok" if disk.last_verified_at is not None else "unverified"
