"""One HTTP/1.1 request on a unix socket, as the CLI asks the running daemon
(sendense_tui.daemon_client): a page of a listing, a job to queue, a job's stream.

Why not ``http.client``: it imports ``email`` to parse headers and ``ssl`` (libssl
and libcrypto), about 55 ms of a command's start with a cold page cache, on a
command whose whole point on the daemon's road is to start fast (a 1 GiB restore
takes qemu-img under a second). ``h11``, which the daemon's server uses, costs
about as much to import.

What it speaks is what the daemon (uvicorn) answers, and no more: one request per
connection (``Connection: close``), an answer whose body has a Content-Length, is
chunked (a job's event stream) or ends when the connection closes (HTTP/1.0).
No TLS, proxies, redirects, keep-alive or 1xx. Anything else, a line too long or
too many headers, and a body cut short, is ``BadAnswer``.
"""

from __future__ import annotations

import io
import socket
from pathlib import Path
from typing import BinaryIO

#: the longest status, header or chunk-size line read
LINE_MAX = 64 * 1024
#: the most header lines an answer may have
HEADERS_MAX = 100
#: the largest chunk read (uvicorn sends a chunk per write: an event, a page)
CHUNK_MAX = 1 << 31


class BadAnswer(Exception):
    """What came back is not an HTTP answer this client reads, or stops short."""


def _line(source: BinaryIO) -> bytes:
    line = source.readline(LINE_MAX + 1)
    if len(line) > LINE_MAX:
        raise BadAnswer("a line of the answer is too long")
    if not line.endswith(b"\n"):
        raise BadAnswer("the answer stopped in the middle of a line")
    return line.rstrip(b"\r\n")


class _Body(io.RawIOBase):
    """A body read from the connection's buffered file, ``_left`` bytes at a time."""

    def __init__(self, source: BinaryIO, left: int) -> None:
        self._source = source
        self._left = left

    def readable(self) -> bool:
        return True

    def _take(self, buffer: memoryview, cut_short: str) -> int:
        data = self._source.read(min(len(buffer), self._left))
        if not data:
            raise BadAnswer(cut_short)
        buffer[: len(data)] = data
        self._left -= len(data)
        return len(data)


class _Exactly(_Body):
    """A body of Content-Length bytes; fewer before the connection closes is an error."""

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._left == 0:
            return 0
        return self._take(buffer, "the answer's body stopped short of its length")


class _Chunked(_Body):
    """A chunked body (RFC 9112 7.1), its chunks joined; the trailer is skipped."""

    def __init__(self, source: BinaryIO) -> None:
        super().__init__(source, 0)
        self._ended = False

    def _next_chunk(self) -> None:
        size = _line(self._source).split(b";", 1)[0].strip()
        if not size or len(size) > 8 or size.strip(b"0123456789abcdefABCDEF"):
            raise BadAnswer("a chunk of the answer has no size")
        self._left = int(size, 16)
        if self._left > CHUNK_MAX:
            raise BadAnswer("a chunk of the answer is too large")
        if self._left == 0:
            while _line(self._source):  # the trailer, up to its empty line
                pass
            self._ended = True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._ended:
            return 0
        if self._left == 0:
            self._next_chunk()
            if self._ended:
                return 0
        taken = self._take(buffer, "the answer stopped in the middle of a chunk")
        if self._left == 0 and _line(self._source):
            raise BadAnswer("a chunk of the answer is longer than it said")
        return taken


class Answer:
    """The status, headers and body of an answer; the body is read as it comes."""

    def __init__(self, status: int, headers: dict[str, str], body: BinaryIO) -> None:
        self.status = status
        self._headers = headers
        self._body = body

    def header(self, name: str) -> str | None:
        """A header's value (repeated ones joined by ", "), or None."""
        return self._headers.get(name.lower())

    def read(self, limit: int) -> bytes:
        """The body, up to ``limit`` bytes."""
        return self._body.read(limit)

    def readline(self, limit: int) -> bytes:
        """The body's next line, up to ``limit`` bytes; b"" at its end."""
        return self._body.readline(limit)


def _answer(source: BinaryIO) -> Answer:
    version, _, rest = _line(source).partition(b" ")
    code = rest[:3]
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise BadAnswer("the answer has no HTTP status line")
    headers: dict[str, str] = {}
    for _ in range(HEADERS_MAX + 1):
        line = _line(source)
        if not line:
            break
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or not name or name != name.strip():
            raise BadAnswer("a header of the answer is malformed")
        key, value = name.lower(), value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    else:
        raise BadAnswer("the answer has too many headers")
    body: BinaryIO
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = io.BufferedReader(_Chunked(source))  # type: ignore[arg-type]
    elif "content-length" in headers:
        length = headers["content-length"]
        if not length.isdigit() or len(length) > 18:
            raise BadAnswer("the answer's Content-Length is not a number")
        body = io.BufferedReader(_Exactly(source, int(length)))  # type: ignore[arg-type]
    else:
        body = source  # HTTP/1.0: the body ends with the connection
    return Answer(int(code), headers, body)


class UnixHTTP:
    """A connection to ``where`` for one request: ``connect()`` (or let ``request``
    connect), ``request()``, read the answer, ``close()``. Timeouts are
    ``TimeoutError`` (an OSError), as every socket error is."""

    def __init__(self, where: Path, *, connect_seconds: float, answer_seconds: float) -> None:
        self._where = where
        self._connect_seconds = connect_seconds
        self._answer_seconds = answer_seconds
        self._sock: socket.socket | None = None
        self._file: BinaryIO | None = None

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self._connect_seconds)
            sock.connect(str(self._where))
            sock.settimeout(self._answer_seconds)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    def request(
        self, method: str, target: str, *, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> Answer:
        """Send the request and read the answer's status line and headers."""
        fields = {"Host": "sendense", "Connection": "close", **(headers or {})}
        if body or method not in ("GET", "HEAD"):
            fields["Content-Length"] = str(len(body))
        lines = [f"{method} {target} HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items())]
        if any("\r" in line or "\n" in line for line in lines):
            raise ValueError("a request line or header holds a line break")
        head = "\r\n".join(lines) + "\r\n\r\n"
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        self._sock.sendall(head.encode("latin-1") + body)
        self._file = self._sock.makefile("rb")
        return _answer(self._file)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> UnixHTTP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
