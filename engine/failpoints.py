"""Named crash points: prove that a SIGKILL between any two steps loses nothing.

A test sets ``SENDENSE_FAILPOINT=consolidate.after_rebase`` (several names:
comma-separated) in the environment of a real ``sendense`` process; when that
process reaches ``failpoint("consolidate.after_rebase")`` it kills itself with
SIGKILL, exactly as a power cut or the OOM killer would, and the test then
restarts and checks that the chain, the catalog and the files agree.

When the variable is unset (always, in production) ``failpoint`` costs one
dictionary lookup. Every name used in the engine is listed in ``POINTS`` so the
kill-matrix test can go through all of them; ``failpoint`` refuses a name that
is not listed, so the list cannot fall behind the code.
"""

from __future__ import annotations

import os
import signal

ENV = "SENDENSE_FAILPOINT"

#: every failpoint in the engine, in the order its operation reaches them
POINTS: tuple[str, ...] = (
    # backup (services.backup): partial written -> fsynced -> renamed -> catalog row
    "backup.after_write",
    "backup.after_seal",
    "backup.after_publish",
    "backup.after_record",
    # copy (engine.copier, services.copy): partial written and fsynced -> renamed -> copy row done
    "copy.after_write",
    "copy.after_rename",
    "copy.after_record",
    # consolidation (services.chains; its module docstring lists the steps)
    "consolidate.after_intent",
    "consolidate.after_convert",
    "consolidate.after_replace",
    "consolidate.after_record",
    "consolidate.after_unlink",
    # deleting a point (services.chains): catalog row -> file
    "delete.after_record",
    # retention apply (services.retention): between its operations
    "retention.after_delete",
    "retention.after_merge",
    # lock release (services.immutability): flag cleared -> lock row released
    "locks.after_unlock",
    "locks.after_release",
    # repository import (engine.services.imports), per chain directory
    "import.chain_recorded",
    "import.locks_recorded",
)


def failpoint(name: str) -> None:
    """Kill this process with SIGKILL here when ``$SENDENSE_FAILPOINT`` names ``name``."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    if name not in POINTS:
        raise ValueError(f"failpoint {name!r} is not listed in engine.failpoints.POINTS")
    if name in wanted.split(","):
        os.kill(os.getpid(), signal.SIGKILL)
