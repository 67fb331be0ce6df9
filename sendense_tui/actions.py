"""One table of commands: it feeds the key bindings, the `?` help screen and the
command palette, so the three can never disagree.

A screen that adds commands puts them here with its own ``scope`` (the mode
name of the screen) and sets ``BINDINGS = bindings_for("<scope>")``.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding, BindingType


@dataclass(frozen=True)
class Command:
    #: stable id (users may one day remap keys by id)
    id: str
    #: Textual key names, comma separated ("j,down")
    keys: str
    #: action string run on the scope's node ("app." prefix reaches the app)
    action: str
    #: short label for the footer and help
    description: str
    #: one sentence for the help screen and the palette
    help: str = ""
    #: "app" for global commands, otherwise the mode name of a screen
    scope: str = "app"
    #: shown in the footer
    show: bool = True
    #: how the key is printed ("?" rather than "question_mark")
    key_display: str | None = None
    priority: bool = False
    #: offered in the command palette (cursor moves are not)
    palette: bool = True


def _mode(number: int, mode: str, title: str, long_title: str = "") -> Command:
    return Command(
        id=f"mode.{mode}",
        keys=str(number),
        action=f"app.switch_mode('{mode}')",
        description=title,
        help=f"Go to the {long_title or title} screen",
        show=False,
    )


COMMANDS: tuple[Command, ...] = (
    # -- everywhere ------------------------------------------------------------
    Command("help", "question_mark", "app.help", "Help", "Show every key", key_display="?"),
    Command(
        "palette",
        "colon",
        "app.command_palette",
        "Palette",
        "Open the command palette (also Ctrl+P)",
        key_display=":",
        palette=False,
    ),
    # Textual adds its own Ctrl+P only when no binding opens the palette, and ":"
    # does: so Ctrl+P is bound here, with priority (it works inside a text box too).
    # Every terminal, tmux included, sends it as 0x10; with tmux's extended-keys
    # it arrives as CSI 27;5;112~ or CSI 112;5u, which Textual reads as ctrl+p too.
    Command(
        "palette.ctrl",
        "ctrl+p",
        "app.command_palette",
        "Palette",
        "Open the command palette",
        show=False,
        key_display="^p",
        priority=True,
        palette=False,
    ),
    Command("back", "q", "app.back", "Back", "Go back; quit from the dashboard"),
    Command(
        "escape",
        "escape",
        "app.escape",
        "Back",
        "Close the filter or the form; else go back",
        show=False,
        key_display="esc",
        palette=False,
    ),
    Command("refresh", "r", "app.refresh_now", "Refresh", "Reload this screen now", show=False),
    Command("theme", "t", "app.toggle_theme", "Theme", "Switch dark/light theme", show=False),
    Command("quit", "ctrl+q", "app.quit", "Quit", "Leave the console", show=False, priority=True),
    _mode(1, "dashboard", "Dashboard"),
    _mode(2, "repositories", "Repositories"),
    _mode(3, "capacity", "Capacity"),
    _mode(4, "chains", "Chains"),
    _mode(5, "policies", "Policies"),
    _mode(6, "jobs", "Jobs"),
    _mode(7, "restore", "Restore"),
    _mode(8, "events", "Events"),
    _mode(9, "api", "API", "API & notifications"),
    # -- every list (the shared list widgets bind these: widgets/tables.py) -----
    Command(
        "list.filter",
        "slash",
        "filter",
        "Filter",
        "Filter the list as you type (Enter keeps, Esc clears)",
        scope="list",
        key_display="/",
        show=False,  # every list takes it (the footer keeps its room for the screen's keys)
    ),
    Command(
        "list.sort",
        "o",
        "sort",
        "Sort",
        "Order the list by the next column (o again: the next; O reverses)",
        scope="list",
        show=False,
    ),
    Command(
        "list.reverse",
        "O",
        "sort_reverse",
        "Reverse",
        "Reverse the order of the list",
        scope="list",
        show=False,
        key_display="O",
    ),
    Command(
        "list.down",
        "j",
        "cursor_down",
        "Down",
        "Move down",
        scope="list",
        show=False,
        palette=False,
    ),
    Command("list.up", "k", "cursor_up", "Up", "Move up", scope="list", show=False, palette=False),
    Command(
        "list.first",
        "g,home",
        "first",
        "First",
        "Go to the first row",
        scope="list",
        show=False,
        palette=False,
    ),
    Command(
        "list.last",
        "G,end",
        "last",
        "Last",
        "Go to the last row",
        scope="list",
        show=False,
        palette=False,
    ),
    # -- chains --------------------------------------------------------------------
    # (the footer must fit 80 columns: short labels, Info only in help and the palette)
    Command("chains.backup", "b", "backup_now", "Backup", "Back up a disk now", scope="chains"),
    Command(
        "chains.restore", "R", "restore_disk", "Restore", "Restore point as a disk", scope="chains"
    ),
    Command(
        "chains.consolidate",
        "c",
        "consolidate",
        "Consolidate",
        "Merge the oldest point into a new full (asks first)",
        scope="chains",
    ),
    Command(
        "chains.delete",
        "d,D",
        "delete_point",
        "Delete",
        "Delete point and the points after it (asks first)",
        scope="chains",
    ),
    Command(
        "chains.verify",
        "v",
        "verify",
        "Verify",
        "Verify the selected point or chain (queues a verify job)",
        scope="chains",
        show=False,  # the footer must fit 80 columns; the details pane names v
    ),
    Command(
        "chains.info",
        "i",
        "point_info",
        "Info",
        "qemu-img info of the point",
        scope="chains",
        show=False,
    ),
    Command(
        "chains.fix",
        "F",
        "fix_chains",
        "Fix orphans",
        "Remove stale partial files and import finished orphan points (asks first; "
        "never a locked file)",
        scope="chains",
        key_display="F",
        show=False,  # the footer must fit 80 columns; ? and the palette list it
    ),
    # -- jobs ----------------------------------------------------------------------
    Command("jobs.cancel", "c", "cancel_job", "Cancel", "Cancel job (asks first)", scope="jobs"),
    Command("jobs.pause", "p", "pause_job", "Pause", "Pause job", scope="jobs"),
    Command("jobs.resume", "u", "resume_job", "Resume", "Resume paused job", scope="jobs"),
    Command("jobs.retry", "R", "retry_job", "Retry", "Retry failed or cancelled job", scope="jobs"),
    # -- events ------------------------------------------------------------------------
    Command("events.level", "l", "cycle_level", "Level", "Cycle the minimum level", scope="events"),
    Command(
        "events.source", "s", "cycle_source", "Source", "Cycle the source filter", scope="events"
    ),
    # -- policies --------------------------------------------------------------------------
    # ("r" is the app-wide refresh, so Run now is "n"; "c" opens the copy rules)
    Command("policies.add", "a", "add", "Add", "Add a policy (the editor)", scope="policies"),
    Command(
        "policies.run",
        "n",
        "run",
        "Run now",
        "Run the selected policy now (queues its backups)",
        scope="policies",
    ),
    Command(
        "policies.preview",
        "p",
        "preview",
        "Preview",
        "Preview retention: what would go and why",
        scope="policies",
    ),
    Command(
        "policies.apply",
        "x",
        "apply",
        "Apply",
        "Apply retention now (asks first)",
        scope="policies",
    ),
    Command(
        "policies.copy_rules",
        "c",
        "copy_rules",
        "Copy rules",
        "Copy rules (3-2-1): where backups are copied",
        scope="policies",
    ),
    Command(
        "policies.edit",
        "e",
        "edit",
        "Edit",
        "Edit the selected policy (the editor, filled in)",
        scope="policies",
        show=False,  # the footer is full at 80 columns; ? and the palette list it
    ),
    Command(
        "policies.toggle",
        "space",
        "toggle",
        "On/off",
        "Enable or disable the selected policy (disabling asks first)",
        scope="policies",
        key_display="space",
        show=False,  # the footer is full at 80 columns; ? and the palette list it
    ),
    Command(
        "policies.remove",
        "d,D",
        "remove",
        "Remove",
        "Remove the selected policy (asks first; its backups stay)",
        scope="policies",
        show=False,
    ),
    Command(
        "policies.close",
        "escape",
        "close_form",
        "Close",
        "Close the editor (only while it is open)",
        scope="policies",
        key_display="esc",
        palette=False,
    ),
    # -- copy rules (pushed from Policies) -------------------------------------------------
    Command("copy_rules.add", "a", "add", "Add rule", "Add a copy rule", scope="copy_rules"),
    Command(
        "copy_rules.edit",
        "e",
        "edit",
        "Edit",
        "Edit the selected copy rule (the form, filled in)",
        scope="copy_rules",
    ),
    Command(
        "copy_rules.toggle",
        "space",
        "toggle",
        "On/off",
        "Enable or disable the selected copy rule (disabling asks first)",
        scope="copy_rules",
        key_display="space",
        show=False,
    ),
    Command(
        "copy_rules.remove",
        "d,D",
        "remove",
        "Remove",
        "Remove the selected copy rule (asks first)",
        scope="copy_rules",
    ),
    Command(
        "copy_rules.run",
        "n",
        "run",
        "Run now",
        "Copy now what the selected rule selects",
        scope="copy_rules",
    ),
    Command(
        "copy_rules.back",
        "q",
        "close",
        "Back",
        "Back to Policies",
        scope="copy_rules",
    ),
    Command(
        "copy_rules.close",
        "escape",
        "close_form",
        "Close",
        "Close the form (only while it is open)",
        scope="copy_rules",
        key_display="esc",
        palette=False,
    ),
    # -- restore ------------------------------------------------------------------------------
    Command(
        "restore.mount",
        "m",
        "mount",
        "Mount",
        "Mount the selected restore point to browse its files",
        scope="restore",
    ),
    Command(
        "restore.open",
        "enter",
        "open",
        "Open",
        "Open the folder, mount or point under the cursor; an NBD export's details",
        scope="restore",
        show=False,
        key_display="enter",
    ),
    Command(
        "restore.up",
        "backspace",
        "up",
        "Up",
        "Go up one folder",
        scope="restore",
        show=False,
        key_display="backspace",
    ),
    Command(
        "restore.mark",
        "space",
        "mark",
        "Mark",
        "Mark or unmark the file under the cursor",
        scope="restore",
        key_display="space",
    ),
    Command(
        "restore.extract",
        "R",
        "extract",
        "Restore files",
        "Restore the marked files (or the one under the cursor) to the destination folder",
        scope="restore",
        key_display="R",
    ),
    Command(
        "restore.save_archive",
        "A",
        "save_archive",
        "Save as archive",
        "Save the marked files (or the one under the cursor) as a tar or zip archive",
        scope="restore",
        key_display="A",
        show=False,
    ),
    Command(
        "restore.unmount",
        "u",
        "unmount",
        "Unmount",
        "Unmount the shown mount (asks first)",
        scope="restore",
    ),
    Command(
        "restore.export",
        "N",
        "export",
        "NBD export",
        "Serve the selected restore point read-only over NBD (a unix socket)",
        scope="restore",
        key_display="N",
        show=False,
    ),
    Command(
        "restore.stop_export",
        "x",
        "stop_export",
        "Stop export",
        "Stop the selected NBD export (asks first)",
        scope="restore",
        show=False,
    ),
    Command(
        "restore.search",
        "f",
        "search",
        "Find",
        "Find files in the whole shown mount by name (a word, or wildcards like *.conf)",
        scope="restore",
        show=False,
    ),
    Command(
        "restore.next_page",
        "right_square_bracket",
        "next_page",
        "Next page",
        "The next page of restore points (the catalog is read a page at a time)",
        scope="restore",
        show=False,
        key_display="]",
    ),
    Command(
        "restore.previous_page",
        "left_square_bracket",
        "previous_page",
        "Previous page",
        "The previous page of restore points",
        scope="restore",
        show=False,
        key_display="[",
    ),
    Command(
        "restore.close_search",
        "escape",
        "close_search",
        "Close search",
        "Close the search and its results, back to the folder listing",
        scope="restore",
        show=False,
        key_display="esc",
        palette=False,
    ),
    Command(
        "restore.next_pane",
        "tab",
        "app.focus_next",
        "Next pane",
        "Move to the next pane",
        scope="restore",
        show=False,
        key_display="tab",
        palette=False,
    ),
    # -- repositories ----------------------------------------------------------------------
    Command(
        "repositories.add",
        "a",
        "add_repository",
        "Add",
        "Add a repository (guided setup)",
        scope="repositories",
    ),
    Command(
        "repositories.edit",
        "e",
        "edit_repository",
        "Edit",
        "Edit the selected repository",
        scope="repositories",
    ),
    Command(
        "repositories.test",
        "T",
        "test_repository",
        "Test",
        "Test the connection and write access now",
        scope="repositories",
        key_display="T",
        show=False,  # the footer must fit 80 columns; ? and the palette list it
    ),
    Command(
        "repositories.toggle",
        "space",
        "toggle_repository",
        "On/off",
        "Enable or disable the selected repository (disabling asks first)",
        scope="repositories",
        key_display="space",
    ),
    Command(
        "repositories.mount",
        "m",
        "mount_repository",
        "Mount",
        "Mount or unmount a network repository",
        scope="repositories",
    ),
    Command(
        "repositories.remove",
        "d,D",
        "remove_repository",
        "Remove",
        "Remove the selected repository (asks first)",
        scope="repositories",
    ),
    # -- API & notifications ------------------------------------------------------------------
    # (the footer must fit 80 columns: Remove only in help and the palette; "t" is the
    # theme elsewhere, here it tests a rule)
    Command("api.new_token", "a", "new_token", "New token", "Create an API token", scope="api"),
    Command(
        "api.revoke_token",
        "x",
        "revoke_token",
        "Revoke",
        "Revoke the selected API token (asks first)",
        scope="api",
    ),
    Command(
        "api.toggle_rule",
        "space",
        "toggle_rule",
        "On/off",
        "Turn the selected rule on or off (turning off asks first)",
        scope="api",
        key_display="space",
    ),
    Command(
        "api.test_rule",
        "t",
        "test_rule",
        "Test",
        "Send a test message through the selected notification rule",
        scope="api",
    ),
    Command(
        "api.remove_rule",
        "d,D",
        "remove_rule",
        "Remove",
        "Remove the selected notification rule (asks first)",
        scope="api",
        show=False,
    ),
    Command(
        "api.next_pane",
        "tab",
        "app.focus_next",
        "Next list",
        "Move to the other list",
        scope="api",
        show=False,
        key_display="tab",
        palette=False,
    ),
    # -- details: Enter on a row of any list (the list takes the key and says which row
    # was selected; the screen opens the row's detail view; these rows feed `?` and the
    # palette) -----------------------------------------------------------------------
    *(
        Command(
            f"{scope}.details",
            "enter",
            "open_details",
            "Details",
            "Show the selected row in full (Esc closes, c copies)",
            scope=scope,
            show=False,
            key_display="enter",
        )
        for scope in (
            "repositories",
            "chains",
            "policies",
            "copy_rules",
            "jobs",
            "events",
            "api",
        )
    ),
)


def commands_for(scope: str) -> list[Command]:
    return [cmd for cmd in COMMANDS if cmd.scope == scope]


def _binding_action(cmd: Command) -> str:
    # Bindings of a scope are declared on that scope's node, so the "app."
    # prefix is only kept where a screen reaches the app.
    if cmd.scope == "app" and cmd.action.startswith("app."):
        return cmd.action[4:]
    return cmd.action


def bindings_for(scope: str) -> list[BindingType]:
    return [
        Binding(
            cmd.keys,
            _binding_action(cmd),
            cmd.description,
            show=cmd.show,
            key_display=cmd.key_display,
            priority=cmd.priority,
            id=cmd.id,
            tooltip=cmd.help,
        )
        for cmd in commands_for(scope)
    ]


def find_by_action(action: str) -> Command | None:
    for cmd in COMMANDS:
        if _binding_action(cmd) == action or cmd.action == action:
            return cmd
    return None
