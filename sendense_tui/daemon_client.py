"""The running ``sendense daemon`` asked, on its root-only unix socket, for a
listing's page or to run a job the command would otherwise run itself.

Pages. The daemon holds the catalog open with everything imported and compiled, so a
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

Jobs. ``sendense copy run`` and ``restore disk`` hand their job to the daemon the
same way (``submit_job``), then follow it (``follow_job``): the daemon's runner does
the work with everything loaded, and the command imports no engine (about a second
with cold caches). The request carries the CLI's version and catalog; a daemon of
another refuses it untouched (412, sendense_api.app.SaysWhoAnswers), as it refuses
bad input (4xx), and the command then runs the job itself as before, which says any
refusal in the CLI's own words. Once the request is sent, an answer that does not
come is an error, not a reason to run the job here: it may be queued already.

Only the standard library is imported: this runs before, and instead of, the
engine's imports.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from engine import __version__
from engine.config import Settings
from engine.paging import CURSOR_MAX, MORE_MAX, Page
from sendense_api.wire import API_PREFIX, CATALOG_HEADER, MORE, NEXT_CURSOR, VERSION_HEADER
from sendense_tui.unix_http import Answer, BadAnswer, UnixHTTP

#: a daemon that does not accept at once is not there (or is wedged): read directly
CONNECT_SECONDS = 0.5
#: a page the daemon has not answered by then is read directly instead
ANSWER_SECONDS = 10.0
#: the largest answer read (a page of 100 chains of 1,000 points is ~50 MB)
ANSWER_MAX_BYTES = 256 * 1024 * 1024
#: a job's stream says something at least every KEEPALIVE_SECONDS (sendense_api.sse);
#: silence for this long means the daemon is gone or wedged
FOLLOW_SECONDS = 45.0
#: the longest line of a job's stream read (a job's shape with its error)
STREAM_LINE_MAX = 1024 * 1024


class DaemonUnanswered(Exception):
    """A job request reached the daemon, but no usable answer came back: whether it
    queued the job is unknown, so the command must not run it itself."""


def _connection(where: Path, answer_seconds: float = ANSWER_SECONDS) -> UnixHTTP:
    return UnixHTTP(where, connect_seconds=CONNECT_SECONDS, answer_seconds=answer_seconds)


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


def _daemon_to_ask(settings: Settings) -> Path | None:
    """The daemon's socket when it may be asked at all (module docstring), else None."""
    where = settings.api_socket
    if not _socket_to_trust(where) or _outcomes_waiting(settings.state_dir):
        return None
    return where


def _identity(settings: Settings) -> dict[str, str]:
    """Request headers a daemon of another version or catalog refuses (412)."""
    return {VERSION_HEADER: __version__, CATALOG_HEADER: settings.catalog_identity}


def _answers_for(answer: Answer, settings: Settings) -> bool:
    return (
        answer.header(VERSION_HEADER) == __version__
        and answer.header(CATALOG_HEADER) == settings.catalog_identity
    )


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
    where = _daemon_to_ask(settings)
    if where is None:
        return None
    query = urlencode({k: v for k, v in params.items() if v is not None}, doseq=True)
    connection = _connection(where)
    try:
        answer = connection.request("GET", f"{API_PREFIX}{path}?{query}")
        if answer.status != 200 or not _answers_for(answer, settings):
            return None
        body = answer.read(ANSWER_MAX_BYTES + 1)
        cursor, more = answer.header(NEXT_CURSOR), _more(answer.header(MORE))
    except (OSError, BadAnswer):
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


