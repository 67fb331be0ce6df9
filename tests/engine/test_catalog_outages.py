"""Catalog outages are survivable: the catalog killed, made read-only or removed mid-job.

The end-to-end tests run the real ``sendense backup run`` in a subprocess against a
real throwaway MariaDB (killed with SIGKILL, then restarted) or a real SQLite file
(made immutable with chattr, or removed), on a source slow enough to be caught
mid-backup: a qemu-storage-daemon NBD export behind a throttle filter. They assert
what the operator and the repository get: one sentence and exit code 3, no
traceback, no partial file, no file taken for a backup that is not one, the job
not left ``running`` once the next engine has settled it, no second chain for the
disk, and a chain that checks OK.

Engine-level tests cover the catalog's own sentences (one place for every store),
the job runner (a job that loses its catalog stops, is settled once and is never
re-run) and the background loops (one warning per outage, not one per tick; back
to work when the catalog is).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from engine.catalog import Catalog
from engine.catalog.repositories import RepositoryStore
from engine.clock import FixedClock
from engine.config import JobSettings, default_settings, sqlite_url
from engine.errors import CatalogError, CatalogUnavailable
from engine.jobs import CatalogLost, JobContext
from engine.runtime import Engine
from engine.tools import qemu_img
from engine.unrecorded import CATALOG_FAILURE
from sendense_tui.cli import main
from tests.plugins.mariadb import APP_PASSWORD, APP_USER, MariaDBServer

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chattr +i)")


# -- helpers ------------------------------------------------------------------------


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def chattr(flag: str, *paths: Path) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, timeout=30)


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """Make files read-only even for root (never the -shm file: SQLite maps it, and an
    immutable mapping kills the process with SIGBUS)."""
    present = [p for p in paths if p.exists()]
    chattr("+i", *present)
    try:
        yield
    finally:
        chattr("-i", *present)


class SlowSource:
    """A disk served over NBD by qemu-storage-daemon through a throttle filter: a
    backup of it takes seconds, so a test can act while it runs."""

    def __init__(self, base: Path, size: int = 8 * MiB, bytes_per_second: int = MiB) -> None:
        base.mkdir(parents=True, exist_ok=True)
        self.image = base / "slow-source.raw"
        self.image.write_bytes(os.urandom(size))
        self.socket = base / "slow-source.sock"
        self.process = subprocess.Popen(
            [
                "qemu-storage-daemon",
                "--object",
                f"throttle-group,id=slow,x-bps-read={bytes_per_second}",
                "--blockdev",
                f"driver=file,filename={self.image},node-name=file,read-only=on",
                "--blockdev",
                "driver=throttle,throttle-group=slow,file=file,node-name=disk,read-only=on",
                "--nbd-server",
                f"addr.type=unix,addr.path={self.socket}",
                "--export",
                "type=nbd,id=export,node-name=disk,name=sda",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for("the NBD socket", self.socket.exists, 30)
        self.uri = f"nbd+unix:///sda?socket={self.socket}"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


@pytest.fixture
def slow_source(tmp_path: Path) -> Iterator[SlowSource]:
    source = SlowSource(tmp_path / "source")
    try:
        yield source
    finally:
        source.close()


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


class Appliance:
    """A state directory and catalog URL driven through the real `sendense` command:
    the job the catalog is taken from runs in a process of its own (``start``), the
    commands around it run ``main()`` in this process (``run``: same code, no
    interpreter start-up on a busy machine)."""

    def __init__(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str | None = None
    ) -> None:
        self.state = tmp_path / "state"
        self.catalog_file = self.state / "catalog.db"
        self.repository = self.state / "repository"
        config = tmp_path / "sendense.toml"
        # short lease and heartbeat: a job notices a lost catalog within a second
        config.write_text("[jobs]\nlease_seconds = 4\nheartbeat_seconds = 1\n")
        for name in [k for k in os.environ if k.startswith("SENDENSE_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("SENDENSE_STATE_DIR", str(self.state))
        monkeypatch.setenv("SENDENSE_CONFIG", str(config))
        monkeypatch.setenv("SENDENSE_DB_URL", db_url or sqlite_url(self.catalog_file))
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))

    def run(self, *args: str) -> Ran:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse
                code = int(exc.code or 0)
        return Ran(code, out.getvalue(), err.getvalue())

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "sendense_tui.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )

    def json(self, *args: str) -> Any:
        done = self.run(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def json_lines(self, *args: str) -> list[Any]:
        """What a listing's ``--all --json`` streams: one JSON object per line."""
        done = self.run(*args, "--all", "--json")
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]

    def backup(self, source: str, *, wait_for_partial: bool = False) -> subprocess.Popen[str]:
        proc = self.start("backup", "run", "--repo", "local", "--vm", "web", "--disk", source)
        if wait_for_partial:
            # the convert is under way once its hidden partial file exists
            wait_for("the backup's partial file", lambda: self.partials() or proc.poll())
            assert proc.poll() is None, proc.communicate()
        return proc

    def partials(self) -> list[Path]:
        return sorted(self.repository.rglob(".*.partial"))

    def images(self) -> list[Path]:
        return sorted(self.repository.rglob("*.qcow2"))


