"""Running system programs: the one place Sendense starts a process.

Argument lists only (never a shell), a timeout on every call, umask 077 (what a
program creates is readable by root only: see engine.private), and failures
raised as ToolError subclasses whose message a person can act on. Secrets
given to ``run(secrets=...)`` are replaced by ``***`` in every message and log.

A child belongs to the engine process that started it. Every child runs in its
own process group (its own session: a Ctrl+C on the console's terminal reaches
the engine, not the child behind its back), and a timeout or a cancel kills
that whole group. Every child also gets ``PR_SET_PDEATHSIG=SIGKILL``, so a
SIGKILLed engine (OOM killer, ``kill -9``, a crash) takes its ``qemu-img``
with it instead of leaving it to finish a ``.partial`` nobody will rename.

The kernel sends that signal when the *thread* that forked the child ends, not
the process. Job threads, console workers and helper threads come and go, so
children are forked by one spawner thread that lives as long as the process
(``_Spawner``); the calling thread waits for the Popen and then owns the child.
The setup in the child is a ``preexec_fn`` (Python's docs warn that it may
deadlock if it takes a lock another thread held at fork time): it only calls
prctl(2) through a ctypes function resolved beforehand and getppid(2), takes no
lock, imports nothing and does not log.

Servers that must outlive the engine on purpose (a persistent NBD export, a
restore mount left for the daemon) are started with ``start(...,
outlives_engine=True)``: own session, no death signal. Their owners clean them
up at the next start (exports, file restore).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import IO, Any

from engine.errors import Action, JobCancelled, SendenseError
from engine.private import PRIVATE_UMASK

log = logging.getLogger("engine.tools")

#: the Debian package that provides each program, for "install X" messages
PACKAGES: dict[str, str] = {
    "qemu-img": "qemu-utils",
    "qemu-nbd": "qemu-utils",
    "qemu-io": "qemu-utils",
    "qemu-storage-daemon": "qemu-system-common",
    "mount": "mount",
    "umount": "mount",
    "losetup": "mount",
    "findmnt": "util-linux",
    "partx": "util-linux",
    "blkid": "util-linux",
    "chattr": "e2fsprogs",
    "lsattr": "e2fsprogs",
    "mkfs.ext4": "e2fsprogs",
    "mkfs.xfs": "xfsprogs",
    "fusermount3": "fuse3",
    "nbdfuse": "nbdfuse",
    "nbdinfo": "libnbd-bin",
    "showmount": "nfs-common",
    "smbclient": "smbclient",
    "ntfs-3g": "ntfs-3g",
    "mkntfs": "ntfs-3g",
    "lvm": "lvm2",
    "dmsetup": "dmsetup",
}

DEFAULT_TIMEOUT = 60.0
#: after a timeout, how long a killed program may take to go away
KILL_GRACE_SECONDS = 5.0

#: killed programs stuck in uninterruptible sleep; polled so they do not stay zombies
_abandoned: list[subprocess.Popen[str]] = []
SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"


class ToolError(SendenseError):
    """A system program failed; the message says which and why."""

    def __init__(
        self,
        message: str,
        *,
        program: str = "",
        returncode: int | None = None,
        stderr: str = "",
        hint: str | None = None,
        action: Action | None = None,
    ) -> None:
        super().__init__(message, hint=hint, action=action)
        self.program = program
        self.returncode = returncode
        self.stderr = stderr


class ToolMissing(ToolError):
    """The program is not installed."""


class ToolTimeout(ToolError):
    """The program did not finish in time and was killed."""


class ToolCancelled(ToolError, JobCancelled):
    """The program was stopped because the caller asked to (``should_stop``).

    Also a JobCancelled, so a job runner that catches JobCancelled treats it as a
    cancellation, not a failure.
    """


@dataclass(frozen=True)
class Completed:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def which(program: str) -> str:
    """Full path of a program, or ToolMissing naming the package to install."""
    # PATH first; then the sbin directories, which a non-login root shell may lack.
    # (Only sbin: an emptied PATH must still mean "not found" for everything else.)
    found = shutil.which(program) or shutil.which(program, path=SBIN_PATH)
    if found is None:
        package = PACKAGES.get(program, program)
        raise ToolMissing(
            f"{program} is not installed",
            program=program,
            hint=f"install it: apt-get install {package}",
        )
    return found


def tool_env() -> dict[str, str]:
    # The C locale keeps messages in English so stderr parsing works everywhere.
    env = dict(os.environ)
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env


def run(
    args: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = True,
    input_text: str | None = None,
    secrets: Iterable[str] = (),
    explain: Callable[[Completed], ToolError | None] | None = None,
    ok_codes: Sequence[int] = (0,),
) -> Completed:
    """Run a program and wait for it.

    ``explain`` turns a failed run into a specific ToolError (it may return None
    to fall back to the generic message built from stderr).
    """
    secrets = tuple(secrets)
    program = args[0]
    argv = [which(program), *[str(a) for a in args[1:]]]
    shown = redact(" ".join(str(a) for a in args), secrets)
    log.debug("run: %s", shown)
    _reap_abandoned()
    try:
        proc: subprocess.Popen[str] = _SPAWNER.popen(
            argv,
            # never the console's terminal: a program that prompts must fail, not hang
            stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=tool_env(),
            # what a program creates (a point, a restored disk, a socket) is private
            umask=PRIVATE_UMASK,
        )
    except PermissionError:
        raise ToolError(
            f"{program} cannot be started: permission denied", program=program
        ) from None
    try:
        stdout, stderr = proc.communicate(input_text, timeout=timeout)
    except BaseException as exc:
        kill_group(proc)
        if not isinstance(exc, subprocess.TimeoutExpired):
            # interrupted (Ctrl+C, a cancelled caller): the child goes with us
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=KILL_GRACE_SECONDS)
            raise
        try:
            proc.communicate(timeout=KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            # Killed but still there: it sleeps uninterruptibly in the kernel, waiting
            # for storage that does not answer (a hard NFS mount, a frozen FUSE
            # server). Waiting for it would hang us too; it is reaped later.
            _abandoned.append(proc)
            raise ToolTimeout(
                f"{program} did not finish within {timeout:g} s and cannot be stopped: "
                f"it is stuck in the kernel waiting for storage ({shown})",
                program=program,
                hint="the storage or server behind it is hung; it ends when that answers",
            ) from None
        raise ToolTimeout(
            f"{program} did not finish within {timeout:g} s and was stopped ({shown})",
            program=program,
            hint="the storage or server behind it may be hung",
        ) from None
    done = Completed(
        args=list(args),
        returncode=proc.returncode,
        stdout=stdout,
        stderr=redact(stderr, secrets),
    )
    if check and proc.returncode not in ok_codes:
        specific = explain(done) if explain else None
        if specific is not None:
            raise specific
        raise ToolError(
            f"{program} failed: {first_error_line(done.stderr) or f'exit code {proc.returncode}'}",
            program=program,
            returncode=proc.returncode,
            stderr=done.stderr,
        )
    return done


def _reap_abandoned() -> None:
    _abandoned[:] = [proc for proc in _abandoned if proc.poll() is None]


def first_error_line(stderr: str) -> str:
    """The most telling line of a program's stderr, without the program prefix noise."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


