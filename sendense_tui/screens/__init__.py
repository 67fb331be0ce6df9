"""The screen registry: one line per section of the console.

A section is a ``SendenseScreen`` subclass (``MODE = "<name>"``) in
``sendense_tui/screens/<name>.py``, listed below and in ``SECTIONS``. Keys for
it go into ``sendense_tui/actions.py`` with ``scope="<name>"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual.screen import Screen

from sendense_tui.screens.api import ApiScreen
from sendense_tui.screens.base import SECTIONS, SendenseScreen
from sendense_tui.screens.capacity import CapacityScreen
from sendense_tui.screens.chains import ChainsScreen
from sendense_tui.screens.dashboard import DashboardScreen
from sendense_tui.screens.events import EventsScreen
from sendense_tui.screens.jobs import JobsScreen
from sendense_tui.screens.policies import PoliciesScreen
from sendense_tui.screens.repositories import RepositoriesScreen
from sendense_tui.screens.restore import RestoreScreen

#: mode name -> screen class (or factory), in number-key order (see SECTIONS)
SCREENS: dict[str, Callable[[], Screen[Any]]] = {
    "dashboard": DashboardScreen,
    "repositories": RepositoriesScreen,
    "capacity": CapacityScreen,
    "chains": ChainsScreen,
    "policies": PoliciesScreen,
    "jobs": JobsScreen,
    "restore": RestoreScreen,
    "events": EventsScreen,
    "api": ApiScreen,
}

assert list(SCREENS) == list(SECTIONS), "SCREENS and SECTIONS must list the same sections"

__all__ = ["SCREENS", "SECTIONS", "SendenseScreen"]
