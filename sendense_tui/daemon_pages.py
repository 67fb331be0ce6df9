"""A listing's page asked of the running ``sendense daemon`` (its root-only unix socket).

The daemon holds the catalog open with everything imported and compiled, so a
page costs it milliseconds; a CLI that reads the catalog itself first imports
SQLAlchemy and the models and compiles its queries (about 0.5 s before any row).
``sendense backup list``, ``chain show``, ``jobs list`` and ``events`` therefore
ask the daemon first and read the catalog themselves only when no usable answer
comes. The answer is taken only when it is surely the same the CLI would read:

- the socket is a socket owned by root or by this user (the daemon makes it 0600
  in its 0700 state directory);
- the answer says the daemon runs this version and serves this CLI's catalog
  (``X-Sendense-Version``, ``X-Sendense-Catalog``: sendense_api.app), so another
  daemon's catalog, an older daemon after an upgrade or a ``--db-url`` elsewhere
  are read directly;
- no job outcome is waiting in ``unrecorded-jobs`` (the CLI's own read settles
  those first: engine.runtime.Reader);
- it is a 200 whose body is a list of objects, within a bounded size and time.

Anything else (no daemon, a stale socket left by a killed one, a daemon busy past
the timeout, a catalog the daemon cannot reach) is not an error here: the command
reads the catalog as before, and says what that read says.

Only the standard library is imported: this runs before, and instead of, the
engine's imports.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from engine import __version__
from engine.config import Settings
from engine.paging import CURSOR_MAX, MORE_MAX, Page
from sendense_api.wire import API_PREFIX, CATALOG_HEADER, MORE, NEXT_CURSOR, VERSION_HEADER

#: a daemon that does not accept at once is not there (or is wedged): read directly
CONNECT_SECONDS = 0.5
#: a page the daemon has not answered by then is read directly instead
ANSWER_SECONDS = 10.0
#: the largest answer read (a page of 100 chains of 1,000 points is ~50 MB)
ANSWER_MAX_BYTES = 256 * 1024 * 1024


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("sendense", timeout=ANSWER_SECONDS)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(CONNECT_SECONDS)
            sock.connect(str(self._path))
            sock.settimeout(ANSWER_SECONDS)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _socket_to_trust(path: Path) -> bool:
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISSOCK(info.st_mode) and info.st_uid in (0, os.geteuid())


def _outcomes_waiting(state_dir: Path) -> bool:
    """Job outcomes a catalog outage left for the next engine (engine.unrecorded)."""
    try:
        with os.scandir(state_dir / "unrecorded-jobs") as entries:
            return any(e.name.startswith("job-") and e.name.endswith(".json") for e in entries)
    except OSError:
        return False


def _more(text: str | None) -> int | None:
    """``X-More``: a count, or ``10000+`` (more than MORE_MAX, not counted further)."""
    if text is None:
        return None
    if text == f"{MORE_MAX}+":
        return MORE_MAX + 1
    return int(text) if text.isdigit() and int(text) <= MORE_MAX else None


def page_from_daemon(
    settings: Settings, path: str, params: dict[str, Any]
) -> Page[dict[str, Any]] | None:
    """The page at ``API_PREFIX + path`` with ``params`` (None values left out, lists
    repeated), as the daemon of ``settings``'s catalog answers it; None when there is
    no such daemon or its answer is not one to take (see the module's docstring)."""
    where = settings.api_socket
    if not _socket_to_trust(where) or _outcomes_waiting(settings.state_dir):
        return None
    query = urlencode({k: v for k, v in params.items() if v is not None}, doseq=True)
    connection = _UnixConnection(where)
    try:
        connection.request("GET", f"{API_PREFIX}{path}?{query}")
        answer = connection.getresponse()
        if (
            answer.status != 200
            or answer.getheader(VERSION_HEADER) != __version__
            or answer.getheader(CATALOG_HEADER) != settings.catalog_identity
        ):
            return None
        body = answer.read(ANSWER_MAX_BYTES + 1)
        cursor, more = answer.getheader(NEXT_CURSOR), _more(answer.getheader(MORE))
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()
    if len(body) > ANSWER_MAX_BYTES:
        return None
    try:
        items = json.loads(body)
    except ValueError:
        return None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        return None
    if cursor is None:
        return Page(items)
    if more is None or not cursor.isascii() or len(cursor) > CURSOR_MAX:
        return None
    return Page(items, cursor, more)
