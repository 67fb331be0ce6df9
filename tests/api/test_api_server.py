"""The daemon's API server in process, on the test's engine: a configured certificate
serves loopback over TLS too; a socket path that is something else is refused."""

from __future__ import annotations

import ssl
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from engine.config import ApiSettings
from engine.errors import SendenseError
from engine.runtime import Engine
from sendense_api.serve import ApiServer
from sendense_api.tls import fingerprint, self_signed_pair
from tests.api.conftest import bearer


def test_a_configured_certificate_serves_every_tcp_address(engine: Engine, tmp_path: Path) -> None:
    cert, key = self_signed_pair(tmp_path / "pki", ["127.0.0.1"])
    settings = replace(
        engine.settings,
        api=ApiSettings(listen=("127.0.0.1:0",), tls_cert=cert, tls_key=key),
    )
    server = ApiServer(engine, settings)
    addresses = server.start()
    try:
        assert addresses[0] == f"unix:{settings.api_socket}"
        assert addresses[1].startswith("https://127.0.0.1:")
        assert server.fingerprint == fingerprint(cert)
        _view, secret = engine.api_tokens.create("tls", "read")
        context = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(verify=context) as client:
            answer = client.get(f"{addresses[1]}/api/v1/version", headers=bearer(secret))
        assert answer.status_code == 200 and answer.json()["caller"] == "tls"
    finally:
        server.stop()
    assert not settings.api_socket.exists()
    assert not (settings.state_dir / "api.json").exists()


def test_a_socket_path_that_is_not_a_socket_is_left_alone(engine: Engine, tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    settings = replace(engine.settings, api=ApiSettings(socket=precious))
    with pytest.raises(SendenseError) as refused:
        ApiServer(engine, settings).start()
    assert refused.value.message == f"the API socket path {precious} exists and is not a socket"
    assert precious.read_text() == "keep me"
    link = tmp_path / "link.sock"
    link.symlink_to(precious)
    with pytest.raises(SendenseError, match="is not a socket"):
        ApiServer(engine, replace(engine.settings, api=ApiSettings(socket=link))).start()
    assert link.is_symlink() and precious.read_text() == "keep me"
