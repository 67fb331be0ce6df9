"""A stand-in for the daemon on a state directory's API socket: another release of
the daemon (none is installed here) or a broken one, answering as a test tells it.
Used where a real daemon cannot say what is tested (an older version, a malformed or
failed answer)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path


class UnixHTTPServer(HTTPServer):
    """An HTTP server on a unix socket; ``answer`` is what its handler answers."""

    address_family = socket.AF_UNIX
    answer: object = None

    def server_bind(self) -> None:
        self.socket.bind(self.server_address)
        self.server_name, self.server_port = "sendense", 0


@contextmanager
def stand_in(state: Path, handler: type[BaseHTTPRequestHandler]) -> Iterator[UnixHTTPServer]:
    """A server on ``state``'s API socket (``state`` made 0700), serving on a thread."""
    state.mkdir(mode=0o700, exist_ok=True)
    # a unix socket is addressed by its path (HTTPServer is typed for TCP addresses)
    server = UnixHTTPServer(str(state / "api.sock"), handler)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
