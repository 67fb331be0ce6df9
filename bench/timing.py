"""Timing a command as a whole process, without the measurement's own error."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path


def run_to_end(argv: list[str], *, cwd: Path, env: dict[str, str], limit_seconds: float) -> None:
    """Run ``argv`` to its end, its output thrown away; CalledProcessError if it failed.

    Not ``subprocess.run(..., timeout=...)``: with a timeout it waits by polling
    ``waitpid`` with sleeps that grow to 50 ms, so a process that took 0.10 s was
    read as 0.114 s and one of 0.42 s as 0.46 s. This blocks in ``waitpid`` and a
    timer kills a process still running after ``limit_seconds``."""
    process = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    timer = threading.Timer(limit_seconds, process.kill)
    timer.start()
    try:
        code = process.wait()
    finally:
        timer.cancel()
    if code:
        raise subprocess.CalledProcessError(code, argv)
