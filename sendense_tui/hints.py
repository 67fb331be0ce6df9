"""The CLI's rendering of an engine error's next step.

Engine errors name the action (``engine.errors.Action``: a verb phrase the console and
the API show, and a key); the command that performs it is the CLI's own syntax, and
lives here, beside the commands it names.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.errors import Action, SendenseError

#: action key -> the hint the CLI prints for it
CLI_ACTIONS: dict[str, Callable[[Action], str]] = {
    "confirm_lock": lambda a: "add --yes to confirm",
    "enable_repository": lambda a: f"enable it first (`sendense repo enable {a.subject}`)",
    "stop_export": lambda a: f"stop it first: sendense export stop {a.subject}",
    "unmount_restore": lambda a: f"unmount it first: sendense restore unmount {a.subject}",
    "cancel_job": lambda a: f"cancel it first: sendense jobs cancel {a.subject}",
    "overwrite_target": lambda a: "choose another name or replace it (--overwrite)",
    "read_unverified": lambda a: (
        "`--force` reads it anyway (its data is unverified); "
        "`sendense verify report` lists bad points and good copies"
    ),
}


def cli_hint(error: SendenseError) -> str | None:
    """The hint under the CLI's error sentence: the command for a known action, else
    the engine's own hint."""
    action = error.action
    if action is not None and action.key in CLI_ACTIONS:
        return CLI_ACTIONS[action.key](action)
    return error.hint
