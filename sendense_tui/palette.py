"""The command palette (`:` or Ctrl+P): one entry per command of the table that
applies on the screen it was opened from (a screen with a list: the list's
filter and order too, acting on the list in focus)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.dom import DOMNode

from sendense_tui.actions import COMMANDS, Command


class SendenseCommands(Provider):
    def _commands(self) -> Iterator[Command]:
        # this screen's commands first, then the ones that work everywhere
        scope = getattr(self.screen, "MODE", None)
        has_list = self._list() is not None
        for wanted in (scope, "list" if has_list else None, "app"):
            for cmd in COMMANDS:
                if cmd.palette and cmd.scope == wanted:
                    yield cmd

    def _title(self, cmd: Command) -> str:
        return cmd.help or cmd.description

    def _list(self) -> DOMNode | None:
        find = getattr(self.screen, "list_target", None)
        target = find() if find is not None else None
        return target if isinstance(target, DOMNode) else None

    def _run(self, cmd: Command) -> None:
        namespace: DOMNode | None = self.app if cmd.scope == "app" else self.screen
        if cmd.scope == "list":
            namespace = self._list()
            if namespace is None:
                return
        self.app.call_later(self.app.run_action, cmd.action, namespace)

    def _help(self, cmd: Command) -> str:
        key = cmd.key_display or cmd.keys.split(",")[0]
        return f"key: {key}"

    async def discover(self) -> Hits:
        for cmd in self._commands():
            yield DiscoveryHit(self._title(cmd), partial(self._run, cmd), help=self._help(cmd))

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for cmd in self._commands():
            title = self._title(cmd)
            score = matcher.match(title)
            if score > 0:
                yield Hit(
                    score, matcher.highlight(title), partial(self._run, cmd), help=self._help(cmd)
                )
