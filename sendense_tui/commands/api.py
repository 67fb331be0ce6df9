"""``sendense api token create|list|revoke`` and ``sendense api status``.

A token's secret is printed once, by ``create``; the catalog keeps only its digest.
``api status`` says where the daemon serves the API and, for TLS, the SHA-256
fingerprint of its certificate (to compare with what a client is shown).
"""

from __future__ import annotations

import argparse
import getpass
from typing import Any

from sendense_tui.commands import CliContext, add_parser, bounded_int, table
from sendense_tui.format import printable


def register(subparsers: Any) -> None:
    parser = add_parser(subparsers, "api", help="the HTTP API: tokens, where it listens")
    sub = parser.add_subparsers(dest="api_command", metavar="ACTION", required=True)
    token = add_parser(sub, "token", help="API tokens: create, list, revoke")
    tokens = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    create = add_parser(tokens, "create", help="make a token (its secret is shown once)")
    create.add_argument("name")
    create.add_argument("--role", required=True, choices=("read", "operate", "admin"))
    create.add_argument(
        "--expires", type=bounded_int(1, 3650, "days"), metavar="DAYS", help="expire after DAYS"
    )
    create.set_defaults(func=create_token)
    add_parser(tokens, "list", help="every token with its role and state").set_defaults(
        func=list_tokens
    )
    revoke = add_parser(tokens, "revoke", help="refuse a token from now on")
    revoke.add_argument("name")
    revoke.set_defaults(func=revoke_token)
    add_parser(sub, "status", help="where the daemon serves the API, TLS fingerprint").set_defaults(
        func=api_status
    )


def _actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def create_token(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        view, secret = engine.api_tokens.create(args.name, args.role, args.expires, actor=_actor())
    if ctx.json:
        ctx.print_json({**view.as_dict(), "secret": secret})
        return 0
    print(printable(f"API token {view.name} created with role {view.role.value}"))
    if view.expires_at is not None:
        print(f"expires {view.expires_at:%Y-%m-%d %H:%M} UTC")
    print("secret (shown this once; send it as 'Authorization: Bearer <secret>'):")
    print(secret)
    return 0


def list_tokens(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine(read_only=True) as engine:
        views = engine.api_tokens.list()
    if ctx.json:
        ctx.print_json([v.as_dict() for v in views])
        return 0
    if not views:
        print("no API tokens (sendense api token create NAME --role read)")
        return 0

    def when(value: Any) -> str:
        return value.strftime("%Y-%m-%d %H:%M") if value is not None else "-"

    rows = [
        [
            v.name,
            v.role.value,
            v.state,
            when(v.created_at),
            when(v.expires_at),
            when(v.last_used_at),
        ]
        for v in views
    ]
    print(table(rows, ["NAME", "ROLE", "STATE", "CREATED", "EXPIRES", "LAST USED"]))
    return 0


def revoke_token(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        view = engine.api_tokens.revoke(args.name, actor=_actor())
    if ctx.json:
        ctx.print_json(view.as_dict())
    else:
        print(printable(f"API token {view.name} revoked"))
    return 0


def api_status(args: argparse.Namespace, ctx: CliContext) -> int:
    from sendense_api.serve import listening

    data = listening(ctx.settings)
    if ctx.json:
        ctx.print_json(data)
        return 0 if data["running"] else 1
    if not data["running"]:
        print(f"no sendense daemon runs for {ctx.settings.state_dir}, so no API is served")
        return 1
    for address in data["addresses"]:
        print(printable(address))
    if data["tls_fingerprint"]:
        print(f"TLS certificate SHA-256 fingerprint: {data['tls_fingerprint']}")
    roots = data["token_source_roots"]
    reach = "nbd:// URIs and paths inside " + ", ".join(roots) if roots else "nbd:// URIs only"
    print(printable(f"a token may name as a backup's source: {reach} ([api] source_roots)"))
    roots = data["token_repository_roots"]
    where = "inside " + ", ".join(roots) if roots else "nowhere (NFS and CIFS repositories only)"
    print(printable(f"a token may keep a local repository: {where} ([api] repository_roots)"))
    return 0
