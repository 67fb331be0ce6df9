"""``GET /metrics`` at the root: the exposition of the test's real engine, behind a token."""

from __future__ import annotations

from pathlib import Path

from fastapi import HTTPException, Request
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from engine.runtime import Engine
from engine.services.metrics import CONTENT_TYPE
from sendense_api.app import create_app
from sendense_api.roles import Caller, Role
from tests.api.conftest import ClientFor
from tests.engine.copy_worker import add_repo, make_chain


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_reader_scrapes_the_engines_state_at_the_root(
    engine: Engine, api_as: ClientFor, tmp_path: Path
) -> None:
    repo = add_repo(engine, "main", tmp_path / "main")
    made = make_chain(engine, repo, size_mb=1, incrementals=1)
    response = api_as(Role.READ).get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE
    found = samples(response.text)
    assert found[("sendense_up", ())] == 1
    disk = (("disk", "sda"), ("repository", "main"), ("vm", "web01"))
    assert found[("sendense_disk_chain_length", disk)] == 2
    newest = engine.chain_store.get_backup(made.backup_ids[-1])
    assert found[("sendense_disk_last_backup_timestamp_seconds", disk)] == (
        newest.point_time.timestamp()
    )
    # at the root only, not under the API prefix
    assert api_as(Role.READ).get("/api/v1/metrics").status_code == 404


def test_a_request_without_a_token_gets_a_problem_document_and_no_metrics(
    engine: Engine,
) -> None:
    def no_token(_request: Request) -> Caller:
        raise HTTPException(
            status_code=401, detail="an API token is needed", headers={"WWW-Authenticate": "Bearer"}
        )

    with TestClient(create_app(engine, authenticate=no_token)) as client:
        response = client.get("/metrics")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == "Bearer"
    assert "sendense_" not in response.text


def test_metrics_are_a_get_only_resource(api: TestClient) -> None:
    assert api.post("/metrics").status_code == 405
    assert api.delete("/metrics").status_code == 405
