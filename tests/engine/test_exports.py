"""NBD exports of restore points: served by real qemu-nbd, read back with qemu-img."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shlex
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from engine.catalog import Catalog
from engine.clock import FixedClock
from engine.config import default_settings, sqlite_url
from engine.errors import ValidationError
from engine.events import EventBus
from engine.services.exports import ExportError, ExportService
from engine.tools import exporters
from engine.tools.blockspec import ImageSpec
from sendense_tui.hints import cli_hint
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
    # persistent or not, an export whose owner is gone is stopped
    assert len(stopped) == 2
    assert fresh.list() == []
    assert {e.stop_reason for e in fresh.list(include_stopped=True)} == {"owner_gone"}
    assert processes_mentioning(str(env.tmp)) == []


# -- who can connect -------------------------------------------------------------


def _non_loopback_address() -> str:
    """An IPv4 address of this machine other machines could reach (not 127.x)."""
    out = subprocess.run(
        ["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True, timeout=10
    )
    for link in json.loads(out.stdout or "[]"):
        for info in link.get("addr_info", []):
            if not ipaddress.ip_address(info["local"]).is_loopback:
                return str(info["local"])
    pytest.skip("this machine has no IPv4 address besides loopback")


def _free_port_on(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def test_plain_tcp_off_loopback_is_refused_before_anything_listens(env: Env) -> None:
    address = _non_loopback_address()
    with socket.socket() as listener:
        # something of the test's own on the very port: if the refusal came after the
        # port check or the readiness probe, the error would differ or it would connect
        listener.bind((address, 0))
        listener.listen()
        port = int(listener.getsockname()[1])
        for host in (address, "0.0.0.0"):
            with pytest.raises(ValidationError, match="without TLS") as err:
                env.service.start(env.points[0], host=host, port=port)
            assert err.value.message == (
                f"refusing to serve on {host}:{port} without TLS: anyone who can reach "
                "that address could read the whole disk"
            )
            # the engine names the action; the CLI says it with its flag
            assert err.value.action is not None and err.value.action.key == "export_tls"
            assert "--tls" in (cli_hint(err.value) or "")
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # no connection was ever made
    assert env.service.list(include_stopped=True) == []
    assert processes_mentioning(str(env.tmp)) == []
    # the tools refuse it too, whoever calls them
    with pytest.raises(exporters.PlainTcpRefused):
        exporters.start_nbd_server(
            ImageSpec.file(env.tmp / "repo" / "web01" / "sda" / "0000.qcow2"),
            export_name="x",
            pidfile=env.tmp / "x.pid",
            log_file=env.tmp / "x.log",
            host=address,
            port=port,
        )
    # loopback stays plain; a unix socket needs no TLS (and refuses the flag)
    assert exporters.is_loopback("127.0.0.1") and exporters.is_loopback("localhost")
    assert not exporters.is_loopback("0.0.0.0") and not exporters.is_loopback(address)
    with pytest.raises(ValidationError, match="TLS is for TCP exports"):
        env.service.start(env.points[0], tls=True)


def _client_tls(key_dir: Path, host: str, port: int, name: str) -> list[str]:
    return [
        "--object",
        f"tls-creds-psk,id=tls0,endpoint=client,dir={key_dir},username=sendense",
        "--image-opts",
        f"driver=nbd,host={host},port={port},export={name},tls-creds=tls0",
    ]


def test_tls_export_off_loopback_serves_only_clients_with_its_key(env: Env) -> None:
    address = _non_loopback_address()
    port = _free_port_on(address)
    export = env.service.start(env.points[1], name="secure", host=address, port=port, tls=True)
    assert export.uri == f"nbds://sendense@{address}:{port}/secure"
    assert export.tls == "psk" and export.key_file is not None
    key = Path(export.key_file)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    identity, _, secret = key.read_text().strip().partition(":")
    assert identity == "sendense" and len(bytes.fromhex(secret)) == 32
    assert secret not in Path(f"/proc/{export.pid}/cmdline").read_text()  # never on argv

    # a TLS client with the key reads the chain's view, byte for byte
    out = env.tmp / "tls.raw"
    tls_client = _client_tls(key.parent, address, port, "secure")
    subprocess.run(
        ["qemu-img", "convert", "-O", "raw", *tls_client, str(out)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert _sha(out) == _sha(env.versions[1])
    # the commands printed for the operator work as printed
    for line in export.connect_lines():
        done = subprocess.run(shlex.split(line), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (line, done.stderr)
    # a plain client gets nothing
    plain = subprocess.run(
        ["qemu-img", "convert", "-O", "raw", f"nbd://{address}:{port}/secure", str(env.tmp / "p")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plain.returncode != 0 and "TLS" in plain.stderr
    assert not (env.tmp / "p").exists()
    # nor does a client with another key
    other = env.tmp / "other-key"
    other.mkdir(mode=0o700)
    (other / "keys.psk").write_text(f"sendense:{os.urandom(32).hex()}\n")
    wrong = subprocess.run(
        ["qemu-img", "info", *_client_tls(other, address, port, "secure")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode != 0

    env.service.stop("secure")
    assert not key.parent.exists()  # the key goes with the export
    assert processes_mentioning(str(env.tmp)) == []


# -- how long an export lives ----------------------------------------------------------


def _wait_clients(pid: int | None, count: int) -> None:
    deadline = time.monotonic() + 10
    while exporters.nbd_client_count(pid) != count:
        assert time.monotonic() < deadline, exporters.nbd_client_count(pid)
        time.sleep(0.02)


def test_idle_timeout_and_max_age_with_an_injected_clock(env: Env) -> None:
    idle = env.service.start(env.points[0], name="idle", idle_minutes=10, max_hours=8)
    busy = env.service.start(env.points[1], name="busy", idle_minutes=10, max_hours=1)
    assert (idle.idle_seconds, idle.expires_at) == (600, env.clock.now() + timedelta(hours=8))
    assert exporters.nbd_client_count(busy.pid) == 0
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(busy.socket_path))
        _wait_clients(busy.pid, 1)
        env.clock.advance(timedelta(minutes=9))
        assert env.service.enforce() == []
        env.clock.advance(timedelta(minutes=2))
        # 11 minutes without a client: stopped; the other has one, so it is not idle
        assert env.service.enforce() == [(idle.id, "idle")]
        env.clock.advance(timedelta(minutes=50))
        # a client does not keep an export past its maximum age
        assert env.service.enforce() == [(busy.id, "max_age")]
    ended = {v.name: (v.state, v.stop_reason) for v in env.service.list(include_stopped=True)}
    assert ended == {"idle": ("stopped", "idle"), "busy": ("stopped", "max_age")}
    assert processes_mentioning(str(env.tmp)) == []
    assert sorted(os.listdir(env.tmp / "state" / "exports")) == []


def test_a_client_that_left_restarts_the_idle_count(env: Env) -> None:
    export = env.service.start(env.points[0], name="used", idle_minutes=10)
    env.clock.advance(timedelta(minutes=8))
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(export.socket_path))
        _wait_clients(export.pid, 1)
        assert env.service.enforce() == []  # seen in use at minute 8
    _wait_clients(export.pid, 0)
    env.clock.advance(timedelta(minutes=9))
    assert env.service.enforce() == []  # 9 minutes since it was last seen in use
    env.clock.advance(timedelta(minutes=1))
    assert env.service.enforce() == [(export.id, "idle")]


@pytest.mark.parametrize(
    ("limits", "words"),
    [
        ({"idle_minutes": 0}, "idle timeout must be more than 0"),
        ({"idle_minutes": -5}, "idle timeout must be more than 0"),
        ({"idle_minutes": float("nan")}, "idle timeout"),
        ({"idle_minutes": 99999999999}, "at most 10080 minutes"),
        ({"max_hours": 0}, "maximum age must be more than 0"),
        ({"max_hours": float("inf")}, "maximum age"),
        ({"max_hours": 721}, "at most 720 hours"),
    ],
)
def test_limits_out_of_bounds_are_refused(env: Env, limits: dict[str, float], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        env.service.start(env.points[0], **limits)  # type: ignore[arg-type]
    assert env.service.list(include_stopped=True) == []


def test_an_export_stopped_while_another_engine_looks_keeps_its_reason(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keeper stops an idle export while another command's engine, which read it as
    running a moment before, finds its server gone: the export stays "stopped, idle"
    (seen under load as "dead, server_died", an alarm for an export that ended as
    asked), and no "no longer running" warning is sent."""
    export = env.service.start(env.points[0], name="a", idle_minutes=1)
    store = env.service.store
    read_while_running = store.exports(states=("running",))
    env.service.stop(export.id, actor="engine", reason="idle")
    monkeypatch.setattr(store, "exports", lambda **_: read_while_running)
    warned: list[str] = []
    env.service.bus.subscribe(lambda e: warned.append(e.kind), kinds=("export.dead",))

    assert env.service.refresh() == []

    monkeypatch.undo()
    (row,) = env.service.list(include_stopped=True)
    assert (row.state, row.stop_reason) == ("stopped", "idle")
    assert warned == []
