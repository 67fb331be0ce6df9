"""Typed wrappers around system programs. Only this package starts processes.

Modules: base (run/which/start and the ToolError family), qemu_img, mounts,
loop, attrs, nbd. Import the module you need: ``from engine.tools import qemu_img``.
"""

from engine.tools.base import (
    Completed,
    ToolCancelled,
    ToolError,
    ToolMissing,
    ToolTimeout,
    redact,
    run,
    which,
)

__all__ = [
    "Completed",
    "ToolCancelled",
    "ToolError",
    "ToolMissing",
    "ToolTimeout",
    "redact",
    "run",
    "which",
]
