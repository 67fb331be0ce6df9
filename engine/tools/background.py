"""Starting a program that outlives the process that starts it: the background
``sendense daemon`` a console or a command starts when none runs (as tmux starts
its server).

The program gets a session of its own (no controlling terminal: an SSH drop, a
Ctrl+C or the console's exit does not reach it), stdin from /dev/null, stdout and
stderr appended to a log file, umask 077 and no death signal (it is meant to stay
after its starter is gone). Settings reach it through ``env``, never its command
line (a catalog URL may hold a password).
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from engine.private import PRIVATE_UMASK, open_private
from engine.tools.base import ToolError

#: a program started by :func:`start_background`
BackgroundProcess = subprocess.Popen[bytes]


def start_background(
    argv: Sequence[str], *, env: Mapping[str, str], log_file: Path
) -> BackgroundProcess:
    """Start ``argv`` detached; the caller may poll the returned process while it
    waits for it to be ready, then hand it to :func:`reap_when_done`."""
    try:
        log_fd = open_private(log_file, os.O_WRONLY | os.O_APPEND)
    except OSError as exc:
        raise ToolError(
            f"cannot write the log {log_file}: {exc.strerror}", program=str(argv[0])
        ) from None
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            env=dict(env),
            close_fds=True,
            start_new_session=True,
            umask=PRIVATE_UMASK,
            cwd="/",
        )
    except OSError as exc:
        raise ToolError(f"cannot start {argv[0]}: {exc.strerror}", program=str(argv[0])) from None
    finally:
        os.close(log_fd)


def reap_when_done(proc: BackgroundProcess) -> None:
    """Wait for a background program on a thread of its own, so that it does not stay
    a zombie of this process when it ends first (after this process ends, init
    reaps it)."""
    threading.Thread(target=proc.wait, name="sendense-reap-background", daemon=True).start()
