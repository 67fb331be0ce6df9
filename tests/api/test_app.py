"""The frame every route shares: roles and errors as problem details."""

from __future__ import annotations

from fastapi.testclient import TestClient

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
