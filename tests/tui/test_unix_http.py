"""The CLI's HTTP client for the daemon's socket (sendense_tui.unix_http), against a
raw socket that answers exactly the bytes a test gives: what a real daemon sends
reads as it did through http.client, and a broken or hostile answer is BadAnswer
or an OSError, never a hang, a partial body taken as whole or an unbounded read.
The real daemon's answers are tested end to end in test_cli_jobs_daemon.py and
test_cli_listings_daemon.py."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sendense_tui.unix_http import LINE_MAX, Answer, BadAnswer, UnixHTTP


@contextmanager
def answering(tmp_path: Path, *parts: bytes, pause: float = 0.0) -> Iterator[list[bytes]]:
    """A socket that reads one request, answers ``parts`` (with ``pause`` seconds
    between them) and closes; yields what it received."""
    where = tmp_path / "api.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(where))
    server.listen(1)
    received: list[bytes] = []
    go_on = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            received.append(data)
            for part in parts:
                conn.sendall(part)
                go_on.wait(pause)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        go_on.set()
        thread.join(5)
        server.close()


def ask(tmp_path: Path, target: str = "/x", **kwargs: object) -> tuple[UnixHTTP, Answer]:
    client = UnixHTTP(tmp_path / "api.sock", connect_seconds=1, answer_seconds=2)
    return client, client.request("GET", target, **kwargs)  # type: ignore[arg-type]


def test_a_content_length_answer_reads_with_its_headers(tmp_path: Path) -> None:
    with answering(
        tmp_path,
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Sendense-Version: 1\r\n"
        b"x-more: 3\r\nX-More: 4\r\n\r\nhello",
    ) as received:
        client, answer = ask(tmp_path, "/api/v1/chains?limit=2", headers={"X-A": "b"})
        with client:
            assert answer.status == 200
            assert answer.header("x-sendense-version") == "1"
            assert answer.header("X-More") == "3, 4"  # repeated: never taken as one value
            assert answer.read(100) == b"hello"
    request = received[0].decode()
    assert request.startswith("GET /api/v1/chains?limit=2 HTTP/1.1\r\n")
    assert "Connection: close\r\n" in request and "X-A: b\r\n" in request


def test_a_chunked_stream_reads_line_by_line_as_it_comes(tmp_path: Path) -> None:
    events = [b"event: progress\ndata: 1\n\n", b"event: end\ndata: 2\n\n"]
    body = [b"%x\r\n%s\r\n" % (len(e), e) for e in events]
    with answering(
        tmp_path,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        *body,
        b"0\r\n\r\n",
        pause=0.05,
    ):
        client, answer = ask(tmp_path)
        with client:
            lines = []
            while line := answer.readline(1024):
                lines.append(line)
    assert b"".join(lines) == b"".join(events)


def test_an_http_1_0_body_ends_with_the_connection(tmp_path: Path) -> None:
    with answering(tmp_path, b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\n[1, 2]"):
        client, answer = ask(tmp_path)
        with client:
            assert answer.read(1000) == b"[1, 2]"


@pytest.mark.parametrize(
    ("answer", "reads_body"),
    [
        (b"SMTP ready\r\n\r\n", False),
        (b"HTTP/1.1 2x0 OK\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Long: " + b"a" * LINE_MAX + b"\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Le", False),  # closed in the headers
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", True),  # cut
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n0\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffff\r\n", True),
    ],
    ids=[
        "not-http",
        "bad-status",
        "bad-header",
        "header-too-long",
        "too-many-headers",
        "negative-length",
        "closed-in-headers",
        "body-short-of-length",
        "chunk-size-not-hex",
        "chunk-cut",
        "chunk-longer-than-said",
        "chunk-size-huge",
    ],
)
def test_a_broken_answer_is_bad_never_taken_in_part(
    tmp_path: Path, answer: bytes, reads_body: bool
) -> None:
    with answering(tmp_path, answer):
        client = UnixHTTP(tmp_path / "api.sock", connect_seconds=1, answer_seconds=2)
        with client, pytest.raises(BadAnswer):
            got = client.request("GET", "/x")
            assert reads_body, "the headers should have been refused"
            got.read(1 << 20)


def test_an_answer_that_stops_coming_times_out(tmp_path: Path) -> None:
    with answering(tmp_path, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab", pause=5):
        client = UnixHTTP(tmp_path / "api.sock", connect_seconds=1, answer_seconds=0.3)
        with client, pytest.raises(TimeoutError):
            client.request("GET", "/x").read(10)


def test_no_line_break_reaches_the_request(tmp_path: Path) -> None:
    # refused before connecting: nothing is sent (no socket is there to take it)
    client = UnixHTTP(tmp_path / "api.sock", connect_seconds=1, answer_seconds=2)
    with client, pytest.raises(ValueError, match="line break"):
        client.request("GET", "/x", headers={"X-A": "b\r\nX-Injected: 1"})
    with client, pytest.raises(ValueError, match="line break"):
        client.request("GET", "/x HTTP/1.1\r\nX-Injected: 1\r\n")


def test_no_daemon_listening_is_an_oserror(tmp_path: Path) -> None:
    client = UnixHTTP(tmp_path / "none.sock", connect_seconds=1, answer_seconds=1)
    with client, pytest.raises(OSError):
        client.connect()
