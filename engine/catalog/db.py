"""The catalog database: connect, migrate, hand out sessions.

SQLite in the state directory is the embedded default; a ``mysql+pymysql://``
URL points several appliances at one MariaDB/MySQL catalog. Connection
problems become a CatalogError with a sentence an operator can act on.

Outages are decided here, once, for every store: a server that is down or went
away, a database that turned read-only, a disk I/O error, a SQLite file that was
removed or replaced while open all become ``CatalogUnavailable`` (the CLI's exit
code 3) with one sentence that names the catalog (password hidden) and a hint.
The catalog logs one warning when an outage starts and one line when it ends;
callers that retry on a timer (job runner, monitors, scheduler) stay quiet.

A SQLite file is never created behind the operator's back: connections open it
read-write only (``mode=rw``), and ``open()`` creates it only when it never
existed (no ``<file>.created`` marker, no backups in the state directory), so a
catalog deleted under a running engine is noticed (its device and inode are
compared at every session) and never silently replaced by an empty one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

from sqlalchemy import Select, create_engine, event, func, inspect, select, text
from sqlalchemy.engine import CursorResult, Engine, Result, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    DisconnectionError,
    NoSuchModuleError,
    SQLAlchemyError,
)
from sqlalchemy.orm import Session, sessionmaker

from engine.config import redact_url
from engine.errors import (
    Action,
    CatalogBehind,
    CatalogError,
    CatalogReadOnly,
    CatalogUnavailable,
    CatalogVersionError,
)
from engine.private import make_private_dirs, tighten

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
#: files SQLite keeps next to the database, with the database's content in them
SQLITE_SIDECARS = ("-wal", "-shm", "-journal")

# MySQL/MariaDB error codes we explain in words.
_MYSQL_ACCESS_DENIED = 1045
_MYSQL_UNKNOWN_DATABASE = 1049
#: can't connect (2002/2003/2005), gone away (2006), lost during a query (2013),
#: lost the socket (2055), shutdown in progress (1053), connection killed (1927),
#: dropped for inactivity (4031)
_MYSQL_CANT_CONNECT = (2002, 2003, 2005, 2006, 2013, 2055, 1053, 1927, 4031)
#: --read-only / read_only=ON (1290), read-only mode (1836), read-only transaction (1792)
_MYSQL_READ_ONLY = (1290, 1836, 1792)
#: disk full (1021), table full (1114), error writing a file (3), out of resources (1041)
_MYSQL_DISK = (1021, 1114, 3, 1041)
#: access to the database or a command denied (1044, 1142): the grants were changed
_MYSQL_DENIED = (1044, 1142)
#: a table of the catalog is missing (1146): the database was dropped or replaced
_MYSQL_NO_TABLE = 1146
#: lock wait timeout (1205): a row stayed locked, e.g. while a restarted server
#: rolls back what a crash left half done
_MYSQL_LOCK_WAIT = 1205

_WRITABLE_HINT = (
    "make it writable again (chattr -i, remount read-write, the server's read_only "
    "setting); Sendense carries on when it is"
)
_SERVER_HINT = "is the server running, and are host, port or socket right?"


#: the newest schema revision this version knows (a test checks it against the
#: migration scripts). A catalog already at it opens without importing alembic at
#: all, which is a third of the start-up time of every ``sendense`` command.
SCHEMA_HEAD = "listing_indexes"
#: values in one ``IN (...)`` list: a store asking about more sends several queries
#: (well below SQLite's 32,766 bound parameters and MariaDB's packet size)
IN_BATCH = 500


def in_batches(values: Sequence[Any]) -> Iterator[list[Any]]:
    """``values`` in lists of at most ``IN_BATCH``, duplicates dropped, order kept."""
    unique = list(dict.fromkeys(values))
    for start in range(0, len(unique), IN_BATCH):
        yield unique[start : start + IN_BATCH]


def alembic_config() -> Any:
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def explain_db_error(url: str, exc: BaseException) -> CatalogError:
    """Turn a driver exception into a sentence that names what to fix.

    An outage (the database cannot be reached, refuses us, is read-only, lost its
    disk or its tables) is a CatalogUnavailable; anything else a plain CatalogError.
    """
    shown = redact_url(url)
    orig = getattr(exc, "orig", None) or exc
    args = getattr(orig, "args", None)
    code = args[0] if args and isinstance(args[0], int) else None
    text = _reason(orig) or exc.__class__.__name__
    low = text.lower()
    if code == _MYSQL_ACCESS_DENIED:
        return CatalogUnavailable(
            f"catalog {shown}: the server refused the user name or password",
            hint="check the credentials in SENDENSE_DB_URL or [catalog] url",
        )
    if code == _MYSQL_UNKNOWN_DATABASE:
        return CatalogUnavailable(
            f"catalog {shown}: the database does not exist on the server",
            hint="create it first, e.g. CREATE DATABASE sendense CHARACTER SET utf8mb4",
        )
    if code in _MYSQL_CANT_CONNECT or (
        getattr(exc, "connection_invalidated", False) and code not in _MYSQL_READ_ONLY
    ):
        return CatalogUnavailable(
            f"catalog {shown}: cannot reach the database server ({text})", hint=_SERVER_HINT
        )
    if code in _MYSQL_READ_ONLY or "readonly database" in low or "read-only" in low:
        return CatalogReadOnly(f"catalog {shown} is read-only ({text})", hint=_WRITABLE_HINT)
    if code in _MYSQL_DISK or "disk i/o error" in low or "database or disk is full" in low:
        return CatalogUnavailable(
            f"catalog {shown}: the disk under it failed or is full ({text})",
            hint="check the filesystem that holds the catalog (free space, dmesg)",
        )
    if code in _MYSQL_DENIED:
        return CatalogUnavailable(
            f"catalog {shown}: the server refused access ({text})",
            hint="check the grants of the catalog user",
        )
    if code == _MYSQL_NO_TABLE or "no such table" in low:
        return CatalogUnavailable(
            f"catalog {shown} lost its tables while in use ({text})",
            hint="the database was dropped or replaced: restore it from a backup",
        )
    if "unable to open database file" in low:
        return CatalogUnavailable(
            f"catalog {shown}: cannot open the SQLite file",
            hint="check that the file and its directory exist and are readable",
        )
    if "file is not a database" in low or "database disk image is malformed" in low:
        return CatalogUnavailable(
            f"catalog {shown}: the file is not a SQLite database",
            hint="point SENDENSE_DB_URL at the right file or move this one away",
        )
    if "database is locked" in low or code == _MYSQL_LOCK_WAIT:
        return CatalogUnavailable(
            f"catalog {shown}: the database stayed locked by another process",
            hint="another Sendense process holds a long write; try again",
        )
    return CatalogError(f"catalog {shown}: {text}")


def rows_changed(result: Result[Any]) -> int:
    """How many rows an UPDATE or DELETE matched (``Session.execute`` is typed as
    returning any Result; for those statements it is a CursorResult)."""
    return int(cast(CursorResult[Any], result).rowcount or 0)


def count_rows(query: Select[Any], *, at_most: int | None = None) -> Select[Any]:
    """``SELECT COUNT(*)`` over the rows ``query`` selects. With ``at_most`` the rows
    are counted under a LIMIT: the database stops reading there, so the count of what
    follows a page costs at most that many index entries, not the table's size."""
    if at_most is not None:
        query = query.limit(at_most)
    return select(func.count()).select_from(query.subquery())