_tool_env = tool_env  # old name, kept for callers written before it became public


def start(
    args: Sequence[str],
    *,
    stdin: int | None = subprocess.DEVNULL,
    stdout: int | IO[bytes] | None = subprocess.PIPE,
    stderr: int | IO[bytes] | None = subprocess.PIPE,
    secrets: Iterable[str] = (),
    outlives_engine: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a long-running program without waiting for it (binary pipes).

    The caller owns the process: it must wait for it with a timeout or kill it
    (``kill_group``). Used for progress parsing (qemu-img convert -p) and servers
    (qemu-nbd). The program dies with this engine process unless
    ``outlives_engine`` (a server meant to stay after the engine exits).
    """
    program = args[0]
    argv = [which(program), *[str(a) for a in args[1:]]]
    log.debug("start: %s", redact(" ".join(str(a) for a in args), tuple(secrets)))
    options: dict[str, Any] = {
        "stdin": stdin,
        "stdout": stdout,
        "stderr": stderr,
        "env": tool_env(),
        "close_fds": True,
        "umask": PRIVATE_UMASK,
    }
    try:
        if outlives_engine:
            return subprocess.Popen(argv, start_new_session=True, **options)
        return _SPAWNER.popen(argv, **options)
    except PermissionError:
        raise ToolError(
            f"{program} cannot be started: permission denied", program=program
        ) from None


def kill_group(proc: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to a child and everything in its process group.

    Only while the child is not reaped: until then its pid (the group's id) cannot
    belong to anyone else, so the signal never reaches a stranger's group.
    """
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:  # not a group we lead (cannot happen for our children)
        proc.send_signal(sig)


# -- children die with the engine ---------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: no death signal, groups still work
        return None
    return prctl


_PRCTL = _load_prctl()
#: prctl's arguments are unsigned longs: built once, never in the forked child
_PDEATHSIG_ARGS = (
    ctypes.c_int(_PR_SET_PDEATHSIG),
    ctypes.c_ulong(int(signal.SIGKILL)),
    ctypes.c_ulong(0),
    ctypes.c_ulong(0),
    ctypes.c_ulong(0),
)


def _die_with(parent_pid: int) -> Callable[[], None]:
    """The child's setup between fork and exec: SIGKILL when the spawner thread (and
    so the engine process) ends; exit at once if the engine already died in between."""
    prctl, prctl_args, getppid, leave = _PRCTL, _PDEATHSIG_ARGS, os.getppid, os._exit

    def setup() -> None:
        if prctl is not None:
            prctl(*prctl_args)
        if getppid() != parent_pid:
            leave(127)

    return setup


_Request = tuple["Future[subprocess.Popen[Any]]", list[str], dict[str, Any]]


class _Spawner:
    """Forks every child from one thread that lives as long as the process, so the
    death signal means "the engine died", never "the job thread that asked ended"."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def popen(self, argv: list[str], **options: Any) -> subprocess.Popen[Any]:
        requests = self._serving()
        done: Future[subprocess.Popen[Any]] = Future()
        requests.put((done, argv, options))
        try:
            return done.result()
        except BaseException:
            # interrupted while the spawner forked: nobody would own that child
            done.add_done_callback(_kill_unclaimed)
            raise

    def _serving(self) -> queue.SimpleQueue[_Request]:
        with self._lock:
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                # first use, or a forked copy of the engine: its own spawner thread
                self._requests = queue.SimpleQueue()
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._serve,
                    args=(self._requests, self._pid),
                    name="sendense-spawner",
                    daemon=True,
                )
                self._thread.start()
            return self._requests

    @staticmethod
    def _serve(requests: queue.SimpleQueue[_Request], pid: int) -> None:
        while True:
            done, argv, options = requests.get()
            if not done.set_running_or_notify_cancel():
                continue
            try:
                proc = subprocess.Popen(
                    argv, start_new_session=True, preexec_fn=_die_with(pid), **options
                )
            except BaseException as exc:
                done.set_exception(exc)
            else:
                done.set_result(proc)


def _kill_unclaimed(done: Future[subprocess.Popen[Any]]) -> None:
    if done.exception() is None:
        proc = done.result()
        kill_group(proc)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=KILL_GRACE_SECONDS)


_SPAWNER = _Spawner()
