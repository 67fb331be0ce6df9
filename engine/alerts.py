"""Where services say that an alert condition may have changed.

The scheduler evaluates alerts (``Scheduler.evaluate_alerts``: one catalog mark
per raised alert, one event when it is raised and one when it clears), and it
asks the copy service and the verifier what is wrong. Those two in turn want a
failing copy rule or a bad file to raise its alert at once, not at the next
alert pass. The sink breaks that cycle: the Engine builds it first, the copy
service and the verifier get it in their constructors and publish to it, and
the scheduler subscribes to it in its own constructor.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from engine.errors import CatalogUnavailable

log = logging.getLogger(__name__)

#: alert kinds the copy service reports (the rest come from verification)
COPY_ALERT_KINDS = ("rule_failing", "copy_too_old")
VERIFY_ALERT_KINDS = ("verification_overdue", "verification_failed")

#: what a subscriber runs: re-evaluate these alert kinds now
AlertListener = Callable[[tuple[str, ...]], None]


class AlertSink:
    """Publish "these alert kinds may have changed"; subscribers re-evaluate them.

    Delivery is synchronous, in the publisher's thread, and never raises into the
    publisher: a copy or a verification that ended is not failed by its alert."""

    def __init__(self, listeners: Callable[[], object] | None = None) -> None:
        """``listeners``: called before the first delivery, to build the subscribers
        that subscribe themselves (the Engine builds its scheduler only when a command
        needs it, and an alert raised before that must still reach it)."""
        self._listeners: list[AlertListener] = []
        self._lock = threading.Lock()
        self._build_listeners = listeners

    def subscribe(self, listener: AlertListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def changed(self, kinds: tuple[str, ...]) -> None:
        build, self._build_listeners = self._build_listeners, None
        if build is not None:
            try:
                build()
            except CatalogUnavailable:
                pass  # logged once by the catalog
            except Exception:
                log.exception("building the alert listeners")
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(kinds)
            except CatalogUnavailable:
                pass  # logged once by the catalog
            except Exception:
                log.exception("evaluating alerts")
