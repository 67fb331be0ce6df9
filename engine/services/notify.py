"""Notifications: events routed by level, source and kind to a webhook, a mail server
or any target apprise knows.

How an event travels: the bus calls ``_on_event`` on the publishing thread, which
only puts the event on an in-memory queue and returns (a slow or dead target can
never hold up a job). The worker thread takes it from there: it matches the event
against the enabled rules and records one delivery per matching rule in the
catalog, then sends what is due:

- a duplicate (same rule, same event kind, same subject — the job, repository,
  copy rule or policy the event is about) within the rule's dedup window is
  recorded as ``suppressed`` and not sent;
- beyond the rule's limit of messages per hour an event is ``held``; when the hour
  has room again, the held events go out as ONE message ("N more events
  suppressed…"), so a copy rule failing all night sends a handful of mails, not 300;
- a rule with a daily digest holds every matching event and sends one message a
  day at the digest time (``run_digests(now)``, called by the worker's tick);
- a failed send is retried with growing delays (``RETRY_DELAYS``), then recorded
  ``failed`` with the target's reason and announced by one ``notify.failed``
  warning, which no rule ever matches (events from this service never loop back).

Only an engine that runs jobs delivers (the daemon, or a console or CLI with no
daemon): ``Engine.start`` starts this service there, so a console attached to a
daemon does not send every message twice. Deliveries are rows in the catalog and
taken with a compare-and-set, so what one engine queued and could not send before
it stopped is sent by the next one.

Secrets (the webhook's HMAC key, the SMTP password, the apprise URL, which embeds
the target's tokens) are stored encrypted with the key CIFS passwords use
(``engine.services.secrets.SecretBox``) and never appear in a listing.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import queue
import re
import threading
import urllib.parse
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from engine.catalog.audit import LEVELS
from engine.catalog.models import NotificationDelivery, NotificationRule
from engine.catalog.notifications import NotificationStore
from engine.clock import SYSTEM_CLOCK, Clock
from engine.errors import Action, CatalogUnavailable, SendenseError, ValidationError
from engine.events import Event, EventBus
from engine.names import has_unsafe_chars, name_error
from engine.services.secrets import SecretBox

log = logging.getLogger(__name__)

#: the source of this service's own events; no rule matches them
SOURCE = "notify"
TARGETS = ("webhook", "email", "apprise")
#: seconds to wait before the 2nd, 3rd and 4th attempt; then the delivery has failed
RETRY_DELAYS: tuple[float, ...] = (30.0, 120.0, 600.0)
#: seconds a target may take to answer one attempt
TIMEOUT_SECONDS = 10.0
#: how often the worker looks at digests, rate windows and retries (real seconds)
TICK_SECONDS = 5.0
#: a delivery left "sending" this long (its engine died mid-send) is queued again
STALE_SENDING = timedelta(minutes=10)
#: finished deliveries are kept this long (``notify deliveries``), then forgotten
KEEP_DELIVERIES = timedelta(days=30)
#: events waiting for the worker at most; beyond, new ones are dropped and counted
QUEUE_MAX = 10_000
#: events listed one by one in a digest or summary message
FOLD_LINES = 50
SIGNATURE_HEADER = "X-Sendense-Signature"
#: a mail server here may take a login without STARTTLS: nothing crosses a network
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "[::1]", "localhost")
_HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_ADDRESS = re.compile(r"[^@\s<>,;\"]+@[^@\s<>,;\"]+")
_HOST = re.compile(r"[A-Za-z0-9._:\[\]-]+")


class DeliveryError(SendenseError):
    """A target did not take a message; the sentence says what it answered."""


@dataclass(frozen=True)
class RuleSpec:
    """A new rule as the CLI, the API or the console gives it. Secrets in clear here;
    stored encrypted."""

    name: str
    target: str
    #: webhook
    url: str | None = None
    hmac_secret: str | None = None
    #: email
    smtp_host: str | None = None
    smtp_port: int = 25
    starttls: bool = False
    mail_from: str | None = None
    mail_to: Sequence[str] = ()
    smtp_user: str | None = None
    smtp_password: str | None = None
    #: apprise
    apprise_url: str | None = None
    #: matching
    min_level: str | None = None
    levels: Sequence[str] = ()
    sources: Sequence[str] = ()
    kinds: Sequence[str] = ()
    dedup_minutes: int = 0
    max_per_hour: int | None = None
    digest_at: str | None = None
    enabled: bool = True


@dataclass(frozen=True)
class RuleView:
    """A rule as listings show it: never a secret, only whether one is set."""

    id: int
    name: str
    enabled: bool
    target: str
    #: where it sends, in words ("https://hooks.example/x", "ops@example.com via mail:587")
    destination: str
    secret_set: bool
    min_level: str | None
    levels: list[str]
    sources: list[str]
    kinds: list[str]
    dedup_minutes: int
    max_per_hour: int | None
    digest_at: str | None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def matches(self) -> str:
        """What the rule matches, in words."""
        parts = []
        if self.min_level:
            parts.append(f"{self.min_level}+")
        if self.levels:
            parts.append("level " + "|".join(self.levels))
        if self.sources:
            parts.append("from " + "|".join(self.sources))
        if self.kinds:
            parts.append("kind " + "|".join(self.kinds))
        return ", ".join(parts) or "every event"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "enabled": self.enabled,
            "target": self.target,
            "destination": self.destination,
            "secret": "set" if self.secret_set else "not set",
            "min_level": self.min_level,
            "levels": self.levels,
            "sources": self.sources,
            "kinds": self.kinds,
            "dedup_minutes": self.dedup_minutes,
            "max_per_hour": self.max_per_hour,
            "digest_at": self.digest_at,
            "deliveries": self.counts,
        }


@dataclass(frozen=True)
class DeliveryView:
    id: int
    rule: str
    kind: str
    level: str
    subject: str
    message: str
    state: str
    reason: str | None
    attempts: int
    last_error: str | None
    folded_into: int | None
    created_at: datetime
    sent_at: datetime | None
    next_attempt_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "rule": self.rule,
            "kind": self.kind,
            "level": self.level,
            "subject": self.subject,
            "message": self.message,
            "state": self.state,
            "reason": self.reason,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "folded_into": self.folded_into,
            "created_at": self.created_at,
            "sent_at": self.sent_at,
            "next_attempt_at": self.next_attempt_at,
        }


@dataclass(frozen=True)
class NotificationTestResult:
    """What ``notify test`` saw: ok, and one sentence saying so."""

    ok: bool
    sentence: str
    delivery_id: int | None = None


# -- matching ------------------------------------------------------------------------


def _level_rank(level: str) -> int:
    return LEVELS.index(level) if level in LEVELS else LEVELS.index("info")


def kind_matches(pattern: str, kind: str) -> bool:
    """``job.`` or ``job.*`` match every job event; ``job.failed`` matches that kind
    (and dotted kinds under it)."""
    if pattern.endswith("*"):
        return kind.startswith(pattern[:-1])
    if pattern.endswith("."):
        return kind.startswith(pattern)
    return kind == pattern or kind.startswith(pattern + ".")


def rule_matches(rule: NotificationRule | RuleView, event: Event) -> bool:
    if event.source == SOURCE or not event.record:
        return False
    if rule.min_level and _level_rank(event.level) < _level_rank(rule.min_level):
        return False
    if rule.levels and event.level not in rule.levels:
        return False
    if rule.sources and event.source not in rule.sources:
        return False
    return not rule.kinds or any(kind_matches(p, event.kind) for p in rule.kinds)


def subject_of(event: Event) -> str:
    """What an event is about, for dedup: the copy rule, policy or chain it names,
    else its job, else its repository."""
    data = event.data or {}
    for key, prefix in (("rule_id", "copy_rule"), ("policy_id", "policy"), ("chain_id", "chain")):
        if data.get(key) is not None:
            return f"{prefix}:{data[key]}"[:128]
    if event.job_id is not None:
        return f"job:{event.job_id}"
    if event.repository_id is not None:
        return f"repository:{event.repository_id}"
    return ""


def event_payload(event: Event, at: datetime) -> dict[str, Any]:
    """The JSON a webhook receives (and the delivery row keeps)."""
    when = event.at or at
    return {
        "level": event.level,
        "kind": event.kind,
        "source": event.source,
        "message": event.message,
        "time": when.isoformat(),
        "repository_id": event.repository_id,
        "job_id": event.job_id,
        "actor": event.actor,
        # anything a service put in data, made plain JSON (times, paths as text)
        "data": json.loads(json.dumps(event.data or {}, default=str)),
    }


# -- the service ---------------------------------------------------------------------


class NotificationService:
    def __init__(
        self,
        store: NotificationStore,
        bus: EventBus,
        secrets: SecretBox,
        *,
        clock: Clock = SYSTEM_CLOCK,
        owner: str = "",
        timeout: float = TIMEOUT_SECONDS,
        retry_delays: Sequence[float] = RETRY_DELAYS,
        tick_seconds: float = TICK_SECONDS,
    ) -> None:
        self.store = store
        self.bus = bus
        self.secrets = secrets
        self.clock = clock
        self.owner = owner
        #: seconds one attempt may take (tests shorten it)
        self.timeout = timeout
        self.retry_delays = tuple(retry_delays)
        self.tick_seconds = tick_seconds
        #: events waiting for the worker (None wakes it)
        self._queue: queue.Queue[Event | None] = queue.Queue(maxsize=QUEUE_MAX)
        self.dropped = 0
        #: events the worker holds because the catalog did not take them (yet)
        self.unrecorded = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unsubscribe: Any = None
        self._pruned_at: datetime | None = None

    # -- rules -----------------------------------------------------------------------

    def add_rule(self, spec: RuleSpec, *, actor: str | None = None) -> RuleView:
        fields = self._validated(spec)
        now = self.clock.now()
        rule = self.store.add_rule(
            name=spec.name,
            now=now,
            # a digest starts with the next digest time, not one already past
            digest_sent_for=last_digest_time(spec.digest_at, now) if spec.digest_at else None,
            **fields,
        )
        view = self._view(rule)
        self._event(
            "notify.rule_added",
            f"notification rule {rule.name} added: {view.matches} to {view.destination}",
            actor=actor,
        )
        return view

    def _validated(self, spec: RuleSpec) -> dict[str, Any]:
        problem = name_error(spec.name)
        if problem:
            raise ValidationError(f"notification rule name {spec.name!r}: {problem}")
        if spec.target not in TARGETS:
            raise ValidationError(
                f"notification target {spec.target!r} is not one of {', '.join(TARGETS)}"
            )
        for level in [spec.min_level, *spec.levels]:
            if level is not None and level not in LEVELS:
                raise ValidationError(
                    f"level {level!r} is not one of {', '.join(LEVELS)}",
                    hint="e.g. warning",
                )
        for text in [*spec.sources, *spec.kinds]:
            if not text or len(text) > 96 or has_unsafe_chars(text) or " " in text:
                raise ValidationError(
                    f"{text!r} is not a source or event kind",
                    hint="e.g. the source copy, the kind job.failed, or job. for every job event",
                )
        if spec.dedup_minutes < 0 or spec.dedup_minutes > 7 * 24 * 60:
            raise ValidationError("the dedup window is 0 to 10080 minutes (a week)")
        if spec.max_per_hour is not None and not 1 <= spec.max_per_hour <= 10_000:
            raise ValidationError("the rate limit is 1 to 10000 messages per hour")
        if spec.digest_at is not None and not _HHMM.fullmatch(spec.digest_at):
            raise ValidationError(
                f"digest time {spec.digest_at!r} is not HH:MM", hint="e.g. 07:30 (UTC)"
            )
        # what is secret goes into one encrypted JSON object; options keep the rest
        options: dict[str, Any]
        secrets: dict[str, str] = {}
        if spec.target == "webhook":
            url = _checked_webhook_url(spec.url)
            # a webhook URL often holds its token (…/services/T0/B0/XXXX): stored
            # encrypted, listed as scheme://host/… only
            options = {"shown": shown_url(url), "signed": bool(spec.hmac_secret)}
            secrets["url"] = url
            if spec.hmac_secret:
                secrets["hmac_key"] = spec.hmac_secret
        elif spec.target == "email":
            options = _checked_email(spec)
            if spec.smtp_password:
                secrets["password"] = spec.smtp_password
        else:
            _check_apprise_url(spec.apprise_url)
            options = {}
            secrets["url"] = str(spec.apprise_url)
        return {
            "enabled": spec.enabled,
            "target": spec.target,
            "options": options,
            "secret": self.secrets.encrypt(json.dumps(secrets)) if secrets else None,
            "min_level": spec.min_level,
            "levels": list(spec.levels),
            "sources": list(spec.sources),
            "kinds": list(spec.kinds),
            "dedup_minutes": spec.dedup_minutes,
            "max_per_hour": spec.max_per_hour,
            "digest_at": spec.digest_at,
        }

    def list_rules(self) -> list[RuleView]:
        counts = self.store.counts()
        return [self._view(rule, counts.get(rule.id, {})) for rule in self.store.rules()]

    def get_rule(self, name: int | str) -> RuleView:
        rule = self.store.get_rule(name)
        return self._view(rule, self.store.counts().get(rule.id, {}))

    def set_enabled(self, name: int | str, enabled: bool, *, actor: str | None = None) -> RuleView:
        rule = self.store.get_rule(name)
        rule = self.store.update_rule(rule.id, self.clock.now(), enabled=enabled)
        self._event(
            f"notify.rule_{'enabled' if enabled else 'disabled'}",
            f"notification rule {rule.name} {'enabled' if enabled else 'disabled'}",
            actor=actor,
        )
        return self._view(rule)

    def remove_rule(self, name: int | str, *, actor: str | None = None) -> None:
        rule = self.store.get_rule(name)
        self.store.remove_rule(rule.id)
        self._event("notify.rule_removed", f"notification rule {rule.name} removed", actor=actor)

    def deliveries(
        self, *, failed_only: bool = False, rule: str | None = None, limit: int = 100
    ) -> list[DeliveryView]:
        rule_id = self.store.get_rule(rule).id if rule else None
        names = {r.id: r.name for r in self.store.rules()}
        rows = self.store.deliveries(
            rule_id=rule_id, states=("failed",) if failed_only else None, limit=limit
        )
        return [_delivery_view(row, names) for row in rows]

    def _view(self, rule: NotificationRule, counts: dict[str, int] | None = None) -> RuleView:
        return RuleView(
            id=rule.id,
            name=rule.name,
            enabled=rule.enabled,
            target=rule.target,
            destination=describe_target(rule),
            secret_set=secret_set(rule),
            min_level=rule.min_level,
            levels=list(rule.levels or []),
            sources=list(rule.sources or []),
            kinds=list(rule.kinds or []),
            dedup_minutes=rule.dedup_minutes,
            max_per_hour=rule.max_per_hour,
            digest_at=rule.digest_at,
            counts=dict(counts or {}),
        )

    # -- a test message, now ---------------------------------------------------------

    def test(self, name: int | str, *, actor: str | None = None) -> NotificationTestResult:
        """Send a test message through the rule now, on this thread (not through the
        worker, dedup, rate limit or digest), record it and say how it went."""
        rule = self.store.get_rule(name)
        now = self.clock.now()
        payload = event_payload(
            Event(
                kind="notify.test",
                message=f"test message of notification rule {rule.name} from Sendense",
                level="info",
                source=SOURCE,
                actor=actor,
            ),
            now,
        )
        delivery = self.store.add_delivery(
            rule_id=rule.id,
            event=payload,
            kind="notify.test",
            level="info",
            subject="",
            state="sending",
            reason="test",
            owner=self.owner,
            created_at=now,
            updated_at=now,
        )
        destination = describe_target(rule)
        try:
            self.send(rule, payload)
        except SendenseError as exc:
            self.store.finish(
                delivery.id, self.clock.now(), state="failed", attempts=1, last_error=exc.message
            )
            return NotificationTestResult(
                False,
                f"the test message of notification rule {rule.name} was not delivered to "
                f"{destination}: {exc.message}",
                delivery.id,
            )
        self.store.finish(
            delivery.id, self.clock.now(), state="sent", attempts=1, sent_at=self.clock.now()
        )
        return NotificationTestResult(
            True,
            f"the test message of notification rule {rule.name} was delivered to {destination}",
            delivery.id,
        )

    # -- running ---------------------------------------------------------------------

    def start(self) -> None:
        """Listen to the bus and deliver on a worker thread (an engine that runs jobs)."""
        if self._thread is not None:
            return
        # each worker has its own stop flag: one that outlived stop()'s wait still ends
        self._stop = threading.Event()
        self._unsubscribe = self.bus.subscribe(self._on_event)
        self._thread = threading.Thread(
            target=self._run, args=(self._stop,), name="sendense-notify", daemon=True
        )
        self._thread.start()
        self.wake()  # what an engine before this one left queued goes out now

    @property
    def running(self) -> bool:
        return self._thread is not None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening; the worker finishes the attempt it is in (up to ``timeout``
        seconds). What was not sent stays queued in the catalog for the next engine."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        thread = self._thread
        if thread is None:
            return
        # events already taken from the bus are recorded before the worker leaves
        self._stop.set()
        self.wake()
        thread.join(timeout=timeout)
        self._thread = None

    def wake(self) -> None:
        """Make the worker look now (after the clock moved, in tests)."""
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)

    def _on_event(self, event: Event) -> None:
        """On the publishing thread: hand the event over and return at once."""
        if event.source == SOURCE or not event.record:
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("notification queue full: %d events not notified", self.dropped)

    def _take_queued(self, pending: deque[Event]) -> None:
        """Wait up to a tick for an event, then take everything already waiting, in
        one go (None in the queue only wakes the worker)."""
        try:
            item = self._queue.get(timeout=self.tick_seconds)
        except queue.Empty:
            item = None
        if item is not None:
            pending.append(item)
        while True:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                break
            if more is not None:
                pending.append(more)

    def _run(self, stop: threading.Event) -> None:
        # events taken from the bus and not yet recorded: kept while the catalog is
        # away (an outage is when a notification matters most), recorded when it answers
        pending: deque[Event] = deque(maxlen=QUEUE_MAX)
        while True:
            self._take_queued(pending)
            try:
                if pending:
                    # the rules are read once for what arrived together
                    rules = self.store.rules(enabled_only=True)
                    while pending:
                        self.record(pending[0], rules)
                        pending.popleft()
                if stop.is_set():
                    # one last try, so a CLI that ran a failing job sends its message;
                    # stop() waits a bounded time, what is left stays queued
                    self.deliver_due(self.clock.now())
                    return
                self.tick(self.clock.now())
            except CatalogUnavailable:
                pass  # logged once by the catalog; the events wait in ``pending``
            except SendenseError as exc:  # a sentence, not a traceback
                log.warning("notifications: %s", exc.message)
                if pending:
                    pending.popleft()
            except Exception:
                log.exception("notification worker")
                if pending:
                    pending.popleft()  # an event that cannot be recorded is not retried
            self.unrecorded = len(pending)
            if stop.is_set():
                return

    def record(
        self, event: Event, rules: Sequence[NotificationRule] | None = None
    ) -> list[NotificationDelivery]:
        """One delivery per enabled rule (of ``rules``, default: read them) the event
        matches: queued, suppressed (dedup) or held (rate limit, digest)."""
        if event.source == SOURCE or not event.record:
            return []
        now = self.clock.now()
        created = []
        if rules is None:
            rules = self.store.rules(enabled_only=True)
        for rule in rules:
            if not rule_matches(rule, event):
                continue
            subject = subject_of(event)
            state, reason = "queued", None
            if rule.digest_at:
                state, reason = "held", "digest"
            elif rule.dedup_minutes and self.store.recent(
                rule.id, now - timedelta(minutes=rule.dedup_minutes), kind=event.kind,
                subject=subject,
            ):  # fmt: skip
                state, reason = "suppressed", "dedup"
            elif rule.max_per_hour is not None and (
                self.store.recent(rule.id, now - timedelta(hours=1)) >= rule.max_per_hour
            ):
                state, reason = "held", "rate"
            created.append(
                self.store.add_delivery(
                    rule_id=rule.id,
                    event=event_payload(event, now),
                    kind=event.kind[:96],
                    level=event.level,
                    subject=subject,
                    state=state,
                    reason=reason,
                    created_at=now,
                    updated_at=now,
                    next_attempt_at=now if state == "queued" else None,
                )
            )
        return created

    def tick(self, now: datetime) -> None:
        """What is due at ``now``: digests, held events whose rate window opened,
        retries."""
        self.store.requeue_stale(now - STALE_SENDING)
        if self._pruned_at is None or now - self._pruned_at >= timedelta(hours=1):
            self.store.prune(now - KEEP_DELIVERIES)
            self._pruned_at = now
        self.run_digests(now)
        self.release_held(now)
        self.deliver_due(now)

    def run_digests(self, now: datetime) -> int:
        """Queue the digest of every rule whose digest time has come since its last one;
        returns how many were queued."""
        queued = 0
        for rule in self.store.rules(enabled_only=True):
            if not rule.digest_at:
                continue
            due = last_digest_time(rule.digest_at, now)
            sent_for = rule.digest_sent_for
            if sent_for is not None and sent_for >= due:
                continue
            if not self.store.take_digest(rule.id, sent_for, due):
                continue  # another engine sends it
            held = self.store.held(rule.id, "digest")
            if not held:
                continue  # a quiet day sends nothing
            self._fold(rule, held, now, kind="notify.digest", title=_digest_title(held, due))
            queued += 1
        return queued

    def release_held(self, now: datetime) -> int:
        """Events held by a rate limit go out as one message once the hour has room."""
        released = 0
        for rule in self.store.rules(enabled_only=True):
            if rule.max_per_hour is None or rule.digest_at:
                continue
            held = self.store.held(rule.id, "rate")
            if not held:
                continue
            if self.store.recent(rule.id, now - timedelta(hours=1)) >= rule.max_per_hour:
                continue
            title = (
                f"{len(held)} more {'event' if len(held) == 1 else 'events'} suppressed by "
                f"notification rule {rule.name} (at most {rule.max_per_hour} messages an hour)"
            )
            self._fold(rule, held, now, kind="notify.suppressed", title=title)
            released += 1
        return released

    def _fold(
        self,
        rule: NotificationRule,
        held: list[NotificationDelivery],
        now: datetime,
        *,
        kind: str,
        title: str,
    ) -> None:
        events = [row.event for row in held]
        level = max((row.level for row in held), key=_level_rank)
        lines = [
            f"{str(e.get('time', ''))[:19].replace('T', ' ')}  {e.get('level', '')}  "
            f"{e.get('message', '')}"
            for e in events[:FOLD_LINES]
        ]
        if len(events) > FOLD_LINES:
            lines.append(f"… and {len(events) - FOLD_LINES} more")
        payload = {
            "level": level,
            "kind": kind,
            "source": SOURCE,
            "message": title,
            "time": now.isoformat(),
            "repository_id": None,
            "job_id": None,
            "actor": None,
            "data": {"count": len(events), "lines": lines, "events": events[:FOLD_LINES]},
        }
        summary = self.store.add_delivery(
            rule_id=rule.id,
            event=payload,
            kind=kind,
            level=level,
            subject="",
            state="queued",
            reason="digest" if kind == "notify.digest" else "rate",
            created_at=now,
            updated_at=now,
            next_attempt_at=now,
        )
        self.store.fold([row.id for row in held], summary.id, now)

    def deliver_due(self, now: datetime) -> int:
        """Send the queued deliveries that are due; returns how many were sent."""
        sent = 0
        rules = {rule.id: rule for rule in self.store.rules()}
        for delivery in self.store.due(now):
            rule = rules.get(delivery.rule_id)
            if rule is None or not rule.enabled:
                continue  # waits until the rule is enabled again
            if not self.store.claim(delivery.id, self.owner, self.clock.now()):
                continue
            attempts = delivery.attempts + 1
            try:
                self.send(rule, delivery.event)
            except SendenseError as exc:  # the target's answer, or a key that does not fit
                self._attempt_failed(rule, delivery, attempts, exc.message)
                continue
            except Exception as exc:  # a bug must not leave the row "sending"
                log.exception("notification delivery %s", delivery.id)
                self._attempt_failed(rule, delivery, attempts, f"internal error: {exc}")
                continue
            at = self.clock.now()
            self.store.finish(
                delivery.id, at, state="sent", attempts=attempts, sent_at=at, owner=None,
                next_attempt_at=None,
            )  # fmt: skip
            sent += 1
        return sent

    def _attempt_failed(
        self, rule: NotificationRule, delivery: NotificationDelivery, attempts: int, reason: str
    ) -> None:
        at = self.clock.now()
        if attempts <= len(self.retry_delays):
            self.store.finish(
                delivery.id,
                at,
                state="queued",
                attempts=attempts,
                last_error=reason,
                owner=None,
                next_attempt_at=at + timedelta(seconds=self.retry_delays[attempts - 1]),
            )
            return
        self.store.finish(
            delivery.id,
            at,
            state="failed",
            attempts=attempts,
            last_error=reason,
            owner=None,
            next_attempt_at=None,
        )
        # this service's own event: recorded in the audit log, never notified
        self._event(
            "notify.failed",
            f"notification rule {rule.name} could not deliver {delivery.kind} to "
            f"{describe_target(rule)} after {attempts} attempts: {reason}",
            level="warning",
            data={"rule": rule.name, "delivery_id": delivery.id},
        )

    # -- sending ---------------------------------------------------------------------

    def send(self, rule: NotificationRule, payload: dict[str, Any]) -> None:
        """One attempt; raises DeliveryError with the target's reason."""
        secrets: dict[str, str] = (
            json.loads(self.secrets.decrypt(rule.secret)) if rule.secret else {}
        )
        if rule.target == "webhook":
            send_webhook(secrets["url"], payload, secrets.get("hmac_key"), timeout=self.timeout)
        elif rule.target == "email":
            send_email(rule.options, payload, secrets.get("password"), timeout=self.timeout)
        elif rule.target == "apprise":
            send_apprise(secrets["url"], payload)
        else:
            raise DeliveryError(f"unknown notification target {rule.target!r}")

    def _event(
        self, kind: str, message: str, *, level: str = "info", actor: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        self.bus.publish(
            Event(kind=kind, message=message, level=level, source=SOURCE, actor=actor,
                  data=data or {})
        )  # fmt: skip


# -- targets -------------------------------------------------------------------------


def describe_target(rule: NotificationRule) -> str:
    """Where a rule sends, in words that hold no secret."""
    options = rule.options or {}
    if rule.target == "webhook":
        return str(options.get("shown", "a webhook"))
    if rule.target == "email":
        port = options.get("port", 25)
        tls = ", STARTTLS" if options.get("starttls") else ""
        return f"{', '.join(options.get('to', []))} via {options.get('host')}:{port}{tls}"
    return "an apprise URL"


def secret_set(rule: NotificationRule) -> bool:
    """Whether the rule has its credential: the HMAC key of a webhook, the password of
    a mail login, the URL of an apprise target."""
    if rule.target == "webhook":
        return bool((rule.options or {}).get("signed"))
    return bool(rule.secret)


def shown_url(url: str) -> str:
    """A URL as listings and errors show it: scheme, host and port, not its user,
    path or query (where webhook services put their tokens)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    rest = "…" if (parts.path not in ("", "/") or parts.query) else ""
    return f"{parts.scheme}://{host}{port}/{rest}"


def _checked_webhook_url(url: str | None) -> str:
    if not url:
        raise ValidationError(
            "a webhook rule needs a URL", hint="e.g. https://hooks.example.com/sendense"
        )
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or has_unsafe_chars(url):
        raise ValidationError(
            f"{shown_url(url)!r} is not an http:// or https:// URL",
            hint="e.g. https://hooks.example.com/sendense",
        )
    try:
        parts.port  # noqa: B018 (parsing it is the check)
    except ValueError:
        raise ValidationError(f"{shown_url(url)!r} has a port that is not 1 to 65535") from None
    if len(url) > 2000:
        raise ValidationError("the webhook URL is longer than 2000 characters")
    return url


def _checked_email(spec: RuleSpec) -> dict[str, Any]:
    if not spec.smtp_host or not _HOST.fullmatch(spec.smtp_host):
        raise ValidationError(
            f"{spec.smtp_host!r} is not a mail server name", hint="e.g. mail.example.com:587"
        )
    if not 1 <= spec.smtp_port <= 65535:
        raise ValidationError(f"port {spec.smtp_port} is not 1 to 65535")
    addresses = [spec.mail_from or "", *spec.mail_to]
    if not spec.mail_to or not spec.mail_from:
        raise ValidationError("an email rule needs --from and at least one --to address")
    for address in addresses:
        # one address each: no header can be smuggled in through a line break or a list
        if not _ADDRESS.fullmatch(address) or has_unsafe_chars(address):
            raise ValidationError(f"{address!r} is not one mail address")
    if spec.smtp_user is not None and (not spec.smtp_user or has_unsafe_chars(spec.smtp_user)):
        raise ValidationError("the SMTP user name is empty or holds control characters")
    if spec.smtp_password and not spec.smtp_user:
        raise ValidationError("an SMTP password needs --user")
    if spec.smtp_user and not spec.starttls and spec.smtp_host not in LOOPBACK_HOSTS:
        raise ValidationError(
            f"a login to {spec.smtp_host} without STARTTLS would send the password in clear",
            action=Action("use_starttls", "use STARTTLS"),
        )
    return {
        "host": spec.smtp_host,
        "port": spec.smtp_port,
        "starttls": spec.starttls,
        "from": spec.mail_from,
        "to": list(spec.mail_to),
        "user": spec.smtp_user,
    }


def _check_apprise_url(url: str | None) -> None:
    import apprise

    if not url:
        raise ValidationError("an apprise rule needs a URL (--apprise-url-file)")
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if not apprise.Apprise().add(url):
        # the URL holds the target's tokens: only its scheme is named
        raise ValidationError(
            f"the apprise URL ({scheme or 'no scheme'}://…) is not one apprise can send to",
            hint="see https://github.com/caronc/apprise/wiki for the URL of each service",
        )


def send_webhook(url: str, payload: dict[str, Any], secret: str | None, *, timeout: float) -> None:
    # imported here: every CLI command builds an engine, few of them send anything
    import urllib.error
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        """A webhook that redirects is answered as a failure: the signed body is never
        re-sent to another place."""

        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    body = json.dumps(payload, sort_keys=True, default=str).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "sendense-notify"}
    if secret:
        digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        headers[SIGNATURE_HEADER] = f"sha256={digest}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    opener = urllib.request.build_opener(NoRedirect)
    shown = shown_url(url)
    try:
        with opener.open(request, timeout=timeout) as response:
            response.read(65536)
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"{shown} answered HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise DeliveryError(f"{shown} cannot be reached: {_reason(exc.reason)}") from None
    except TimeoutError:
        raise DeliveryError(f"{shown} did not answer within {timeout:g} s") from None
    except (OSError, ValueError) as exc:
        raise DeliveryError(f"{shown} cannot be reached: {_reason(exc)}") from None


def _reason(reason: object) -> str:
    if isinstance(reason, TimeoutError):
        return "no answer in time"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason) or type(reason).__name__


def _subject_line(payload: dict[str, Any]) -> str:
    message = " ".join(str(payload.get("message", "")).split())
    level = str(payload.get("level", "info")).upper()
    text = f"[Sendense] {level}: {message}"
    return text if len(text) <= 150 else text[:149] + "…"


def _body_text(payload: dict[str, Any]) -> str:
    lines = [
        str(payload.get("message", "")),
        "",
        f"level:  {payload.get('level')}",
        f"kind:   {payload.get('kind')}",
        f"source: {payload.get('source')}",
        f"time:   {payload.get('time')}",
    ]
    for key in ("job_id", "repository_id"):
        if payload.get(key) is not None:
            lines.append(f"{key}: {payload[key]}")
    folded = (payload.get("data") or {}).get("lines")
    if folded and payload.get("source") == SOURCE:
        lines += ["", *folded]
    return "\n".join(lines) + "\n"


def send_email(
    options: dict[str, Any], payload: dict[str, Any], password: str | None, *, timeout: float
) -> None:
    import smtplib
    import ssl
    from email.message import EmailMessage
    from email.utils import formatdate

    host, port = str(options["host"]), int(options.get("port", 25))
    message = EmailMessage()
    message["Subject"] = _subject_line(payload)
    message["From"] = options["from"]
    message["To"] = ", ".join(options["to"])
    message["Date"] = formatdate(localtime=False)
    message.set_content(_body_text(payload))
    where = f"mail server {host}:{port}"
    try:
        with smtplib.SMTP(host, port, timeout=timeout) as smtp:
            smtp.ehlo()
            if options.get("starttls"):
                if not smtp.has_extn("starttls"):
                    raise DeliveryError(f"{where} does not offer STARTTLS, so nothing was sent")
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if options.get("user"):
                if not smtp.has_extn("auth"):
                    raise DeliveryError(f"{where} does not offer a login (AUTH)")
                smtp.login(str(options["user"]), password or "")
            smtp.send_message(message)
    except smtplib.SMTPAuthenticationError as exc:
        raise DeliveryError(f"{where} refused the login: {_smtp_text(exc)}") from None
    except smtplib.SMTPNotSupportedError as exc:
        raise DeliveryError(f"{where} does not offer {exc}") from None
    except smtplib.SMTPRecipientsRefused as exc:
        raise DeliveryError(f"{where} refused the recipients {', '.join(exc.recipients)}") from None
    except smtplib.SMTPResponseException as exc:
        raise DeliveryError(f"{where} answered {exc.smtp_code}: {_smtp_text(exc)}") from None
    except ssl.SSLError as exc:
        raise DeliveryError(f"{where}: STARTTLS failed ({exc.reason or exc})") from None
    except TimeoutError:
        raise DeliveryError(f"{where} did not answer within {timeout:g} s") from None
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryError(f"{where} cannot be reached: {_reason(exc)}") from None


def _smtp_text(exc: Any) -> str:
    """The text of an ``smtplib.SMTPResponseException``, on one line."""
    error = exc.smtp_error
    text = error.decode(errors="replace") if isinstance(error, bytes) else str(error)
    return " ".join(text.split())


def send_apprise(url: str, payload: dict[str, Any]) -> None:
    import apprise

    target = apprise.Apprise()
    if not target.add(url):
        raise DeliveryError("the apprise URL is not one apprise can send to")
    kinds = {
        "critical": apprise.NotifyType.FAILURE,
        "error": apprise.NotifyType.FAILURE,
        "warning": apprise.NotifyType.WARNING,
    }
    with apprise.LogCapture(level=logging.WARNING) as output:
        ok = target.notify(
            body=_body_text(payload),
            title=_subject_line(payload),
            notify_type=kinds.get(str(payload.get("level")), apprise.NotifyType.INFO),
        )
    if not ok:
        said = [line.split(" - ", 2)[-1] for line in output.getvalue().splitlines() if line]
        raise DeliveryError("apprise could not send it" + (f": {said[-1]}" if said else ""))


# -- digests -------------------------------------------------------------------------


def last_digest_time(hhmm: str, now: datetime) -> datetime:
    """The most recent time of day ``hhmm`` (UTC) at or before ``now``."""
    hour, minute = (int(part) for part in hhmm.split(":"))
    today = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return today if today <= now else today - timedelta(days=1)


def _digest_title(held: list[NotificationDelivery], due: datetime) -> str:
    by_level: dict[str, int] = {}
    for row in held:
        by_level[row.level] = by_level.get(row.level, 0) + 1
    counted = ", ".join(
        f"{by_level[level]} {level}" for level in reversed(LEVELS) if level in by_level
    )
    n = len(held)
    events = "event" if n == 1 else "events"
    return f"Sendense daily digest {due:%Y-%m-%d}: {n} {events} ({counted})"


def _delivery_view(row: NotificationDelivery, names: dict[int, str]) -> DeliveryView:
    return DeliveryView(
        id=row.id,
        rule=names.get(row.rule_id, str(row.rule_id)),
        kind=row.kind,
        level=row.level,
        subject=row.subject,
        message=str((row.event or {}).get("message", "")),
        state=row.state,
        reason=row.reason,
        attempts=row.attempts,
        last_error=row.last_error,
        folded_into=row.folded_into,
        created_at=row.created_at,
        sent_at=row.sent_at,
        next_attempt_at=row.next_attempt_at,
    )
