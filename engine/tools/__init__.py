"""Typed wrappers around system programs. Only this package starts processes."""

from engine.tools.base import Completed, ToolError, ToolMissing, ToolTimeout, run, which

__all__ = ["Completed", "ToolError", "ToolMissing", "ToolTimeout", "run", "which"]
