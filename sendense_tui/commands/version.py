"""``sendense version``."""

from __future__ import annotations

import argparse
import platform
from importlib import metadata
from typing import Any

from sendense_tui.commands import CliContext, add_parser


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def register(subparsers: Any) -> None:
    add_parser(subparsers, "version", help="print the version").set_defaults(func=version)


def version(args: argparse.Namespace, ctx: CliContext) -> int:
    data = {
        "sendense": _version("sendense"),
        "textual": _version("textual"),
        "sqlalchemy": _version("sqlalchemy"),
        "python": platform.python_version(),
    }
    if ctx.json:
        ctx.print_json(data)
    else:
        print(f"sendense {data['sendense']}")
    return 0
