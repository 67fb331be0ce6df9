"""The console on the seeded demo catalog, for tests that drive it through a real
terminal (tmux): ``python -m tests.tui.tmux_console STATE_DIR``. No engine thread
and no timers (``live=False``): what is tested is the terminal, not the engine."""

from __future__ import annotations

import sys
from pathlib import Path

from sendense_tui.app import SendenseApp
from sendense_tui.demo import build_demo_engine, demo_clock, seed_demo_catalog


def main(state_dir: str) -> int:
    clock = demo_clock()
    engine = build_demo_engine(Path(state_dir), clock)
    try:
        seed_demo_catalog(engine, clock)
        SendenseApp(engine, clock=clock, live=False).run()
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
