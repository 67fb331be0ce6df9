"""The frame every route shares: roles and errors as problem details."""

from __future__ import annotations

from fastapi.testclient import TestClient

from engine import __version__
from engine.runtime import Engine
from sendense_api.roles import Role
from tests.api.conftest import ClientFor


def test_version_names_the_caller_and_role(api_as: ClientFor) -> None:
    response = api_as(Role.READ).get("/api/v1/version")
    assert response.status_code == 200
    assert response.json()["caller"] == "test-read"
    assert response.json()["role"] == "read"


def test_an_unknown_path_is_a_problem_document(api: TestClient) -> None:
    response = api.get("/api/v1/no-such-thing")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 404
    assert response.json()["title"] == "Not Found"


def test_roles_include_the_ones_below() -> None:
    assert Role.ADMIN.allows(Role.OPERATE)
    assert Role.OPERATE.allows(Role.READ)
    assert not Role.READ.allows(Role.OPERATE)
    assert not Role.OPERATE.allows(Role.ADMIN)


def test_every_answer_names_the_daemons_version_and_catalog(
    api: TestClient, engine: Engine
) -> None:
    """What a CLI checks before it prints a page the daemon answered instead of
    reading the catalog itself (sendense_tui.daemon_client): a page, a problem and an
    answer to a caller without a role alike."""
    for path in ("/api/v1/jobs?limit=1", "/api/v1/no-such-thing", "/metrics"):
        response = api.get(path)
        assert response.headers["x-sendense-version"] == __version__, path
        assert response.headers["x-sendense-catalog"] == engine.settings.catalog_identity, path


def test_a_request_meant_for_another_catalog_or_version_is_refused_untouched(
    api: TestClient, engine: Engine
) -> None:
    """A CLI hands a job to the daemon with its own version and catalog in the request
    (sendense_tui.daemon_client.submit_job): a daemon of another refuses it before any
    route runs, so nothing is queued in a catalog the command did not mean."""
    mine = {
        "x-sendense-version": __version__,
        "x-sendense-catalog": engine.settings.catalog_identity,
    }
    before = api.get("/api/v1/jobs?limit=1000").json()
    for header, value in (("x-sendense-catalog", "0" * 16), ("x-sendense-version", "0.0.1")):
        refused = api.post("/api/v1/verification", json={}, headers={**mine, header: value})
        assert refused.status_code == 412, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.headers["x-sendense-catalog"] == engine.settings.catalog_identity
    assert api.get("/api/v1/jobs?limit=1000").json() == before
    # its own version and catalog: the route runs
    assert api.post("/api/v1/verification", json={}, headers=mine).status_code == 202
    assert len(api.get("/api/v1/jobs?limit=1000").json()) == len(before) + 1
