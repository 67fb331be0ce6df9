"""``sendense doctor``: are the system programs Sendense drives installed?"""

from __future__ import annotations

import argparse
from typing import Any

from engine.tools.base import PACKAGES, ToolMissing, which
from sendense_tui.commands import CliContext, add_parser, table
from sendense_tui.exitcodes import CommandFailed
from sendense_tui.format import plural

#: program -> what it is needed for
PROGRAMS: dict[str, str] = {
    "qemu-img": "backups, copies, verification",
    "qemu-nbd": "file-level restore (NBD export)",
    "qemu-storage-daemon": "file-level restore (FUSE export)",
    "mount": "repositories and restores",
    "losetup": "file-level restore",
    "chattr": "immutability locks",
    "lsattr": "immutability checks",
}


def register(subparsers: Any) -> None:
    add_parser(subparsers, "doctor", help="check the system programs Sendense needs").set_defaults(
        func=doctor
    )


def check_programs() -> list[dict[str, Any]]:
    results = []
    for program, purpose in PROGRAMS.items():
        package = PACKAGES.get(program, program)
        try:
            path: str | None = which(program)
        except ToolMissing:
            path = None
        results.append(
            {
                "program": program,
                "ok": path is not None,
                "path": path,
                "package": package,
                "install": f"apt-get install {package}",
                "needed_for": purpose,
            }
        )
    return results


def doctor(args: argparse.Namespace, ctx: CliContext) -> int:
    results = check_programs()
    missing = [r for r in results if not r["ok"]]
    if ctx.json:
        ctx.print_json(results)
    else:
        rows = [
            [
                r["program"],
                "ok" if r["ok"] else "MISSING",
                r["path"] if r["ok"] else r["install"],
                r["needed_for"],
            ]
            for r in results
        ]
        print(table(rows, ["PROGRAM", "STATE", "PATH / FIX", "NEEDED FOR"]))
        if not missing:
            print("\nall programs found")
    if missing:
        packages = sorted({r["package"] for r in missing})
        raise CommandFailed(
            f"{plural(len(missing), 'program')} Sendense needs "
            f"{'is' if len(missing) == 1 else 'are'} missing",
            hint=f"install them: apt-get install {' '.join(packages)}",
        )
    return 0
