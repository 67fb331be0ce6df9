"""Reading a restore point from the console: a bad point is only read after a "yes".

Restore disk, file mount and export all go through :func:`read_point`. The
engine decides where a point is read from (``engine.point_reader``): a point
that is bad, or whose chain holds a bad point, is read from a verified copy
when one exists; when none does, the engine refuses and this asks the operator
whether to read it anyway, naming why it is bad. A "yes" runs the action with
``force=True`` and the engine reports the data as unverified.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.services.images import DamagedPoint
from sendense_tui.widgets.confirm import ConfirmDialog

if TYPE_CHECKING:
    from sendense_tui.screens.base import SendenseScreen


def read_point(
    screen: SendenseScreen,
    backup_id: int,
    action: Callable[[bool], Any],
    *,
    what: str,
    after: Callable[[Any], None] | None = None,
) -> None:
    """Run ``action(force)`` for point ``backup_id`` off the UI thread; when the point
    is bad with no verified copy, ask first (``what``: "Restore", "Mount", "Export")."""

    def check() -> str | None:
        try:
            screen.engine.point_reader.plan(backup_id)
        except DamagedPoint as exc:
            return exc.message
        return None

    def run(force: bool) -> None:
        screen.run_engine(
            lambda: action(force), after=after, description=f"{what.lower()} point {backup_id}"
        )

    def checked(problem: str | None) -> None:
        if problem is None:
            run(False)
            return

        def answered(yes: bool | None) -> None:
            if yes:
                run(True)

        screen.app.push_screen(
            ConfirmDialog(
                f"{what} point #{backup_id} anyway? It is damaged.",
                f"{problem}.\n\nIts data is UNVERIFIED: check what you restore.",
                yes_label=f"{what} anyway",
            ),
            answered,
        )

    screen.run_engine(check, after=checked, description=f"check point {backup_id}")