# -- jobs ------------------------------------------------------------------------------


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def submit_job(settings: Settings, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """POST ``body`` to ``API_PREFIX + path`` of this catalog's daemon, which queues a
    job: the job's shape (engine.shapes.job_dict). None when there is no daemon to
    ask or it refused before queuing anything (another catalog or version, bad input,
    a conflict, its catalog down): the command then runs the job itself. Raises
    DaemonUnanswered when the request went out and no usable answer came."""
    where = _daemon_to_ask(settings)
    if where is None:
        return None
    payload = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **_identity(settings)}
    connection = _connection(where)
    try:
        try:
            connection.connect()
        except OSError:
            return None  # nothing was sent: no daemon listens there
        try:
            answer = connection.request(
                "POST", f"{API_PREFIX}{path}", body=payload, headers=headers
            )
            data = answer.read(ANSWER_MAX_BYTES + 1)
        except (OSError, BadAnswer) as exc:
            raise DaemonUnanswered(f"no answer came ({exc})") from None
    finally:
        connection.close()
    if 400 <= answer.status < 500 or answer.status == 503:
        # refused before anything was queued (another catalog or version, the input, a
        # running job, the daemon's catalog down): the command's own run says it in
        # the CLI's words, or does the work
        return None
    if answer.status != 202:
        # a failure inside the daemon may have come after the job was queued
        raise DaemonUnanswered(f"it failed ({answer.status})")
    queued = _json_object(data)
    job = queued.get("job") if queued is not None else None
    if not _answers_for(answer, settings) or not isinstance(job, dict):
        raise DaemonUnanswered("its answer was not a queued job")
    if not isinstance(job.get("id"), int):
        raise DaemonUnanswered("its answer named no job")
    return job


@dataclass(frozen=True)
class FollowedJob:
    """How a job the daemon ran ended: what the CLI's report of a job reads."""

    id: int
    title: str
    state: str
    error: str | None
    result: dict[str, Any] | None
    bytes_done: int
    bytes_total: int

    @classmethod
    def of(cls, shape: dict[str, Any]) -> FollowedJob:
        result = shape.get("result")
        return cls(
            id=int(shape["id"]),
            title=str(shape.get("title") or ""),
            state=str(shape["state"]),
            error=shape.get("error") if isinstance(shape.get("error"), str) else None,
            result=result if isinstance(result, dict) else None,
            bytes_done=int(shape.get("bytes_done") or 0),
            bytes_total=int(shape.get("bytes_total") or 0),
        )


def _stream_messages(answer: Answer) -> Iterator[tuple[str, str]]:
    """(event, data) of each server-sent event until the stream ends."""
    event, data = "message", ""
    while True:
        line = answer.readline(STREAM_LINE_MAX)
        if not line:
            return
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if not text:
            if data:
                yield event, data
            event, data = "message", ""
        elif text.startswith("event:"):
            event = text[6:].strip()
        elif text.startswith("data:"):
            data += text[5:].strip()


def _stream_to_end(
    where: Path, settings: Settings, job_id: int, on_progress: Callable[[dict[str, Any]], None]
) -> bool:
    """Read job ``job_id``'s stream, calling ``on_progress`` with each shape, until it
    says ``end`` (True) or stops without saying it (False)."""
    connection = _connection(where, FOLLOW_SECONDS)
    try:
        answer = connection.request(
            "GET", f"{API_PREFIX}/jobs/{job_id}/stream", headers=_identity(settings)
        )
        if answer.status != 200 or not _answers_for(answer, settings):
            return False
        for event, data in _stream_messages(answer):
            shape = _json_object(data.encode())
            if shape is None:
                continue
            if event in ("progress", "end"):
                on_progress(shape)
            if event == "end":
                return True
        return False
    except (OSError, BadAnswer):
        return False
    finally:
        connection.close()


def _job_details(where: Path, settings: Settings, job_id: int) -> dict[str, Any] | None:
    connection = _connection(where)
    try:
        answer = connection.request(
            "GET", f"{API_PREFIX}/jobs/{job_id}", headers=_identity(settings)
        )
        body = answer.read(ANSWER_MAX_BYTES + 1)
        if answer.status != 200 or not _answers_for(answer, settings):
            return None
    except (OSError, BadAnswer):
        return None
    finally:
        connection.close()
    return _json_object(body)


def follow_job(
    settings: Settings, job_id: int, on_progress: Callable[[dict[str, Any]], None]
) -> FollowedJob:
    """Follow a job the daemon queued until it ends (or is paused), calling
    ``on_progress`` with its shape as it moves; how it ended, with its result.
    Raises DaemonUnanswered when the daemon stops answering before that."""
    where = settings.api_socket
    if not _stream_to_end(where, settings, job_id, on_progress):
        raise DaemonUnanswered(f"the daemon stopped answering while job {job_id} ran")
    details = _job_details(where, settings, job_id)
    if details is None or details.get("id") != job_id or not isinstance(details.get("state"), str):
        raise DaemonUnanswered(f"the daemon did not say how job {job_id} ended")
    return FollowedJob.of(details)
