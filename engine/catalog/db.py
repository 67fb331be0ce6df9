"""The catalog database: connect, migrate, hand out sessions.

SQLite in the state directory is the embedded default; a ``mysql+pymysql://``
URL points several appliances at one MariaDB/MySQL catalog. Connection
problems become a CatalogError with a sentence an operator can act on.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from engine.config import redact_url
from engine.errors import CatalogError, CatalogVersionError
from engine.private import make_private_dirs, open_private, tighten

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
#: files SQLite keeps next to the database, with the database's content in them
SQLITE_SIDECARS = ("-wal", "-shm", "-journal")

# MySQL/MariaDB client error codes we explain in words.
_MYSQL_ACCESS_DENIED = 1045
_MYSQL_UNKNOWN_DATABASE = 1049
_MYSQL_CANT_CONNECT = (2002, 2003, 2005, 2006, 2013)


def alembic_config() -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def explain_db_error(url: str, exc: BaseException) -> CatalogError:
    """Turn a driver exception into a sentence that names what to fix."""
    shown = redact_url(url)
    orig = getattr(exc, "orig", exc)
    code = orig.args[0] if getattr(orig, "args", None) and isinstance(orig.args[0], int) else None
    text = str(orig).strip()
    if code == _MYSQL_ACCESS_DENIED:
        return CatalogError(
            f"catalog {shown}: the server refused the user name or password",
            hint="check the credentials in SENDENSE_DB_URL or [catalog] url",
        )
    if code == _MYSQL_UNKNOWN_DATABASE:
        return CatalogError(
            f"catalog {shown}: the database does not exist on the server",
            hint="create it first, e.g. CREATE DATABASE sendense CHARACTER SET utf8mb4",
        )
    if code in _MYSQL_CANT_CONNECT:
        return CatalogError(
            f"catalog {shown}: cannot reach the database server ({text})",
            hint="is the server running, and are host, port or socket right?",
        )
    if "unable to open database file" in text:
        return CatalogError(
            f"catalog {shown}: cannot open the SQLite file",
            hint="check that the directory exists and is writable",
        )
    if "file is not a database" in text:
        return CatalogError(
            f"catalog {shown}: the file is not a SQLite database",
            hint="point SENDENSE_DB_URL at the right file or move this one away",
        )
    if "database is locked" in text:
        return CatalogError(
            f"catalog {shown}: the database stayed locked by another process",
            hint="another Sendense process holds a long write; try again",
        )
    return CatalogError(f"catalog {shown}: {text or exc.__class__.__name__}")


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
        #: the SQLite database file, when the catalog is one
        self._sqlite_file: Path | None = None
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                self._sqlite_file = Path(parsed.database)
                try:
                    make_private_dirs(Path(parsed.database).parent)
                except OSError as exc:
                    raise CatalogError(
                        f"catalog {redact_url(url)}: cannot create directory "
                        f"{Path(parsed.database).parent}: {exc.strerror}"
                    ) from None
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
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._migrate_lock = threading.Lock()

    @property
    def shown_url(self) -> str:
        return redact_url(self.url)

    # -- lifecycle ---------------------------------------------------------

    def check_connection(self) -> None:
        """Raise CatalogError with a readable reason if the database is unreachable."""
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except (DBAPIError, SQLAlchemyError) as exc:
            raise explain_db_error(self.url, exc) from None

    def current_revision(self) -> str | None:
        try:
            with self.engine.connect() as conn:
                return MigrationContext.configure(conn).get_current_revision()
        except (DBAPIError, SQLAlchemyError) as exc:
            raise explain_db_error(self.url, exc) from None

    def migrate(self) -> None:
        """Bring the schema to this version; refuse a catalog from a newer Sendense."""
        from alembic import command

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
                raise explain_db_error(self.url, exc) from None

    def open(self) -> Catalog:
        self._keep_sqlite_private()
        self.check_connection()
        self.migrate()
        return self

    def _keep_sqlite_private(self) -> None:
        """The SQLite file is 0600 before SQLite first opens it (its -wal, -shm and
        -journal files take the database file's mode); an older one is closed to
        other users. A file that cannot be opened is left for SQLite to explain."""
        if self._sqlite_file is None:
            return
        with contextlib.suppress(OSError):
            os.close(open_private(self._sqlite_file, os.O_RDONLY))
        for suffix in SQLITE_SIDECARS:
            with contextlib.suppress(OSError):
                tighten(f"{self._sqlite_file}{suffix}")

    def table_names(self) -> list[str]:
        return sorted(inspect(self.engine).get_table_names())

    def dispose(self) -> None:
        self.engine.dispose()

    # -- sessions ----------------------------------------------------------

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed on success, rolled back on error."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except DBAPIError as exc:
            session.rollback()
            if isinstance(exc.orig, Exception) and _is_connection_error(exc):
                raise explain_db_error(self.url, exc) from exc
            raise
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()


def _is_connection_error(exc: DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    code = orig.args[0] if orig is not None and orig.args else None
    return code in _MYSQL_CANT_CONNECT or code == _MYSQL_ACCESS_DENIED


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the console read while the daemon writes; the busy timeout makes
    # two processes wait for each other instead of failing with "locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
