"""A throwaway MariaDB server for the catalog tests.

``mariadb_server`` (session scope) initialises a data directory under the
session's tmp dir, starts ``mariadbd`` on a private Unix socket with networking
off, and stops it when the session ends. ``mariadb_url`` gives every test its
own fresh database (``test_<n>``) on that server, dropped afterwards.

When MariaDB is not installed the tests that need it are skipped with the
reason printed (the common plugin's summary says so loudly).

Test code may start processes directly (engine code may not): this fixture
runs ``mariadb-install-db`` and ``mariadbd`` with ``subprocess``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

MISSING_REASON = "mariadb-server is not installed: apt-get install mariadb-server"

#: a user with a password, for the wrong-password tests
APP_USER = "sendense"
APP_PASSWORD = "s3cret-Pa55"


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or next(
            (
                str(Path(d) / name)
                for d in ("/usr/sbin", "/usr/local/sbin", "/usr/libexec")
                if (Path(d) / name).is_file()
            ),
            None,
        )
        if found:
            return found
    return None


@dataclass
class MariaDBServer:
    """One running mariadbd on a private socket."""

    base: Path
    datadir: Path
    socket: Path
    pid_file: Path
    log_file: Path
    process: subprocess.Popen[bytes] | None = None
    #: the mariadbd command line, for restart()
    command: list[str] = field(default_factory=list)
    _counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def url(
        self,
        database: str = "sendense",
        *,
        user: str = "root",
        password: str | None = None,
    ) -> str:
        """SQLAlchemy URL for a database on this server (pymysql over the socket)."""
        auth = user if password is None else f"{user}:{password}"
        return f"mysql+pymysql://{auth}@localhost/{database}?unix_socket={self.socket}"

    def connect(self, database: str | None = None) -> Any:
        import pymysql

        return pymysql.connect(
            unix_socket=str(self.socket),
            user="root",
            database=database,
            autocommit=True,
            connect_timeout=5,
        )

    def execute(self, *statements: str, database: str | None = None) -> list[tuple[Any, ...]]:
        """Run SQL as root; returns the rows of the last statement."""
        conn = self.connect(database)
        try:
            rows: list[tuple[Any, ...]] = []
            with conn.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)
                    rows = list(cursor.fetchall())
            return rows
        finally:
            conn.close()

    def create_database(self, prefix: str = "test") -> str:
        name = f"{prefix}_{next(self._counter)}"
        self.execute(
            f"DROP DATABASE IF EXISTS `{name}`",
            f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
            f"GRANT ALL PRIVILEGES ON `{name}`.* TO '{APP_USER}'@'localhost'",
        )
        return name

    def drop_database(self, name: str) -> None:
        self.execute(f"DROP DATABASE IF EXISTS `{name}`")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, *, kill: bool = False, timeout: float = 20.0) -> None:
        """Stop the server (SIGTERM: clean shutdown; kill=True: SIGKILL, a crash)."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def restart(self, *, timeout: float = 30.0) -> None:
        """Start the stopped (or killed) server again on the same data directory."""
        self.stop()
        _launch(self, timeout)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"


def start_mariadb(base: Path, *, timeout: float = 30.0) -> MariaDBServer:
    """Initialise a data directory under ``base`` and start a server on a socket there.

    Skips the calling test when MariaDB is not installed.
    """
    if os.environ.get("SENDENSE_TEST_NO_MARIADB"):
        pytest.skip("SENDENSE_TEST_NO_MARIADB is set")
    install_db = _find("mariadb-install-db", "mysql_install_db")
    mariadbd = _find("mariadbd", "mysqld")
    if install_db is None or mariadbd is None:
        pytest.skip(MISSING_REASON)
    base.mkdir(parents=True, exist_ok=True)
    server = MariaDBServer(
        base=base,
        datadir=base / "data",
        socket=base / "mysqld.sock",
        pid_file=base / "mysqld.pid",
        log_file=base / "mysqld.err",
    )
    if len(str(server.socket)) > 100:  # sun_path is 108 bytes
        pytest.fail(f"socket path too long for a Unix socket: {server.socket}")
    as_root = os.geteuid() == 0
    # the server's temporary tables live under the test's own directory, not in the
    # shared /tmp (a parallel run once lost one there mid-install: "Error on delete of
    # /tmp/#sql-temptable-…")
    (base / "tmp").mkdir(exist_ok=True)
    user_args = (
        ["--user=root", f"--tmpdir={base / 'tmp'}"] if as_root else [f"--tmpdir={base / 'tmp'}"]
    )
    install = subprocess.run(
        [
            install_db,
            "--no-defaults",
            f"--datadir={server.datadir}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            *user_args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if install.returncode != 0:
        pytest.fail(f"mariadb-install-db failed:\n{install.stdout}\n{install.stderr}")
    server.command = [
        mariadbd,
        "--no-defaults",
        f"--datadir={server.datadir}",
        f"--socket={server.socket}",
        "--skip-networking",
        f"--pid-file={server.pid_file}",
        f"--log-error={server.log_file}",
        "--skip-name-resolve",
        "--innodb-buffer-pool-size=64M",
        # a test server: durability across power loss does not matter here, but a
        # committed row must survive the server being killed (the outage tests kill
        # it mid-job): 2 hands the log to the OS at each commit, without an fsync
        "--innodb-flush-log-at-trx-commit=2",
        "--innodb-doublewrite=0",
        "--max-connections=300",
        *user_args,
    ]
    _launch(server, timeout)
    server.execute(
        f"CREATE USER '{APP_USER}'@'localhost' IDENTIFIED BY '{APP_PASSWORD}'",
        "CREATE DATABASE sendense CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
        f"GRANT ALL PRIVILEGES ON sendense.* TO '{APP_USER}'@'localhost'",
    )
    return server


def _launch(server: MariaDBServer, timeout: float) -> None:
    """Run mariadbd and wait until it answers."""
    server.process = subprocess.Popen(
        server.command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            pytest.fail(f"mariadbd exited at start:\n{server.log_tail()}")
        if server.socket.exists():
            try:
                server.execute("SELECT 1")
                break
            except Exception:
                pass
        if time.monotonic() > deadline:
            server.stop(kill=True)
            pytest.fail(
                f"mariadbd did not accept connections in {timeout:g}s:\n{server.log_tail()}"
            )
        time.sleep(0.05)


@pytest.fixture(scope="session")
def mariadb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    """A MariaDB server for the whole session, on a private socket."""
    server = start_mariadb(tmp_path_factory.mktemp("mariadb"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mariadb_private(tmp_path: Path) -> Iterator[MariaDBServer]:
    """A server of this test's own, which the test may stop or kill."""
    server = start_mariadb(tmp_path / "mdb")
    try:
        yield server
    finally:
        server.stop(kill=True)


@pytest.fixture
def mariadb_url(mariadb_server: MariaDBServer) -> Iterator[str]:
    """A fresh, empty database on the session server (root over the socket)."""
    name = mariadb_server.create_database()
    yield mariadb_server.url(name)
    if mariadb_server.running:
        mariadb_server.drop_database(name)
