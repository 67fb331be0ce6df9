"""The four long listings ask the running daemon first (issue 16: a listing in well
under 0.5 s): a real ``sendense daemon`` answers ``backup list``, ``chain show``,
``jobs list`` and ``events`` with exactly what the command prints when it reads the
catalog itself, and the command then imports none of SQLAlchemy, the models or the
engine. An answer is taken only when it is surely the same: a daemon of another
catalog, an older daemon, a stale socket, a socket someone else owns, a daemon that
does not answer in time and job outcomes waiting to be settled all make the command
read the catalog itself, with the same output."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from bench.seed import Fleet, seed
from engine import __version__
from engine.config import catalog_identity, default_settings, sqlite_url
from engine.runtime import Engine
from sendense_tui.daemon_client import page_from_daemon
from tests.api.conftest import ApiDaemon
from tests.tui.stand_in_daemon import UnixHTTPServer, stand_in
from tests.tui.test_cli_start import imported, run_and_list_modules, run_sendense

FLEET = Fleet(repositories=2, vms=4, disks=2, points=5, jobs=30, events=40)
#: events the seed wrote (the daemon adds its own as it runs: those would differ
#: between two reads a moment apart)
SEEDED = ["--source", "backup"]
LISTINGS = [
    ["backup", "list", "--limit", "7"],
    ["backup", "list", "--vm", "vm0001"],
    ["chain", "show", "--limit", "3"],
    ["chain", "show", "--retired"],
    ["jobs", "list", "--limit", "9"],
    ["jobs", "list", "--state", "succeeded", "--state", "failed", "--kind", "backup"],
    ["events", *SEEDED, "--limit", "6"],
]

#: what reading the catalog itself loads
CATALOG_CODE = ["sqlalchemy", "pymysql", "engine.catalog", "engine.runtime"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the daemon)")


def _seeded(state: Path, fleet: Fleet = FLEET) -> None:
    with Engine(default_settings(state)) as engine:
        seed(engine, fleet, say=False)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiDaemon]:
    """A real daemon (unix socket only) over a seeded catalog."""
    served = ApiDaemon(tmp_path_factory.mktemp("listing-daemon"), listen="")
    _seeded(served.state)
    try:
        served.start()
        yield served
    finally:
        served.close()


def _run(daemon: ApiDaemon, *argv: str, env: dict[str, str] | None = None) -> str:
    """What ``sendense ARGV`` printed on the daemon's state directory (it succeeded)."""
    done = daemon.sendense(*argv, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


#: the daemon's socket out of reach: the command reads the catalog itself
DIRECT = {"SENDENSE_API_SOCKET": "/nonexistent/no-daemon-here.sock"}


@pytest.mark.parametrize("argv", LISTINGS, ids=" ".join)
@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_a_listing_from_the_daemon_prints_what_reading_the_catalog_prints(
    daemon: ApiDaemon, argv: list[str], as_json: bool
) -> None:
    argv = [*(["--json"] if as_json else []), *argv]
    direct = _run(daemon, *argv, env=DIRECT)
    assert direct.strip()
    assert _run(daemon, *argv) == direct
    # and that was the daemon's answer: none of the catalog's code was loaded for it
    seen = run_and_list_modules(argv, daemon.env)
    assert seen["code"] == 0 and seen["out"] in direct
    loaded = imported(seen, CATALOG_CODE)
    assert loaded == [], f"`sendense {' '.join(argv)}` imported {loaded}"


def test_the_next_page_and_the_more_line_come_through_the_daemon(daemon: ApiDaemon) -> None:
    first = _run(daemon, "backup", "list", "--limit", "4").splitlines()
    # 4 VMs x 2 disks x 5 points = 40: 36 follow the first page
    assert first[-1].startswith("36 more: --after ")
    cursor = first[-1].rsplit(" ", 1)[1]
    served = _run(daemon, "backup", "list", "--limit", "4", "--after", cursor)
    assert served == _run(daemon, "backup", "list", "--limit", "4", "--after", cursor, env=DIRECT)
    assert served.splitlines()[-1].startswith("32 more")
    # a cursor that is not one: refused with the one sentence of a direct read
    bad = daemon.sendense("backup", "list", "--after", "nonsense")
    assert bad.returncode == 2 and "is not a cursor of this listing" in bad.stderr


def test_a_catalog_other_than_the_daemons_is_read_directly(
    daemon: ApiDaemon, tmp_path: Path
) -> None:
    """``--db-url`` names another catalog than the daemon's (its socket is still the one
    in reach): the listing is that catalog's, not the daemon's."""
    other = tmp_path / "other"
    _seeded(other, Fleet(repositories=1, vms=1, disks=1, points=3, jobs=2, events=2))
    url = sqlite_url(other / "catalog.db")
    points = json.loads(_run(daemon, "--db-url", url, "--json", "backup", "list"))
    assert [(p["vm"], p["disk"]) for p in points] == [("vm0000", "sda")] * 3
    served = _run(daemon, "--json", "backup", "list", "--limit", "100")
    assert len(json.loads(served)) == FLEET.restore_points


def test_a_stale_socket_is_passed_over(tmp_path: Path) -> None:
    """A daemon that was killed left its socket: nothing listens, the command reads
    the catalog itself at once."""
    state = tmp_path / "state"
    _seeded(state, Fleet(repositories=1, vms=1, disks=1, points=2, jobs=1, events=1))
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(state / "api.sock"))
    stale.close()
    listed = run_sendense(state, "--json", "backup", "list")
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 2


