"""Notifications (engine.services.notify) against real targets on loopback: a webhook
server, an SMTP server with STARTTLS and a login (aiosmtpd), apprise's JSON target;
dedup, rate limit, digest, retries and a dead or hanging target."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from engine.clock import FixedClock
from engine.daemon import DaemonStatus
from engine.errors import NotFoundError, ValidationError
from engine.events import Event
from engine.runtime import Engine
from engine.services.backup import DiskSource
from engine.services.notify import RuleSpec
from tests.engine import notifyservers
from tests.engine.notifyservers import MailServer, WebhookServer, closed_port, wait_for

# the loopback targets, as fixtures of this module
webhook = notifyservers.webhook
mail_server = notifyservers.mail_server

SQLITE_ONLY = pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)
HMAC_KEY = "k3y-for-the-webhook"


def failure(n: int = 0, **data: object) -> Event:
    """A matching event: a copy rule's job failed."""
    return Event(
        kind="job.failed",
        message=f"failed: copy run {n} (destination unreachable)",
        level="error",
        source="jobs",
        data=dict(data),
    )


def shown(url: str) -> str:
    """How listings and errors show a loopback webhook URL: no path (tokens live there)."""
    return url.rsplit("/", 1)[0] + "/…"


def attempts(engine: Engine) -> int:
    """Attempts made on the newest delivery (0 before it is recorded)."""
    newest = engine.notifications.deliveries(limit=1)
    return newest[0].attempts if newest else 0


def states(engine: Engine, rule: str) -> list[tuple[str, str | None]]:
    return sorted(
        ((d.state, d.reason) for d in engine.notifications.deliveries(rule=rule)), key=str
    )


def test_webhook_gets_the_event_as_json_signed_with_hmac(
    engine: Engine, webhook: WebhookServer
) -> None:
    engine.notifications.add_rule(
        RuleSpec(
            name="ops",
            target="webhook",
            url=webhook.url,
            hmac_secret=HMAC_KEY,
            min_level="error",
        )
    )
    engine.notifications.start()
    engine.bus.publish(Event(kind="job.succeeded", message="finished: backup", source="jobs"))
    engine.bus.publish(failure(1, rule_id=4))
    [hit] = wait_for(lambda: webhook.received)

    body = hit.json
    assert body["kind"] == "job.failed" and body["level"] == "error"
    assert body["source"] == "jobs" and body["message"].startswith("failed: copy run 1")
    assert body["data"] == {"rule_id": 4}
    assert datetime.fromisoformat(body["time"]) == engine.clock.now()
    expected = hmac.new(HMAC_KEY.encode(), hit.body, hashlib.sha256).hexdigest()
    assert hit.headers["X-Sendense-Signature"] == f"sha256={expected}"
    assert hit.headers["Content-Type"] == "application/json"

    engine.notifications.stop()  # everything taken from the bus is recorded by now
    assert states(engine, "ops") == [("sent", None)]  # the info event matched nothing
    assert len(webhook.received) == 1


@SQLITE_ONLY
def test_webhook_without_a_secret_is_not_signed(engine: Engine, webhook: WebhookServer) -> None:
    engine.notifications.add_rule(RuleSpec(name="plain", target="webhook", url=webhook.url))
    outcome = engine.notifications.test("plain")
    assert outcome.ok, outcome.sentence
    [hit] = webhook.received
    assert "X-Sendense-Signature" not in hit.headers and hit.json["kind"] == "notify.test"


@SQLITE_ONLY
def test_mail_arrives_over_starttls_after_a_login(engine: Engine, mail_server: MailServer) -> None:
    engine.notifications.add_rule(
        RuleSpec(
            name="mail",
            target="email",
            smtp_host=mail_server.host,
            smtp_port=mail_server.port,
            starttls=True,
            mail_from="sendense@backup.example",
            mail_to=("ops@example.com", "oncall@example.com"),
            smtp_user=mail_server.user,
            smtp_password=mail_server.password,
            kinds=("job.failed",),
        )
    )
    outcome = engine.notifications.test("mail")
    assert outcome.ok, outcome.sentence
    assert outcome.sentence == (
        "the test message of notification rule mail was delivered to ops@example.com, "
        f"oncall@example.com via 127.0.0.1:{mail_server.port}, STARTTLS"
    )
    engine.notifications.start()
    # a message carrying a line break (a crafted VM name) cannot add a header
    hostile = Event(
        kind="job.failed",
        message="failed: backup of web01\r\nBcc: thief@evil.example\r\n\r\nforged body",
        level="error",
        source="jobs",
    )
    engine.bus.publish(hostile)
    wait_for(lambda: len(mail_server.messages) == 2)
    sender, recipients, message = mail_server.messages[1]
    assert sender == "sendense@backup.example"
    assert recipients == ["ops@example.com", "oncall@example.com"]
    assert " ".join(message["Subject"].split()) == (  # unfolded
        "[Sendense] ERROR: failed: backup of web01 Bcc: thief@evil.example forged body"
    )
    assert message["Bcc"] is None and "kind:   job.failed" in message.get_payload()
    assert mail_server.logins == ["sendense", "sendense"]


