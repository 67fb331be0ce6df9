"""Subcommand groups of the ``sendense`` command, one module per group.

A group module exposes ``register(subparsers)`` and sets ``func`` on its
parsers: ``func(args, ctx) -> int``. To add a group, write
``sendense_tui/commands/<group>.py`` and add its name to GROUPS; groups never
touch each other.

What every group shares lives here: the argument types (every number a command
takes is a ``bounded_int`` or an ``id_argument``, so no input can overflow a
catalog column), the table printer and the JSON printer (both escape control
characters: a name from outside cannot forge a line or send terminal escapes).
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.config import Settings, load_settings, sqlite_url
from engine.errors import SendenseError, ValidationError
from engine.names import ID_MAX, UNSAFE_CHARS, parse_id
from engine.paging import Page
from sendense_tui.format import printable

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
    "api",
    "events",
    "metrics",
    "notify",
    "catalog",
    "doctor",
    "version",
    "demo",
    "console",
]

Handler = Callable[[argparse.Namespace, "CliContext"], int]

#: the largest value a 32-bit INTEGER column holds (counts, days, hours, priorities)
INT_MAX = 2**31 - 1
#: the largest value a BIGINT column holds (sizes in bytes)
BIGINT_MAX = 2**63 - 1
#: common domain bounds, shared so the same option means the same range everywhere
DAYS_MAX = 36500
COUNT_MAX = 10_000
LIMIT_MAX = 100_000

_NUMBER = re.compile(r"[+-]?[0-9]+")


def bounded_int(low: int, high: int, unit: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high`` (both within the
    catalog's integer columns), refused with one sentence otherwise (exit 2)."""
    if not -INT_MAX <= low <= high <= BIGINT_MAX:
        raise ValueError(f"bounds {low}..{high} do not fit the catalog")
    suffix = f" {unit}" if unit else ""

    def number(text: str) -> int:
        digits = text.strip()
        if not _NUMBER.fullmatch(digits):
            raise argparse.ArgumentTypeError(f"{printable(text)[:40]!r} is not a whole number")
        # a number longer than 30 digits is out of range whatever the bounds (and int()
        # refuses strings of thousands of digits)
        value = int(digits) if len(digits) <= 30 else (high + 1 if digits[0] != "-" else low - 1)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{digits[:30]}{'…' if len(digits) > 30 else ''} is out of range: "
                f"give {low} to {high}{suffix}"
            )
        return value

    return number


def id_argument(what: str) -> Callable[[str], int]:
    """An argparse type for an id: ``12`` or ``#12`` (the form listings show)."""

    def identifier(text: str) -> int:
        value = parse_id(text.strip())
        if value is None:
            raise argparse.ArgumentTypeError(
                f"{printable(text)[:40]!r} is not {what} id: give a number from 1 to "
                f"{ID_MAX}, e.g. 12 or #12"
            )
        return value

    return identifier


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


#: each top-level command: its --help line and the group modules that register it.
#: ``sendense --help`` and ``sendense version`` read this table instead of importing
#: every group (a group pulls in the engine, SQLAlchemy…): a call pays only for the
#: command it runs. tests/tui/test_cli_start.py checks it against the modules.
COMMANDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "repo": ("repositories: list, add, import, show, test, remove", ("repo",)),
    "jobs": ("list and steer jobs", ("jobs",)),
    "backup": ("back up VM disks, list restore points", ("backup",)),
    "chain": ("show, check and consolidate backup chains", ("chain",)),
    "restore": ("restore disks and files from backups", ("restore", "restore_files")),
    "copy": ("copy backups to other repositories (3-2-1)", ("copy",)),
    "verify": ("re-read backups and copies, compare checksums", ("verify",)),
    "export": ("serve restore points over NBD", ("export",)),
    "policy": ("backup policies: schedule, retention, locks", ("policy",)),
    "lock": ("immutability locks (chattr +i)", ("lock",)),
    "daemon": (
        "run the scheduler, jobs, mounts and exports headless (started by the console "
        "when none runs; or by systemd)",
        ("daemon",),
    ),
    "api": ("the HTTP API: tokens, where it listens", ("api",)),
    "events": ("show the audit log", ("events",)),
    "metrics": ("print the Prometheus metrics (text format) on stdout", ("metrics",)),
    "notify": ("notification rules: webhooks, mail, apprise", ("notify",)),
    "catalog": ("the catalog database", ("catalog",)),
    "doctor": ("check the system programs Sendense needs", ("doctor",)),
    "version": ("print the version", ("version",)),
    "demo": (
        "open the console on a demo: real small backups in a temporary directory",
        ("demo",),
    ),
    "console": ("open the console (--web: serve it to browsers)", ("console",)),
}
#: options before the command that take a value (``--state-dir DIR``)
_VALUED_OPTIONS = ("--state-dir", "--db-url")


