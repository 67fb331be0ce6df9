"""Subcommand groups of the ``sendense`` command, one module per group.

A group module exposes ``register(subparsers)`` and sets ``func`` on its
parsers: ``func(args, ctx) -> int``. To add a group, write
``sendense_tui/commands/<group>.py`` and add its name to GROUPS; groups never
touch each other.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.config import Settings, load_settings, sqlite_url
from engine.errors import SendenseError

#: module names under sendense_tui.commands, in --help order
GROUPS: list[str] = [
    "repo",
    "jobs",
    "backup",
    "chain",
    "restore",
    "copy",
    "verify",
    "restore_files",
    "export",
    "policy",
    "lock",
    "daemon",
    "events",
    "catalog",
    "doctor",
    "version",
]

Handler = Callable[[argparse.Namespace, "CliContext"], int]


def common_options() -> argparse.ArgumentParser:
    """Options accepted before or after any subcommand."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    parent.add_argument(
        "--state-dir", type=Path, default=argparse.SUPPRESS, help="state directory to use"
    )
    parent.add_argument(
        "--db-url", default=argparse.SUPPRESS, help="catalog URL (overrides SENDENSE_DB_URL)"
    )
    return parent


COMMON = common_options()


def add_parser(subparsers: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """``subparsers.add_parser`` that also accepts the common options."""
    kwargs.setdefault("parents", [COMMON])
    return subparsers.add_parser(name, **kwargs)


def register_all(subparsers: Any) -> None:
    for name in GROUPS:
        module = importlib.import_module(f"sendense_tui.commands.{name}")
        module.register(subparsers)


@dataclass
class CliContext:
    """What a subcommand needs: settings with CLI overrides, an engine, output."""

    args: argparse.Namespace
    _settings: Settings | None = None
    _engines: list[Any] = field(default_factory=list)

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            settings = load_settings()
            state_dir = getattr(self.args, "state_dir", None)
            if state_dir is not None:
                state_dir = Path(state_dir).expanduser().absolute()
                settings = replace(
                    settings,
                    state_dir=state_dir,
                    db_url=sqlite_url(state_dir / "catalog.db")
                    if settings.db_url == sqlite_url(settings.state_dir / "catalog.db")
                    else settings.db_url,
                    mount_root=state_dir / "mounts",
                    default_repository=state_dir / "repository",
                )
            db_url = getattr(self.args, "db_url", None)
            if db_url:
                settings = replace(settings, db_url=db_url)
            self._settings = settings
        return self._settings

    @contextmanager
    def engine(self, *, start: bool = False) -> Iterator[Any]:
        """An opened (migrated) engine, closed afterwards."""
        from engine.runtime import Engine

        engine = Engine(self.settings)
        try:
            engine.open()
            # The same embedded default the console starts with, so a newcomer's
            # first `sendense backup run --repo local ...` has somewhere to go.
            with suppress(OSError, SendenseError):
                engine.repositories.ensure_default(engine.settings.default_repository)
            if start:
                engine.start()
            yield engine
        finally:
            engine.close()

    def print_json(self, data: Any) -> None:
        json.dump(data, sys.stdout, indent=2, default=_json_default, ensure_ascii=False)
        sys.stdout.write("\n")


@contextmanager
def say_when_waiting(engine: Any, ctx: CliContext) -> Iterator[None]:
    """While the block runs, print "waiting: web01/sda is being written by job 42 ..."
    on stderr when it has to wait for another writer of a disk."""

    def on_event(event: Any) -> None:
        if event.kind == "writer.waiting" and not ctx.json:
            print(f"waiting: {event.data.get('sentence', event.message)}", file=sys.stderr)

    unsubscribe = engine.bus.subscribe(on_event, kinds=("writer.waiting",))
    try:
        yield
    finally:
        unsubscribe()


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def table(rows: list[list[str]], headers: list[str]) -> str:
    """Plain aligned columns for terminals and pipes."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)
