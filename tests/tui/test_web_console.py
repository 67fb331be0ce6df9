"""The browser console: the real ``sendense console --web`` in a subprocess on a free
port, its own state directory, reached with aiohttp's client.

What a browser meets: without an admin token nothing answers (page, files,
websocket, downloads); with one the page loads and the websocket runs the real
console (its first screen arrives); a revoked token and another site's page are
refused; off loopback it listens only with TLS. At the end the server is stopped
and its port is closed, with no console process left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from engine.config import default_settings, sqlite_url
from engine.runtime import Engine
from sendense_api.tls import self_signed_pair
from sendense_tui.web import COOKIE
from tests.engine.test_exports import _free_port_on, _non_loopback_address
from tests.plugins.netservers import free_port_number


def _console_processes(state: Path) -> list[int]:
    """Pids of console processes started on ``state`` (the server's children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if b"sendense_tui.cli" in argv and str(state).encode() in argv and b"--web" not in argv:
                found.append(int(entry.name))
    return found


def _port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
        return True
    return False


@dataclass
class WebConsole:
    url: str
    state: Path
    admin: str
    reader: str
    process: subprocess.Popen[str]


def _start(state: Path, host: str, port: int, *extra: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sendense_tui.cli",
            "console",
            "--web",
            "--host",
            host,
            "--port",
            str(port),
            "--state-dir",
            str(state),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SENDENSE_CONFIG": ""},
    )
    deadline = time.monotonic() + 60
    while not _port_open(host, port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            out, err = process.communicate(timeout=30)
            pytest.fail(f"the web console did not start: {err or out}")
        time.sleep(0.1)
    return process


def _stop(process: subprocess.Popen[str], host: str, port: int, state: Path) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)
        pytest.fail("the web console did not stop on SIGTERM")
    assert process.returncode == 0, process.stderr.read() if process.stderr else ""
    assert not _port_open(host, port), "the port is still open after the server stopped"
    deadline = time.monotonic() + 30
    while _console_processes(state) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _console_processes(state) == [], "a browser's console outlived the server"


def _tokens(state: Path) -> tuple[str, str]:
    with Engine(default_settings(state)) as engine:
        _, admin = engine.api_tokens.create("browser", "admin")
        _, reader = engine.api_tokens.create("watcher", "read")
    return admin, reader


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebConsole]:
    state = tmp_path_factory.mktemp("web") / "state"
    admin, reader = _tokens(state)
    port = free_port_number()
    # the catalog named explicitly too: each browser's console must get it
    process = _start(state, "127.0.0.1", port, "--db-url", sqlite_url(state / "catalog.db"))
    try:
        yield WebConsole(f"http://127.0.0.1:{port}", state, admin, reader, process)
    finally:
        _stop(process, "127.0.0.1", port, state)


def _browser(cookies: dict[str, str] | None = None) -> aiohttp.ClientSession:
    # a browser keeps cookies of an IP address too (aiohttp's jar does only when unsafe)
    return aiohttp.ClientSession(cookies=cookies, cookie_jar=aiohttp.CookieJar(unsafe=True))


async def _first_screen(
    session: aiohttp.ClientSession, url: str, state: Path
) -> tuple[bytes, list[tuple[list[bytes], list[bytes]]]]:
    """What the console sends through the websocket until its Dashboard is drawn, and
    the argument list and environment of each console process on ``state`` while the
    websocket is open."""
    received = b""
    async with session.ws_connect(f"{url}/ws?width=80&height=24") as ws:
        await ws.send_json(["resize", {"width": 80, "height": 24}])
        async with asyncio.timeout(60):
            async for message in ws:
                if message.type == aiohttp.WSMsgType.BINARY:
                    received += message.data
                if b"Dash" in received:
                    break
        running = [
            (
                Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"),
                Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"),
            )
            for pid in _console_processes(state)
        ]
    return received, running


def test_an_admin_token_opens_the_page_and_the_real_console_runs_in_its_websocket(
    web: WebConsole,
) -> None:
    async def visit() -> None:
        async with _browser() as browser:
            # first visit: the token moves from the address into an HttpOnly cookie
            async with browser.get(f"{web.url}/?token={web.admin}", allow_redirects=False) as r:
                assert r.status == 303
                assert r.headers["Location"] == "/"
                cookie = r.headers["Set-Cookie"]
                assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
                assert "Secure" not in cookie  # plain http on loopback
            async with browser.get(f"{web.url}/") as page:
                assert page.status == 200
                body = await page.text()
                port = web.url.rsplit(":", 1)[1]
                assert f'data-session-websocket-url="ws://127.0.0.1:{port}/ws"' in body
                assert web.admin not in body  # the secret is never in a page
            async with browser.get(f"{web.url}/static/js/textual.js") as script:
                assert script.status == 200
            screen, consoles = await _first_screen(browser, web.url, web.state)
            assert b"Dash" in screen
            # one console, on the server's state directory and catalog; the catalog
            # URL in its environment, not in its argument list
            assert len(consoles) == 1
            argv, environ = consoles[0]
            assert argv[argv.index(b"--state-dir") + 1] == str(web.state).encode()
            assert not any(b"sqlite" in word for word in argv)
            wanted = f"SENDENSE_DB_URL={sqlite_url(web.state / 'catalog.db')}".encode()
            assert wanted in environ
            assert b"TEXTUAL_DRIVER=textual.drivers.web_driver:WebDriver" in environ

    asyncio.run(visit())


