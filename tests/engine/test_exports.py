"""NBD exports of restore points: served by real qemu-nbd, read back with qemu-img."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.catalog import Catalog
from engine.clock import FixedClock
from engine.config import default_settings, sqlite_url
from engine.errors import ValidationError
from engine.events import EventBus
from engine.services.exports import ExportError, ExportService
from tests.engine.fsimages import Part, backup_chain, build_disk, processes_mentioning

pytestmark = pytest.mark.root


@dataclass
class Env:
    catalog: Catalog
    service: ExportService
    clock: FixedClock
    tmp: Path
    points: list[int]
    versions: list[Path]

    def new_service(self) -> ExportService:
        settings = default_settings(self.tmp / "state")
        return ExportService(self.catalog, EventBus(None, self.clock), settings, clock=self.clock)


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    work = tmp_path_factory.mktemp("nbd")
    v1 = build_disk(work / "v1.raw", [Part("ext4", 16, {"a.txt": b"one\n"})])
    v2 = build_disk(work / "v2.raw", [Part("ext4", 16, {"a.txt": b"two\n", "b": b"new\n"})])
    return [v1, v2]


@pytest.fixture
def env(tmp_path: Path, versions: list[Path]) -> Iterator[Env]:
    catalog = Catalog(sqlite_url(tmp_path / "catalog.db")).open()
    clock = FixedClock()
    (tmp_path / "repo").mkdir()
    chain = backup_chain(catalog, tmp_path / "repo", versions, now=clock.now())
    service = ExportService(
        catalog, EventBus(None, clock), default_settings(tmp_path / "state"), clock=clock
    )
    try:
        yield Env(catalog, service, clock, tmp_path, chain.ids, versions)
    finally:
        try:
            service.stop_all(include_persistent=True, mine_only=False)
        finally:
            for pid in processes_mentioning(str(tmp_path)):
                os.kill(pid, signal.SIGKILL)
            catalog.dispose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _read_back(uri: str, out: Path) -> str:
    subprocess.run(
        ["qemu-img", "convert", "-O", "raw", uri, str(out)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return hashlib.sha256(out.read_bytes()).hexdigest()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_unix_export_of_an_incremental_serves_the_whole_chain(env: Env) -> None:
    export = env.service.start(env.points[1], name="web01-sda")
    assert export.uri == f"nbd+unix:///web01-sda?socket={export.socket_path}"
    assert _read_back(export.uri, env.tmp / "out.raw") == _sha(env.versions[1])
    assert _read_back(export.uri, env.tmp / "again.raw") == _sha(env.versions[1])  # persistent
    assert [e.uri for e in env.service.list()] == [export.uri]

    env.service.stop("web01-sda")
    assert env.service.list() == []
    assert processes_mentioning(str(env.tmp)) == []
    assert not Path(str(export.socket_path)).exists()


def test_tcp_export_with_name_and_port_in_use(env: Env) -> None:
    port = _free_port()
    export = env.service.start(env.points[0], name="full", host="127.0.0.1", port=port)
    assert export.uri == f"nbd://127.0.0.1:{port}/full"
    assert _read_back(export.uri, env.tmp / "out.raw") == _sha(env.versions[0])

    with pytest.raises(ExportError, match="already in use"):
        env.service.start(env.points[1], name="other", host="127.0.0.1", port=port)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ExportError, match="already in use") as err:
            env.service.start(env.points[1], port=taken.getsockname()[1])
        assert err.value.hint
    with pytest.raises(ExportError, match="already running"):
        env.service.start(env.points[1], name="full")
    with pytest.raises(ValidationError):
        env.service.start(env.points[1], name="../bad name")
    assert [e.name for e in env.service.list()] == ["full"]
    env.service.stop(export.id)


def test_dead_server_is_detected_and_non_persistent_stop_at_close(env: Env) -> None:
    a = env.service.start(env.points[0], name="a")
    env.service.start(env.points[1], name="b", persistent=True)
    assert a.pid is not None
    os.kill(a.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while env.service.list(include_stopped=True)[0].state != "dead":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    env.service.close()
    states = {e.name: e.state for e in env.service.list(include_stopped=True)}
    assert states == {"a": "dead", "b": "running"}  # persistent survives the engine


def test_leftover_exports_of_a_crashed_engine(env: Env) -> None:
    env.service.start(env.points[0], name="temp")
    env.service.start(env.points[1], name="keep", persistent=True)
    env.service.abandon()  # crash: nobody stops them
    fresh = env.new_service()
    stopped = fresh.cleanup_leftovers()
    assert len(stopped) == 1
    assert [e.name for e in fresh.list()] == ["keep"]
    assert len(processes_mentioning(str(env.tmp))) == 1
