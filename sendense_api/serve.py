"""The HTTP API inside ``sendense daemon``: uvicorn on a thread of the daemon.

Sockets are bound here, before uvicorn sees them, so every refusal is one sentence
at the daemon's start (an address in use, a socket path that is something else)
and so the unix socket is never world-accessible for an instant (uvicorn would
chmod it 0666): it is bound under a 0177 umask and is 0600, root's.

- ``STATE_DIR/api.sock`` (``[api] socket``): always; whoever connects is root
  already, so its requests are trusted as root (sendense_api.auth).
- ``[api] listen``: TCP addresses, tokens required. An address that is not
  loopback (as bound, not as written) is served over TLS only, with the
  configured pair or a self-signed one (sendense_api.tls).

A socket left by a daemon that was killed is replaced (the daemon lock says no
other daemon runs here). ``api.json`` in the state directory (0600) records
where this daemon listens and the certificate's fingerprint, for
``sendense api status`` and ``sendense daemon --status``; both files are
removed when the daemon stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import socket
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.config import Settings, parse_listen
from engine.errors import SendenseError
from engine.private import make_private_dir, write_private

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

    from engine.runtime import Engine

log = logging.getLogger(__name__)

RECORD_FILE = "api.json"
#: how long start() waits for uvicorn to accept connections
START_TIMEOUT = 30.0
#: how long a stop waits for requests in flight before cutting them
GRACEFUL_SECONDS = 5


@dataclass
class Listener:
    """One bound socket and how it is served."""

    sock: socket.socket
    #: "unix:/var/lib/sendense/api.sock", "http://127.0.0.1:8041", "https://…"
    address: str
    #: requests on it are root's (the unix socket)
    trusted: bool = False
    tls: bool = False


def bind_unix(path: Path) -> socket.socket:
    """A listening unix socket at ``path``, 0600, replacing a stale one."""
    if not path.parent.exists():
        make_private_dir(path.parent)
    with contextlib.suppress(FileNotFoundError):
        mode = path.lstat().st_mode
        if not stat.S_ISSOCK(mode):
            raise SendenseError(
                f"the API socket path {path} exists and is not a socket",
                hint="move it away, or set [api] socket to another path",
            )
        # the daemon lock is ours: a socket here was left by a daemon that was killed
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise SendenseError(
            f"the API cannot listen on {path}: {exc.strerror or exc}",
            hint="set [api] socket to a path in a writable directory",
        ) from None
    finally:
        os.umask(previous)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


def bind_tcp(text: str) -> socket.socket:
    host, port = parse_listen(text)
    try:
        family, kind, proto, _name, where = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[
            0
        ]
    except socket.gaierror as exc:
        raise SendenseError(
            f"the API cannot listen on {text}: {host} does not resolve ({exc.strerror})",
            hint="fix [api] listen",
        ) from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(where)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise SendenseError(
            f"the API cannot listen on {text}: {exc.strerror or exc}",
            hint="another program may use that port; fix [api] listen",
        ) from None
    return sock


def is_loopback(sock: socket.socket) -> bool:
    """Whether a bound TCP socket listens on loopback only (as bound)."""
    address = ipaddress.ip_address(sock.getsockname()[0])
    return address.is_loopback


def _url(sock: socket.socket, tls: bool) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


class ApiServer:
    """The API of one engine on its unix socket and TCP addresses."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.listeners: list[Listener] = []
        self.fingerprint: str | None = None
        self._servers: list[uvicorn.Server] = []
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._app: FastAPI | None = None
        #: certificate and key of the TLS listeners (None, None without TLS)
        self._tls: tuple[Path | None, Path | None] = (None, None)

    @property
    def addresses(self) -> list[str]:
        return [listener.address for listener in self.listeners]

    def start(self) -> list[str]:
        """Bind, start serving and return the addresses; SendenseError when it cannot."""
        try:
            self._bind()
            self._run()
        except BaseException:
            self.stop()
            raise
        self._write_record()
        return self.addresses

    def _bind(self) -> None:
        socket_path = self.settings.api_socket
        self.listeners.append(Listener(bind_unix(socket_path), f"unix:{socket_path}", trusted=True))
        api = self.settings.api
        tcp = [(text, bind_tcp(text)) for text in api.listen]
        for _text, sock in tcp:
            self.listeners.append(Listener(sock, ""))
        needs_tls = api.tls_cert is not None or any(not is_loopback(s) for _t, s in tcp)
        cert = key = None
        if tcp and needs_tls:
            from sendense_api.tls import fingerprint, self_signed_pair

            if api.tls_cert is not None and api.tls_key is not None:
                cert, key = api.tls_cert, api.tls_key
            else:
                hosts = [parse_listen(text)[0] for text, _sock in tcp]
                cert, key = self_signed_pair(self.settings.state_dir, hosts)
            self.fingerprint = fingerprint(cert)
        for listener in self.listeners[1:]:
            # a configured certificate serves every TCP address; a self-signed one
            # only those that leave the machine
            listener.tls = cert is not None and (
                api.tls_cert is not None or not is_loopback(listener.sock)
            )
            listener.address = _url(listener.sock, listener.tls)
        self._tls = (cert, key)

    def _run(self) -> None:
        import uvicorn

        from sendense_api.app import create_app
        from sendense_api.auth import token_authenticator, trust_socket

        self._app = create_app(
            self.engine, authenticate=token_authenticator(self.engine.api_tokens)
        )
        cert, key = self._tls
        for listener in self.listeners:
            app: Any = trust_socket(self._app) if listener.trusted else self._app
            config = uvicorn.Config(
                app,
                log_config=None,
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=GRACEFUL_SECONDS,
                ssl_certfile=str(cert) if listener.tls else None,
                ssl_keyfile=str(key) if listener.tls else None,
            )
            self._servers.append(uvicorn.Server(config))
        self._thread = threading.Thread(target=self._loop, name="sendense-api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not all(server.started for server in self._servers):
            if self._failure is not None or not self._thread.is_alive():
                raise SendenseError(
                    f"the HTTP API did not start: {self._failure or 'its server ended'}",
                    hint="the daemon's log says more",
                )
            if time.monotonic() > deadline:
                raise SendenseError(
                    f"the HTTP API did not start within {START_TIMEOUT:g} s",
                    hint="the daemon's log says more",
                )
            time.sleep(0.02)
        for address in self.addresses:
            log.info("HTTP API on %s", address)
        if self.fingerprint:
            log.info("HTTP API TLS certificate SHA-256 fingerprint %s", self.fingerprint)

    def _loop(self) -> None:
        async def serve_all() -> None:
            await asyncio.gather(
                *(
                    server.serve(sockets=[listener.sock])
                    for server, listener in zip(self._servers, self.listeners, strict=True)
                )
            )

        try:
            asyncio.run(serve_all())
        except BaseException as exc:  # SystemExit from uvicorn's startup included
            self._failure = exc
            log.exception("the HTTP API stopped")

    def stop(self) -> None:
        """Stop serving (streams end, requests in flight get GRACEFUL_SECONDS) and
        remove the socket file and the record."""
        if self._app is not None:
            self._app.state.stopping.set()
        for server in self._servers:
            server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=GRACEFUL_SECONDS + 10)
            self._thread = None
        for listener in self.listeners:
            with contextlib.suppress(OSError):
                listener.sock.close()
        if self.listeners:
            with contextlib.suppress(FileNotFoundError):
                self.settings.api_socket.unlink()
        record = _read_record(self.settings)
        if record is not None and record.get("pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                (self.settings.state_dir / RECORD_FILE).unlink()
        self.listeners = []
        self._servers = []

    def _write_record(self) -> None:
        record = {
            "pid": os.getpid(),
            "addresses": self.addresses,
            "tls_fingerprint": self.fingerprint,
            # what this daemon lets a token name as a backup's source and where it
            # lets a token keep a local repository (it read its settings at its
            # start; the config file may have changed since)
            "token_source_roots": [str(p) for p in self.settings.api.source_roots],
            "token_repository_roots": [str(p) for p in self.settings.api.repository_roots],
        }
        temporary = self.settings.state_dir / f".{RECORD_FILE}.{os.getpid()}"
        write_private(temporary, json.dumps(record) + "\n")
        os.replace(temporary, self.settings.state_dir / RECORD_FILE)


def _read_record(settings: Settings) -> dict[str, Any] | None:
    try:
        data = json.loads((settings.state_dir / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def listening(settings: Settings) -> dict[str, Any]:
    """Where the daemon of ``settings.state_dir`` serves the API (for ``api status``)."""
    from engine.daemon import find_daemon

    info = find_daemon(settings)
    record = _read_record(settings)
    if info is None or record is None or record.get("pid") != info.pid:
        return {
            "running": False,
            "pid": None,
            "addresses": [],
            "tls_fingerprint": None,
            "token_source_roots": [],
            "token_repository_roots": [],
        }
    return {
        "running": True,
        "pid": info.pid,
        "addresses": [str(a) for a in record.get("addresses", [])],
        "tls_fingerprint": record.get("tls_fingerprint"),
        "token_source_roots": [str(p) for p in record.get("token_source_roots", [])],
        "token_repository_roots": [str(p) for p in record.get("token_repository_roots", [])],
    }
