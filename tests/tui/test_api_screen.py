"""The console's API & notifications section (key 9): listen addresses, API tokens
(create in a dialog with the secret shown once, revoke after a question) and
notification rules (Space on/off, ``t`` a real test message to a webhook server on
loopback, ``d`` remove after a question), on the seeded demo catalog."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.widgets import Input, Select

from engine.clock import FixedClock
from engine.config import default_settings
from engine.errors import SendenseError
from engine.runtime import Engine
from engine.services.notify import RuleSpec
from sendense_tui.app import SendenseApp
from sendense_tui.screens.api import ApiScreen, NewTokenDialog
from sendense_tui.widgets.confirm import ConfirmDialog
from sendense_tui.widgets.detail import DetailScreen
from sendense_tui.widgets.tables import FlexTable, cursor_key, plain
from tests.engine.notifyservers import WebhookServer, closed_port, webhook  # noqa: F401
from tests.tui.conftest import click_button, keys_then_settle, settle


def seed_api(engine: Engine, clock: FixedClock, *, hook_url: str | None = None) -> None:
    """Three tokens (one revoked, one used today) and two rules, one with a failed
    delivery, all at the demo clock's times."""
    engine.api_tokens.create("grafana", "read", 90, actor="admin")
    engine.api_tokens.create("ci-runner", "operate", actor="admin")
    _, laptop = engine.api_tokens.create("old-laptop", "admin", actor="admin")
    engine.api_tokens.authenticate(laptop)  # last used: now
    engine.api_tokens.revoke("old-laptop", actor="admin")
    engine.notifications.add_rule(
        RuleSpec(
            name="ops-hook",
            target="webhook",
            url=hook_url or f"http://127.0.0.1:{closed_port()}/sendense",
            min_level="warning",
            dedup_minutes=30,
        )
    )
    engine.notifications.add_rule(
        RuleSpec(
            name="mail-admins",
            target="email",
            smtp_host="mail.example",
            smtp_port=587,
            starttls=True,
            mail_from="sendense@example.com",
            mail_to=["ops@example.com"],
            kinds=["job.failed"],
            enabled=False,
        )
    )
    if hook_url is None:  # a delivery that failed: nothing listens on that port
        assert not engine.notifications.test("ops-hook").ok


def _rows(table: FlexTable) -> dict[str, list[str]]:
    return {str(key.value): [plain(cell) for cell in table.get_row(key)] for key in table.rows}


async def _open(pilot, app: SendenseApp) -> ApiScreen:  # type: ignore[no-untyped-def]
    await keys_then_settle("9")(pilot)
    screen = app.screen
    assert isinstance(screen, ApiScreen)
    return screen


def test_api_screen_snapshot(
    snap_compare, make_app: Callable[..., SendenseApp], demo_engine: Engine, clock: FixedClock
) -> None:
    seed_api(demo_engine, clock)
    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=keys_then_settle("9"))


async def test_the_screen_lists_tokens_rules_and_where_the_api_listens(
    make_app: Callable[..., SendenseApp], demo_engine: Engine, clock: FixedClock
) -> None:
    seed_api(demo_engine, clock)
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open(pilot, app)
        listen = str(screen.query_one("#listen").render())
        assert "not served now (no daemon)" in listen
        assert "unix:/run/sendense/api.sock · 127.0.0.1:8041" in listen
        tokens = _rows(screen.query_one("#tokens", FlexTable))
        assert tokens["grafana"] == [
            "grafana",
            "read",
            "09:00:00",
            "2027-02-22",
            "never",
            "active",
        ]
        assert tokens["old-laptop"][1:] == ["admin", "09:00:00", "never", "09:00:00", "revoked"]
        rules = _rows(screen.query_one("#rules", FlexTable))
        assert rules["ops-hook"] == ["ops-hook", "webhook", "warning+", "yes", "failed 09:00:00"]
        assert rules["mail-admins"] == ["mail-admins", "email", "kind job.failed", "no", "never"]
        # Enter on the failed rule: its last delivery's error in full
        rules_table = screen.query_one("#rules", FlexTable)
        rules_table.focus()
        while cursor_key(rules_table) != "ops-hook":
            await pilot.press("j")
        await pilot.press("enter")
        await settle(pilot)
        detail = app.screen
        assert isinstance(detail, DetailScreen)
        failure = demo_engine.notifications.deliveries(rule="ops-hook")[0].last_error
        assert failure and failure in " ".join(detail.content.split())
        assert re.search(r"state\s+failed", detail.content)


