"""Ctrl+P opens the command palette in a real terminal: the console runs inside tmux
(a private server on a socket in the test's directory, no user config) and gets
its keys as tmux sends them.

tmux sends Ctrl+P as the byte 0x10 by default; with ``extended-keys`` on it can
forward it as ``CSI 27;5;112~`` (tmux 3.3's xterm form) or ``CSI 112;5u`` (the
CSI u form of tmux 3.5's ``extended-keys-format csi-u``). The console must open
the palette for each (Textual adds its own Ctrl+P only when no binding opens the
palette, and ``:`` does, so before the fix Ctrl+P did nothing at all)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

ROOT = Path(__file__).resolve().parents[2]
PALETTE = "Search for commands"
#: how tmux can deliver Ctrl+P: (name, send-keys arguments)
CTRL_P = [
    ("plain 0x10", ["C-p"]),
    ("xterm extended 27;5;112~", ["-H", *(f"{b:02x}" for b in b"\x1b[27;5;112~")]),
    ("csi-u 112;5u", ["-H", *(f"{b:02x}" for b in b"\x1b[112;5u")]),
]


class Tmux:
    def __init__(self, socket: Path) -> None:
        self.socket = socket

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-S", str(self.socket), "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return done.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "console")

    def wait_for(self, predicate: object, what: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            if predicate(text):  # type: ignore[operator]
                return text
            time.sleep(0.05)
        raise AssertionError(f"{what} did not happen within {timeout:.0f}s; screen:\n{text}")


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    server = Tmux(tmp_path / "tmux.sock")
    try:
        yield server
    finally:
        server("kill-server")
        server.socket.unlink(missing_ok=True)


def test_ctrl_p_opens_the_palette_inside_tmux(tmux: Tmux, tmp_path: Path) -> None:
    # the new server and the console inherit this test's environment (conftest keeps
    # the machine's Sendense settings out of it)
    command = f"{sys.executable} -m tests.tui.tmux_console {tmp_path / 'state'}"
    tmux("new-session", "-d", "-s", "console", "-x", "100", "-y", "30", "-c", str(ROOT), command)
    tmux.wait_for(lambda text: "1 Dash" in text and "Repositories" in text, "the console")
    for name, keys in CTRL_P:
        tmux("send-keys", "-t", "console", *keys)
        screen = tmux.wait_for(lambda text: PALETTE in text, f"the palette on {name}")
        assert "Show every key" in screen  # our commands, not Textual's defaults
        tmux("send-keys", "-t", "console", "Escape")
        tmux.wait_for(lambda text: PALETTE not in text, f"closing the palette after {name}")
