"""Network repositories against real servers on loopback: smbd and nfs-ganesha.

The pre-mount checks speak the real protocols (SMB2 login + tree connect through
smbprotocol; ONC RPC + NFSv4 COMPOUND). The kernel mount needs an NFS/CIFS
client, which this machine may lack: those tests skip and say so.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.clock import FixedClock
from engine.config import default_settings
from engine.runtime import Engine
from engine.services.mounts import kernel_client_missing
from engine.services.probe import (
    ProbeTimeout,
    RepositoryCheckError,
    check_nfs,
    check_smb,
    check_tcp,
    run_with_timeout,
)
from engine.services.repositories import RepositorySpec
from tests.plugins.netservers import FileServer

pytestmark = pytest.mark.root


@pytest.fixture
def eng(tmp_path: Path) -> Iterator[Engine]:
    engine = Engine(default_settings(tmp_path / "state"), clock=FixedClock()).open()
    try:
        yield engine
    finally:
        engine.close()


def _smb(server: FileServer, **kw: object) -> RepositorySpec:
    fields: dict = dict(
        name="smb",
        kind="cifs",
        server=server.host,
        export=server.export,
        port=server.port,
        username=server.username,
        password=server.password,
    )
    fields.update(kw)
    return RepositorySpec(**fields)


def _nfs(server: FileServer, **kw: object) -> RepositorySpec:
    fields: dict = dict(
        name="nfs",
        kind="nfs",
        server=server.host,
        export=server.export,
        port=server.port,
        nfs_version="4.1",
    )
    fields.update(kw)
    return RepositorySpec(**fields)


# -- SMB ---------------------------------------------------------------------------


def test_smb_good_share_passes_the_userspace_check(smb_server: FileServer) -> None:
    check_smb(
        smb_server.host,
        "backups",
        username=smb_server.username,
        password=smb_server.password,
        port=smb_server.port,
    )


def test_smb_missing_share(smb_server: FileServer) -> None:
    with pytest.raises(RepositoryCheckError) as err:
        check_smb(
            smb_server.host,
            "nosuch",
            username=smb_server.username,
            password=smb_server.password,
            port=smb_server.port,
        )
    assert err.value.reason == "share_missing"
    assert str(err.value) == "SMB server 127.0.0.1 has no share named 'nosuch'"


def test_smb_wrong_password_is_refused_and_never_shown(smb_server: FileServer) -> None:
    with pytest.raises(RepositoryCheckError) as err:
        check_smb(
            smb_server.host,
            "backups",
            username=smb_server.username,
            password="Wr0ng-pass!",
            port=smb_server.port,
        )
    assert err.value.reason == "credentials"
    assert "refused the user name or password" in str(err.value)
    assert "Wr0ng" not in err.value.for_humans()


def test_smb_server_down(free_port: int) -> None:
    with pytest.raises(RepositoryCheckError) as err:
        check_smb("127.0.0.1", "backups", username="u", password="p", port=free_port)
    assert err.value.reason == "unreachable"
    assert str(err.value) == (
        f"server 127.0.0.1 is unreachable on port {free_port}: connection refused"
    )


def test_cifs_repository_test_reports_server_then_mount(
    eng: Engine, smb_server: FileServer
) -> None:
    report = eng.repositories.test(_smb(smb_server))
    assert report.steps[1].name == "server" and report.steps[1].ok
    missing = kernel_client_missing("cifs")
    if missing:
        assert not report.ok and report.reason == "no_kernel_client"
        assert "kernel has no CIFS/SMB client" in (report.error or "")
        pytest.skip(f"kernel CIFS mount not tested: {missing}")
    assert report.ok, report.error


def test_wrong_password_means_nothing_saved(eng: Engine, smb_server: FileServer) -> None:
    with pytest.raises(RepositoryCheckError, match="was not saved"):
        eng.repositories.add(_smb(smb_server, password="nope-nope"))
    assert eng.repositories.list() == []
    assert not list((eng.settings.state_dir / "credentials").glob("*"))  # no leftovers


# -- NFS --------------------------------------------------------------------------


def test_nfs_good_export(nfs_server: FileServer) -> None:
    check_nfs(nfs_server.host, "/backups", port=nfs_server.port)


def test_nfs_missing_export(nfs_server: FileServer) -> None:
    with pytest.raises(RepositoryCheckError) as err:
        check_nfs(nfs_server.host, "/nosuch", port=nfs_server.port)
    assert err.value.reason == "export_missing"
    assert str(err.value) == "NFS server 127.0.0.1 has no export '/nosuch' (NFS4ERR_NOENT)"


def test_nfs_version_the_server_does_not_speak(nfs_server: FileServer) -> None:
    with pytest.raises(RepositoryCheckError, match="does not serve NFS version 3"):
        check_nfs(nfs_server.host, "/backups", port=nfs_server.port, version="3")


def test_nfs_server_down(free_port: int) -> None:
    with pytest.raises(RepositoryCheckError) as err:
        check_nfs("127.0.0.1", "/backups", port=free_port)
    assert err.value.reason == "unreachable"


def test_hung_nfs_server_times_out_instead_of_hanging(nfs_server: FileServer) -> None:
    with nfs_server.paused(), pytest.raises(RepositoryCheckError) as err:
        check_nfs(nfs_server.host, "/backups", port=nfs_server.port, timeout=1.0)
    assert "does not answer like an NFS server" in str(err.value)


def test_nfs_repository_test(eng: Engine, nfs_server: FileServer) -> None:
    report = eng.repositories.test(_nfs(nfs_server))
    assert [s.name for s in report.steps[:2]] == ["fields", "server"]
    missing = kernel_client_missing("nfs")
    if missing:
        assert report.reason == "no_kernel_client"
        pytest.skip(f"kernel NFS mount not tested: {missing}")
    assert report.ok, report.error


def test_unknown_host_name() -> None:
    with pytest.raises(RepositoryCheckError, match="cannot be found: the name does not resolve"):
        check_tcp("no-such-host.invalid", 2049, timeout=2)


# -- probes in a worker -------------------------------------------------------------


def test_a_probe_that_hangs_gives_up_and_does_not_pile_up_threads() -> None:
    release = threading.Event()
    with pytest.raises(ProbeTimeout, match=r"did not answer within 0\.2 s"):
        run_with_timeout("repository stuck", release.wait, 0.2)
    # while the first is still stuck, a new probe fails at once, starting no thread
    before = threading.active_count()
    with pytest.raises(ProbeTimeout, match="still does not answer"):
        run_with_timeout("repository stuck", release.wait, 5)
    assert threading.active_count() == before
    release.set()


def test_unresponsive_network_repository_shows_last_seen(eng: Engine, tmp_path: Path) -> None:
    """No kernel NFS client here, so the hung mount is stood in for by a path whose
    statvfs never returns (the edge the machine cannot run); the state machine is real."""
    from engine.services import capacity as capacity_mod

    repo = eng.repository_store.add(
        name="nas",
        kind="nfs",
        path=str(tmp_path / "m"),
        now=eng.clock.now(),
        server="nas",
        export="/x",
        state="mounted",
        last_seen_at=eng.clock.now(),
    )
    hang = threading.Event()
    real_usage = capacity_mod.usage
    capacity_mod.usage = lambda path: (hang.wait(), real_usage("/"))[1]  # type: ignore[assignment]
    eng.capacity.reading_timeout = 0.2
    try:
        reading = eng.capacity.sample(repo)
    finally:
        capacity_mod.usage = real_usage
        hang.set()
    assert reading.error and "did not answer within 0.2 s" in reading.error
    repo = eng.repositories.get("nas")
    assert repo.state == "unresponsive"
    assert repo.state_detail and repo.state_detail.endswith("last seen 2026-11-24 09:00 UTC")
