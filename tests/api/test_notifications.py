"""Notification rules over HTTP: made, listed without their secrets, tested against a
real webhook on loopback, switched, removed; and refused for bad input and roles."""

from __future__ import annotations

import hashlib
import hmac

from fastapi.testclient import TestClient

from engine.runtime import Engine
from sendense_api.roles import Role
from tests.api.conftest import ClientFor
from tests.engine import notifyservers
from tests.engine.notifyservers import WebhookServer, closed_port

webhook = notifyservers.webhook

KEY = "a-key-nobody-else-knows"


def _rule(url: str, **extra: object) -> dict[str, object]:
    return {"name": "ops", "target": "webhook", "url": url, "hmac_secret": KEY, **extra}


def test_a_rule_is_made_tested_switched_and_removed_and_its_secrets_never_come_back(
    api: TestClient, engine: Engine, webhook: WebhookServer
) -> None:
    url = webhook.url + "/T0/token-in-the-path"
    made = api.post("/api/v1/notification-rules", json=_rule(url, kinds=["job.failed"]))
    assert made.status_code == 201, made.text
    assert made.json()["secret"] == "set"

    listed = api.get("/api/v1/notification-rules")
    assert [r["name"] for r in listed.json()] == ["ops"]
    for text in (made.text, listed.text, api.get("/api/v1/notification-rules/ops").text):
        assert KEY not in text and "token-in-the-path" not in text

    tested = api.post("/api/v1/notification-rules/ops/test")
    assert tested.status_code == 200 and tested.json()["ok"] is True, tested.text
    [hit] = webhook.received
    expected = hmac.new(KEY.encode(), hit.body, hashlib.sha256).hexdigest()
    assert hit.headers["X-Sendense-Signature"] == f"sha256={expected}"
    assert hit.path == "/hook/T0/token-in-the-path"

    assert api.post("/api/v1/notification-rules/ops/disable").json()["enabled"] is False
    assert engine.notifications.get_rule("ops").enabled is False
    assert api.post("/api/v1/notification-rules/ops/enable").json()["enabled"] is True
    deliveries = api.get("/api/v1/notification-deliveries", params={"rule": "ops"})
    assert deliveries.status_code == 200 and len(deliveries.json()) == 1

    assert api.delete("/api/v1/notification-rules/ops").json() == {"removed": "ops"}
    assert engine.notifications.list_rules() == []
    gone = api.get("/api/v1/notification-rules/ops")
    assert gone.status_code == 404
    assert gone.headers["content-type"] == "application/problem+json"


def test_a_test_to_a_dead_target_answers_its_reason(api: TestClient) -> None:
    dead = f"http://127.0.0.1:{closed_port()}/hook"
    assert api.post("/api/v1/notification-rules", json=_rule(dead)).status_code == 201
    tested = api.post("/api/v1/notification-rules/ops/test").json()
    assert tested["ok"] is False
    assert "refused" in tested["sentence"].lower() or "connect" in tested["sentence"].lower()


def test_bad_rules_and_low_roles_are_refused_and_nothing_is_saved(
    api_as: ClientFor, engine: Engine
) -> None:
    admin = api_as(Role.ADMIN)
    not_http = admin.post("/api/v1/notification-rules", json=_rule("file:///etc/passwd"))
    assert not_http.status_code == 422 and not_http.json()["detail"]
    unknown_field = admin.post(
        "/api/v1/notification-rules", json=_rule("http://127.0.0.1:9/x", colour="red")
    )
    assert unknown_field.status_code == 422
    bad_digest = admin.post(
        "/api/v1/notification-rules", json=_rule("http://127.0.0.1:9/x", digest_at="25h")
    )
    assert bad_digest.status_code == 422
    operator = api_as(Role.OPERATE)
    refused = operator.post("/api/v1/notification-rules", json=_rule("http://127.0.0.1:9/x"))
    assert refused.status_code == 403
    assert engine.notifications.list_rules() == []
    reader = api_as(Role.READ)
    assert reader.post("/api/v1/notification-rules/ops/test").status_code == 403
    assert reader.get("/api/v1/notification-rules").json() == []
