"""``sendense version``."""

from __future__ import annotations

import argparse
import platform
from typing import Any

from engine import __version__
from sendense_tui.commands import CliContext, add_parser


def _version(dist: str) -> str:
    # importlib.metadata costs more than the rest of `sendense version`: only --json,
    # which names the libraries too, loads it
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def register(subparsers: Any) -> None:
    add_parser(subparsers, "version", help="print the version").set_defaults(func=version)


def version(args: argparse.Namespace, ctx: CliContext) -> int:
    if not ctx.json:
        print(f"sendense {__version__}")
        return 0
    ctx.print_json(
        {
            "sendense": __version__,
            "textual": _version("textual"),
            "sqlalchemy": _version("sqlalchemy"),
            "python": platform.python_version(),
        }
    )
    return 0
