"""Running system programs: the one place Sendense starts a process.

Argument lists only (never a shell), a timeout on every call, umask 077 (what a
program creates is readable by root only: see engine.private), and failures
raised as ToolError subclasses whose message a person can act on. Secrets
given to ``run(secrets=...)`` are replaced by ``***`` in every message and log.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from engine.errors import JobCancelled, SendenseError
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
    ) -> None:
        super().__init__(message, hint=hint)
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
        proc = subprocess.Popen(
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
    except subprocess.TimeoutExpired:
        proc.kill()
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
    stdout: int | None = subprocess.PIPE,
    stderr: int | None = subprocess.PIPE,
    secrets: Iterable[str] = (),
) -> subprocess.Popen[bytes]:
    """Start a long-running program without waiting for it (binary pipes).

    The caller owns the process: it must wait for it with a timeout or kill it.
    Used for progress parsing (qemu-img convert -p) and servers (qemu-nbd).
    """
    program = args[0]
    argv = [which(program), *[str(a) for a in args[1:]]]
    log.debug("start: %s", redact(" ".join(str(a) for a in args), tuple(secrets)))
    try:
        return subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=tool_env(),
            close_fds=True,
            umask=PRIVATE_UMASK,
        )
    except PermissionError:
        raise ToolError(
            f"{program} cannot be started: permission denied", program=program
        ) from None
