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
    "verify_source": lambda a: (
        "run `sendense verify run` on the source and restore this point "
        "from a copy that is still good"
    ),
    "check_repository_mounted": lambda a: "is the repository mounted? `sendense repo list` says",
    "export_name_taken": lambda a: "stop it first or choose another --name",
    "release_expired_locks": lambda a: (
        f"`sendense lock list --repo {a.subject}` shows them; "
        "`sendense lock release-expired` releases expired locks"
    ),
    "locks_hold": lambda a: (
        f"`sendense lock list --repo {a.subject}` shows them; "
        "locks are never dropped before they expire, not even with --force"
    ),
    "check_chain_restore_copy": lambda a: "run `sendense chain check` and restore from a copy",
    "lock_destination": lambda a: (
        f"make the destination immutable first (sendense lock enable {a.subject} "
        "--days N), or copy from an immutable repository"
    ),
    "failed_copies": lambda a: (
        "`sendense copy status` lists the failed copies; `sendense copy run --copy ID` re-runs one"
    ),
    "use_starttls": lambda a: "add --starttls",
    "daemon_running": lambda a: (
        "`sendense daemon --status` shows it; `sendense daemon --stop` stops it"
    ),
    "export_tls": lambda a: (
        "add --tls (a pre-shared key is made and how a client connects is printed), "
        "or serve on 127.0.0.1 or a unix socket"
    ),
    "test_repository": lambda a: (
        "check the server or the filesystem behind it; `sendense repo test` tries again"
    ),
    "import_or_add_repository": lambda a: (
        "give the directory that holds chains/ (the repository's root), or add a "
        "new repository with `sendense repo add`"
    ),
    "page_cursor": lambda a: (
        "give the word the previous page printed after --after (or leave --after out "
        "to start at the top)"
    ),
    "read_unverified": lambda a: (
        "`--force` reads it anyway (its data is unverified); "
        "`sendense verify report` lists bad points and good copies"
    ),
    # where to look when a name or a number names nothing
    "list_repositories": lambda a: "`sendense repo list` shows the repositories",
    "list_repository_locks": lambda a: "`sendense lock list --repo NAME` shows them",
    "list_locks": lambda a: "`sendense lock list` shows the locks",
    "list_api_tokens": lambda a: "`sendense api token list` shows them",
    "list_copy_rules": lambda a: "`sendense copy rule list` shows the rules",
    "list_copies": lambda a: "`sendense copy status` lists the copies",
    "list_policies": lambda a: "`sendense policy list` shows them",
    "list_exports": lambda a: "`sendense export list` shows the exports",
    "list_chains": lambda a: "`sendense chain show` lists the chains",
    "list_points": lambda a: "`sendense backup list` shows the restore points",
    "list_notify_rules": lambda a: "`sendense notify rule list` shows them",
    "mount_restore": lambda a: "`sendense restore mount <point>` mounts it again",
    "check_chain": lambda a: "run `sendense chain check`",
    "check_chain_copy": lambda a: "run `sendense chain check`; a verified copy may still have it",
    "check_chain_unreadable": lambda a: (
        "check that the repository is mounted; `sendense chain check` "
        "says what is wrong and a copy may still have it"
    ),
    "check_chain_or_new_full": lambda a: (
        "fix the chain (`sendense chain check`) or let the next full replace it"
    ),
    "verify_report": lambda a: "`sendense verify report` lists the bad points and the good copies",
    "export_raw_disk": lambda a: (
        "an NBD export (`sendense export start`) serves the raw disk instead"
    ),
    "revoke_api_token": lambda a: (
        f"revoke it first (`sendense api token revoke {a.subject}`) or pick another name"
    ),
    "create_api_token": lambda a: "create one with `sendense api token create NAME --role read`",
    "migrate_catalog": lambda a: (
        "run `sendense catalog migrate` (or any command that changes something) "
        "to bring it up to date"
    ),
    "check_locks_points": lambda a: (
        "the points are good backups; fix the cause, then `sendense lock check` "
        "sets the flag (the lock job retries it too)"
    ),
    "check_locks_copies": lambda a: (
        "the copies are good; fix the cause, then `sendense lock check` sets "
        "the flag (the lock job retries it too)"
    ),
    "create_catalog_only_new": lambda a: (
        "`sendense catalog create` only starts a catalog where there is none"
    ),
}


def cli_hint(error: SendenseError) -> str | None:
    """The hint under the CLI's error sentence: the command for a known action, else
    the engine's own hint."""
    action = error.action
    if action is not None and action.key in CLI_ACTIONS:
        return CLI_ACTIONS[action.key](action)
    return error.hint