@pytest.mark.parametrize("path", ["/", "/static/js/textual.js", "/ws", "/download/abc"])
def test_without_a_token_nothing_is_served(web: WebConsole, path: str) -> None:
    async def visit() -> None:
        async with _browser() as browser:
            async with browser.get(f"{web.url}{path}", allow_redirects=False) as r:
                assert r.status == 401
                assert "this console needs an API token" in await r.text()
            # a made-up token (right shape, wrong secret) and garbage alike
            for token in ("sendense_0123456789ab_" + "A" * 43, "x' or 1=1 --"):
                async with browser.get(
                    f"{web.url}{path}", params={"token": token}, allow_redirects=False
                ) as r:
                    assert r.status == 401
                    assert "Set-Cookie" not in r.headers
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await browser.ws_connect(f"{web.url}/ws")
            assert refused.value.status == 401

    asyncio.run(visit())


def test_a_read_token_and_another_sites_page_are_refused(web: WebConsole) -> None:
    async def visit() -> None:
        async with (
            _browser() as browser,
            browser.get(f"{web.url}/", params={"token": web.reader}) as r,
        ):
            assert r.status == 403
            assert "needs a token with the admin role, not read" in await r.text()
        # a page of another site opening the websocket with the browser's cookie
        # (a console of an earlier test may still be ending: only a new one counts)
        before = set(_console_processes(web.state))
        async with _browser({COOKIE: web.admin}) as browser:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await browser.ws_connect(f"{web.url}/ws", headers={"Origin": "http://evil.example"})
            assert refused.value.status == 403
            assert set(_console_processes(web.state)) <= before

    asyncio.run(visit())


def test_a_revoked_token_is_refused_even_in_a_cookie_it_already_set(web: WebConsole) -> None:
    with Engine(default_settings(web.state)) as engine:
        _, secret = engine.api_tokens.create("laptop", "admin")

    async def visit(expected: int) -> None:
        async with _browser({COOKIE: secret}) as browser:
            async with browser.get(f"{web.url}/") as r:
                assert r.status == expected
                if expected == 401:
                    assert "was revoked" in await r.text()
                    assert COOKIE in r.headers.get("Set-Cookie", "")  # the cookie is dropped
            if expected == 401:
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await browser.ws_connect(f"{web.url}/ws")
                assert refused.value.status == 401
        async with (
            _browser() as browser,
            browser.get(f"{web.url}/", params={"token": secret}, allow_redirects=False) as r,
        ):
            assert r.status == (303 if expected == 200 else 401)

    asyncio.run(visit(200))
    with Engine(default_settings(web.state)) as engine:
        engine.api_tokens.revoke("laptop")
    asyncio.run(visit(401))


def _sendense(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sendense_tui.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SENDENSE_CONFIG": ""},
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "console.example.com"])
def test_off_loopback_without_tls_is_refused_with_one_sentence(tmp_path: Path, host: str) -> None:
    port = free_port_number()
    done = _sendense(
        "console", "--web", "--host", host, "--port", str(port), "--state-dir", str(tmp_path / "s")
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    first = done.stderr.splitlines()[0]
    assert first == f"sendense: the web console listens on {host} (off loopback) only with TLS"
    assert not _port_open("127.0.0.1", port)
    assert not (tmp_path / "s").exists()  # refused before anything was created


def test_a_key_that_does_not_match_its_certificate_is_refused(tmp_path: Path) -> None:
    cert, _ = _self_signed(tmp_path / "a", "127.0.0.1")
    _, other_key = _self_signed(tmp_path / "b", "127.0.0.1")
    done = _sendense(
        "console", "--web", "--tls-cert", str(cert), "--tls-key", str(other_key),
        "--state-dir", str(tmp_path / "s"),
    )  # fmt: skip
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "cannot be used" in done.stderr.splitlines()[0]


def _self_signed(where: Path, address: str) -> tuple[Path, Path]:
    """The pair the daemon makes for itself (sendense_api.tls), here for ``address``."""
    return self_signed_pair(where, [address])


def test_off_loopback_with_tls_serves_over_https_behind_the_token(tmp_path: Path) -> None:
    address = _non_loopback_address()
    cert, key = _self_signed(tmp_path / "tls", address)
    state = tmp_path / "state"
    admin, _ = _tokens(state)
    port = _free_port_on(address)
    process = _start(state, address, port, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        import ssl

        trust = ssl.create_default_context(cafile=str(cert))

        async def visit() -> None:
            async with _browser() as browser:
                url = f"https://{address}:{port}"
                async with browser.get(f"{url}/", ssl=trust) as r:
                    assert r.status == 401
                async with browser.get(
                    f"{url}/", params={"token": admin}, ssl=trust, allow_redirects=False
                ) as r:
                    assert r.status == 303
                    assert "Secure" in r.headers["Set-Cookie"]
                async with browser.get(f"{url}/", ssl=trust) as r:
                    assert r.status == 200
                    assert f"wss://{address}:{port}/ws" in await r.text()
                # plain http on the TLS port gets no page
                with pytest.raises(aiohttp.ClientError):
                    async with browser.get(f"http://{address}:{port}/") as r:
                        await r.read()

        asyncio.run(visit())
    finally:
        _stop(process, address, port, state)


@pytest.mark.parametrize("driver", [None, "textual.drivers.linux_driver:LinuxDriver"])
def test_the_terminal_console_still_refuses_pipes(tmp_path: Path, driver: str | None) -> None:
    # only the web driver speaks its protocol on pipes: any other run on a pipe is refused
    env = {**os.environ, "SENDENSE_CONFIG": ""}
    env.pop("TEXTUAL_DRIVER", None)
    if driver is not None:
        env["TEXTUAL_DRIVER"] = driver
    done = subprocess.run(
        [sys.executable, "-m", "sendense_tui.cli", "console", "--state-dir", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        env=env,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == (
        "sendense: the console needs a terminal (stdin and stdout are not a TTY)"
    )
