"""``sendense notify rule add|list|remove|enable|disable``, ``notify test RULE``,
``notify deliveries``: where events are sent (engine.services.notify).

Secrets (the webhook's HMAC key, the SMTP password, the apprise URL, which holds
the target's tokens) are read from a file or from stdin (``-``), never from the
command line, where other users could read them in the process list.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from engine.errors import SendenseError
from engine.services.notify import RuleSpec
from engine.views import LEVELS
from sendense_tui.commands import (
    COUNT_MAX,
    LIMIT_MAX,
    CliContext,
    add_parser,
    bounded_int,
    table,
)
from sendense_tui.exitcodes import CommandFailed
from sendense_tui.format import printable

#: a secret file longer than this is not a key or a password
SECRET_MAX = 8192


def register(subparsers: Any) -> None:
    parser = add_parser(subparsers, "notify", help="notification rules: webhooks, mail, apprise")
    sub = parser.add_subparsers(dest="notify_command", metavar="ACTION", required=True)

    rule = add_parser(sub, "rule", help="add, list, remove, enable or disable rules")
    rules = rule.add_subparsers(dest="rule_command", metavar="ACTION", required=True)
    add = add_parser(rules, "add", help="send matching events to a target")
    add.add_argument("name")
    target = add.add_mutually_exclusive_group(required=True)
    target.add_argument("--webhook", metavar="URL", help="POST each event as JSON to this URL")
    target.add_argument(
        "--webhook-url-file",
        type=Path,
        metavar="FILE",
        help="the same, for a URL that holds a token: read from FILE or - (stdin)",
    )
    target.add_argument("--smtp", metavar="HOST[:PORT]", help="send mail through this server")
    target.add_argument(
        "--apprise-url-file",
        type=Path,
        metavar="FILE",
        help="an apprise URL (any service apprise knows), read from FILE or - (stdin)",
    )
    add.add_argument(
        "--secret-file", type=Path, metavar="FILE", help="webhook: HMAC key, from FILE or -"
    )
    add.add_argument("--to", action="append", default=[], metavar="ADDR", help="mail: recipient")
    add.add_argument("--from", dest="mail_from", metavar="ADDR", help="mail: sender")
    add.add_argument("--starttls", action="store_true", help="mail: STARTTLS before login")
    add.add_argument("--user", help="mail: log in as this user")
    add.add_argument(
        "--password-file", type=Path, metavar="FILE", help="mail: password, from FILE or -"
    )
    add.add_argument(
        "--min-level",
        choices=LEVELS,
        help="events at this level or above (default warning when neither --level nor "
        "--kind is given)",
    )
    add.add_argument("--level", action="append", default=[], choices=LEVELS, dest="levels")
    add.add_argument(
        "--kind",
        action="append",
        default=[],
        dest="kinds",
        help="event kind, e.g. job.failed; job. or job.* for every job event (repeatable)",
    )
    add.add_argument(
        "--source", action="append", default=[], dest="sources", help="e.g. jobs, copy"
    )
    add.add_argument(
        "--dedup",
        type=bounded_int(0, 7 * 24 * 60, "minutes"),
        default=0,
        metavar="MINUTES",
        help="send the same event about the same thing once per MINUTES",
    )
    add.add_argument(
        "--max-per-hour",
        type=bounded_int(1, COUNT_MAX, "messages"),
        metavar="N",
        help="beyond N an hour, events are folded into one message",
    )
    add.add_argument(
        "--digest", metavar="HH:MM", help="one message a day at HH:MM (UTC) instead of one each"
    )
    add.add_argument("--disabled", action="store_true", help="add it disabled")
    add.set_defaults(func=add_rule)

    lister = add_parser(rules, "list", help="rules, their targets and delivery counts")
    lister.set_defaults(func=list_rules)
    for action, helptext in (
        ("remove", "remove a rule (and its delivery records)"),
        ("enable", "send again"),
        ("disable", "stop sending (matching events are not recorded)"),
    ):
        one = add_parser(rules, action, help=helptext)
        one.add_argument("name")
        one.set_defaults(func=change_rule, action=action)

    test = add_parser(sub, "test", help="send a test message through a rule now")
    test.add_argument("rule")
    test.set_defaults(func=test_rule)

    deliveries = add_parser(sub, "deliveries", help="what was sent, held, suppressed or failed")
    deliveries.add_argument("--failed", action="store_true", help="only failed deliveries")
    deliveries.add_argument("--rule", help="only this rule's")
    deliveries.add_argument("--limit", type=bounded_int(1, LIMIT_MAX), default=50)
    deliveries.set_defaults(func=list_deliveries)


def read_secret(path: Path, what: str) -> str:
    """A secret from a file, or from stdin for ``-``; one trailing line break dropped."""
    try:
        if str(path) == "-":
            text = sys.stdin.read(SECRET_MAX + 1)
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read(SECRET_MAX + 1)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not text"
        raise SendenseError(f"the {what} cannot be read from {path}: {reason}") from None
    if len(text) > SECRET_MAX:
        raise SendenseError(f"{path} is longer than {SECRET_MAX} characters: not a {what}")
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise SendenseError(f"{path} is empty: no {what} in it")
    return text


def _host_port(text: str, starttls: bool) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:
        return text, 587 if starttls else 25
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise SendenseError(f"--smtp {text!r}: the port is not 1 to 65535")
    return host, int(port)


def add_rule(args: argparse.Namespace, ctx: CliContext) -> int:
    email_only = (args.to, args.mail_from, args.starttls, args.user, args.password_file)
    if not args.smtp and any(email_only):
        raise SendenseError("--to, --from, --starttls, --user and --password-file go with --smtp")
    webhook = args.webhook
    if args.webhook_url_file:
        webhook = read_secret(args.webhook_url_file, "webhook URL")
    if not webhook and args.secret_file:
        raise SendenseError("--secret-file (the HMAC key) goes with --webhook")
    min_level = args.min_level
    if min_level is None and not args.levels and not args.kinds:
        min_level = "warning"
    spec_fields: dict[str, Any] = {}
    if webhook:
        spec_fields = {
            "target": "webhook",
            "url": webhook,
            "hmac_secret": read_secret(args.secret_file, "HMAC key") if args.secret_file else None,
        }
    elif args.smtp:
        host, port = _host_port(args.smtp, args.starttls)
        spec_fields = {
            "target": "email",
            "smtp_host": host,
            "smtp_port": port,
            "starttls": args.starttls,
            "mail_from": args.mail_from,
            "mail_to": tuple(args.to),
            "smtp_user": args.user,
            "smtp_password": read_secret(args.password_file, "SMTP password")
            if args.password_file
            else None,
        }
    else:
        spec_fields = {
            "target": "apprise",
            "apprise_url": read_secret(args.apprise_url_file, "apprise URL"),
        }
    spec = RuleSpec(
        name=args.name,
        min_level=min_level,
        levels=tuple(args.levels),
        sources=tuple(args.sources),
        kinds=tuple(args.kinds),
        dedup_minutes=args.dedup,
        max_per_hour=args.max_per_hour,
        digest_at=args.digest,
        enabled=not args.disabled,
        **spec_fields,
    )
    with ctx.engine() as engine:
        view = engine.notifications.add_rule(spec, actor="cli")
    if ctx.json:
        ctx.print_json(view.as_dict())
    else:
        print(
            printable(f"notification rule {view.name} added: {view.matches} to {view.destination}")
        )
    return 0


def list_rules(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine(read_only=True) as engine:
        views = engine.notifications.list_rules()
    if ctx.json:
        ctx.print_json([view.as_dict() for view in views])
        return 0
    if not views:
        print("no notification rules")
        return 0
    rows = []
    for view in views:
        limits = []
        if view.dedup_minutes:
            limits.append(f"dedup {view.dedup_minutes} min")
        if view.max_per_hour:
            limits.append(f"{view.max_per_hour}/h")
        if view.digest_at:
            limits.append(f"digest {view.digest_at}")
        counts = view.counts
        rows.append(
            [
                view.name,
                "yes" if view.enabled else "no",
                f"{view.target}: {view.destination}",
                "set" if view.secret_set else "not set",
                view.matches,
                ", ".join(limits) or "-",
                f"{counts.get('sent', 0)} sent, {counts.get('failed', 0)} failed, "
                f"{counts.get('suppressed', 0) + counts.get('folded', 0)} suppressed",
            ]
        )
    print(table(rows, ["NAME", "ON", "TARGET", "SECRET", "MATCHES", "LIMITS", "DELIVERIES"]))
    return 0


def change_rule(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        if args.action == "remove":
            engine.notifications.remove_rule(args.name, actor="cli")
            result: dict[str, Any] = {"name": args.name, "removed": True}
            sentence = f"notification rule {args.name} removed"
        else:
            view = engine.notifications.set_enabled(args.name, args.action == "enable", actor="cli")
            result = view.as_dict()
            sentence = f"notification rule {view.name} {args.action}d"
    if ctx.json:
        ctx.print_json(result)
    else:
        print(printable(sentence))
    return 0


def test_rule(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        outcome = engine.notifications.test(args.rule, actor="cli")
    if ctx.json:
        ctx.print_json({"ok": outcome.ok, "sentence": outcome.sentence})
        return 0 if outcome.ok else 1
    if not outcome.ok:
        raise CommandFailed(outcome.sentence, hint="fix the target, then run notify test again")
    print(printable(outcome.sentence))
    return 0


def list_deliveries(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine(read_only=True) as engine:
        views = engine.notifications.deliveries(
            failed_only=args.failed, rule=args.rule, limit=args.limit
        )
    if ctx.json:
        ctx.print_json([view.as_dict() for view in views])
        return 0
    if not views:
        print("no failed deliveries" if args.failed else "no deliveries")
        return 0
    rows = []
    for view in views:
        state = view.state + (f" ({view.reason})" if view.reason else "")
        if view.folded_into:
            state += f" into #{view.folded_into}"
        rows.append(
            [
                str(view.id),
                f"{view.created_at:%Y-%m-%d %H:%M:%S}",
                view.rule,
                view.kind,
                state,
                str(view.attempts),
                view.last_error or view.message,
            ]
        )
    print(table(rows, ["ID", "AT (UTC)", "RULE", "KIND", "STATE", "TRIES", "ERROR / MESSAGE"]))
    return 0