def _token_list(state_dir: str) -> list[dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-m", "sendense_tui.cli", "--state-dir", state_dir, "api", "token",
         "list", "--json"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "SENDENSE_CONFIG": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    return data if isinstance(data, list) else data["tokens"]


async def test_a_token_made_in_the_dialog_shows_its_secret_once_and_revoke_asks_first(
    make_app: Callable[..., SendenseApp], demo_engine: Engine, clock: FixedClock
) -> None:
    seed_api(demo_engine, clock)
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open(pilot, app)
        await pilot.press("a")
        await settle(pilot)
        dialog = app.screen
        assert isinstance(dialog, NewTokenDialog)

        # a bad expiry and a taken name are refused in the dialog, which stays open
        await pilot.press(*"prometheus")
        dialog.query_one("#token-days", Input).value = "ten"
        await click_button(pilot, "#create")
        await settle(pilot)
        assert "the expiry is a number of days" in str(dialog.query_one("#token-error").render())
        dialog.query_one("#token-name", Input).value = "grafana"
        dialog.query_one("#token-days", Input).value = "30"
        await click_button(pilot, "#create")
        await settle(pilot)
        assert app.screen is dialog
        assert "already exists" in str(dialog.query_one("#token-error").render())

        dialog.query_one("#token-name", Input).value = "prometheus"
        dialog.query_one("#token-role", Select).value = "operate"
        await click_button(pilot, "#create")
        await settle(pilot)
        shown = app.screen
        assert isinstance(shown, DetailScreen)
        secret = shown.copy_value
        assert secret is not None and secret.startswith("sendense_")
        assert secret in shown.content.replace("\n", "")
        # c copies it (OSC 52), Esc closes the only place that held it
        await pilot.press("c")
        assert app.clipboard == secret
        await pilot.press("escape")
        await settle(pilot)
        assert app.screen is screen

        # the engine made it: the secret works, with the role chosen in the dialog
        assert demo_engine.api_tokens.authenticate(secret).role.value == "operate"
        listed = {t["name"]: t for t in _token_list(str(demo_engine.settings.state_dir))}
        assert listed["prometheus"]["role"] == "operate"
        assert listed["prometheus"]["expires_at"] is not None
        assert secret not in json.dumps(listed)
        # never again on screen: not in the list, not in the token's detail view
        tokens = screen.query_one("#tokens", FlexTable)
        assert all(secret not in " ".join(row) for row in _rows(tokens).values())

        # revoke: the cursor on prometheus, x asks, n keeps it, x and y revoke it
        tokens.focus()
        while cursor_key(tokens) != "prometheus":
            await pilot.press("j")
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, DetailScreen)
        assert secret not in app.screen.content
        await pilot.press("escape")
        await pilot.press("x")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("n")
        await settle(pilot)
        assert demo_engine.api_tokens.authenticate(secret).name == "prometheus"
        await pilot.press("x")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        with pytest.raises(SendenseError, match="was revoked"):
            demo_engine.api_tokens.authenticate(secret)
        assert _rows(tokens)["prometheus"][-1] == "revoked"


async def test_rules_toggle_test_against_a_real_webhook_and_remove_after_asking(
    make_app: Callable[..., SendenseApp],
    demo_engine: Engine,
    clock: FixedClock,
    webhook: WebhookServer,  # noqa: F811
) -> None:
    seed_api(demo_engine, clock, hook_url=webhook.url)
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open(pilot, app)
        rules = screen.query_one("#rules", FlexTable)
        await pilot.press("tab")  # from the token list to the rule list
        assert app.focused is rules
        while cursor_key(rules) != "ops-hook":
            await pilot.press("j")

        # t: a real test message; the sentence the engine gave is shown
        await pilot.press("t")
        await settle(pilot)
        assert len(webhook.received) == 1
        assert webhook.received[0].json["kind"] == "notify.test"
        said = [n.message for n in app._notifications]
        assert any("was delivered to" in m and m.startswith("The test message of") for m in said), (
            said
        )
        assert _rows(rules)["ops-hook"][-1] == "sent 09:00:00"

        # Space disables after a question (n: nothing changes), and enables at once
        await pilot.press("space")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("n")
        await settle(pilot)
        assert demo_engine.notifications.get_rule("ops-hook").enabled
        await pilot.press("space")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        assert not demo_engine.notifications.get_rule("ops-hook").enabled
        assert _rows(rules)["ops-hook"][3] == "no"
        await pilot.press("space")
        await settle(pilot)
        assert demo_engine.notifications.get_rule("ops-hook").enabled

        # a target that answers 500: the failure's sentence, as an error
        webhook.status = 500
        await pilot.press("t")
        await settle(pilot)
        errors = [n for n in app._notifications if n.severity == "error"]
        assert errors and "was not delivered to" in errors[-1].message

        # d asks; y removes the rule (the other stays)
        await pilot.press("d")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("y")
        await settle(pilot)
        names = [r.name for r in demo_engine.notifications.list_rules()]
        assert names == ["mail-admins"]
        assert list(_rows(rules)) == ["mail-admins"]


async def test_the_listen_line_shows_a_real_daemons_addresses_and_tls_fingerprint(
    tmp_path: Path, clock: FixedClock
) -> None:
    from tests.api.conftest import ApiDaemon

    daemon = ApiDaemon(tmp_path, listen="127.0.0.1:0,0.0.0.0:0")
    try:
        daemon.start()
        assert daemon.fingerprint  # 0.0.0.0 is served over TLS (a self-signed pair)
        with Engine(default_settings(daemon.state), clock=clock) as engine:
            app = SendenseApp(engine, clock=clock, live=False)
            async with app.run_test(size=(80, 24)) as pilot:
                screen = await _open(pilot, app)
                shown = " ".join(str(screen.query_one("#listen").render()).split())
    finally:
        daemon.close()
    assert shown.startswith("API served by the daemon on unix:")
    assert " · ".join(daemon.addresses) in shown
    assert f"TLS SHA-256 {daemon.fingerprint}" in shown


def test_the_api_section_says_what_a_token_reaches(tmp_path: Path) -> None:
    """Where an operator hands out tokens, it says what they reach: with no daemon, as
    the settings say ([api] source_roots, repository_roots)."""
    from dataclasses import replace

    from engine.config import ApiSettings
    from sendense_tui.screens.api import listening_text, read_listening

    settings = default_settings(tmp_path / "state")
    said = listening_text(read_listening(settings)).plain
    assert "Tokens reach sources: nbd:// only · local repositories: none (NFS, CIFS only)" in said
    roots = ApiSettings(source_roots=(Path("/dev/vg0"),), repository_roots=(Path("/srv/bk"),))
    said = listening_text(read_listening(replace(settings, api=roots))).plain
    assert "sources: nbd:// and /dev/vg0 · local repositories: /srv/bk" in said