@SQLITE_ONLY
def test_a_wrong_mail_password_is_the_reason_given(engine: Engine, mail_server: MailServer) -> None:
    engine.notifications.add_rule(
        RuleSpec(
            name="mail",
            target="email",
            smtp_host=mail_server.host,
            smtp_port=mail_server.port,
            starttls=True,
            mail_from="sendense@backup.example",
            mail_to=("ops@example.com",),
            smtp_user=mail_server.user,
            smtp_password="wrong",
        )
    )
    outcome = engine.notifications.test("mail")
    assert not outcome.ok and not mail_server.messages
    assert f"mail server 127.0.0.1:{mail_server.port} refused the login" in outcome.sentence
    [record] = engine.notifications.deliveries(failed_only=True)
    assert record.reason == "test" and "refused the login" in (record.last_error or "")


@SQLITE_ONLY
def test_apprise_sends_through_its_json_target(engine: Engine, webhook: WebhookServer) -> None:
    url = webhook.url.replace("http://", "json://")
    engine.notifications.add_rule(
        RuleSpec(name="any", target="apprise", apprise_url=url, min_level="warning")
    )
    engine.notifications.start()
    engine.bus.publish(failure(3))
    [hit] = wait_for(lambda: webhook.received)
    assert hit.json["title"] == "[Sendense] ERROR: failed: copy run 3 (destination unreachable)"
    assert "kind:   job.failed" in hit.json["message"]


@SQLITE_ONLY
def test_a_failing_backup_sends_exactly_one_notification(
    engine: Engine, webhook: WebhookServer, tmp_path: Path
) -> None:
    engine.repositories.ensure_default(engine.settings.default_repository)
    engine.notifications.add_rule(
        RuleSpec(name="fail", target="webhook", url=webhook.url, kinds=("job.failed",))
    )
    engine.start()
    missing = tmp_path / "no-such-disk.raw"
    job = engine.backups.submit("local", "web01", [DiskSource("sda", str(missing))])
    [hit] = wait_for(lambda: webhook.received)
    assert hit.json["kind"] == "job.failed" and hit.json["job_id"] == job.id
    assert engine.job_store.get(job.id).state == "failed"
    engine.notifications.stop()
    assert states(engine, "fail") == [("sent", None)]
    assert len(webhook.received) == 1


@SQLITE_ONLY
def test_duplicates_within_the_window_are_suppressed_and_counted(
    engine: Engine, webhook: WebhookServer, clock: FixedClock
) -> None:
    engine.notifications.add_rule(
        RuleSpec(name="dedup", target="webhook", url=webhook.url, dedup_minutes=60)
    )
    engine.notifications.start()
    for n in range(5):
        engine.bus.publish(failure(n, rule_id=7))  # the same copy rule failing again
    engine.bus.publish(failure(9, rule_id=8))  # another copy rule: its own message
    wait_for(lambda: len(engine.notifications.deliveries(rule="dedup")) == 6)
    wait_for(lambda: len(webhook.received) == 2)
    expected = [("sent", None)] * 2 + [("suppressed", "dedup")] * 4
    wait_for(lambda: states(engine, "dedup") == expected)  # recorded just after arriving
    [view] = engine.notifications.list_rules()
    assert view.counts == {"sent": 2, "suppressed": 4}

    clock.advance(timedelta(minutes=61))  # the window has passed: it is news again
    engine.bus.publish(failure(10, rule_id=7))
    wait_for(lambda: len(webhook.received) == 3)
    assert webhook.received[2].json["message"].startswith("failed: copy run 10")
    finished = [("sent", None)] * 3 + [("suppressed", "dedup")] * 4
    wait_for(lambda: states(engine, "dedup") == finished)
    clock.advance(timedelta(days=31))  # a month later the records are forgotten
    engine.notifications.tick(clock.now())
    assert engine.notifications.deliveries(rule="dedup") == []


