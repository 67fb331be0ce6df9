"""Checks made before mounting, and probes that must never hang the engine.

Pre-mount checks run in userspace, so an operator learns *what* is wrong
before the kernel gives a vague "mount error(13)":

- ``check_tcp``: the server answers on its port (else "unreachable").
- ``check_nfs``: an ONC RPC NULL call to the NFS program over TCP, then for
  NFSv4 a COMPOUND of PUTROOTFH + LOOKUP for each component of the export,
  so a missing export is named. ONC RPC and XDR are small enough to speak
  here directly (no rpcbind needed: NFSv4 uses one fixed port).
- ``check_smb``: smbprotocol logs in and tree-connects, so refused
  credentials and a missing share are told apart.

``run_with_timeout`` runs a call (statvfs, a small write) in a worker thread
and gives up after a timeout: a hung NFS server, a frozen FUSE directory or a
stale bind mount then shows as UNRESPONSIVE instead of freezing the caller.
``start_probe`` starts one without waiting, so several repositories are read
side by side under one deadline. The thread may stay blocked in the kernel
(it cannot be killed); it is a daemon thread and at most one per key runs at
any time: while it is stuck, later probes of that key fail at once.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from engine.errors import Action, SendenseError

T = TypeVar("T")

NFS_PORT = 2049
SMB_PORT = 445

NFS_PROGRAM = 100003
_NFS4_OK = 0
_NFS4_ERRORS = {
    2: "NFS4ERR_NOENT",
    13: "NFS4ERR_ACCESS",
    20: "NFS4ERR_NOTDIR",
    10016: "NFS4ERR_WRONGSEC",
}
_OP_PUTROOTFH = 24
_OP_LOOKUP = 15


class RepositoryCheckError(SendenseError):
    """A repository failed a check; the message says what to fix."""

    #: unreachable | export_missing | share_missing | credentials | protocol |
    #: not_found | not_directory | read_only | no_space | permission | unresponsive |
    #: not_mounted | no_kernel_client | full | io
    reason: str = "io"

    def __init__(
        self,
        message: str,
        *,
        reason: str = "io",
        hint: str | None = None,
        action: Action | None = None,
    ) -> None:
        super().__init__(message, hint=hint, action=action)
        self.reason = reason


class ProbeTimeout(RepositoryCheckError):
    """A probe did not answer in time (hung server)."""


# -- TCP -----------------------------------------------------------------------


def check_tcp(host: str, port: int, timeout: float = 3.0) -> None:
    """Raise RepositoryCheckError(reason="unreachable") unless host:port accepts a connection."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except socket.gaierror:
        raise RepositoryCheckError(
            f"server {host!r} cannot be found: the name does not resolve",
            reason="unreachable",
            hint="check the host name, or use its IP address",
        ) from None
    except TimeoutError:
        raise RepositoryCheckError(
            f"server {host} does not answer on port {port} (no reply within {timeout:g} s)",
            reason="unreachable",
            hint="is the server up, and does a firewall let this port through?",
        ) from None
    except OSError as exc:
        why = "connection refused" if exc.errno == 111 else (exc.strerror or str(exc))
        raise RepositoryCheckError(
            f"server {host} is unreachable on port {port}: {why}",
            reason="unreachable",
            hint="is the file service running on the server, and is the port right?",
        ) from None


# -- ONC RPC over TCP (RFC 5531) and a little NFSv4 (RFC 7530) -------------------


def _xdr_opaque(data: bytes) -> bytes:
    pad = (4 - len(data) % 4) % 4
    return struct.pack(">I", len(data)) + data + b"\0" * pad


def _auth_sys() -> bytes:
    body = struct.pack(">I", 0) + _xdr_opaque(b"sendense") + struct.pack(">III", 0, 0, 0)
    return struct.pack(">I", 1) + _xdr_opaque(body)  # AUTH_SYS, uid 0 gid 0, no groups


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = b""
    while len(chunks) < n:
        part = sock.recv(n - len(chunks))
        if not part:
            raise ConnectionError("the server closed the connection")
        chunks += part
    return chunks