def command_word(argv: list[str]) -> str | None:
    """The top-level command ``argv`` names (None: none, e.g. ``sendense --help``)."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in _VALUED_OPTIONS:
            skip = True
        elif word == "--":
            return None
        elif not word.startswith("-"):
            return word
    return None


def register_all(subparsers: Any) -> None:
    for name in GROUPS:
        module = importlib.import_module(f"sendense_tui.commands.{name}")
        module.register(subparsers)


def register_for(subparsers: Any, argv: list[str]) -> None:
    """Register the command ``argv`` runs in full and every other one as a stub with
    its help line (enough for ``--help`` and for argparse's "invalid choice")."""
    word = command_word(argv)
    if word not in COMMANDS:
        word = None
    for name, (text, modules) in COMMANDS.items():
        if name == word:
            for module_name in modules:
                importlib.import_module(f"sendense_tui.commands.{module_name}").register(subparsers)
        else:
            add_parser(subparsers, name, help=text, add_help=False)


#: the largest page a listing prints at once (--all streams more than that)
PAGE_MAX = LIMIT_MAX
#: a listing's page size when stdout is not a terminal
PIPE_PAGE = 50


def add_paging(parser: argparse.ArgumentParser, noun: str, *, pipe: int = PIPE_PAGE) -> None:
    """``--limit N``, ``--after CURSOR`` and ``--all`` for a listing (keyset pages:
    engine.paging); ``pipe``: the page into a pipe (``page_size``)."""
    parser.add_argument(
        "--limit",
        type=bounded_int(1, PAGE_MAX),
        help=f"{noun} a page (default: what fits the terminal; {pipe} into a pipe)",
    )
    parser.add_argument(
        "--after",
        metavar="CURSOR",
        help="the page after this cursor (the previous page ends with it)",
    )
    parser.add_argument(
        "--all",
        action="store_true",
        dest="every",
        help=f"every {noun}, streamed (with --json: one JSON object a line)",
    )


def page_size(args: argparse.Namespace, *, lines_each: int = 1, pipe: int = PIPE_PAGE) -> int:
    """The page a listing prints: ``--limit``, else what fits the terminal (a header,
    the "more" line and the prompt kept in view), else ``pipe`` rows."""
    if getattr(args, "limit", None):
        return int(args.limit)
    if sys.stdout.isatty():
        lines = shutil.get_terminal_size().lines
        return max(1, min(PAGE_MAX, (lines - 3) // max(1, lines_each)))
    return pipe


def check_paging(args: argparse.Namespace) -> None:
    if getattr(args, "every", False) and (args.after or args.limit):
        raise ValidationError(
            "--all lists everything: it takes neither --after nor --limit",
            hint="leave --all out to read page by page",
        )


def say_more(ctx: CliContext, page: Any) -> None:
    """``1,234 more: --after CURSOR`` after a page that is not the last (``more than
    10,000 more`` when what follows was not counted to its end: engine.paging); on
    stderr under --json (stdout stays one JSON document)."""
    if page.next_cursor is None:
        return
    line = f"{page.more_text()} more: --after {page.next_cursor}"
    print(line, file=sys.stderr if ctx.json else sys.stdout)


def print_page(
    ctx: CliContext,
    page: Page[dict[str, Any]],
    as_row: Callable[[dict[str, Any]], list[str]],
    headers: list[str],
    nothing: str,
) -> int:
    """A listing's page: its rows as JSON under --json, else a table (``nothing`` when
    it is empty), then what follows it (``say_more``). Returns the exit code 0."""
    if ctx.json:
        ctx.print_json(page.items)
    elif not page.items:
        print(nothing)
    else:
        print(table([as_row(item) for item in page.items], headers))
    say_more(ctx, page)
    return 0


def stream(
    ctx: CliContext,
    rows: Iterable[Any],
    as_json: Callable[[Any], Any],
    as_row: Callable[[Any], list[str]],
    headers: list[str],
) -> int:
    """Print every row of a listing as it is read (``--all``): JSON lines under
    --json, else a table per batch (the header once). Nothing is held but a batch."""
    batch: list[list[str]] = []
    first = True
    for row in rows:
        if ctx.json:
            sys.stdout.write(json_text(as_json(row)) + "\n")
            continue
        batch.append(as_row(row))
        if len(batch) >= STREAM_ROWS:
            _print_rows(batch, headers, first)
            batch, first = [], False
    if batch:
        _print_rows(batch, headers, first)
    sys.stdout.flush()
    return 0


#: rows of a streamed table aligned together
STREAM_ROWS = 500


def _print_rows(rows: list[list[str]], headers: list[str], header: bool) -> None:
    lines = table(rows, headers).split("\n")
    print("\n".join(lines if header else lines[1:]))


@dataclass
class CliContext:
    """What a subcommand needs: settings with CLI overrides, an engine, output."""

    args: argparse.Namespace
    _settings: Settings | None = None
    _engines: list[Any] = field(default_factory=list)
    #: what must be in place before the engine is loaded (main(): the log file, which
    #: a command the daemon runs never needs); called once
    before_engine: Callable[[], None] | None = None

    def prepare_for_engine(self) -> None:
        """Run ``before_engine`` (once): engine() and reader() call it first."""
        prepare, self.before_engine = self.before_engine, None
        if prepare is not None:
            prepare()

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
    def engine(self, *, start: bool = False, read_only: bool = False) -> Iterator[Any]:
        """An opened (migrated) engine, closed afterwards. ``read_only`` for a command
        that only looks (a listing, show, status): the catalog is not migrated and
        restore mounts are not cleaned up (Engine.open)."""
        self.prepare_for_engine()
        from engine.runtime import Engine

        engine = Engine(self.settings)
        try:
            engine.open(read_only=read_only)
            # The same embedded default the console starts with, so a newcomer's
            # first `sendense backup run --repo local ...` has somewhere to go.
            with suppress(OSError, SendenseError):
                engine.ensure_default_repository()
            if start:
                # a command waits for its job: the daemon or console prepares repositories
                engine.start(prepare_repositories=False)
            yield engine
        finally:
            engine.close()

    @contextmanager
    def reader(self) -> Iterator[Any]:
        """The catalog opened for a listing (engine.runtime.Reader), closed afterwards:
        nothing is migrated (an older catalog is refused), cleaned up or written, and
        only what a listing reads is imported and built."""
        self.prepare_for_engine()
        from engine.runtime import Reader

        reader = Reader(self.settings)
        try:
            yield reader.open()
        finally:
            reader.close()

    def listing_page(
        self,
        path: str | None,
        params: dict[str, Any],
        read: Callable[[Any], Page[dict[str, Any]]],
    ) -> Page[dict[str, Any]]:
        """A page of a long listing, its rows as ``engine.shapes`` dicts: the page
        ``path`` of the API with ``params`` as the running daemon of this catalog
        answers it (sendense_tui.daemon_client), else ``read(listings)`` on the catalog
        opened with ``reader()``. ``path`` None: the API has no such page."""
        if path is not None:
            from sendense_tui.daemon_client import page_from_daemon

            page = page_from_daemon(self.settings, path, params)
            if page is not None:
                return page
        with self.reader() as reader:
            return read(reader.listings)

    def print_json(self, data: Any) -> None:
        sys.stdout.write(json_text(data, indent=2) + "\n")


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


def json_text(data: Any, *, indent: int | None = None) -> str:
    """JSON for scripts and terminals alike. ``ensure_ascii=False`` keeps names
    readable, but would let DEL, C1 controls (0x9b is a CSI), bidi overrides and
    undecodable bytes of a file name through raw: those become ``\\uXXXX``
    escapes (valid JSON: they only ever occur inside strings)."""
    text = json.dumps(data, indent=indent, default=_json_default, ensure_ascii=False)
    return UNSAFE_CHARS.sub(_json_escape, text)


def _json_escape(match: re.Match[str]) -> str:
    char = match.group()
    # json.dumps already escaped every C0 control inside strings: one left here is the
    # layout's own newline or indent
    return char if ord(char) < 0x20 else f"\\u{ord(char):04x}"


def table(rows: list[list[str]], headers: list[str]) -> str:
    """Plain aligned columns for terminals and pipes; every cell with its control
    characters escaped (a file name holding a newline stays on its row)."""
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)
