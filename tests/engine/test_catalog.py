"""The catalog database on SQLite and on a real MariaDB server.

Every test that takes ``catalog`` or ``catalog_url`` runs twice: ``[sqlite]``
and ``[mariadb]``, each on a fresh, empty database.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select, text

from engine.catalog import Base, Catalog
from engine.catalog.audit import AuditStore
from engine.catalog.jobs import JobStore
from engine.catalog.models import Job, Policy, Repository
from engine.catalog.repositories import RepositoryStore
from engine.clock import FixedClock
from engine.config import sqlite_url
from engine.errors import CatalogError, CatalogVersionError, NotFoundError, ValidationError
from sendense_tui.hints import cli_hint
from tests.plugins.mariadb import APP_PASSWORD, APP_USER, MariaDBServer

# -- schema and migrations -------------------------------------------------------


def test_migrations_create_every_table(catalog: Catalog) -> None:
    tables = set(catalog.table_names())
    assert set(Base.metadata.tables) <= tables
    assert tables - set(Base.metadata.tables) == {"alembic_version"}


def test_schema_head_is_the_newest_migration_and_an_up_to_date_catalog_skips_alembic(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    from alembic.script import ScriptDirectory

    from engine.catalog.db import SCHEMA_HEAD, alembic_config

    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == SCHEMA_HEAD
    url = sqlite_url(tmp_path / "c.db")
    Catalog(url).open().dispose()  # first open: created and migrated with alembic
    probe = (
        "import sys; from engine.catalog import Catalog; "
        f"c = Catalog({url!r}).open(); c.dispose(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_migrating_twice_changes_nothing(catalog_url: str, clock: FixedClock) -> None:
    first = Catalog(catalog_url).open()
    try:
        RepositoryStore(first).add(name="main", kind="local", path="/srv/a", now=clock.now())
        revision = first.current_revision()
        assert revision is not None
        first.migrate()
    finally:
        first.dispose()
    second = Catalog(catalog_url).open()  # another engine starting on the same catalog
    try:
        assert second.current_revision() == revision
        assert [r.name for r in RepositoryStore(second).list()] == ["main"]
    finally:
        second.dispose()


def test_schema_from_migrations_matches_the_models(catalog: Catalog) -> None:
    """Alembic's autogenerate comparison finds nothing to change.

    Nothing is filtered out: on SQLAlchemy 2.1 / Alembic 1.x both backends
    compare clean (UTCDateTime compares as its DATETIME impl, JSON as JSON —
    MariaDB reports LONGTEXT+json_valid, which the MySQL dialect maps back to
    JSON). If a future version reports pure dialect noise, filter it here and
    say why, rather than loosening the comparison.
    """
    with catalog.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        differences = compare_metadata(context, Base.metadata)
    assert differences == []


def test_a_catalog_from_a_newer_sendense_is_refused_untouched(
    catalog: Catalog, clock: FixedClock
) -> None:
    RepositoryStore(catalog).add(name="keep-me", kind="local", path="/srv/k", now=clock.now())
    with catalog.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))

    newer = Catalog(catalog.url)
    try:
        with pytest.raises(CatalogVersionError) as caught:
            newer.open()
    finally:
        newer.dispose()
    assert "newer Sendense" in str(caught.value)
    assert "9999_future" in str(caught.value)
    assert caught.value.hint and "untouched" in caught.value.hint

    with catalog.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == (
            "9999_future"
        )
    assert [r.name for r in RepositoryStore(catalog).list()] == ["keep-me"]


# -- values round-trip -----------------------------------------------------------


def test_times_come_back_timezone_aware_utc_with_microseconds(catalog: Catalog) -> None:
    created = datetime(2026, 11, 24, 9, 15, 30, 123456, tzinfo=UTC)
    # a time given in another zone is stored as the same instant in UTC
    seen = datetime(2026, 11, 24, 11, 0, 0, 654321, tzinfo=timezone(timedelta(hours=2)))
    store = RepositoryStore(catalog)
    repo = store.add(name="t", kind="local", path="/srv/t", now=created, last_seen_at=seen)

    back = store.get(repo.id)
    assert back.created_at == created
    assert back.created_at.tzinfo is UTC
    assert back.created_at.microsecond == 123456
    assert back.last_seen_at == seen
    assert back.last_seen_at is not None and back.last_seen_at.tzinfo is UTC
    assert back.last_seen_at.hour == 9 and back.last_seen_at.microsecond == 654321

    # comparisons in SQL use the same instant: one microsecond apart is apart
    with catalog.session() as session:
        at_or_after = session.scalars(
            select(Repository.name).where(Repository.created_at >= created)
        ).all()
        after = session.scalars(
            select(Repository.name).where(
                Repository.created_at > created + timedelta(microseconds=1)
            )
        ).all()
    assert at_or_after == ["t"]
    assert after == []


def test_json_columns_round_trip(catalog: Catalog, clock: FixedClock) -> None:
    options: dict[str, Any] = {
        "vers": "4.1",
        "opts": ["ro", "noatime"],
        "nested": {"deep": [1, 2.5, None, True]},
        "text": "Überprüfung ✓",
    }
    repo = RepositoryStore(catalog).add(
        name="j", kind="nfs", path="/mnt/j", now=clock.now(), options=options
    )
    sources = [{"vm": "web01", "disks": [{"name": "sda", "source": "/dev/vg/web01"}]}]
    with catalog.session() as session:
        session.add(
            Policy(
                name="nightly",
                schedule="0 2 * * *",
                target_repository_id=repo.id,
                sources=sources,
                retention={"keep_last": 7},
                created_at=clock.now(),
            )
        )
    job = JobStore(catalog).create(
        "copy", "copy j", now=clock.now(), params={"ids": [1, 2, 3], "force": False}
    )

    assert RepositoryStore(catalog).get("j").options == options
    with catalog.session() as session:
        policy = session.scalars(select(Policy)).one()
        assert policy.sources == sources
        assert policy.retention == {"keep_last": 7}
        assert session.get(Job, job.id).params == {"ids": [1, 2, 3], "force": False}  # type: ignore[union-attr]
        assert session.get(Job, job.id).result is None  # type: ignore[union-attr]


# -- stores ----------------------------------------------------------------------


def test_repository_store_by_name_and_id(catalog: Catalog, clock: FixedClock) -> None:
    store = RepositoryStore(catalog)
    main = store.add(name="main", kind="local", path="/srv/main", now=clock.now())
    store.add(name="offsite", kind="nfs", path="/mnt/offsite", now=clock.now(), server="nas")

    assert store.get("main").id == main.id
    assert store.get(main.id).name == "main"
    assert store.get(str(main.id)).name == "main"
    assert [r.name for r in store.list()] == ["main", "offsite"]

    with pytest.raises(ValidationError, match="already exists"):
        store.add(name="main", kind="local", path="/srv/other", now=clock.now())
    assert len(store.list()) == 2

    with pytest.raises(NotFoundError) as caught:
        store.get("nope")
    assert "'nope' does not exist" in str(caught.value)
    # the engine names the next step; the CLI spells it as its own command
    assert caught.value.action is not None and caught.value.action.key == "list_repositories"
    assert cli_hint(caught.value) == "`sendense repo list` shows the repositories"
    with pytest.raises(NotFoundError):
        store.get(9999)


def test_audit_query_filters(catalog: Catalog, clock: FixedClock) -> None:
    audit = AuditStore(catalog)
    start = clock.now()
    rows = [
        ("debug", "jobs", "job.progress", "copy 10%"),
        ("info", "jobs", "job.started", "started: copy web01"),
        ("warning", "capacity", "capacity.threshold_crossed", "repository main is 85% full"),
        ("error", "copy", "copy.failed", "copy of web01 to offsite failed"),
        ("critical", "capacity", "capacity.full", "repository main is full"),
    ]
    for level, source, kind, message in rows:
        audit.append(at=clock.now(), level=level, source=source, kind=kind, message=message)
        clock.advance(60)

    def messages(**filters: Any) -> list[str]:
        return [entry.message for entry in audit.query(**filters)]

    assert len(messages()) == 5
    assert messages()[0] == "repository main is full"  # newest first
    assert messages(min_level="error") == [
        "repository main is full",
        "copy of web01 to offsite failed",
    ]
    assert messages(min_level="warning", source="capacity") == [
        "repository main is full",
        "repository main is 85% full",
    ]
    assert messages(text="web01") == ["copy of web01 to offsite failed", "started: copy web01"]
    assert messages(text="threshold") == ["repository main is 85% full"]  # matches the kind
    assert messages(since=start + timedelta(minutes=3)) == [
        "repository main is full",
        "copy of web01 to offsite failed",
    ]
    assert messages(levels=["debug"]) == ["copy 10%"]
    assert messages(limit=2) == ["repository main is full", "copy of web01 to offsite failed"]
    newest = audit.query(limit=1)[0]
    assert audit.query(after_id=newest.id) == []


# -- bad input -------------------------------------------------------------------


def _open_error(url: str) -> CatalogError:
    catalog = Catalog(url)
    try:
        with pytest.raises(CatalogError) as caught:
            catalog.open()
    finally:
        catalog.dispose()
    return caught.value


def test_unreachable_server_says_so_without_the_password() -> None:
    error = _open_error("mysql+pymysql://u:hunter2pw@127.0.0.1:1/x")
    assert "cannot reach the database server" in str(error)
    assert "hunter2pw" not in error.for_humans()
    assert "u:***@127.0.0.1:1/x" in str(error)


def test_wrong_password_is_refused(mariadb_server: MariaDBServer) -> None:
    error = _open_error(mariadb_server.url("sendense", user=APP_USER, password="wrong-pw-42"))
    assert "refused the user name or password" in str(error)
    assert "wrong-pw-42" not in error.for_humans()
    # and the right password works, so it really was the password
    good = Catalog(mariadb_server.url("sendense", user=APP_USER, password=APP_PASSWORD))
    try:
        good.check_connection()
    finally:
        good.dispose()


def test_unknown_database_is_named(mariadb_server: MariaDBServer) -> None:
    error = _open_error(mariadb_server.url("no_such_catalog"))
    assert "the database does not exist" in str(error)
    assert error.hint and "CREATE DATABASE" in error.hint


def test_sqlite_path_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("x")
    with pytest.raises(CatalogError) as caught:
        Catalog(sqlite_url(tmp_path / "plain-file" / "catalog.db"))
    assert "cannot create directory" in str(caught.value)
    assert str(tmp_path / "plain-file") in str(caught.value)


def test_sqlite_path_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "catalog.db").mkdir()
    error = _open_error(sqlite_url(tmp_path / "catalog.db"))
    assert "cannot open the SQLite file" in str(error)


def test_a_file_that_is_not_sqlite(tmp_path: Path) -> None:
    bogus = tmp_path / "catalog.db"
    bogus.write_bytes(b"this is a qcow2 image, honest\n" * 200)
    error = _open_error(sqlite_url(bogus))
    assert "not a SQLite database" in str(error)
    assert bogus.read_bytes() == b"this is a qcow2 image, honest\n" * 200  # left alone


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not a url at all", "is not a database URL"),
        ("oracle+nosuchdriver://x/y", "no driver for"),
    ],
    ids=["garbage", "unknown-driver"],
)
def test_garbage_urls(url: str, expected: str) -> None:
    with pytest.raises(CatalogError, match=expected):
        Catalog(url)


def test_a_malformed_url_does_not_show_its_password() -> None:
    with pytest.raises(CatalogError) as caught:
        Catalog("mysql+pymysql//sendense:hunter2pw@db1/sendense")  # ':' missing
    assert "is not a database URL" in str(caught.value)
    assert "hunter2pw" not in caught.value.for_humans()


def test_mariadb_going_down_mid_session(mariadb_private: MariaDBServer, clock: FixedClock) -> None:
    """The server dies under a connected catalog: the next call says so in words."""
    name = mariadb_private.create_database()
    catalog = Catalog(mariadb_private.url(name)).open()
    try:
        store = RepositoryStore(catalog)
        store.add(name="before", kind="local", path="/srv/b", now=clock.now())
        mariadb_private.stop(kill=True)
        with pytest.raises(CatalogError) as caught:
            store.list()
        assert "cannot reach the database server" in str(caught.value)
    finally:
        catalog.dispose()