def _rpc_call(
    sock: socket.socket, prog: int, vers: int, proc: int, args: bytes = b"", auth: bool = False
) -> bytes:
    xid = int.from_bytes(os.urandom(4), "big")
    cred = _auth_sys() if auth else struct.pack(">II", 0, 0)
    msg = struct.pack(">IIIIII", xid, 0, 2, prog, vers, proc) + cred + struct.pack(">II", 0, 0)
    msg += args
    sock.sendall(struct.pack(">I", 0x80000000 | len(msg)) + msg)
    reply = b""
    while True:
        (mark,) = struct.unpack(">I", _recv_exact(sock, 4))
        reply += _recv_exact(sock, mark & 0x7FFFFFFF)
        if mark & 0x80000000:
            break
    rxid, mtype, stat = struct.unpack(">III", reply[:12])
    if rxid != xid or mtype != 1:
        raise ValueError("not an RPC reply")
    if stat != 0:
        raise PermissionError("the server denied the RPC call (authentication)")
    (_flavor, vlen) = struct.unpack(">II", reply[12:20])
    pos = 20 + vlen + (4 - vlen % 4) % 4
    (accept,) = struct.unpack(">I", reply[pos : pos + 4])
    if accept == 1:
        raise LookupError("program unavailable")
    if accept == 2:
        low, high = struct.unpack(">II", reply[pos + 4 : pos + 12])
        raise LookupError(f"version mismatch: the server speaks versions {low} to {high}")
    if accept != 0:
        raise ValueError(f"RPC call not accepted (status {accept})")
    return reply[pos + 4 :]


def _nfs4_lookup_compound(components: list[str]) -> bytes:
    ops = struct.pack(">I", _OP_PUTROOTFH)
    for name in components:
        ops += struct.pack(">I", _OP_LOOKUP) + _xdr_opaque(name.encode())
    return _xdr_opaque(b"sendense") + struct.pack(">II", 0, 1 + len(components)) + ops


