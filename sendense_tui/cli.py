"""The ``sendense`` command: no arguments opens the console."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    print("sendense: console not built yet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
