"""The scheduler: runs due policies, in the console process and in ``sendense daemon``.

Each tick reads the enabled policies. A policy whose ``next_run_at`` has come
is taken with a compare-and-set on that column (``PolicyStore.take_due``): the
UPDATE moves it to the next time after *now*, and only one engine's UPDATE
matches, so a console and a daemon on one catalog never start the same run
twice. Missed runs (the appliance was off) are caught up once: however many
were missed, one run starts and the next time is computed from now. A policy
whose previous run is still queued or running is skipped, with an event.

The scheduler also runs the lock maintenance (grace periods, drift, release of
expired locks) every ``maintain_every`` seconds.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from croniter import croniter

from engine.catalog.policies import PolicyStore
from engine.clock import SYSTEM_CLOCK, Clock, as_utc
from engine.errors import SendenseError
from engine.events import EventBus

log = logging.getLogger(__name__)


@dataclass
class TickReport:
    started: list[tuple[str, int]] = field(default_factory=list)
    caught_up: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)


class Scheduler:
    def __init__(
        self,
        store: PolicyStore,
        policies: Any,
        bus: EventBus,
        *,
        locks: Any = None,
        clock: Clock = SYSTEM_CLOCK,
        interval: float = 20.0,
        maintain_every: float = 3600.0,
    ) -> None:
        self.store = store
        #: engine.services.policies.PolicyService (run_now)
        self.policies = policies
        self.bus = bus
        self.locks = locks
        self.clock = clock
        self.interval = interval
        self.maintain_every = maintain_every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_maintain: float | None = None

    # -- one pass ---------------------------------------------------------------------

    def tick(self) -> TickReport:
        report = TickReport()
        now = self.clock.now()
        for policy in self.store.list(enabled_only=True):
            try:
                self._consider(policy, now, report)
            except SendenseError as exc:
                log.warning("scheduling policy %s: %s", policy.name, exc)
            except Exception:
                log.exception("scheduling policy %s", policy.name)
        return report

    def _next_after(self, schedule: str, when: datetime) -> datetime:
        return as_utc(croniter(schedule, when).get_next(datetime))  # type: ignore[return-value]

    def _consider(self, policy: Any, now: datetime, report: TickReport) -> None:
        due = as_utc(policy.next_run_at)
        upcoming = self._next_after(policy.schedule, now)
        if due is None:
            # never scheduled (or re-enabled): no catch-up for what it never promised
            self.store.take_due(policy.id, None, upcoming)
            return
        if due > now:
            return
        missed = 0
        probe = due
        while probe <= now and missed < 1000:
            missed += 1
            probe = self._next_after(policy.schedule, probe)
        if not self.store.take_due(policy.id, policy.next_run_at, upcoming):
            report.lost.append(policy.name)  # another engine took this run
            return
        if self.store.active_runs(policy.id):
            report.skipped.append((policy.name, "the previous run is still going"))
            self._event(
                "scheduler.skipped",
                f"policy {policy.name}: the {due:%Y-%m-%d %H:%M} run was skipped because "
                "the previous run is still going",
                level="warning",
            )
            return
        if missed > 1:
            report.caught_up.append(policy.name)
            self._event(
                "scheduler.caught_up",
                f"policy {policy.name}: {missed} runs were missed since "
                f"{due:%Y-%m-%d %H:%M} UTC; running once now",
                level="warning",
            )
        job = self.policies.run_now(policy.id, actor="scheduler", trigger="schedule")
        report.started.append((policy.name, job.id))

    def maintain_locks(self) -> None:
        if self.locks is None:
            return
        try:
            self.locks.maintain(actor="scheduler")
        except SendenseError as exc:
            log.warning("lock maintenance: %s", exc)
        except Exception:
            log.exception("lock maintenance")

    # -- the thread -------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="sendense-scheduler", daemon=True)
        self._thread.start()
        self._event("scheduler.started", "scheduler started", level="debug")

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("scheduler tick")
            mono = self.clock.monotonic()
            if self._last_maintain is None or mono - self._last_maintain >= self.maintain_every:
                self._last_maintain = mono
                self.maintain_locks()
            self._stop.wait(self.interval)

    def _event(self, kind: str, message: str, *, level: str = "info") -> None:
        self.bus.emit("scheduler", kind, message, level=level)
