"""Whether the engine that owns something (an export, a restore mount, a merge
intent) may still run: the one liveness check of owners written ``host:pid:token``.

An owner on another host is judged by its heartbeat instead (assumed alive here).
On this host its process must exist and must not be a zombie: a killed engine
whose parent (or this machine's init) has not reaped it yet still answers
``kill(pid, 0)``, and counting it as alive left its exports running.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Collection

from engine.platform import pid_alive

HOST = socket.gethostname()


def owner_alive(owner: str | None, *, live_here: Collection[str] | None = None) -> bool:
    """``owner`` is ``host:pid:token``. For this very process, ``live_here`` names the
    owners still at work (None: any owner of this process is alive)."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != HOST:
        return True
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return live_here is None or owner in live_here
    return pid_alive(pid)
