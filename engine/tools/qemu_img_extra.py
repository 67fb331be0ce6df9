"""qemu-img calls the base wrapper does not cover: a safe rebase with progress and cancel.

The incremental backup is made with the "rebase trick": an empty overlay over the
source, then a *safe* ``qemu-img rebase -p`` onto the previous restore point. The
safe rebase compares the old backing (the source) with the new one (the previous
point) and copies only the clusters that differ into the overlay, so the file ends
up holding exactly the changed clusters. That can take as long as reading the disk
twice, so it needs the same progress and cancel handling as ``convert``.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from engine.tools.base import ToolCancelled, ToolTimeout, start
from engine.tools.qemu_img import explain_stderr

PathLike = str | Path

_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


def run_with_progress(
    args: Sequence[str],
    *,
    image: PathLike,
    dest: PathLike | None = None,
    on_progress: Callable[[float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    timeout: float | None = None,
    poll_interval: float = 0.1,
) -> None:
    """Run a ``qemu-img … -p`` command, feeding ``(NN.NN/100%)`` to ``on_progress``.

    ``should_stop()`` is polled; True kills the process and raises ToolCancelled.
    A failure raises the specific QemuImgError for its stderr.
    """
    proc = start(list(args))
    assert proc.stdout is not None and proc.stderr is not None
    err_chunks: list[bytes] = []
    percents: list[float] = []
    lock = threading.Lock()

    def read_err() -> None:
        assert proc.stderr is not None
        err_chunks.append(proc.stderr.read())

    def read_out() -> None:
        assert proc.stdout is not None
        buf = b""
        while True:
            chunk = proc.stdout.read1(4096)
            if not chunk:
                break
            buf += chunk
            *parts, buf = re.split(rb"[\r\n]", buf)
            for part in parts:
                match = _PROGRESS.search(part)
                if match:
                    with lock:
                        percents.append(float(match.group(1)))

    threads = [threading.Thread(target=t, daemon=True) for t in (read_err, read_out)]
    for thread in threads:
        thread.start()

    def flush() -> None:
        with lock:
            pending, percents[:] = percents[:], []
        if on_progress is not None:
            for p in pending:
                on_progress(p)

    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            try:
                proc.wait(timeout=poll_interval)
                break
            except subprocess.TimeoutExpired:
                pass
            flush()
            if should_stop is not None and should_stop():
                raise ToolCancelled(f"{args[1]} of {image} was cancelled", program="qemu-img")
            if deadline is not None and time.monotonic() > deadline:
                raise ToolTimeout(
                    f"qemu-img {args[1]} of {image} did not finish within {timeout:g} s",
                    program="qemu-img",
                    hint="the source or the repository storage may be hung or very slow",
                )
    except BaseException:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        raise
    for thread in threads:
        thread.join(5)
    flush()
    if proc.returncode != 0:
        stderr = b"".join(err_chunks).decode("utf-8", "replace")
        raise explain_stderr(stderr, image=str(image), dest=dest, rc=proc.returncode)


def rebase_with_progress(
    path: PathLike,
    backing: str,
    *,
    backing_fmt: str = "qcow2",
    on_progress: Callable[[float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    timeout: float | None = None,
) -> None:
    """Safe rebase of ``path`` onto ``backing`` (written into the header as given; a
    plain file name is resolved in ``path``'s directory), copying differing clusters."""
    args = ["qemu-img", "rebase", "-p", "-b", backing, "-F", backing_fmt, str(path)]
    run_with_progress(
        args,
        image=path,
        dest=path,
        on_progress=on_progress,
        should_stop=should_stop,
        timeout=timeout,
    )
