"""``sendense repo list|add|import|show|test|remove`` (all with ``--json``)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from datetime import timedelta
from typing import Any

from engine.errors import SendenseError, ValidationError
from engine.services.repositories import RepositorySpec, TestReport
from engine.shapes import repositories_list, repository_details, repository_dict
from engine.shapes import test_report_dict as report_dict
from sendense_tui.commands import CliContext, add_parser, bounded_int, table
from sendense_tui.commands.backup import wait_for_job
from sendense_tui.commands.jobs import finish_job, print_queued
from sendense_tui.exitcodes import CommandFailed
from sendense_tui.format import (
    age_text,
    filesystem_lock_text,
    human_bytes,
    lock_text,
    printable,
    short_time,
)


def register(subparsers: Any) -> None:
    parser = add_parser(
        subparsers, "repo", help="repositories: list, add, import, show, test, remove"
    )
    sub = parser.add_subparsers(dest="repo_command", metavar="ACTION", required=True)
    add_parser(sub, "list", help="every repository with its state and space").set_defaults(
        func=list_repos
    )
    add = add_parser(sub, "add", help="test and add a repository (saved only if the test passes)")
    _location_arguments(add)
    add.add_argument("--create", action="store_true", help="local: create the directory")
    add.add_argument(
        "--disabled", action="store_true", help="save it disabled even if the test fails"
    )
    add.set_defaults(func=add_repo)
    imp = add_parser(
        sub,
        "import",
        help="add a repository that already holds backups and read them back from its files",
        description="Add a repository that already holds backups (after a catalog loss, on "
        "a new appliance, or a moved disk) and read its chains back into the catalog: every "
        "file is checked against its manifest; locked files stay locked until the same "
        "time. Importing into an existing repository of that name and place records only "
        "what the catalog does not have yet.",
    )
    _location_arguments(imp)
    imp.add_argument("--no-wait", action="store_true", help="only queue the import job")
    imp.set_defaults(func=import_repo)
    show = add_parser(sub, "show", help="one repository in detail, with capacity")
    show.add_argument("name", help="name, or #ID")
    show.set_defaults(func=show_repo)
    test = add_parser(sub, "test", help="test a repository now (mount, write, capacity)")
    test.add_argument("name")
    test.set_defaults(func=test_repo)
    remove = add_parser(sub, "remove", help="remove a repository (refused while it holds backups)")
    remove.add_argument("name")
    remove.add_argument(
        "--force", action="store_true", help="even if it holds backups (audited; files stay)"
    )
    remove.set_defaults(func=remove_repo)


def _location_arguments(parser: argparse.ArgumentParser) -> None:
    """Where a repository is: the same options for `repo add` and `repo import`."""
    parser.add_argument("name")
    parser.add_argument("--type", dest="kind", choices=("local", "nfs", "cifs"), default="local")
    parser.add_argument("--path", default="", help="local: the directory")
    parser.add_argument("--server", default="", help="nfs/cifs: host name or IP address")
    parser.add_argument("--export", default="", help="nfs: export path")
    parser.add_argument("--share", default="", help="cifs: share name")
    parser.add_argument("--port", type=bounded_int(1, 65535), default=None)
    parser.add_argument("--nfs-version", default="4.1")
    parser.add_argument("--mount-options", default="")
    parser.add_argument("--user", default="", help="cifs: user name")
    parser.add_argument("--domain", default="")
    parser.add_argument("--smb-version", default="3.0")
    parser.add_argument(
        "--password-env",
        metavar="VAR",
        help="cifs: read the password from this environment variable (else it is asked)",
    )


def _spec(args: argparse.Namespace) -> RepositorySpec:
    return RepositorySpec(
        name=args.name,
        kind=args.kind,
        path=args.path,
        create=bool(getattr(args, "create", False)),
        server=args.server,
        export=args.share if args.kind == "cifs" else args.export,
        port=args.port,
        nfs_version=args.nfs_version,
        mount_options=args.mount_options,
        username=args.user,
        password=_password(args),
        domain=args.domain,
        smb_version=args.smb_version,
    )


def list_repos(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine(read_only=True) as engine:
        data = repositories_list(engine)
        where = {
            d["id"]: engine.repositories.describe_location(engine.repositories.get(d["id"]))
            for d in data
        }
    if ctx.json:
        ctx.print_json(data)
        return 0
    if not data:
        print("no repositories (sendense repo add NAME --path DIR)")
        return 0
    rows = [
        [
            d["name"],
            d["kind"],
            where[d["id"]],
            d["state"] if d["enabled"] else "disabled",
            f"{human_bytes(d['used_bytes'])}/{human_bytes(d['total_bytes'])}"
            + _age(d["figures_age_seconds"])
            if d["total_bytes"]
            else "-",
            human_bytes(d["free_bytes"]) if d["free_bytes"] is not None else "-",
            str(d["backups"]),
        ]
        for d in data
    ]
    print(table(rows, ["NAME", "TYPE", "WHERE", "STATE", "USED/TOTAL", "FREE", "BACKUPS"]))
    return 0


def _age(seconds: int | None) -> str:
    """ " (12m ago)" after a stale figure, nothing after a fresh one."""
    return "" if seconds is None else f" ({age_text(timedelta(seconds=seconds))})"


def _password(args: argparse.Namespace) -> str:
    if args.kind != "cifs":
        return ""
    if args.password_env:
        if args.password_env not in os.environ:
            raise SendenseError(f"environment variable {args.password_env} is not set")
        return os.environ[args.password_env]
    if not sys.stdin.isatty():
        raise SendenseError(
            "a CIFS repository needs a password",
            hint="pass --password-env VAR (the password is never taken on the command line)",
        )
    return getpass.getpass(f"password for {args.user}@{args.server}: ")


def add_repo(args: argparse.Namespace, ctx: CliContext) -> int:
    spec = _spec(args)
    with ctx.engine() as engine:
        # the whole spec first (fields, a system directory, a taken name): a refused
        # add writes nothing anywhere, not even the test's files
        problems = engine.repositories.validate(spec)
        if problems:
            raise ValidationError(
                f"repository {args.name} was not saved: "
                + "; ".join(f"{k}: {v}" for k, v in problems.items()),
                hint="fix it and run the command again; nothing was written",
            )
        report = engine.repositories.test(spec)
        if not report.ok and not args.disabled:
            if ctx.json:
                ctx.print_json({"saved": False, "test": report_dict(report)})
            raise ValidationError(
                f"repository {args.name} was not saved: {report.error}",
                hint=(f"{report.hint}; or " if report.hint else "")
                + "add --disabled to keep it (disabled) and fix it later",
            )
        repo = engine.repositories.add(spec, test=False, enabled=report.ok, actor=_actor())
        data = repository_dict(repo, engine)
    if ctx.json:
        ctx.print_json({"saved": True, "test": report_dict(report), "repository": data})
    else:
        _print_report(report)
        print(printable(f"repository {repo.name} saved{'' if repo.enabled else ' (disabled)'}"))
    return 0


def import_repo(args: argparse.Namespace, ctx: CliContext) -> int:
    """Add (or reuse) the repository, then run the import job here with progress."""
    spec = _spec(args)
    with ctx.engine() as engine:
        repo = engine.imports.add_repository(spec, actor=_actor())
        job = engine.imports.submit(repo.id, actor="cli")
        if args.no_wait:
            return print_queued(ctx, job)
        final = wait_for_job(engine, job.id, ctx)
    report: dict[str, Any] = final.result or {}
    data = {"job_id": final.id, "state": final.state, "error": final.error, **report}
    finish_job(ctx, final, data, lambda: print_import_report(report))
    if not report.get("ok"):
        # the import ran and found damaged chains or conflicts: the report lists them
        raise CommandFailed(
            f"repository {repo.name} was imported with problems: {report.get('sentence', '')}",
            hint="the lines above (or --json) name each damaged chain and conflict",
        )
    return 0


def print_import_report(report: dict[str, Any]) -> None:
    print(printable(report["sentence"]))
    for chain in report["chains"]:
        print(printable(f"  {chain['sentence']}"))
        for note in chain["notes"]:
            print(printable(f"    note: {note}"))
        for problem in chain["problems"]:
            print(printable(f"    PROBLEM: {problem}"))
    for skipped in report["skipped"]:
        print(printable(f"  skipped {skipped}"))
    for note in report["notes"]:
        print(printable(f"  note: {note}"))


def show_repo(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine(read_only=True) as engine:
        data, item = repository_details(engine, args.name)
        repo = engine.repositories.get(data["id"])
        now = engine.clock.now()
        fc, b = item.forecast, item.breakdown
    if ctx.json:
        ctx.print_json(data)
        return 0
    print(printable(f"{data['name']} ({data['kind']}) {data['location']}"))
    print(
        printable(
            f"  state      {data['state'] if data['enabled'] else 'disabled'}"
            + (f": {data['state_detail']}" if data["state_detail"] else "")
        )
    )
    if data.get("total_bytes"):
        stale = data["figures_age_seconds"]
        print(
            f"  space      {human_bytes(data['used_bytes'])} used, "
            f"{human_bytes(data['free_bytes'])} free of {human_bytes(data['total_bytes'])}"
            f" ({data.get('used_percent', 0):.1f} % of used+free), level {data['capacity_level']}"
            + (
                f"; as of {short_time(data['figures_at'], now)} UTC{_age(stale)}"
                if stale is not None
                else ""
            )
        )
    print(f"  forecast   {fc.describe()}")
    print(
        f"  backups    {data['backups']}; reclaimable now {human_bytes(b.reclaimable_now)}, "
        f"later {human_bytes(b.reclaimable_later)}, locked {human_bytes(b.locked)}"
    )
    print(
        f"  locks      {lock_text(repo.immutable, repo.immutable_days, repo.immutable_grace_hours)}"
    )
    caps = data["capabilities"] or {}
    if caps:
        print(
            f"  filesystem {caps.get('fs_type')}; "
            f"{filesystem_lock_text(caps).removeprefix('filesystem ')}, "
            f"reflink {'yes' if caps.get('reflink') else 'no'}"
        )
    if item.shared_with:
        print(printable(f"  shares its filesystem with {', '.join(item.shared_with)}"))
    return 0


def test_repo(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        report = engine.repositories.test_repository(args.name)
    if ctx.json:
        ctx.print_json(report_dict(report))
    else:
        _print_report(report)
    if not report.ok:
        raise CommandFailed(
            f"repository {args.name} failed its test: {report.error or 'see above'}",
            hint=report.hint or "fix the cause and run `sendense repo test` again",
        )
    return 0


def remove_repo(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        engine.repositories.remove(args.name, force=args.force, actor=_actor())
    if ctx.json:
        ctx.print_json({"removed": args.name})
    else:
        print(printable(f"repository {args.name} removed"))
    return 0


def _print_report(report: TestReport) -> None:
    """The steps of a test; a failure's sentence is the command's error (stderr)."""
    for step in report.steps:
        print(
            printable(
                f"  {'ok ' if step.ok else 'FAIL'} {step.name.replace('_', ' ')}"
                + (f": {step.detail}" if step.detail and (step.ok or report.ok) else "")
            )
        )
    if report.ok:
        caps = report.capabilities
        print(
            f"  capacity found: {human_bytes(report.total)} total, {human_bytes(report.free)} free"
            f", {human_bytes(report.reserve)} kept free (min_free); {caps.get('fs_type', '?')} "
            f"{filesystem_lock_text(caps)}, reflink {'yes' if caps.get('reflink') else 'no'}"
        )
        for warning in report.warnings:
            print(printable(f"  warning: {warning}"))


def _actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"
