"""In-process API clients over the test's real engine (real catalog, real files).

``api_as(role)`` gives a client whose every request is authenticated as a token of
that role, the way the daemon's authenticator would after checking the token;
``api`` is an admin. The token check itself, the unix socket and TCP are tested
against a real ``sendense daemon`` in tests/api/test_serving.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from engine.runtime import Engine
from sendense_api.app import create_app
from sendense_api.roles import Caller, Role

ClientFor = Callable[[Role], TestClient]


@pytest.fixture
def api_as(engine: Engine) -> Iterator[ClientFor]:
    clients: list[TestClient] = []

    def client_for(role: Role) -> TestClient:
        caller = Caller(name=f"test-{role.value}", role=role)
        app = create_app(engine, authenticate=lambda _request: caller)
        client = TestClient(app, raise_server_exceptions=False)
        clients.append(client)
        return client

    yield client_for
    for client in clients:
        client.close()


@pytest.fixture
def api(api_as: ClientFor) -> TestClient:
    return api_as(Role.ADMIN)