def finished(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def assert_one_sentence(err: str, *words: str) -> None:
    """What an operator gets: `sendense: <sentence>` and at most a hint line."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert 1 <= len(lines) <= 2, err
    assert lines[0].startswith("sendense: "), err
    if len(lines) == 2:
        assert lines[1].startswith("  hint: "), err
    for word in words:
        assert word in lines[0], err


def assert_files_consistent(app: Appliance) -> None:
    """No half file anywhere; every image that is there is a whole, clean qcow2."""
    assert app.partials() == []
    for image in app.images():
        assert qemu_img.check(image, fmt="qcow2").clean, image


def assert_settled_and_recoverable(app: Appliance, job_id: int, fresh_source: Path) -> None:
    """After the outage: the stopped job is failed (not running, not re-run), a new
    backup works, the disk has one chain and it checks OK."""
    job = app.json("jobs", "show", str(job_id))
    assert job["state"] == "failed", job
    assert CATALOG_FAILURE in (job["error"] or ""), job
    assert not list((app.state / "unrecorded-jobs").glob("job-*.json"))
    again = app.run(
        "backup", "run", "--repo", "local", "--vm", "web", "--disk", f"sda={fresh_source}"
    )
    assert again.returncode == 0, again.stderr
    jobs = app.json("jobs", "list")
    assert [j["state"] for j in jobs if j["id"] == job_id] == ["failed"]
    assert not [j for j in jobs if j["state"] == "running"], jobs
    assert sum(j["kind"] == "backup" and j["state"] == "succeeded" for j in jobs) == 1, jobs
    chains = [c for c in app.json_lines("chain", "show") if (c["vm"], c["disk"]) == ("web", "sda")]
    assert len(chains) == 1, chains
    check = app.run("chain", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert_files_consistent(app)


# -- end to end: the real command, the catalog taken away mid-backup -------------------


def test_mariadb_killed_mid_backup(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mariadb_private: MariaDBServer,
    slow_source: SlowSource,
) -> None:
    app = Appliance(tmp_path, monkeypatch, mariadb_private.url("sendense"))
    proc = app.backup(f"sda={slow_source.uri}", wait_for_partial=True)

    mariadb_private.stop(kill=True)
    code, out, err = finished(proc)

    assert code == 3, err
    assert_one_sentence(err, "job 1", "cannot reach the database server")
    assert out == ""
    assert_files_consistent(app)
    # while the server is down every command says so in one sentence
    down = app.run("jobs", "show", "1")
    assert down.returncode == 3
    assert_one_sentence(down.stderr, "cannot reach the database server")

    mariadb_private.restart()
    # the next engine on this appliance settles the job before anything lists it
    assert_settled_and_recoverable(app, 1, slow_source.image)


@needs_root
def test_sqlite_catalog_made_read_only_mid_backup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow_source: SlowSource
) -> None:
    app = Appliance(tmp_path, monkeypatch)
    proc = app.backup(f"sda={slow_source.uri}", wait_for_partial=True)

    wal = app.catalog_file.with_name("catalog.db-wal")
    with immutable(app.catalog_file, wal):
        code, out, err = finished(proc)
        assert code == 3, err
        assert_one_sentence(err, "job 1", "is read-only")
        assert out == ""
        assert_files_consistent(app)
        # reading still works: nothing was recorded, and the row cannot say how the
        # job ended until the catalog takes writes; the outcome waits on this appliance
        listing = app.run("backup", "list", "--json")
        assert listing.returncode == 0 and json.loads(listing.stdout) == []
        assert list((app.state / "unrecorded-jobs").glob("job-1.json"))

    assert_settled_and_recoverable(app, 1, slow_source.image)


@needs_root
def test_sqlite_catalog_removed_mid_backup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow_source: SlowSource
) -> None:
    app = Appliance(tmp_path, monkeypatch)
    proc = app.backup(f"sda={slow_source.uri}", wait_for_partial=True)

    for path in app.state.glob("catalog.db*"):
        if path.name != "catalog.db.created":
            path.unlink()
    code, out, err = finished(proc)

    assert code == 3, err
    assert_one_sentence(err, "job 1", "was removed while Sendense was using it")
    assert out == ""
    assert_files_consistent(app)
    # the running engine did not bring an empty catalog back, and nor does the next
    assert not app.catalog_file.exists()
    refused = app.run("backup", "list")
    assert refused.returncode == 3
    assert_one_sentence(refused.stderr, "is missing", "will not start an empty catalog")
    assert "sendense catalog create" in refused.stderr and "repo import" in refused.stderr
    assert not app.catalog_file.exists()

    # on purpose, a new catalog; the lost job's kept outcome does not touch it
    created = app.run("catalog", "create")
    assert created.returncode == 0, created.stderr
    again = app.run(
        "backup", "run", "--repo", "local", "--vm", "web", "--disk", f"sda={slow_source.image}"
    )
    assert again.returncode == 0, again.stderr
    jobs = app.json("jobs", "list")
    assert [(j["id"], j["state"]) for j in jobs] == [(1, "succeeded")]
    assert not list((app.state / "unrecorded-jobs").glob("job-*.json"))
    assert app.run("chain", "check").returncode == 0
    assert_files_consistent(app)


# -- CLI commands on a catalog that is down, read-only or missing ----------------------

COMMANDS = [
    ("repo", "list"),
    ("jobs", "list"),
    ("events",),
    ("chain", "check"),
    ("catalog", "status"),
    ("backup", "run", "--repo", "local", "--vm", "web", "--disk", "sda=/dev/null"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_commands_on_an_unreachable_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...]
) -> None:
    url = f"mysql+pymysql://sendense:pw-42@localhost/s?unix_socket={tmp_path}/x"
    app = Appliance(tmp_path, monkeypatch, url)
    done = app.run(*command)
    assert done.returncode == 3, done.stderr
    assert_one_sentence(done.stderr, "cannot reach the database server")
    assert "pw-42" not in done.stderr
    assert done.stdout == ""


@needs_root
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_commands_on_a_read_only_sqlite_catalog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...]
) -> None:
    """Reading a read-only catalog works (an incident is the time to look); what has
    to write says in one sentence that it cannot, with exit code 3."""
    app = Appliance(tmp_path, monkeypatch)
    assert app.run("repo", "list").returncode == 0  # the catalog exists, closed cleanly
    with immutable(app.catalog_file):
        done = app.run(*command)
    if command[0] == "backup" or done.returncode != 0:
        assert done.returncode == 3, done.stderr
        assert_one_sentence(done.stderr, "read-only")
        assert done.stdout == ""
    else:
        assert done.stderr == ""


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_commands_on_a_missing_sqlite_catalog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...]
) -> None:
    app = Appliance(tmp_path, monkeypatch)
    assert app.run("repo", "list").returncode == 0
    app.catalog_file.unlink()
    done = app.run(*command)
    assert done.returncode == 3, done.stderr
    assert_one_sentence(done.stderr, "is missing")
    assert not app.catalog_file.exists()


# -- the catalog's sentences, for every store -------------------------------------------


@pytest.fixture
def sqlite_catalog(tmp_path: Path) -> Iterator[Catalog]:
    catalog = Catalog(sqlite_url(tmp_path / "state" / "catalog.db")).open()
    try:
        yield catalog
    finally:
        catalog.dispose()


def _add(store: RepositoryStore, name: str, clock: FixedClock) -> None:
    store.add(name=name, kind="local", path=f"/srv/{name}", now=clock.now())


@needs_root
def test_sqlite_read_only_is_one_sentence_and_comes_back(
    sqlite_catalog: Catalog, clock: FixedClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = RepositoryStore(sqlite_catalog)
    _add(store, "before", clock)
    path = sqlite_catalog.sqlite_path
    assert path is not None
    with caplog.at_level(logging.WARNING), immutable(path, path.with_name("catalog.db-wal")):
        for name in ("one", "two", "three"):
            with pytest.raises(CatalogUnavailable) as caught:
                _add(store, name, clock)
        assert str(path) in str(caught.value) and "is read-only" in str(caught.value)
        assert caught.value.hint and "chattr -i" in caught.value.hint
        assert sqlite_catalog.outage is not None
    # three failing calls, one warning and no traceback
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].exc_info is None
    _add(store, "after", clock)
    assert sqlite_catalog.outage is None
    assert [r.name for r in store.list()] == ["after", "before"]


@needs_root
def test_connections_opened_while_read_only_do_not_outlive_the_outage(
    sqlite_catalog: Catalog, clock: FixedClock, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite opens a file it may not write read-only and keeps that connection
    read-only: pooled, it would refuse every write after the outage while reads work,
    and the outage would flap between "read-only" and "answers again"."""
    store = RepositoryStore(sqlite_catalog)
    _add(store, "before", clock)
    path = sqlite_catalog.sqlite_path
    assert path is not None
    sqlite_catalog.engine.dispose()  # the next connections are opened during the outage
    with caplog.at_level(logging.WARNING), immutable(path, path.with_name("catalog.db-wal")):
        held = [sqlite_catalog.engine.connect() for _ in range(3)]
        for conn in held:
            assert conn.exec_driver_sql("SELECT count(*) FROM repositories").scalar() == 1
        for conn in held:
            conn.close()  # back into the pool, read-only
        with pytest.raises(CatalogUnavailable):
            _add(store, "refused", clock)
    for name in ("one", "two", "three"):
        _add(store, name, clock)
    assert [r.name for r in store.list()] == ["before", "one", "three", "two"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2 and "is read-only" in warnings[0], warnings
    assert "answers again" in warnings[1]


def test_sqlite_file_removed_or_replaced_under_the_catalog(
    tmp_path: Path, sqlite_catalog: Catalog, clock: FixedClock
) -> None:
    store = RepositoryStore(sqlite_catalog)
    _add(store, "before", clock)
    path = sqlite_catalog.sqlite_path
    assert path is not None
    path.unlink()
    with pytest.raises(CatalogUnavailable, match="was removed while Sendense was using it"):
        _add(store, "lost", clock)
    with pytest.raises(CatalogUnavailable, match="was removed"):
        store.list()  # reads too: the unlinked file is not the catalog any more
    assert not path.exists()  # no connection brought an empty one back

    other = Catalog(sqlite_url(tmp_path / "other" / "catalog.db")).open()
    other.dispose()
    os.replace(tmp_path / "other" / "catalog.db", path)
    with pytest.raises(CatalogUnavailable, match="was replaced by another file"):
        store.list()


def test_a_lost_sqlite_catalog_is_not_started_empty(tmp_path: Path, clock: FixedClock) -> None:
    settings = default_settings(tmp_path / "state")
    engine = Engine(settings, clock=clock).open()
    engine.close()
    catalog_file = settings.state_dir / "catalog.db"
    catalog_file.unlink()
    with pytest.raises(CatalogUnavailable, match="is missing, but its marker"):
        Engine(settings, clock=clock).open()
    assert not catalog_file.exists()

    # a catalog made before the marker existed: the default repository's chains show it
    (settings.state_dir / "catalog.db.created").unlink()
    chain_dir = Path(settings.default_repository) / "chains" / "web" / "sda"
    chain_dir.mkdir(parents=True)
    (chain_dir / "0000-full.qcow2").write_bytes(b"")
    with pytest.raises(CatalogUnavailable, match="holds backups"):
        Engine(settings, clock=clock).open()
    assert not catalog_file.exists()

    # on purpose: `catalog create`, then engines open it; creating twice is refused
    Catalog(sqlite_url(catalog_file)).create().dispose()
    with pytest.raises(CatalogError, match="exists; nothing was changed"):
        Catalog(sqlite_url(catalog_file)).create()
    Engine(settings, clock=clock).open().close()


def test_mariadb_read_only_and_dropped(mariadb_private: MariaDBServer, clock: FixedClock) -> None:
    # read_only binds users without the admin privilege (root would write anyway)
    catalog = Catalog(mariadb_private.url("sendense", user=APP_USER, password=APP_PASSWORD)).open()
    try:
        store = RepositoryStore(catalog)
        _add(store, "before", clock)
        mariadb_private.execute("SET GLOBAL read_only = ON")
        try:
            with pytest.raises(CatalogUnavailable, match="is read-only") as caught:
                _add(store, "during", clock)
            assert APP_PASSWORD not in caught.value.for_humans()
        finally:
            mariadb_private.execute("SET GLOBAL read_only = OFF")
        _add(store, "after", clock)
        mariadb_private.execute("DROP DATABASE sendense")
        with pytest.raises(CatalogUnavailable):
            store.list()
    finally:
        catalog.dispose()


# -- jobs and background loops ------------------------------------------------------------


class Outage:
    """Take one test catalog away and bring it back: MariaDB killed and restarted, or
    the SQLite file made immutable and writable again."""

    def __init__(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.server: MariaDBServer | None = None
        self._undo: contextlib.ExitStack = contextlib.ExitStack()
        if kind == "mariadb":
            self.server = request.getfixturevalue("mariadb_private")
            self.url = self.server.url("sendense")
        else:
            if os.geteuid() != 0:
                pytest.skip("needs root (chattr +i)")
            self.file = tmp_path / "shared" / "catalog.db"
            self.url = sqlite_url(self.file)

    def begin(self) -> None:
        if self.server is not None:
            self.server.stop(kill=True)
        else:
            self._undo.enter_context(immutable(self.file, self.file.with_name("catalog.db-wal")))

    def end(self) -> None:
        if self.server is not None:
            self.server.restart()
        else:
            self._undo.close()


@pytest.fixture(params=["sqlite", "mariadb"])
def outage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Outage]:
    taken = Outage(request.param, tmp_path, request)
    try:
        yield taken
    finally:
        taken._undo.close()


def _engine(tmp_path: Path, url: str, name: str, **overrides: Any) -> Engine:
    settings = replace(
        default_settings(tmp_path / name),
        db_url=url,
        jobs=JobSettings(max_concurrent=2, lease_seconds=3.0, heartbeat_seconds=0.5),
        **overrides,
    )
    engine = Engine(settings, owner=name)
    engine.jobs.poll_interval = 0.05
    return engine.open()


def test_a_job_that_loses_its_catalog_stops_and_is_settled_once(
    tmp_path: Path, outage: Outage
) -> None:
    engine = _engine(tmp_path, outage.url, "first")
    runs: list[int] = []
    stopped: list[BaseException] = []
    inside = threading.Event()

    def work(ctx: JobContext) -> dict[str, Any]:
        runs.append(ctx.job_id)
        inside.set()
        try:
            for step in range(100000):
                ctx.progress(step, 100000, force=True)
                ctx.check()
                time.sleep(0.02)
        except CatalogLost as exc:
            stopped.append(exc)  # what a handler does on cancel: clean up, re-raise
            raise
        return {}

    engine.jobs.register("work", work)
    job = engine.jobs.submit("work", "long work")
    try:
        engine.start()
        wait_for("the job to start", inside.is_set)
        outage.begin()
        kept = wait_for("the job's kept outcome", lambda: engine.jobs.unrecorded.get(job.id))
        assert kept.state == "failed" and stopped
        assert kept.error and kept.error.startswith(CATALOG_FAILURE)
        outage.end()
        # the runner settles it before claiming anything: failed, not run again
        wait_for("the job to be settled", lambda: _state(engine, job.id) == "failed")
        row = engine.job_store.get(job.id)
    finally:
        engine.close()
    assert row.error and row.error.startswith(CATALOG_FAILURE), row.error
    assert row.lease_owner is None
    assert runs == [job.id]
    assert not list((tmp_path / "first" / "unrecorded-jobs").glob("job-*.json"))


def _state(engine: Engine, job_id: int) -> str | None:
    try:
        return engine.job_store.get(job_id).state
    except CatalogUnavailable:
        return None


def test_a_kept_outcome_is_settled_by_the_next_engine_on_the_appliance(
    tmp_path: Path, outage: Outage
) -> None:
    """A CLI process that met the outage has exited; the next engine with the same
    state dir settles its job at open(), before anything could claim it."""
    first = _engine(tmp_path, outage.url, "appliance")
    gate = threading.Event()
    # its next progress write meets the outage (a write: a read-only catalog too)
    first.jobs.register("work", lambda ctx: (gate.wait(30), ctx.progress(1, 2, force=True), {})[-1])
    job = first.jobs.submit("work", "work that outlives its catalog")
    first.start()
    wait_for("the job to run", lambda: first.jobs.running_ids() == [job.id])
    outage.begin()
    gate.set()
    wait_for("the job to end", lambda: not first.jobs.running_ids())
    first.close()
    assert list((tmp_path / "appliance" / "unrecorded-jobs").glob("job-*.json"))
    outage.end()

    second = _engine(tmp_path, outage.url, "appliance")
    try:
        row = second.job_store.get(job.id)
        assert row.state == "failed" and row.lease_owner is None
        assert CATALOG_FAILURE in (row.error or "")
        # the audit log tells what happened to it
        said = [e.message for e in second.audit.query(source="jobs", limit=5)]
        assert any(CATALOG_FAILURE in m for m in said), said
    finally:
        second.close()
    assert not list((tmp_path / "appliance" / "unrecorded-jobs").glob("job-*.json"))


def test_background_loops_say_it_once_and_come_back(
    tmp_path: Path, outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    from engine.config import CapacitySettings

    engine = _engine(
        tmp_path,
        outage.url,
        "daemon",
        capacity=CapacitySettings(poll_seconds=0.1, min_free_bytes=0),
    )
    engine.scheduler.interval = 0.05
    engine.scheduler.maintain_every = 0.05
    done: list[int] = []
    engine.jobs.register("quick", lambda ctx: done.append(ctx.job_id) or {})
    try:
        with caplog.at_level(logging.INFO):
            engine.start(run_scheduler=True)
            outage.begin()
            # dispatch ticks every 0.05 s, capacity every 0.1 s, the scheduler every
            # 0.05 s: a dozen ticks of each against the dead catalog
            wait_for("the outage to be noticed", lambda: engine.catalog.outage)
            time.sleep(1.0)
            outage.end()
            job = wait_for("a job accepted again", lambda: _submit_quietly(engine))
            wait_for("the job to run", lambda: job.id in done)
    finally:
        engine.close()
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.exc_info for r in noisy if r.exc_info] == []
    started = [r for r in noisy if "answers again" not in r.getMessage()]
    assert len(started) == 1, [r.getMessage() for r in noisy]
    assert any("answers again" in r.getMessage() for r in noisy)


def _submit_quietly(engine: Engine) -> Any:
    try:
        return engine.jobs.submit("quick", "after the outage")
    except CatalogUnavailable:
        return None


def test_an_engine_stopping_during_an_outage_does_not_hand_its_job_back(
    tmp_path: Path, outage: Outage
) -> None:
    """A CLI leaving on the outage (or a daemon stopped meanwhile) would hand its
    running job back to the queue; with no catalog to say so, the job ends failed
    instead, so nothing runs it again beside the operator's next attempt."""
    engine = _engine(tmp_path, outage.url, "leaving")
    engine.jobs.settings = JobSettings(max_concurrent=2, lease_seconds=60, heartbeat_seconds=20)
    gate = threading.Event()
    engine.jobs.register("work", lambda ctx: (gate.wait(30), ctx.check(), {})[-1])
    job = engine.jobs.submit("work", "work the engine leaves")
    engine.start()
    try:
        wait_for("the job to run", lambda: engine.jobs.running_ids() == [job.id])
        outage.begin()
        with pytest.raises(CatalogUnavailable):  # the engine meets the outage
            engine.jobs.submit("work", "refused")
        stopping = threading.Thread(target=engine.jobs.stop)
        stopping.start()
        wait_for("the stop to reach the job", lambda: not stopping.is_alive() or _asked(engine))
        gate.set()
        stopping.join(60)
        kept = engine.jobs.unrecorded.get(job.id)
        assert kept is not None and kept.state == "failed", kept
        assert kept.error and kept.error.startswith(CATALOG_FAILURE)
        outage.end()
    finally:
        engine.close()
    again = _engine(tmp_path, outage.url, "leaving")
    try:
        assert again.job_store.get(job.id).state == "failed"
    finally:
        again.close()


def _asked(engine: Engine) -> bool:
    """The runner has asked its running jobs to stop (it is waiting for them)."""
    return engine.jobs._stopping.is_set()


def test_work_begun_before_an_outage_was_noticed_does_not_end_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two threads at the moment a server goes away: one's statement fails (the
    outage starts), the other's had just been answered and is told after. That answer
    says nothing of now: the outage goes on, said once, and ends with the next work
    that begins after it (the full suite's MariaDB outage test saw it said twice)."""
    catalog = Catalog(sqlite_url(tmp_path / "catalog.db"))
    catalog.open()
    try:
        with caplog.at_level(logging.WARNING, logger="engine.catalog.db"):
            with catalog.session() as session:
                session.execute(text("SELECT 1"))
                # meanwhile another thread meets the outage
                failed = threading.Thread(
                    target=catalog._unavailable, args=(CatalogUnavailable("the server is gone"),)
                )
                failed.start()
                failed.join()
            assert catalog.outage == "the server is gone"
            with catalog.session() as session:
                session.execute(text("SELECT 1"))
            assert catalog.outage is None
    finally:
        catalog.dispose()
    said = [r.getMessage() for r in caplog.records]
    assert said == [said[0], f"catalog {catalog.shown_url} answers again"], said
    assert "the server is gone" in said[0]
