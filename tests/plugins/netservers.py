"""Real file servers on loopback, each from a temp directory, for the network repository tests.

- ``smb_server``: samba's smbd on a private port (``smb ports``), a private
  passdb with one user, one share ``backups``. No system config is touched.
- ``nfs_server``: nfs-ganesha serving one NFSv4-only VFS export (pseudo path
  ``/backups``) on a private port, without rpcbind.
- ``free_port``: a loopback port nothing listens on ("server down").

Both servers are started once per test session; a test that wants "server
down" uses ``free_port`` or ``server.paused()`` (SIGSTOP: the port still
accepts connections but nothing answers, like a hung server). When a server
cannot start here, the tests that need it skip with the reason (the log tail).
Setup calls the server programs directly (tests may; the engine may not).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SMB_USER = "sendensetest"
SMB_PASSWORD = "Corr3ct-horse!"


def free_port_number() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.1)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass
class FileServer:
    host: str
    port: int
    #: NFS: the pseudo path; SMB: the share name
    export: str
    directory: Path
    proc: subprocess.Popen[bytes]
    username: str = ""
    password: str = ""

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The server hangs (SIGSTOP): connections are accepted, nothing answers."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)


@pytest.fixture
def free_port() -> int:
    return free_port_number()


def _ensure_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            capture_output=True,
            timeout=30,
            check=True,
        )


@pytest.fixture(scope="session")
def smb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileServer]:
    if os.geteuid() != 0:
        pytest.skip("smbd test server needs root (private passdb for a system user)")
    base = tmp_path_factory.mktemp("smbd")
    share = base / "share"
    for sub in ("share", "private", "lock", "state", "cache", "log", "run"):
        (base / sub).mkdir()
    share.chmod(0o777)
    port = free_port_number()
    conf = base / "smb.conf"
    conf.write_text(
        f"""[global]
  smb ports = {port}
  interfaces = 127.0.0.1
  bind interfaces only = yes
  private dir = {base}/private
  lock directory = {base}/lock
  state directory = {base}/state
  cache directory = {base}/cache
  pid directory = {base}/run
  ncalrpc dir = {base}/run/ncalrpc
  log file = {base}/log/smbd.log
  passdb backend = tdbsam:{base}/private/passdb.tdb
  server role = standalone server
  map to guest = never
  load printers = no
  printcap name = /dev/null
  disable spoolss = yes
  server min protocol = SMB2
[backups]
  path = {share}
  read only = no
  valid users = {SMB_USER}
  # the temp directory is private to root: serve it as root
  force user = root
"""
    )
    try:
        _ensure_user(SMB_USER)
        subprocess.run(
            ["smbpasswd", "-c", str(conf), "-a", "-s", SMB_USER],
            input=f"{SMB_PASSWORD}\n{SMB_PASSWORD}\n".encode(),
            capture_output=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot prepare the smbd test server: {exc}")
    proc = subprocess.Popen(
        ["smbd", "--foreground", "--no-process-group", f"--configfile={conf}", "-d", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # smbd signals its whole process group when it stops: give it its own
        start_new_session=True,
    )
    if not _wait_port(port, proc):
        _stop(proc)
        log = (base / "log" / "smbd.log").read_text(errors="replace")[-500:]
        pytest.skip(f"smbd did not start on port {port} in this sandbox: {log}")
    try:
        yield FileServer(
            "127.0.0.1", port, "backups", share, proc, username=SMB_USER, password=SMB_PASSWORD
        )
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def nfs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileServer]:
    if os.geteuid() != 0:
        pytest.skip("nfs-ganesha test server needs root")
    base = tmp_path_factory.mktemp("ganesha")
    export = base / "export"
    export.mkdir()
    (base / "recovery").mkdir()
    port = free_port_number()
    conf = base / "ganesha.conf"
    conf.write_text(
        f"""NFS_CORE_PARAM {{
    NFS_Port = {port};
    Protocols = 4;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Bind_addr = 127.0.0.1;
}}
NFSV4 {{ Graceless = true; RecoveryBackend = fs; RecoveryRoot = {base}/recovery; }}
NFS_KRB5 {{ Active_krb5 = false; }}
EXPORT {{
    Export_Id = 1;
    Path = {export};
    Pseudo = /backups;
    Access_Type = RW;
    Squash = No_Root_Squash;
    SecType = sys;
    Protocols = 4;
    FSAL {{ Name = VFS; }}
}}
"""
    )
    log = base / "ganesha.log"
    try:
        proc = subprocess.Popen(
            [
                "ganesha.nfsd",
                "-F",
                "-f",
                str(conf),
                "-L",
                str(log),
                "-p",
                str(base / "ganesha.pid"),
                "-N",
                "NIV_EVENT",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        pytest.skip(f"nfs-ganesha cannot be started: {exc}")
    if not _wait_port(port, proc):
        _stop(proc)
        tail = log.read_text(errors="replace")[-500:] if log.exists() else "(no log)"
        pytest.skip(f"nfs-ganesha did not start on port {port} in this sandbox: {tail}")
    try:
        yield FileServer("127.0.0.1", port, "/backups", export, proc)
    finally:
        _stop(proc)
