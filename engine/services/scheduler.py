"""The scheduler: runs due policies, in the console process and in ``sendense daemon``.

Each tick reads the enabled policies. A policy whose ``next_run_at`` has come
is taken with a compare-and-set on that column (``PolicyStore.take_due``): the
UPDATE moves it to the next time after *now*, and only one engine's UPDATE
matches, so a console and a daemon on one catalog never start the same run
twice. Missed runs (the appliance was off) are caught up once: however many
were missed, one run starts and the next time is computed from now. A policy
whose previous run is still queued or running is skipped, with an event.

Scheduled copy rules and the verification schedule work the same way, with
their next time in a schedule mark (``schedule_marks``, ``ScheduleStore.take_due``):
``schedule:copy_rule:<id>`` and ``schedule:verify``. A mark remembers the cron
text it was computed from, so an edited schedule restarts from now instead of
catching up. The scheduled verification reads only the files never verified or
whose last verification is older than ``[verify] reverify_days``.

The scheduler also runs the lock maintenance (grace periods, drift, release of
expired locks) every ``maintain_every`` seconds, and evaluates alerts every
``alert_every`` seconds (see :meth:`Scheduler.evaluate_alerts`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from engine.alerts import COPY_ALERT_KINDS, VERIFY_ALERT_KINDS, AlertSink
from engine.catalog.models import Policy, ScheduleMark
from engine.catalog.policies import PolicyStore, ScheduleStore
from engine.clock import SYSTEM_CLOCK, Clock, as_utc
from engine.cron import cron_iter
from engine.errors import CatalogUnavailable, SendenseError
from engine.events import EventBus

if TYPE_CHECKING:
    from engine.services.copy import CopyService
    from engine.services.immutability import LockService
    from engine.services.policies import PolicyService
    from engine.services.verify import VerifyService

log = logging.getLogger(__name__)

__all__ = ["COPY_ALERT_KINDS", "VERIFY_ALERT_KINDS", "Scheduler", "TickReport"]


@dataclass
class TickReport:
    started: list[tuple[str, int]] = field(default_factory=list)
    caught_up: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    #: scheduled copy rules started: (rule name, job id)
    copies: list[tuple[str, int]] = field(default_factory=list)
    #: the scheduled verification job, when one started (None: nothing was overdue)
    verify_job: int | None = None


#: the schedule mark of the scheduled verification
VERIFY_MARK = "schedule:verify"
#: alert marks: ``alert:<kind>:<subject>``
ALERT_PREFIX = "alert:"


def copy_rule_mark(rule_id: int) -> str:
    return f"schedule:copy_rule:{rule_id}"


class Scheduler:
    def __init__(
        self,
        store: PolicyStore,
        policies: PolicyService,
        bus: EventBus,
        *,
        locks: LockService | None = None,
        clock: Clock = SYSTEM_CLOCK,
        interval: float = 20.0,
        maintain_every: float = 3600.0,
        marks: ScheduleStore | None = None,
        copies: CopyService | None = None,
        verifier: VerifyService | None = None,
        verify_schedule: str | None = "0 3 * * *",
        alert_every: float = 300.0,
        alert_sink: AlertSink | None = None,
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
        #: schedule marks (scheduled copy rules, the verify schedule, raised alerts)
        self.marks = marks
        #: engine.services.copy.CopyService (scheduled rules, copy alerts)
        self.copies = copies
        #: engine.services.verify.VerifyService (overdue files, coverage)
        self.verifier = verifier
        #: cron of the scheduled verification; None turns it off
        self.verify_schedule = verify_schedule
        self.alert_every = alert_every
        self._last_alerts: float | None = None
        self._alerts_lock = threading.Lock()
        if alert_sink is not None:
            # a copy rule failing (or recovering) and a file found bad (or good)
            # raise or clear their alerts at once, not at the next alert pass
            alert_sink.subscribe(self._alerts_changed)

    # -- one pass ---------------------------------------------------------------------

    def tick(self) -> TickReport:
        report = TickReport()
        now = self.clock.now()
        for policy in self.store.list(enabled_only=True):
            try:
                self._consider(policy, now, report)
            except CatalogUnavailable:
                raise  # nothing can be scheduled: the loop waits for the catalog
            except SendenseError as exc:
                log.warning("scheduling policy %s: %s", policy.name, exc)
            except Exception:
                log.exception("scheduling policy %s", policy.name)
        if self.marks is not None:
            for what, step in (
                ("copy rules", self._tick_copies),
                ("verification", self._tick_verify),
            ):
                try:
                    step(now, report)
                except CatalogUnavailable:
                    raise
                except SendenseError as exc:
                    log.warning("scheduling %s: %s", what, exc)
                except Exception:
                    log.exception("scheduling %s", what)
        return report

    # -- schedule marks (copy rules, verification) --------------------------------------

    def _take_mark(
        self,
        key: str,
        schedule: str,
        now: datetime,
        label: str,
        report: TickReport,
    ) -> bool:
        """True when this engine took a due run of ``key`` (catching up once)."""
        assert self.marks is not None
        mark = self.marks.get(key)
        upcoming = self._next_after(schedule, now)
        if mark is None:
            # never scheduled: no catch-up for what it never promised
            self.marks.take_due(key, None, upcoming, now, schedule=schedule)
            return False
        due = as_utc(mark.due_at)
        if mark.message != schedule or due is None:
            # the schedule was edited: start from now, nothing to catch up
            self.marks.take_due(key, mark.due_at, upcoming, now, schedule=schedule)
            return False
        if due > now:
            return False
        missed = 0
        probe = due
        while probe <= now and missed < 1000:
            missed += 1
            probe = self._next_after(schedule, probe)
        if not self.marks.take_due(key, mark.due_at, upcoming, now, schedule=schedule):
            report.lost.append(label)
            return False
        if missed > 1:
            report.caught_up.append(label)
            self._event(
                "scheduler.caught_up",
                f"{label}: {missed} runs were missed since {due:%Y-%m-%d %H:%M} UTC; "
                "running once now",
                level="warning",
            )
        return True

    def _tick_copies(self, now: datetime, report: TickReport) -> None:
        if self.copies is None:
            return
        assert self.marks is not None
        rules = self.copies.list_rules()
        wanted = set()
        for rule in rules:
            key = copy_rule_mark(rule.id)
            if rule.mode != "scheduled" or not rule.schedule or not rule.enabled:
                continue  # its mark (if any) is dropped below: re-enabling starts afresh
            wanted.add(key)
            label = f"copy rule {rule.name}"
            try:
                if not self._take_mark(key, rule.schedule, now, label, report):
                    continue
                busy = self.copies.active_rule_jobs(rule.id)
                if busy:
                    report.skipped.append((label, "the previous copy is still going"))
                    self._event(
                        "scheduler.skipped",
                        f"{label}: the {now:%Y-%m-%d %H:%M} run was skipped because copy "
                        f"job {busy[0].id} of this rule is still going",
                        level="warning",
                    )
                    continue
                job = self.copies.run_rule(rule.id, actor="scheduler", if_idle=True)
                report.copies.append((rule.name, job.id))
            except SendenseError as exc:
                log.warning("scheduling copy rule %s: %s", rule.name, exc)
        for mark in self.marks.list("schedule:copy_rule:"):
            if mark.key not in wanted:
                self.marks.forget(mark.key)

    def _tick_verify(self, now: datetime, report: TickReport) -> None:
        if self.verifier is None or not self.verify_schedule:
            return
        if not self._take_mark(VERIFY_MARK, self.verify_schedule, now, "verification", report):
            return
        busy = self.verifier.active_scheduled_jobs()
        if busy:
            report.skipped.append(("verification", "the previous verification is still going"))
            self._event(
                "scheduler.skipped",
                f"scheduled verification: skipped because verify job {busy[0].id} is still going",
                level="warning",
            )
            return
        job = self.verifier.submit_due(actor="scheduler")
        if job is not None:
            report.verify_job = job.id

    def next_verification(self) -> datetime | None:
        """When the scheduled verification runs next (None: it is turned off)."""
        if self.verifier is None or not self.verify_schedule:
            return None
        mark = self.marks.get(VERIFY_MARK) if self.marks is not None else None
        if mark is not None and mark.message == self.verify_schedule and mark.due_at:
            return as_utc(mark.due_at)
        return self._next_after(self.verify_schedule, self.clock.now())

    # -- alerts ---------------------------------------------------------------------------

    def evaluate_alerts(self, *, kinds: tuple[str, ...] | None = None) -> list[ScheduleMark]:
        """Raise each alert condition once and clear it once.

        A raised alert is a ``alert:<kind>:<subject>`` mark in the catalog: the engine
        that inserts it publishes the warning/critical event, the engine that deletes
        it publishes the "cleared" one, and a restart finds the mark and stays quiet.
        ``kinds`` limits the evaluation (a copy failing re-checks copy alerts only).
        Returns the alerts raised now (after this pass).
        """
        if self.marks is None:
            return []
        with self._alerts_lock:
            now = self.clock.now()
            current: dict[str, tuple[str, str, str, int | None]] = {}
            checked: set[str] = set()
            if self.copies is not None and (kinds is None or set(kinds) & set(COPY_ALERT_KINDS)):
                checked.update(COPY_ALERT_KINDS)
                for a in self.copies.alerts():
                    if a.kind in COPY_ALERT_KINDS:
                        key = f"{ALERT_PREFIX}{a.kind}:rule:{a.rule_id}"
                        current[key] = (a.kind, a.level, a.message, a.repository_id)
            if self.verifier is not None and (
                kinds is None or set(kinds) & set(VERIFY_ALERT_KINDS)
            ):
                checked.update(VERIFY_ALERT_KINDS)
                for found in self.verifier.alerts():
                    if found["kind"] in VERIFY_ALERT_KINDS:
                        key = f"{ALERT_PREFIX}{found['kind']}:{found.get('subject', 'all')}"
                        current[key] = (found["kind"], found["level"], found["message"], None)
            for key, (kind, level, message, repo_id) in current.items():
                outcome = self.marks.raise_alert(key, level, message, now)
                if outcome is not None:
                    raised = "raised" if outcome == "raised" else f"now {level}"
                    self.bus.emit(
                        "alerts",
                        f"alert.{kind}",
                        f"alert {raised}: {message}",
                        level=level,
                        repository_id=repo_id,
                        data={"alert": key},
                    )
            for mark in self.marks.list(ALERT_PREFIX):
                kind = mark.key[len(ALERT_PREFIX) :].split(":", 1)[0]
                if kind not in checked or mark.key in current:
                    continue
                if self.marks.clear_alert(mark.key) is not None:
                    self.bus.emit(
                        "alerts",
                        f"alert.{kind}.cleared",
                        f"alert cleared: {mark.message or kind}",
                        level="info",
                        data={"alert": mark.key},
                    )
            return self.marks.list(ALERT_PREFIX)

    def active_alerts(self) -> list[ScheduleMark]:
        """The alerts raised now (by any engine on this catalog), oldest key first."""
        return self.marks.list(ALERT_PREFIX) if self.marks is not None else []

    def _maybe_evaluate_alerts(self) -> None:
        mono = self.clock.monotonic()
        if self._last_alerts is not None and mono - self._last_alerts < self.alert_every:
            return
        self._last_alerts = mono
        try:
            self.evaluate_alerts()
        except CatalogUnavailable:
            pass  # logged once by the catalog
        except SendenseError as exc:
            log.warning("evaluating alerts: %s", exc)
        except Exception:
            log.exception("evaluating alerts")

    def _alerts_changed(self, kinds: tuple[str, ...]) -> None:
        self.evaluate_alerts(kinds=kinds)

    def _next_after(self, schedule: str, when: datetime) -> datetime:
        return as_utc(cron_iter(schedule, when).get_next(datetime))  # type: ignore[return-value]

    def _consider(self, policy: Policy, now: datetime, report: TickReport) -> None:
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
        except CatalogUnavailable:
            pass  # logged once by the catalog
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
            except CatalogUnavailable:
                pass  # logged once by the catalog; the next tick tries again
            except Exception:
                log.exception("scheduler tick")
            mono = self.clock.monotonic()
            if self._last_maintain is None or mono - self._last_maintain >= self.maintain_every:
                self._last_maintain = mono
                self.maintain_locks()
            self._maybe_evaluate_alerts()
            self._stop.wait(self.interval)

    def _event(self, kind: str, message: str, *, level: str = "info") -> None:
        self.bus.emit("scheduler", kind, message, level=level)