def check_nfs(
    server: str, export: str, *, port: int = NFS_PORT, version: str = "4", timeout: float = 5.0
) -> None:
    """Tell "server unreachable", "not an NFS server" and "export missing" apart."""
    check_tcp(server, port, timeout)
    major = int(str(version).split(".")[0] or 4)
    try:
        with socket.create_connection((server, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            _rpc_call(sock, NFS_PROGRAM, major, 0)
            if major < 4:
                return  # NFSv3 exports are listed by mountd; the mount itself checks them
            components = [c for c in export.strip("/").split("/") if c]
            body = _rpc_call(sock, NFS_PROGRAM, 4, 1, _nfs4_lookup_compound(components), True)
    except LookupError as exc:
        raise RepositoryCheckError(
            f"server {server} port {port} does not serve NFS version {version}: {exc}",
            reason="protocol",
            hint="choose the NFS version the server offers",
        ) from None
    except PermissionError as exc:
        raise RepositoryCheckError(
            f"NFS server {server} refused this machine: {exc}",
            reason="credentials",
            hint="allow this client in the server's export rules",
        ) from None
    except (TimeoutError, ConnectionError, ValueError, struct.error, OSError) as exc:
        raise RepositoryCheckError(
            f"server {server} port {port} does not answer like an NFS server ({exc})",
            reason="protocol",
            hint="check the port; NFS normally listens on 2049",
        ) from None
    (status,) = struct.unpack(">I", body[:4])
    if status == _NFS4_OK:
        return
    name = _NFS4_ERRORS.get(status, f"status {status}")
    if status in (2, 20):
        raise RepositoryCheckError(
            f"NFS server {server} has no export {export!r} ({name})",
            reason="export_missing",
            hint="check the export path (for NFSv4 the pseudo path) on the server",
        )
    if status in (13, 10016):
        raise RepositoryCheckError(
            f"NFS server {server} refuses access to {export!r} ({name})",
            reason="credentials",
            hint="allow this client and AUTH_SYS in the server's export rules",
        )
    raise RepositoryCheckError(f"NFS server {server} answered {name} for {export!r}")


# -- SMB --------------------------------------------------------------------------


def check_smb(
    server: str,
    share: str,
    *,
    username: str,
    password: str,
    domain: str = "",
    port: int = SMB_PORT,
    timeout: float = 5.0,
) -> None:
    """Log in and connect to the share, naming what failed. The password never
    appears in a message."""
    from smbprotocol.connection import Connection
    from smbprotocol.exceptions import SMBException, SMBResponseException
    from smbprotocol.session import Session
    from smbprotocol.tree import TreeConnect

    check_tcp(server, port, timeout)
    conn = Connection(uuid.uuid4(), server, port, require_signing=True)
    try:
        try:
            conn.connect(timeout=timeout)
        except (SMBException, OSError, ValueError) as exc:
            raise RepositoryCheckError(
                f"server {server} port {port} does not answer like an SMB server ({exc})",
                reason="protocol",
                hint="check the port; SMB normally listens on 445",
            ) from None
        user = f"{domain}\\{username}" if domain else username
        session = Session(conn, user, password, require_encryption=False, auth_protocol="ntlm")
        try:
            session.connect()
        except SMBResponseException as exc:
            raise RepositoryCheckError(
                f"SMB server {server} refused the user name or password for {user!r}"
                f" ({_smb_status(exc)})",
                reason="credentials",
                hint="check the user, password and domain",
            ) from None
        except (SMBException, OSError) as exc:
            raise RepositoryCheckError(
                f"SMB server {server} refused the login for {user!r}: "
                f"{redact_password(str(exc), password)}",
                reason="credentials",
                hint="check the user, password and domain",
            ) from None
        tree = TreeConnect(session, rf"\\{server}\{share}")
        try:
            tree.connect()
        except SMBResponseException as exc:
            status = _smb_status(exc)
            if "BAD_NETWORK_NAME" in status:
                raise RepositoryCheckError(
                    f"SMB server {server} has no share named {share!r}",
                    reason="share_missing",
                    hint="check the share name (smbclient -L lists them)",
                ) from None
            raise RepositoryCheckError(
                f"SMB server {server} refused access to share {share!r} ({status})",
                reason="credentials",
                hint="give this user access to the share",
            ) from None
        tree.disconnect()
    finally:
        with contextlib.suppress(Exception):
            conn.disconnect(close=True)


def _smb_status(exc: Exception) -> str:
    from smbprotocol.header import NtStatus

    status = getattr(exc, "status", None)
    for name in dir(NtStatus):
        if name.startswith("STATUS_") and getattr(NtStatus, name) == status:
            return name
    return f"status 0x{status:08x}" if isinstance(status, int) else type(exc).__name__


def redact_password(text: str, password: str) -> str:
    return text.replace(password, "***") if password else text


# -- timeouts -------------------------------------------------------------------------


class Probe:
    """One call running in its own daemon thread, for one key (a repository).

    A thread blocked in the kernel (statvfs on a frozen FUSE directory or a hard NFS
    mount) cannot be killed, so nobody waits on it for long: ``result`` gives up after
    its timeout and the thread is left to finish on its own."""

    def __init__(self, key: str, fn: Callable[[], Any], label: str | None = None) -> None:
        self.key = key
        #: what messages call it ("repository nas"); the key by default
        self.label = label or key
        self.done = threading.Event()
        #: True once a caller gave up on it: later callers do not wait on it again
        self.timed_out = False
        self._result: Any = None
        self._error: BaseException | None = None
        self._fn = fn
        self.thread = threading.Thread(target=self._work, name=f"probe:{key}", daemon=True)

    def _work(self) -> None:
        try:
            self._result = self._fn()
        except BaseException as exc:
            self._error = exc
        finally:
            self.done.set()
            with _probes_lock:
                if _probes.get(self.key) is self:
                    del _probes[self.key]

    def result(self, timeout: float) -> Any:
        """The call's value (or its exception); ProbeTimeout after ``timeout`` seconds."""
        if not self.done.wait(max(0.0, timeout)):
            self.timed_out = True
            raise ProbeTimeout(
                f"{self.label} did not answer within {timeout:g} s",
                reason="unresponsive",
                hint="the server or filesystem may be down or hung; "
                "the engine keeps working meanwhile",
            )
        if self._error is not None:
            raise self._error
        return self._result


#: the probe still running for each key: at most one thread per key at any time
_probes: dict[str, Probe] = {}
_probes_lock = threading.Lock()


def start_probe(key: str, fn: Callable[[], T], label: str | None = None) -> Probe:
    """Start ``fn`` in its own thread, unless a probe of ``key`` still runs.

    A probe still running that a caller already gave up on raises ProbeTimeout at
    once (no new thread: a dead filesystem cannot pile them up). One that is still
    within its time is waited for first (up to ``_BUSY_WAIT``), so two callers of one
    key never run side by side; ``label`` names it in messages (the key by default)."""
    while True:
        with _probes_lock:
            running = _probes.get(key)
            if running is None:
                probe = Probe(key, fn, label)
                _probes[key] = probe
                probe.thread.start()
                return probe
        if running.timed_out or not running.done.wait(_BUSY_WAIT):
            raise ProbeTimeout(
                f"{label or key} still does not answer (an earlier probe is still waiting)",
                reason="unresponsive",
                hint="the server or filesystem may be down or hung; "
                "the engine keeps working meanwhile",
            )


#: how long a new probe waits for a running one of the same key to finish
_BUSY_WAIT = 5.0


def run_with_timeout(key: str, fn: Callable[[], T], timeout: float) -> T:
    """Run ``fn`` in a worker thread; raise ProbeTimeout if it takes longer than ``timeout``.

    ``key`` names what is probed (a repository): while an earlier probe of the
    same key is still stuck, no new thread is started and ProbeTimeout is raised
    at once, so a dead server cannot pile up threads.
    """
    probe = start_probe(key, fn)
    result: T = probe.result(timeout)
    return result