def test_beyond_the_rate_limit_events_are_folded_into_one_message(
    engine: Engine, webhook: WebhookServer, clock: FixedClock
) -> None:
    engine.notifications.add_rule(
        RuleSpec(name="limited", target="webhook", url=webhook.url, max_per_hour=3)
    )
    engine.notifications.start()
    for n in range(20):  # a copy rule failing all night, each run its own job
        engine.bus.publish(failure(n, rule_id=n))
    wait_for(lambda: len(engine.notifications.deliveries(rule="limited")) == 20)
    wait_for(lambda: len(webhook.received) == 3)
    assert states(engine, "limited").count(("held", "rate")) == 17

    clock.advance(timedelta(minutes=59))
    engine.notifications.tick(clock.now())  # the hour is still full
    assert len(webhook.received) == 3
    clock.advance(timedelta(minutes=2))
    engine.notifications.wake()
    [summary] = wait_for(lambda: webhook.received[3:])
    body = summary.json
    assert body["kind"] == "notify.suppressed" and body["data"]["count"] == 17
    assert body["message"] == (
        "17 more events suppressed by notification rule limited (at most 3 messages an hour)"
    )
    assert body["data"]["lines"][0].endswith("failed: copy run 3 (destination unreachable)")
    final = wait_for(
        lambda: ("sent", "rate") in states(engine, "limited") and states(engine, "limited")
    )
    assert final.count(("folded", "rate")) == 17 and final.count(("sent", None)) == 3
    assert len(webhook.received) == 4


@SQLITE_ONLY
def test_a_hanging_target_never_blocks_the_publisher_and_ends_failed_with_the_reason(
    engine: Engine, webhook: WebhookServer, clock: FixedClock
) -> None:
    webhook.hang = True
    engine.notifications.timeout = 0.3
    engine.notifications.add_rule(
        RuleSpec(name="slow", target="webhook", url=webhook.url, min_level="warning")
    )
    engine.notifications.start()
    engine.bus.publish(failure(1))
    # publish returned while the target still holds the request: not on this thread
    assert not webhook.release.is_set()
    for attempt, delay in enumerate((*engine.notifications.retry_delays, None), start=1):
        wait_for(lambda a=attempt: attempts(engine) == a)
        [record] = engine.notifications.deliveries()
        assert record.last_error == f"{shown(webhook.url)} did not answer within 0.3 s"
        if delay is not None:
            assert record.state == "queued"
            assert record.next_attempt_at == clock.now() + timedelta(seconds=delay)
            clock.advance(delay)
            engine.notifications.wake()
    assert record.state == "failed" and record.attempts == 4
    # one warning, in the audit log; it did not come back as a notification
    warnings = engine.audit.query(min_level="warning", limit=10)
    [warning] = [w for w in warnings if w.kind == "notify.failed"]
    assert warning.message == (
        f"notification rule slow could not deliver job.failed to {shown(webhook.url)} after 4 "
        f"attempts: {shown(webhook.url)} did not answer within 0.3 s"
    )
    engine.notifications.stop()
    assert [d.kind for d in engine.notifications.deliveries()] == ["job.failed"]
    assert webhook.hanging == 4 and not webhook.received


@SQLITE_ONLY
def test_a_closed_port_is_retried_then_failed(engine: Engine, clock: FixedClock) -> None:
    url = f"http://127.0.0.1:{closed_port()}/hook"
    engine.notifications.retry_delays = (5.0,)
    engine.notifications.add_rule(RuleSpec(name="dead", target="webhook", url=url))
    engine.notifications.start()
    engine.bus.publish(failure(1))
    wait_for(lambda: attempts(engine) == 1)
    clock.advance(5)
    engine.notifications.wake()
    [record] = wait_for(lambda: engine.notifications.deliveries(failed_only=True))
    assert record.attempts == 2
    assert record.last_error == f"{shown(url)} cannot be reached: connection refused"
    outcome = engine.notifications.test("dead")
    assert not outcome.ok
    assert outcome.sentence == (
        f"the test message of notification rule dead was not delivered to {shown(url)}: "
        f"{shown(url)} cannot be reached: connection refused"
    )


@SQLITE_ONLY
def test_an_http_error_is_the_reason_and_is_retried(engine: Engine, webhook: WebhookServer) -> None:
    webhook.status = 500
    engine.notifications.add_rule(RuleSpec(name="err", target="webhook", url=webhook.url))
    engine.notifications.start()
    engine.bus.publish(failure(1))
    wait_for(lambda: attempts(engine) == 1)
    [record] = engine.notifications.deliveries()
    assert record.state == "queued"
    assert record.last_error == f"{shown(webhook.url)} answered HTTP 500 Internal Server Error"