def test_outcomes_waiting_to_be_settled_send_the_command_to_the_catalog(
    daemon: ApiDaemon,
) -> None:
    settings = daemon.settings
    assert page_from_daemon(settings, "/jobs", {"limit": 3}) is not None
    waiting = daemon.state / "unrecorded-jobs"
    waiting.mkdir(exist_ok=True)
    (waiting / "job-999999.json").write_text("{}")
    try:
        assert page_from_daemon(settings, "/jobs", {"limit": 3}) is None
    finally:
        (waiting / "job-999999.json").unlink()


class _Impostor(BaseHTTPRequestHandler):
    """Answers every GET with one page of what ``server.answer`` says (headers, body)."""

    def do_GET(self) -> None:
        headers, body = self.server.answer  # type: ignore[attr-defined]
        self.send_response(200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def impostor(tmp_path: Path) -> Iterator[tuple[UnixHTTPServer, Path]]:
    """A stand-in server on a state directory's socket: another release of the
    daemon or a broken one, answering GETs as told."""
    state = tmp_path / "state"
    with stand_in(state, _Impostor) as server:
        yield server, state


def _identity(state: Path) -> dict[str, str]:
    return {
        "X-Sendense-Version": __version__,
        "X-Sendense-Catalog": catalog_identity(sqlite_url(state / "catalog.db")),
    }


@pytest.mark.parametrize(
    "change",
    [
        {"X-Sendense-Version": "0.0.1"},
        {"X-Sendense-Catalog": "0123456789abcdef"},
        {"X-Sendense-Version": None},
        {"body": b'{"not": "a list"}'},
        {"body": b"[1, 2]"},
        {"body": b"[{"},
        {"X-Next-Cursor": "abc", "X-More": None},
        {"X-Next-Cursor": "abc", "X-More": "-3"},
    ],
    ids=lambda c: ",".join(f"{k}={v!r}" for k, v in c.items()),
)
def test_an_answer_that_is_not_surely_this_catalogs_page_is_not_taken(
    impostor: tuple[UnixHTTPServer, Path], change: dict[str, object]
) -> None:
    server, state = impostor
    settings = default_settings(state)
    headers: dict[str, object] = {**_identity(state), **change}
    body = headers.pop("body", b'[{"id": 1}]')
    server.answer = ({k: v for k, v in headers.items() if v is not None}, body)  # type: ignore[attr-defined]
    assert page_from_daemon(settings, "/jobs", {"limit": 1}) is None
    # the same server saying the right things is taken: the refusal above was the change
    server.answer = (_identity(state), b'[{"id": 1}]')  # type: ignore[attr-defined]
    page = page_from_daemon(settings, "/jobs", {"limit": 1})
    assert page is not None and page.items == [{"id": 1}] and page.next_cursor is None


def test_a_socket_someone_else_owns_is_never_connected_to(
    impostor: tuple[UnixHTTPServer, Path],
) -> None:
    server, state = impostor
    server.answer = (_identity(state), b'[{"id": 1}]')  # type: ignore[attr-defined]
    os.chown(state / "api.sock", 12345, 12345)
    assert page_from_daemon(default_settings(state), "/jobs", {"limit": 1}) is None


def test_a_daemon_that_does_not_answer_in_time_is_passed_over(mute_daemon: Path) -> None:
    assert page_from_daemon(default_settings(mute_daemon), "/jobs", {"limit": 1}) is None


def test_the_catalog_identity_names_the_catalog_not_its_password() -> None:
    a = catalog_identity("mysql+pymysql://sendense:one@db1:3306/sendense")
    assert a == catalog_identity("mysql+pymysql://sendense:two@db1:3306/sendense")
    assert a != catalog_identity("mysql+pymysql://sendense:one@db2:3306/sendense")
    assert a != catalog_identity("mysql+pymysql://sendense:one@db1:3306/other")
    assert "one" not in a and len(a) == 16
