"""In-process API clients over the test's real engine (real catalog, real files).

``api_as(role)`` gives a client whose every request is authenticated as a token of
that role, the way the daemon's authenticator would after checking the token;
``api`` is an admin. ``token_api`` is the app with the daemon's real token check.
``api_daemon`` (module scope) is a real ``sendense daemon`` serving the API on its
unix socket and on TCP (tests/api/test_serving.py); ``ApiDaemon`` starts more.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from engine.clock import FixedClock
from engine.config import ApiSettings, default_settings
from engine.daemon import find_daemon
from engine.runtime import Engine
from sendense_api.app import create_app
from sendense_api.auth import token_authenticator
from sendense_api.roles import Caller, Role
from tests.plugins.common import EngineFactory

ROOT = Path(__file__).resolve().parents[2]

ClientFor = Callable[[Role], TestClient]


@pytest.fixture
def engine(engine_factory: EngineFactory, clock: FixedClock, tmp_path: Path) -> Engine:
    """The test's engine (tests/plugins/common.py), whose tokens keep local
    repositories under the test's own directory (test_repositories.py tests that
    rule, [api] repository_roots)."""
    return engine_factory(
        clock=clock, owner="test-engine", api=ApiSettings(repository_roots=(tmp_path,))
    )


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


# -- the API with its real authenticator, in process ----------------------------------


@pytest.fixture
def token_api(engine: Engine) -> Iterator[TestClient]:
    """A client of the app as the daemon builds it (bearer tokens checked against the
    catalog), without a token; tests pass ``headers=bearer(secret)``."""
    app = create_app(engine, authenticate=token_authenticator(engine.api_tokens))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


# -- a real `sendense daemon` serving the API ------------------------------------------


class ApiDaemon:
    """A real ``sendense daemon`` (a child process with its own state directory and
    SQLite catalog) serving the API on its unix socket and on the TCP addresses of
    ``listen``. ``socket_client()`` talks to it over the socket (root), ``client()``
    over its first TCP address (a token's ``bearer`` headers per request);
    ``sendense(...)`` runs the CLI on the same state directory."""

    def __init__(self, root: Path, listen: str = "127.0.0.1:0") -> None:
        self.root = root
        self.state = root / "state"
        self.settings = default_settings(self.state)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SENDENSE_")}
        env.update(
            SENDENSE_STATE_DIR=str(self.state),
            XDG_CONFIG_HOME=str(root / "xdg-config"),
            PYTHONUNBUFFERED="1",
        )
        if listen:
            env["SENDENSE_API_LISTEN"] = listen
        self.env = env
        self.log = root / "daemon-stdout.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.addresses: list[str] = []
        self.fingerprint: str | None = None

    def start(self, *, timeout: float = 60.0) -> None:
        """Start the daemon and wait until it serves (its api.json names it)."""
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sendense_tui.cli", "daemon"],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            record = self.record()
            if record is not None and record.get("pid") == self.proc.pid:
                info = find_daemon(self.settings)
                if info is not None and info.ready:
                    break
            if self.proc.poll() is not None:
                raise AssertionError(f"the daemon ended at its start:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the daemon did not serve in time:\n{self.log.read_text()}")
            time.sleep(0.1)
        assert record is not None
        self.addresses = list(record["addresses"])
        self.fingerprint = record.get("tls_fingerprint")

    def record(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads((self.state / "api.json").read_text())
        except (OSError, ValueError):
            return None
        return data

    @property
    def socket_path(self) -> Path:
        return self.settings.api_socket

    def url(self, scheme: str) -> str:
        """The first TCP address served with ``scheme`` (http or https)."""
        return next(a for a in self.addresses if a.startswith(f"{scheme}://"))

    def socket_client(self, **kwargs: Any) -> httpx.Client:
        transport = httpx.HTTPTransport(uds=str(self.socket_path))
        return httpx.Client(transport=transport, base_url="http://sendense", **kwargs)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url("http"), **kwargs)

    def sendense(
        self, *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
    ) -> subprocess.CompletedProcess[str]:
        """``sendense ARGS`` on the daemon's state directory (``env``: more variables),
        run from ``cwd``."""
        return subprocess.run(
            [sys.executable, "-m", "sendense_tui.cli", *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            env={**self.env, **(env or {})},
        )

    def token(self, name: str, role: str) -> str:
        """A new token's secret, made with the CLI."""
        made = self.sendense("api", "token", "create", name, "--role", role, "--json")
        assert made.returncode == 0, made.stderr
        secret: str = json.loads(made.stdout)["secret"]
        return secret

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Signal the daemon and wait for it; its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.stop(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def api_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiDaemon]:
    """One real daemon per test module, on its unix socket, loopback TCP (plain) and
    every address (0.0.0.0: not loopback, so TLS with a self-signed pair)."""
    if os.geteuid() != 0:
        pytest.skip("the daemon needs root (its state directory, chattr)")
    daemon = ApiDaemon(tmp_path_factory.mktemp("api-daemon"), listen="127.0.0.1:0,0.0.0.0:0")
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.close()