def test_the_digest_collects_events_and_sends_one_message_when_due(
    engine: Engine, webhook: WebhookServer, clock: FixedClock
) -> None:
    service = engine.notifications
    service.add_rule(RuleSpec(name="daily", target="webhook", url=webhook.url, digest_at="18:00"))
    # the worker is not started: the test drives the clock and the checks itself
    service.record(failure(1))
    service.record(Event(kind="capacity.threshold_crossed", message="nas 91% full",
                         level="warning", source="capacity"))  # fmt: skip
    clock.advance(timedelta(hours=3))
    service.record(failure(2))
    assert states(engine, "daily") == [("held", "digest")] * 3
    assert service.run_digests(clock.now()) == 0  # 12:00: not yet
    clock.set(datetime(2026, 11, 24, 18, 0, tzinfo=UTC))
    assert service.run_digests(clock.now()) == 1
    assert service.run_digests(clock.now()) == 0  # once a day
    assert service.deliver_due(clock.now()) == 1
    [hit] = webhook.received
    body = hit.json
    assert body["kind"] == "notify.digest" and body["level"] == "error"
    assert body["message"] == "Sendense daily digest 2026-11-24: 3 events (2 error, 1 warning)"
    assert [line[19:] for line in body["data"]["lines"]] == [
        "  error  failed: copy run 1 (destination unreachable)",
        "  warning  nas 91% full",
        "  error  failed: copy run 2 (destination unreachable)",
    ]
    clock.advance(timedelta(days=1))  # a quiet day sends nothing
    assert service.run_digests(clock.now()) == 0
    service.record(failure(3))
    clock.advance(timedelta(days=1))
    assert service.run_digests(clock.now()) == 1
    service.deliver_due(clock.now())
    assert webhook.received[1].json["data"]["count"] == 1