def _reason(orig: BaseException) -> str:
    """The driver's words without the Python noise: ``(2003, "Can't connect…")`` ->
    ``Can't connect…``; an empty pymysql InterfaceError(0, '') says the connection closed."""
    args: tuple[Any, ...] = getattr(orig, "args", ())
    if len(args) >= 2 and isinstance(args[0], int):
        words = str(args[1]).strip()
        return words or "the connection was closed"
    return str(orig).strip()


class Catalog:
    """One catalog database. Thread-safe; every call opens a short session."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise CatalogError(
                f"catalog URL {redact_url(url)!r} is not a database URL",
                hint="use sqlite:////path/catalog.db or mysql+pymysql://user:pass@host/db",
            ) from None
        self.dialect = parsed.get_backend_name()
        #: the SQLite file (plain file URLs only): created only by open()/create(),
        #: watched for removal or replacement while in use
        self.sqlite_path: Path | None = None
        #: (st_dev, st_ino) of the SQLite file when this catalog first saw it
        self._identity: tuple[int, int] | None = None
        #: the sentence of the outage in progress, None while the catalog answers
        self._outage: str | None = None
        #: the outage is a read-only catalog: reads work, only a write ends it
        self._outage_read_only = False
        #: when the outage in progress was noticed (time.monotonic)
        self._outage_since = 0.0
        self._outage_lock = threading.Lock()
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                try:
                    make_private_dirs(Path(parsed.database).parent)
                except OSError as exc:
                    raise CatalogError(
                        f"catalog {redact_url(url)}: cannot create directory "
                        f"{Path(parsed.database).parent}: {exc.strerror}"
                    ) from None
                if "uri" not in parsed.query and not parsed.database.startswith("file:"):
                    self.sqlite_path = Path(parsed.database).absolute()
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        elif self.dialect in ("mysql", "mariadb"):
            kwargs["pool_pre_ping"] = True
            kwargs["pool_recycle"] = 1800
            kwargs["connect_args"] = {"connect_timeout": 5, "charset": "utf8mb4"}
        try:
            self.engine: Engine = create_engine(url, **kwargs)
        except NoSuchModuleError:
            raise CatalogError(
                f"catalog URL {redact_url(url)!r}: no driver for {parsed.drivername!r}",
                hint="use sqlite:// or mysql+pymysql://",
            ) from None
        except ModuleNotFoundError as exc:
            raise CatalogError(
                f"catalog URL {redact_url(url)!r} needs the Python module {exc.name!r}",
                hint="use mysql+pymysql:// (pymysql is installed with Sendense)",
            ) from None
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
            if self.sqlite_path is not None:
                event.listen(self.engine, "do_connect", self._open_existing_file)
                event.listen(self.engine, "connect", self._note_read_only_open)
                event.listen(self.engine, "checkout", self._drop_read_only_open)
                event.listen(self.engine, "handle_error", self._stale_read_only)
        pool_log = getattr(self.engine.pool, "logger", None)
        if isinstance(pool_log, logging.Logger) and _QUIET_POOL not in pool_log.filters:
            pool_log.addFilter(_QUIET_POOL)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        event.listen(self._sessions, "do_orm_execute", _note_dml)
        event.listen(self._sessions, "after_flush", _note_flush)
        self._migrate_lock = threading.Lock()

    @property
    def shown_url(self) -> str:
        return redact_url(self.url)

    @property
    def marker_path(self) -> Path | None:
        """``<file>.created``: says Sendense made a catalog here, so a missing file
        means a lost catalog, not a first start."""
        if self.sqlite_path is None:
            return None
        return self.sqlite_path.with_name(self.sqlite_path.name + ".created")

    # -- outages -----------------------------------------------------------

    @property
    def outage(self) -> str | None:
        """The sentence of the outage in progress (None while the catalog answers)."""
        return self._outage

    def _unavailable(self, error: CatalogUnavailable) -> CatalogUnavailable:
        """Note an outage: one warning when it starts, not one per failing call."""
        with self._outage_lock:
            starting = self._outage is None
            self._outage = error.message
            self._outage_read_only = isinstance(error, CatalogReadOnly)
            if starting:
                self._outage_since = time.monotonic()
        if starting:
            log.warning("%s", error.for_humans().replace("\n  -> ", "; "))
        return error

    def _answered(self, *, wrote: bool, began: float) -> None:
        """The database answered a unit of work that ``began`` (time.monotonic): the
        outage (if any) is over, unless the catalog was read-only and this only read,
        or the work began before the outage was noticed (a statement that finished
        just before the server went away, told after another thread's failure: the
        outage would end and start again, said twice)."""
        if self._outage is None or began < self._outage_since:
            return
        if self._outage_read_only:
            # SQLite takes an UPDATE that changes no row on a file it cannot write:
            # ask the file; a server refuses every write while read-only
            path = self.sqlite_path
            writable = _unwritable(path) is None if path is not None else wrote
            if not writable:
                return
        with self._outage_lock:
            if began < self._outage_since:
                return
            was, self._outage = self._outage, None
        if was is not None:
            log.warning("catalog %s answers again", self.shown_url)

    def _explain(self, exc: BaseException) -> CatalogError:
        error = explain_db_error(self.url, exc)
        if isinstance(error, CatalogUnavailable) and self.sqlite_path is not None:
            # SQLite reports a file it may no longer write (chattr +i, a filesystem
            # remounted read-only) as a disk I/O error on an open connection
            locked = _unwritable(self.sqlite_path)
            if locked is not None:
                error = CatalogReadOnly(
                    f"catalog {self.shown_url} is read-only ({locked})", hint=_WRITABLE_HINT
                )
        return self._unavailable(error) if isinstance(error, CatalogUnavailable) else error

    def _check_file(self) -> None:
        """Raise CatalogUnavailable if the SQLite file this catalog uses was removed
        or replaced: SQLite would go on writing into the unlinked file unnoticed."""
        path = self.sqlite_path
        if path is None:
            return
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if self._identity is None:
                lost = self._lost_file()
                if lost is not None:  # `catalog status` after the file was lost
                    raise self._unavailable(lost) from None
                return  # never opened: connecting says "cannot open the SQLite file"
            raise self._unavailable(
                CatalogUnavailable(
                    f"catalog file {path} was removed while Sendense was using it",
                    hint=_LOST_HINT,
                )
            ) from None
        except OSError as exc:
            raise self._unavailable(
                CatalogUnavailable(
                    f"catalog file {path} cannot be looked at: {exc.strerror}",
                    hint="check the filesystem that holds the catalog",
                )
            ) from None
        identity = (st.st_dev, st.st_ino)
        if self._identity is None:
            self._identity = identity
        elif identity != self._identity:
            raise self._unavailable(
                CatalogUnavailable(
                    f"catalog file {path} was replaced by another file while Sendense was using it",
                    hint=_LOST_HINT,
                )
            )

    def _open_existing_file(
        self, _dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]
    ) -> None:
        """Every connection opens the SQLite file read-write, never creating it: a
        catalog removed under us must not come back as an empty one."""
        assert self.sqlite_path is not None
        cargs[:1] = [f"file:{quote(str(self.sqlite_path))}?mode=rw"]
        cparams["uri"] = True

    # SQLite opens a file it may not write (immutable, read-only filesystem) read-only
    # and keeps that connection read-only for good: after the outage such a pooled
    # connection would refuse every write while reads succeed, and the outage would
    # flap between "read-only" and "answers again". Such connections are dropped.

    def _note_read_only_open(self, _dbapi: Any, record: Any) -> None:
        assert self.sqlite_path is not None
        record.info["opened_read_only"] = _unwritable(self.sqlite_path) is not None

    def _drop_read_only_open(self, _dbapi: Any, record: Any, _proxy: Any) -> None:
        assert self.sqlite_path is not None
        if record.info.get("opened_read_only") and _unwritable(self.sqlite_path) is None:
            raise DisconnectionError("opened while the catalog file was read-only")

    def _stale_read_only(self, context: Any) -> None:
        """A connection opened read-only in the moment the file turned writable again
        says "readonly database" on a writable file: treat it as disconnected."""
        assert self.sqlite_path is not None
        if "readonly database" in str(context.original_exception).lower() and (
            _unwritable(self.sqlite_path) is None
        ):
            context.is_disconnect = True

    # -- lifecycle ---------------------------------------------------------

    def check_connection(self) -> None:
        """Raise CatalogError with a readable reason if the database is unreachable."""
        began = time.monotonic()
        self._check_file()
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except (DBAPIError, SQLAlchemyError) as exc:
            raise self._explain(exc) from None
        self._check_file()
        self._answered(wrote=False, began=began)

    def current_revision(self) -> str | None:
        """The schema revision stamped in the catalog (alembic's table), or None."""
        try:
            with self.engine.connect() as conn:
                if not inspect(conn).has_table("alembic_version"):
                    return None
                rows = conn.execute(text("SELECT version_num FROM alembic_version")).all()
        except (DBAPIError, SQLAlchemyError) as exc:
            raise self._explain(exc) from None
        return str(rows[0][0]) if len(rows) == 1 else None

    def migrate(self) -> None:
        """Bring the schema to this version; refuse a catalog from a newer Sendense."""
        if self.current_revision() == SCHEMA_HEAD:
            return
        from alembic import command
        from alembic.script import ScriptDirectory

        config = alembic_config()
        script = ScriptDirectory.from_config(config)
        with self._migrate_lock:
            current = self.current_revision()
            known = {rev.revision for rev in script.walk_revisions()}
            if current is not None and current not in known:
                raise CatalogVersionError(
                    f"catalog {self.shown_url} was written by a newer Sendense "
                    f"(schema {current}); this version knows up to {script.get_current_head()}",
                    hint="upgrade Sendense on this appliance; the catalog was left untouched",
                )
            if current == script.get_current_head():
                return
            try:
                with self.engine.begin() as conn:
                    config.attributes["connection"] = conn
                    command.upgrade(config, "head")
            except (DBAPIError, SQLAlchemyError) as exc:
                raise self._explain(exc) from None

    def open(self, *, evidence: Sequence[Path] = (), migrate: bool = True) -> Catalog:
        """Connect and migrate. A SQLite file is created on a first start only: when it
        is missing but a catalog existed (its ``.created`` marker, or files under one
        of the ``evidence`` paths, e.g. the default repository's chains), this refuses
        instead of starting an empty catalog over backups it no longer lists.

        ``migrate=False`` (a command that only reads): a catalog at an older revision
        is left as it is and refused with CatalogBehind; an empty one is still created
        (there is nothing in it to migrate)."""
        self._prepare_file(evidence)
        self._keep_sqlite_private()
        self.check_connection()
        if migrate:
            self.migrate()
        else:
            self._require_current()
        return self

    def _require_current(self) -> None:
        current = self.current_revision()
        if current == SCHEMA_HEAD:
            return
        from alembic.script import ScriptDirectory

        known = {
            rev.revision for rev in ScriptDirectory.from_config(alembic_config()).walk_revisions()
        }
        empty = current is None and not [t for t in self.table_names() if t != "alembic_version"]
        if empty or current not in known:
            self.migrate()  # creates an empty catalog; refuses one from a newer Sendense
            return
        raise CatalogBehind(
            f"catalog {self.shown_url} is at schema {current or 'none'}, older than this "
            f"Sendense ({SCHEMA_HEAD}); this command only reads and left it untouched",
            action=Action(
                "migrate_catalog",
                "migrate the catalog (any command that changes something does) to bring it "
                "up to date",
            ),
        )

    def _keep_sqlite_private(self) -> None:
        """Close an older SQLite catalog (and its -wal, -shm and -journal files) to
        other users. A new one is created 0600 (``_prepare_file``) before SQLite first
        opens it, and SQLite gives its side files the database file's mode."""
        if self.sqlite_path is None:
            return
        for suffix in ("", *SQLITE_SIDECARS):
            with contextlib.suppress(OSError):
                tighten(f"{self.sqlite_path}{suffix}")

    def create(self) -> Catalog:
        """Start a new, empty catalog on purpose (after one was lost); refuses when
        the catalog exists (a SQLite file, or tables in the MariaDB database)."""
        if self.sqlite_path is not None and self.sqlite_path.exists():
            raise CatalogError(
                f"catalog {self.sqlite_path} exists; nothing was changed",
                action=Action(
                    "create_catalog_only_new", "a new catalog is only started where there is none"
                ),
            )
        if self.sqlite_path is None:
            self.check_connection()
            if [t for t in self.table_names() if t != "alembic_version"]:
                raise CatalogError(
                    f"catalog {self.shown_url} already has tables; nothing was changed",
                    action=Action(
                        "create_catalog_only_new",
                        "a new catalog is only started where there is none",
                    ),
                )
        self._prepare_file((), new=True)
        self.check_connection()
        self.migrate()
        return self

    def _prepare_file(self, evidence: Sequence[Path], *, new: bool = False) -> None:
        path = self.sqlite_path
        if path is None:
            return
        marker = self.marker_path
        assert marker is not None
        if path.exists() or path.is_symlink():
            if not marker.exists():
                _write_marker(marker, path)  # catalogs made before the marker existed
            return
        if not new:
            lost = self._lost_file(evidence)
            if lost is not None:
                raise lost
        for suffix in ("-wal", "-shm", "-journal"):
            # left by a lost file: SQLite would replay a stale WAL into the new one
            stale = path.with_name(path.name + suffix)
            if stale.exists():
                with contextlib.suppress(OSError):
                    stale.rename(stale.with_name(f"{stale.name}.lost-{os.getpid()}"))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        except FileExistsError:
            pass  # another engine created it a moment ago
        except OSError as exc:
            raise CatalogUnavailable(
                f"catalog {self.shown_url}: cannot create the SQLite file: {exc.strerror}",
                hint="check that the directory exists and is writable",
            ) from None
        if new:
            with contextlib.suppress(FileNotFoundError):
                marker.unlink()
        _write_marker(marker, path)

    def _lost_file(self, evidence: Sequence[Path] = ()) -> CatalogUnavailable | None:
        """The SQLite file is missing but a catalog existed: the sentence saying so."""
        path, marker = self.sqlite_path, self.marker_path
        if path is None or marker is None or path.exists() or path.is_symlink():
            return None
        lost = (
            f"its marker {marker} says Sendense created it"
            if marker.exists()
            else next((f"{place} holds backups" for place in evidence if _holds_files(place)), None)
        )
        if lost is None:
            return None
        return CatalogUnavailable(
            f"catalog file {path} is missing, but {lost}: Sendense will not start an "
            "empty catalog over the backups it listed",
            hint="put the file back from a backup, or start a new catalog with "
            "`sendense catalog create` and bring the backups back with "
            "`sendense repo import NAME --path PATH`",
        )

    def table_names(self) -> list[str]:
        try:
            return sorted(inspect(self.engine).get_table_names())
        except (DBAPIError, SQLAlchemyError) as exc:
            raise self._explain(exc) from None

    def dispose(self) -> None:
        self.engine.dispose()

    # -- sessions ----------------------------------------------------------

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed on success, rolled back on error.

        Every outage (see the module doc) leaves as CatalogUnavailable, whichever
        store and statement met it; other database errors pass through unchanged.
        A SQLite file that was removed or replaced is noticed before the session
        reads and again before it commits, so nothing is taken as written into a
        file that is gone.
        """
        began = time.monotonic()
        self._check_file()
        session = self._sessions()
        try:
            yield session
            self._check_file()
            session.commit()
            talked, wrote = bool(session.info.get(_TALKED)), bool(session.info.get(_WROTE))
        except (DBAPIError, SQLAlchemyError) as exc:
            _rollback_quietly(session)
            error = self._explain(exc)
            if isinstance(error, CatalogUnavailable):
                raise error from exc
            raise
        except sqlite3.Error as exc:  # raised by the driver outside a statement
            _rollback_quietly(session)
            error = self._explain(exc)
            if isinstance(error, CatalogUnavailable):
                raise error from exc
            raise
        except BaseException:
            _rollback_quietly(session)
            raise
        finally:
            with contextlib.suppress(Exception):
                session.close()
        if talked:  # a session that ran no statement proves nothing
            self._answered(wrote=wrote, began=began)


_LOST_HINT = (
    "nothing more is written to it; put the file back from a backup and restart "
    "Sendense, or start a new catalog with `sendense catalog create` and bring the "
    "backups back with `sendense repo import NAME --path PATH`"
)


class _QuietPoolFilter(logging.Filter):
    """SQLAlchemy's pool logs a traceback each time it cannot roll back a connection
    that died with its server: the outage the catalog already reported, once."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        return not isinstance(explain_db_error("", exc), CatalogUnavailable)


_QUIET_POOL = _QuietPoolFilter()

#: Session.info keys: the session ran a statement (the database answered), and one
#: that writes (only that ends a read-only outage)
_TALKED = "sendense_talked"
_WROTE = "sendense_wrote"


def _note_dml(state: Any) -> None:
    state.session.info[_TALKED] = True
    if state.is_insert or state.is_update or state.is_delete:
        state.session.info[_WROTE] = True


def _note_flush(session: Session, _context: Any) -> None:
    session.info[_TALKED] = session.info[_WROTE] = True


def _rollback_quietly(session: Session) -> None:
    """Roll back; on a dead connection the rollback fails too, and that second error
    must not hide the first."""
    with contextlib.suppress(Exception):
        session.rollback()


def _unwritable(path: Path) -> str | None:
    """Which of the SQLite file and its WAL cannot be written now, or None.

    access(2), not open(): it says so for root too (an immutable file, a read-only
    filesystem), and closing a second descriptor of the file would drop the POSIX
    locks SQLite holds on it in this process.
    """
    for candidate in (path, path.with_name(path.name + "-wal")):
        if candidate.exists() and not os.access(candidate, os.W_OK):
            return f"{candidate.name} cannot be written"
    return None


def _holds_files(place: Path) -> bool:
    try:
        return any(place.iterdir())
    except OSError:
        return False


def _write_marker(marker: Path, path: Path) -> None:
    text = (
        f"Sendense created the catalog {path.name} in this directory "
        f"(noted {datetime.now(UTC):%Y-%m-%d %H:%M} UTC).\n"
        "While this file exists and the catalog is missing, Sendense refuses to start an\n"
        "empty catalog over the backups it listed: put the catalog back from a backup,\n"
        "or run `sendense catalog create` and `sendense repo import`.\n"
    )
    with contextlib.suppress(OSError):
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the console read while the daemon writes; the busy timeout makes
    # two processes wait for each other instead of failing with "locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
