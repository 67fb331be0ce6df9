"""The daemon's token check and the audit of changing calls, in process over the
test's real engine and catalog (the socket and TCP are in test_serving.py)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient

from engine.clock import FixedClock
from engine.runtime import Engine
from sendense_api.app import create_app
from sendense_api.auth import token_authenticator, trust_socket
from tests.api.conftest import bearer


def _api_calls(engine: Engine) -> list[tuple[str | None, int, str]]:
    return [
        (e.actor, int(e.data["status"]), f"{e.data['method']} {e.data['path']}")
        for e in reversed(engine.audit.query(source="api"))
        if e.kind == "api.call"
    ]


def test_no_token_is_refused_with_a_bearer_challenge(token_api: TestClient) -> None:
    for headers in ({}, {"Authorization": "Basic cm9vdDpyb290"}, {"Authorization": "Bearer "}):
        response = token_api.get("/api/v1/version", headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"] == "this call needs an API token"
        assert "sendense api token create" in response.json()["hint"]


def test_a_token_is_the_caller_until_revoked_or_expired(
    token_api: TestClient, engine: Engine, clock: FixedClock
) -> None:
    _view, secret = engine.api_tokens.create("grafana", "read", expires_days=1)
    answer = token_api.get("/api/v1/version", headers=bearer(secret))
    assert answer.status_code == 200
    assert (answer.json()["caller"], answer.json()["role"]) == ("grafana", "read")

    clock.advance(timedelta(days=1))
    expired = token_api.get("/api/v1/version", headers=bearer(secret))
    assert expired.status_code == 401
    assert expired.json()["detail"].startswith("the API token 'grafana' expired at ")

    _view, other = engine.api_tokens.create("ci", "operate")
    engine.api_tokens.revoke("ci")
    revoked = token_api.get("/api/v1/version", headers=bearer(other))
    assert revoked.status_code == 401
    assert revoked.json()["detail"] == "the API token 'ci' was revoked"
    assert other not in revoked.text and secret not in expired.text

    forged = token_api.get("/api/v1/version", headers=bearer(other[:-4] + "AAAA"))
    assert forged.status_code == 401 and forged.json()["detail"] == "the API token is not valid"


def test_a_role_too_low_is_refused_and_audited(token_api: TestClient, engine: Engine) -> None:
    _view, secret = engine.api_tokens.create("viewer", "read")
    job = engine.jobs.submit("repository.import", "a job to cancel")
    refused = token_api.post(f"/api/v1/jobs/{job.id}/cancel", headers=bearer(secret))
    assert refused.status_code == 403
    assert refused.json()["detail"] == "the token 'viewer' has the role read; this needs operate"
    assert engine.jobs.get(job.id).state == "queued"
    anonymous = token_api.post(f"/api/v1/jobs/{job.id}/cancel")
    assert anonymous.status_code == 401
    assert _api_calls(engine) == [
        ("viewer", 403, f"POST /api/v1/jobs/{job.id}/cancel"),
        (None, 401, f"POST /api/v1/jobs/{job.id}/cancel"),
    ]
    # reads are not audited
    token_api.get("/api/v1/jobs", headers=bearer(secret))
    assert len(_api_calls(engine)) == 2


def test_a_change_is_audited_with_the_token_name(
    token_api: TestClient, engine: Engine, tmp_path: Path
) -> None:
    _view, secret = engine.api_tokens.create("ops", "admin")
    added = token_api.post(
        "/api/v1/repositories",
        json={"name": "r1", "path": str(tmp_path / "r1"), "create": True},
        headers=bearer(secret),
    )
    assert added.status_code == 201, added.text
    assert _api_calls(engine) == [("ops", 201, "POST /api/v1/repositories")]
    [event] = [e for e in engine.audit.query() if e.kind == "repository.added"]
    assert event.actor == "ops"


def test_requests_on_the_unix_socket_are_root(engine: Engine) -> None:
    """The socket server marks its requests; no header a client sends does that."""
    app = create_app(engine, authenticate=token_authenticator(engine.api_tokens))
    with TestClient(trust_socket(app)) as on_socket:
        answer = on_socket.get("/api/v1/version")
    assert answer.json() == {
        "version": answer.json()["version"],
        "caller": "root (unix socket)",
        "role": "admin",
    }
    with TestClient(app, raise_server_exceptions=False) as on_tcp:
        forged = on_tcp.get(
            "/api/v1/version", headers={"sendense.unix_socket": "true", "X-Forwarded-For": "unix"}
        )
    assert forged.status_code == 401
