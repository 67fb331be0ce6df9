"""``sendense console``: the console in this terminal, or with ``--web`` in browsers.

``sendense`` without a command opens the terminal console too. ``--web`` serves the
same console through textual-serve: loopback by default, off loopback only with TLS,
every page and websocket behind an admin API token (``sendense_tui.web``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from engine.errors import ValidationError
from sendense_tui.commands import CliContext, add_parser, bounded_int

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8040


def register(subparsers: Any) -> None:
    parser = add_parser(
        subparsers,
        "console",
        help="open the console (--web: serve it to browsers)",
        description="Open the console in this terminal; with --web, serve it to browsers "
        "(an admin API token is needed: open http://HOST:PORT/?token=SECRET).",
    )
    parser.add_argument("--web", action="store_true", help="serve the console to browsers")
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--port",
        type=bounded_int(1, 65535),
        default=DEFAULT_PORT,
        help=f"TCP port (default {DEFAULT_PORT})",
    )
    parser.add_argument("--tls-cert", type=Path, help="TLS certificate (PEM; default: [api])")
    parser.add_argument("--tls-key", type=Path, help="TLS private key (PEM; default: [api])")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: CliContext) -> int:
    if not args.web:
        from sendense_tui.cli import open_console

        return open_console(args, ctx)
    return serve_web(args, ctx)


def _tls_files(args: argparse.Namespace, ctx: CliContext) -> tuple[Path, Path] | None:
    """The certificate and key: both options, else the ``[api]`` settings, else none."""
    cert, key = args.tls_cert, args.tls_key
    if (cert is None) != (key is None):
        raise ValidationError(
            "--tls-cert and --tls-key go together", hint="give both PEM files, or neither"
        )
    if cert is None:
        cert, key = ctx.settings.api.tls_cert, ctx.settings.api.tls_key
    if cert is None or key is None:
        return None
    return Path(cert).expanduser(), Path(key).expanduser()


def child_command(args: argparse.Namespace, ctx: CliContext) -> tuple[list[str], dict[str, str]]:
    """How each browser's console starts: this Python, with this command's state
    directory and catalog options (the rest comes from the same config file and
    environment, which the console inherits). A catalog URL given here travels in
    the environment, never in the argument list: it may hold a password, and
    argument lists are public in /proc."""
    argv = [sys.executable, "-m", "sendense_tui.cli"]
    state_dir = getattr(args, "state_dir", None)
    if state_dir is not None:
        argv += ["--state-dir", str(ctx.settings.state_dir)]
    db_url = getattr(args, "db_url", None)
    return argv, ({"SENDENSE_DB_URL": db_url} if db_url else {})


def serve_web(args: argparse.Namespace, ctx: CliContext) -> int:
    from sendense_tui.cli import _log_to_file
    from sendense_tui.web import WebConsole, is_loopback, tls_context

    files = _tls_files(args, ctx)
    if files is None and not is_loopback(args.host):
        raise ValidationError(
            f"the web console listens on {args.host} (off loopback) only with TLS",
            hint="give --tls-cert and --tls-key (or set them in the [api] section of the "
            "config), or keep the default --host 127.0.0.1",
        )
    context = tls_context(*files) if files is not None else None
    _log_to_file(ctx, "console.log")
    argv, env = child_command(args, ctx)
    with ctx.engine() as engine:
        if not any(
            t.role.value == "admin" and t.state == "active" for t in engine.api_tokens.list()
        ):
            print(
                "sendense: no admin API token exists yet: make one with "
                "`sendense api token create NAME --role admin`",
                file=sys.stderr,
            )
        server = WebConsole(
            argv,
            host=args.host,
            port=args.port,
            authenticate=lambda secret: engine.api_tokens.authenticate(secret).role.value,
            ssl_context=context,
            env=env,
        )
        server.serve()
    return 0
