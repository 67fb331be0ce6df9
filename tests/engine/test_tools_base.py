"""engine.tools.base: missing programs, secrets, timeouts, children that die with the engine."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.platform import pid_alive
from engine.tools import ToolError, ToolMissing, ToolTimeout, qemu_img, run, which


def test_missing_program_names_the_debian_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissing) as err:
        qemu_img.info(tmp_path / "x.qcow2")
    assert str(err.value) == "qemu-img is not installed"
    assert err.value.hint == "install it: apt-get install qemu-utils"
    # sbin programs are still found when a non-login shell left them out of PATH
    assert which("losetup").endswith("/losetup")


def test_secret_is_redacted_from_failure() -> None:
    with pytest.raises(ToolError) as err:
        run(["ls", "/nonexistent/password=s3cr3t-value"], secrets=["s3cr3t-value"])
    text = str(err.value) + err.value.stderr
    assert "s3cr3t-value" not in text
    assert "***" in text


def test_timeout_kills_the_program() -> None:
    with pytest.raises(ToolTimeout, match=r"sleep did not finish within 0\.5 s"):
        run(["sleep", "5"], timeout=0.5)


# -- children belong to the engine process that started them ------------------------


def _wait_until(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_a_timeout_kills_the_program_and_everything_it_started(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    with pytest.raises(ToolTimeout):
        run(["bash", "-c", f"sleep 300 & echo $! > {pidfile}; wait"], timeout=1)
    grandchild = int(pidfile.read_text())
    # the whole process group went, not just bash: nothing keeps running unowned
    _wait_until(lambda: not pid_alive(grandchild), "the grandchild to be killed")


ENGINE_SCRIPT = """
import sys, threading
from engine.tools.base import start
from engine.tools.nbd import start_qemu_nbd

image, sock = sys.argv[1], sys.argv[2]
started = {}
# a job thread starts qemu-nbd and ends, as job threads and console workers do
job = lambda: started.update(nbd=start_qemu_nbd(image, socket_path=sock))  # noqa: E731
worker = threading.Thread(target=job)
worker.start()
worker.join()
server = start(["sleep", "300"], outlives_engine=True)
print(started["nbd"].pid, server.pid, flush=True)
sys.stdin.read()
"""


def test_children_die_with_the_engine_process_not_with_the_thread_that_started_them(
    tmp_path: Path,
) -> None:
    image = tmp_path / "point.qcow2"
    qemu_img.create(image, 4 * 1024 * 1024)
    engine = subprocess.Popen(
        [sys.executable, "-c", ENGINE_SCRIPT, str(image), str(tmp_path / "nbd.sock")],
        cwd=Path(__file__).resolve().parents[2],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert engine.stdout is not None
    nbd, server = (int(pid) for pid in engine.stdout.readline().split())
    try:
        assert os.getpgid(nbd) == nbd  # its own process group: a terminal's ^C misses it
        time.sleep(0.5)  # PR_SET_PDEATHSIG would have fired when the job thread ended
        assert pid_alive(nbd), "qemu-nbd died with the thread that started it"
        engine.kill()  # SIGKILL: no cleanup code runs in the engine
        engine.wait(10)
        _wait_until(lambda: not pid_alive(nbd), "qemu-nbd to die with its engine")
        assert pid_alive(server)  # started to outlive the engine on purpose
    finally:
        for pid in (nbd, server):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if engine.poll() is None:
            engine.kill()