@SQLITE_ONLY
def test_secrets_are_stored_encrypted_and_never_listed(
    engine: Engine, webhook: WebhookServer
) -> None:
    apprise_url = "json://user:apprise-t0ken@127.0.0.1:9/x"
    hook_url = webhook.url + "/services/T0/B0/hook-t0ken"  # the URL holds a token too
    engine.notifications.add_rule(
        RuleSpec(name="hook", target="webhook", url=hook_url, hmac_secret=HMAC_KEY)
    )
    engine.notifications.add_rule(
        RuleSpec(
            name="mail", target="email", smtp_host="mail.example", smtp_port=587,
            starttls=True, mail_from="a@example.com", mail_to=("b@example.com",),
            smtp_user="u", smtp_password="mail-pa55word",
        )
    )  # fmt: skip
    engine.notifications.add_rule(RuleSpec(name="app", target="apprise", apprise_url=apprise_url))
    listed = json.dumps([v.as_dict() for v in engine.notifications.list_rules()])
    for secret in (HMAC_KEY, "mail-pa55word", "apprise-t0ken", "hook-t0ken"):
        assert secret not in listed
    views = {v.name: v for v in engine.notifications.list_rules()}
    assert [v.as_dict()["secret"] for v in views.values()] == ["set"] * 3
    assert views["hook"].destination == shown(webhook.url)
    assert views["app"].destination == "an apprise URL"
    with engine.catalog.session() as session:
        rows = [
            tuple(map(str, row))
            for row in session.execute(text("SELECT * FROM notification_rules"))
        ]
    dump = repr(rows)
    for secret in (HMAC_KEY, "mail-pa55word", "apprise-t0ken", "hook-t0ken"):
        assert secret not in dump
    with engine.catalog.session() as session:
        stored = list(session.scalars(text("SELECT secret FROM notification_rules ORDER BY id")))
    assert all(s.startswith("fernet:") for s in stored)
    # readable with the state directory's key, the one CIFS passwords use
    assert [json.loads(engine.secrets.decrypt(s)) for s in stored] == [
        {"url": hook_url, "hmac_key": HMAC_KEY},
        {"password": "mail-pa55word"},
        {"url": apprise_url},
    ]


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("spec", "sentence"),
    [
        (RuleSpec(name="x", target="webhook", url="file:///etc/passwd"),
         "'file:///…' is not an http:// or https:// URL"),
        (RuleSpec(name="x", target="webhook", url="http://h/\r\nX-Injected: 1"),
         "is not an http:// or https:// URL"),
        (RuleSpec(name="x", target="email", smtp_host="mail", mail_from="a@b",
                  mail_to=("b@c\r\nBcc: everyone@example.com",)),
         "is not one mail address"),
        (RuleSpec(name="x", target="email", smtp_host="mail", mail_from="a@b",
                  mail_to=("b@c, d@e",)), "is not one mail address"),
        (RuleSpec(name="x", target="apprise", apprise_url="nosuch://tok3n@host"),
         "the apprise URL (nosuch://…) is not one apprise can send to"),
        (RuleSpec(name="x", target="webhook", url="http://h/", digest_at="25:00"),
         "digest time '25:00' is not HH:MM"),
        (RuleSpec(name="x", target="webhook", url="http://h/", min_level="loud"),
         "level 'loud' is not one of"),
        (RuleSpec(name="x", target="webhook", url="http://h/", kinds=("job.\x1b[2J",)),
         "is not a source or event kind"),
        (RuleSpec(name="../x", target="webhook", url="http://h/"),
         "notification rule name '../x'"),
    ],
)  # fmt: skip
def test_bad_rules_are_refused_with_one_sentence_and_nothing_saved(
    engine: Engine, spec: RuleSpec, sentence: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        engine.notifications.add_rule(spec)
    assert sentence in refused.value.message and "tok3n" not in refused.value.message
    assert engine.notifications.list_rules() == []


@SQLITE_ONLY
def test_rules_are_enabled_disabled_and_removed(engine: Engine, webhook: WebhookServer) -> None:
    service = engine.notifications
    service.add_rule(RuleSpec(name="ops", target="webhook", url=webhook.url))
    with pytest.raises(ValidationError, match="already exists"):
        service.add_rule(RuleSpec(name="ops", target="webhook", url=webhook.url))
    assert service.set_enabled("ops", False).enabled is False
    service.record(failure(1))  # a disabled rule matches nothing
    assert service.deliveries() == []
    assert service.set_enabled("ops", True).enabled is True
    service.record(failure(2))
    service.remove_rule("ops")
    assert service.list_rules() == [] and service.deliveries() == []
    with pytest.raises(NotFoundError, match="notification rule 'ops' does not exist"):
        service.test("ops")


@SQLITE_ONLY
def test_a_console_attached_to_a_daemon_does_not_deliver(engine: Engine) -> None:
    engine.attach_daemon(DaemonStatus(pid=1))
    engine.start()
    assert not engine.notifications.running
    engine.close()
    engine.attach_daemon(DaemonStatus(problem="no daemon"))
    engine.start()
    assert engine.notifications.running


@SQLITE_ONLY
def test_what_one_engine_queued_the_next_one_sends(
    engine_factory: object, webhook: WebhookServer, clock: FixedClock
) -> None:
    first = engine_factory(clock=clock, owner="first")  # type: ignore[operator]
    first.notifications.add_rule(RuleSpec(name="ops", target="webhook", url=webhook.url))
    first.notifications.record(failure(1))  # recorded, never sent: that engine stopped
    first.close()
    second = engine_factory(clock=clock, owner="second")  # type: ignore[operator]
    # appliances sharing a catalog share the key its secrets are encrypted with
    second.secrets.key_file.write_bytes(first.secrets.key_file.read_bytes())
    second.notifications.start()
    [hit] = wait_for(lambda: webhook.received)
    assert hit.json["message"].startswith("failed: copy run 1")


@SQLITE_ONLY
def test_a_key_file_that_does_not_fit_is_the_reason_given(
    engine_factory: object, webhook: WebhookServer, clock: FixedClock
) -> None:
    first = engine_factory(clock=clock, owner="first")  # type: ignore[operator]
    first.notifications.add_rule(RuleSpec(name="ops", target="webhook", url=webhook.url))
    other = engine_factory(clock=clock, owner="other")  # type: ignore[operator]
    outcome = other.notifications.test("ops")  # its own secret.key: not the one used
    assert not outcome.ok and not webhook.received
    assert f"cannot be decrypted with {other.secrets.key_file}" in outcome.sentence


@SQLITE_ONLY
def test_an_event_during_a_catalog_outage_is_sent_when_the_catalog_is_back(
    engine: Engine, webhook: WebhookServer
) -> None:
    if os.geteuid() != 0:
        pytest.skip("chattr +i needs root")
    engine.notifications.add_rule(RuleSpec(name="ops", target="webhook", url=webhook.url))
    engine.notifications.start()
    path = engine.catalog.sqlite_path
    assert path is not None
    files = [p for p in (path, path.with_name("catalog.db-wal")) if p.exists()]
    subprocess.run(["chattr", "+i", *map(str, files)], check=True, timeout=30)
    try:
        engine.bus.publish(failure(1))  # the catalog takes no write now
        wait_for(lambda: engine.notifications.unrecorded == 1)
        assert not webhook.received
    finally:
        subprocess.run(["chattr", "-i", *map(str, files)], check=True, timeout=30)
    engine.notifications.wake()
    [hit] = wait_for(lambda: webhook.received)
    assert hit.json["message"].startswith("failed: copy run 1")
