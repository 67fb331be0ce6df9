"""API & notifications: where the HTTP API listens, its tokens, and the notification
rules that tell people about what happened.

The top lines say where ``sendense daemon`` serves the API (its unix socket and TCP
addresses, the TLS certificate's SHA-256 fingerprint), or where it would, when no
daemon serves it. Below, two lists (Tab moves between them; Enter shows a row in
full). Keys (see ``actions.py``): ``a`` creates a token in a dialog and shows its
secret once, in a dialog with a copy key (nothing keeps it afterwards); ``x``
revokes the token under the cursor (asks first); Space enables or disables the
rule under the cursor (disabling asks first); ``t`` sends the rule a test message
and says how it went; ``d`` removes the rule (asks first).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label, Select, Static
from textual.worker import Worker, WorkerState

from engine.services.api_tokens import EXPIRES_DAYS_MAX, Role, TokenView
from engine.services.notify import DeliveryView, RuleView
from sendense_tui.actions import bindings_for
from sendense_tui.details import full_time
from sendense_tui.format import printable, safe_text, short_time
from sendense_tui.screens.base import SendenseScreen
from sendense_tui.styles import STYLES_DIR
from sendense_tui.widgets.confirm import ConfirmDialog
from sendense_tui.widgets.detail import DetailScreen, Heading, Part
from sendense_tui.widgets.tables import FlexTable, cursor_key, sync_rows

TOKEN_COLUMNS = ("name", "role", "created", "expires", "used", "state")
RULE_COLUMNS = ("name", "target", "match", "on", "last")
_STATE_STYLE = {"active": "bold green", "expired": "yellow", "revoked": "dim"}
_DELIVERY_STYLE = {"sent": "green", "failed": "bold red", "pending": "yellow", "sending": "cyan"}


@dataclass
class Listening:
    """Where the API is (or would be) served."""

    #: a daemon serves it now (else: what the settings say it would serve)
    running: bool
    addresses: list[str]
    fingerprint: str | None = None
    pid: int | None = None
    #: what a token may name as a backup's source, and where it may keep a local
    #: repository ([api] source_roots, repository_roots; engine.reach)
    source_roots: list[str] = field(default_factory=list)
    repository_roots: list[str] = field(default_factory=list)


@dataclass
class ApiData:
    now: datetime
    listening: Listening
    tokens: list[TokenView]
    rules: list[RuleView]
    #: the newest delivery of each rule, by rule name
    last: dict[str, DeliveryView] = field(default_factory=dict)


def read_listening(settings: Any) -> Listening:
    """The running daemon's record, else the configured socket and TCP addresses
    (and the fingerprint of the certificate the daemon would serve TLS with)."""
    from sendense_api.serve import listening
    from sendense_api.tls import CERT_FILE, TLS_DIR, fingerprint

    served = listening(settings)
    if served["running"]:
        return Listening(
            True,
            list(served["addresses"]),
            served.get("tls_fingerprint"),
            served.get("pid"),
            list(served["token_source_roots"]),
            list(served["token_repository_roots"]),
        )
    api = settings.api
    addresses = [f"unix:{settings.api_socket}", *api.listen]
    cert = api.tls_cert or settings.state_dir / TLS_DIR / CERT_FILE
    found = None
    if api.listen and cert.is_file():
        with contextlib.suppress(Exception):  # an unreadable certificate: no fingerprint
            found = fingerprint(cert)
    return Listening(
        False,
        addresses,
        found,
        source_roots=[str(p) for p in api.source_roots],
        repository_roots=[str(p) for p in api.repository_roots],
    )


def listening_text(where: Listening) -> Text:
    text = Text(no_wrap=False, overflow="fold")
    text.append("API ", style="bold")
    if where.running:
        text.append("served by the daemon on ", style="green")
    else:
        text.append("not served now (no daemon); configured: ", style="yellow")
    text.append(printable(" · ".join(where.addresses)))
    if where.fingerprint:
        text.append("\nTLS SHA-256 ", style="bold")
        text.append(printable(where.fingerprint))
    text.append("\nTokens reach ", style="bold")
    sources = ", ".join(where.source_roots)
    repositories = ", ".join(where.repository_roots)
    text.append(
        printable(
            f"sources: nbd:// {'and ' + sources if sources else 'only'} · local "
            f"repositories: {repositories or 'none (NFS, CIFS only)'}"
        )
    )
    return text


def _heading(title: str, note: str) -> Text:
    text = Text(title, style="bold")
    text.append(f" · {note}", style="dim")
    return text


def _day(value: datetime | None, now: datetime) -> str:
    """A date for the token list: its day ("2026-11-23"), or the time today."""
    return short_time(value, now) if value is not None else "-"


def token_detail(token: TokenView) -> DetailScreen:
    parts: list[Part] = [
        ("name", token.name),
        ("role", token.role.value),
        ("state", token.state),
        ("created", full_time(token.created_at)),
        ("by", token.created_by or "-"),
        ("expires", full_time(token.expires_at) if token.expires_at else "never"),
        ("last used", full_time(token.last_used_at) if token.last_used_at else "never"),
    ]
    if token.revoked_at is not None:
        parts.append(("revoked", full_time(token.revoked_at)))
    parts.append("The secret was shown once, when the token was made; it is not kept.")
    return DetailScreen(f"API token {token.name}", parts)


def rule_detail(rule: RuleView, last: DeliveryView | None) -> DetailScreen:
    parts: list[Part] = [
        ("name", rule.name),
        ("enabled", "yes" if rule.enabled else "no"),
        ("target", rule.target),
        ("sends to", rule.destination),
        ("secret", "set" if rule.secret_set else "not set"),
        ("matches", rule.matches),
        ("dedup", f"{rule.dedup_minutes} min" if rule.dedup_minutes else "off"),
        ("at most", f"{rule.max_per_hour} an hour" if rule.max_per_hour else "no limit"),
        ("digest", f"daily at {rule.digest_at} UTC" if rule.digest_at else "off"),
    ]
    if rule.counts:
        parts.append(("deliveries", ", ".join(f"{n} {s}" for s, n in sorted(rule.counts.items()))))
    if last is not None:
        parts.append(Heading("Last delivery"))
        parts.append(("at", full_time(last.sent_at or last.created_at)))
        parts.append(("state", last.state))
        parts.append(("what", last.subject or last.kind))
        if last.last_error:
            parts.append(("error", last.last_error))
    return DetailScreen(
        f"Notification rule {rule.name}",
        parts,
        copy_value=rule.destination,
        copy_what="destination",
    )


class NewTokenDialog(ModalScreen[tuple[TokenView, str] | None]):
    """Name, role and expiry of a new token; Create makes it (off the UI thread) and
    closes with the token and its secret, or shows the one sentence that refused it."""

    CSS_PATH = STYLES_DIR / "api.tcss"
    BINDINGS = [("escape", "close", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(id="new-token"):
            yield Static(Text("New API token", style="bold"), id="new-token-title")
            with Horizontal():
                yield Label("Name", classes="label")
                yield Input(placeholder="grafana", id="token-name", compact=True)
            with Horizontal():
                yield Label("Role", classes="label")
                yield Select(
                    [(r.value, r.value) for r in Role],
                    value=Role.READ.value,
                    allow_blank=False,
                    id="token-role",
                    compact=True,
                )
            with Horizontal():
                yield Label("Expires in days", classes="label")
                yield Input(placeholder="never", id="token-days", compact=True)
            yield Static(
                "read: sees all but secrets · operate: also runs jobs, mounts, exports · "
                "admin: also changes configuration (and opens the web console)",
                id="token-roles",
            )
            with Horizontal(id="token-buttons"):
                yield Button("Create", id="create", variant="primary", compact=True)
                yield Button("Cancel", id="cancel", compact=True)
            yield Static("", id="token-error")

    def on_mount(self) -> None:
        self.query_one("#token-name", Input).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "create":
            self.create()
        else:
            self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.create()

    def action_close(self) -> None:
        self.dismiss(None)

    def create(self) -> None:
        error = self.query_one("#token-error", Static)
        name = self.query_one("#token-name", Input).value.strip()
        days_text = self.query_one("#token-days", Input).value.strip()
        role = str(self.query_one("#token-role", Select).value)
        days: int | None = None
        if days_text and days_text.lower() != "never":
            if not (days_text.isascii() and days_text.isdigit()) or len(days_text) > 6:
                error.update(f"✗ the expiry is a number of days, 1 to {EXPIRES_DAYS_MAX}")
                return
            days = int(days_text)
        engine = self.app.engine  # type: ignore[attr-defined]
        self.run_worker(
            lambda: engine.api_tokens.create(name, role, days, actor="console"),
            group="create-token",
            thread=True,
            exit_on_error=False,
        )

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "create-token":
            return
        if event.state == WorkerState.SUCCESS:
            self.dismiss(event.worker.result)
        elif event.state == WorkerState.ERROR:
            exc = event.worker.error
            message = getattr(exc, "message", None) or str(exc)
            self.query_one("#token-error", Static).update(safe_text(f"✗ {message}"))


def secret_dialog(token: TokenView, secret: str) -> DetailScreen:
    """The secret, this once: ``c`` copies it (OSC 52); nothing keeps it afterwards."""
    return DetailScreen(
        f"API token {token.name} created ({token.role.value})",
        [
            ("secret", secret),
            "Copy it now (c): it is shown this once and never again; Sendense keeps only "
            "its hash. Send it as 'Authorization: Bearer <secret>'.",
        ],
        copy_value=secret,
        copy_what="secret",
    )


class ApiScreen(SendenseScreen):
    MODE = "api"
    #: read again only when the catalog changed (or REREAD_SECONDS passed), not
    #: every second: an idle console stays near no CPU
    WATCH_CHANGES = True
    CSS_PATH = STYLES_DIR / "api.tcss"
    BINDINGS = bindings_for("api")

    def __init__(self) -> None:
        super().__init__()
        self._data: ApiData | None = None

    def compose_body(self) -> ComposeResult:
        yield Static(id="listen")
        yield Static(Text("API tokens", style="bold"), id="tokens-heading", classes="heading")
        yield FlexTable(
            [
                ("name", "Token", None),
                ("role", "Role", 7),
                ("created", "Created", 11),
                ("expires", "Expires", 11),
                ("used", "Last used", 11),
                ("state", "State", 7),
            ],
            id="tokens",
            list_name="API tokens",
        )
        yield Static(
            Text("Notification rules", style="bold"), id="rules-heading", classes="heading"
        )
        yield FlexTable(
            [
                ("name", "Rule", 14),
                ("target", "Target", 7),
                ("match", "Matches", None),
                ("on", "On", 3),
                ("last", "Last delivery", 18),
            ],
            id="rules",
            list_name="notification rules",
        )

    def on_mount(self) -> None:
        self.query_one("#tokens", FlexTable).focus()

    def fetch(self) -> ApiData:
        engine = self.engine
        notifications = engine.notifications
        last: dict[str, DeliveryView] = {}
        for delivery in notifications.deliveries(limit=500):  # newest first
            last.setdefault(delivery.rule, delivery)
        return ApiData(
            now=engine.clock.now(),
            listening=read_listening(engine.settings),
            tokens=engine.api_tokens.list(),
            rules=notifications.list_rules(),
            last=last,
        )

    def apply(self, data: ApiData) -> None:
        self._data = data
        now = data.now
        self.query_one("#listen", Static).update(listening_text(data.listening))
        token_rows: list[tuple[str, list[Any]]] = [
            (
                t.name,
                [
                    t.name,
                    t.role.value,
                    _day(t.created_at, now),
                    _day(t.expires_at, now) if t.expires_at else "never",
                    _day(t.last_used_at, now) if t.last_used_at else "never",
                    Text(t.state, style=_STATE_STYLE.get(t.state, "")),
                ],
            )
            for t in data.tokens
        ]
        sync_rows(self.query_one("#tokens", DataTable), token_rows, TOKEN_COLUMNS)
        active = sum(1 for t in data.tokens if t.state == "active")
        self.query_one("#tokens-heading", Static).update(
            _heading("API tokens", f"{active} active" if data.tokens else "none yet: a creates one")
        )
        rule_rows: list[tuple[str, list[Any]]] = []
        for r in data.rules:
            delivery = data.last.get(r.name)
            last = Text("never", style="dim")
            if delivery is not None:
                last = Text(no_wrap=True, overflow="ellipsis")
                last.append(delivery.state, style=_DELIVERY_STYLE.get(delivery.state, ""))
                last.append(f" {short_time(delivery.sent_at or delivery.created_at, now)}")
            rule_rows.append(
                (
                    r.name,
                    [
                        r.name,
                        r.target,
                        r.matches,
                        Text("yes", style="green") if r.enabled else Text("no", style="dim"),
                        last,
                    ],
                )
            )
        sync_rows(self.query_one("#rules", DataTable), rule_rows, RULE_COLUMNS)
        enabled = sum(1 for r in data.rules if r.enabled)
        self.query_one("#rules-heading", Static).update(
            _heading(
                "Notification rules",
                f"{enabled} of {len(data.rules)} on"
                if data.rules
                else "none yet: sendense notify rule add NAME --webhook URL",
            )
        )

    # -- what is under the cursor ------------------------------------------------------

    def _token(self, *, quiet: bool = False) -> TokenView | None:
        key = cursor_key(self.query_one("#tokens", DataTable))
        found = next((t for t in self._data.tokens if t.name == key), None) if self._data else None
        if found is None and not quiet:
            self.notify("Select an API token first (Tab to the token list).", severity="warning")
        return found

    def _rule(self, *, quiet: bool = False) -> RuleView | None:
        key = cursor_key(self.query_one("#rules", DataTable))
        found = next((r for r in self._data.rules if r.name == key), None) if self._data else None
        if found is None and not quiet:
            self.notify(
                "Select a notification rule first (Tab to the rule list).", severity="warning"
            )
        return found

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open_details()

    def action_open_details(self) -> None:
        """Enter: the token or the rule under the cursor of the focused list, in full."""
        if self.focused is self.query_one("#rules"):
            rule = self._rule(quiet=True)
            if rule is not None and self._data is not None:
                self.app.push_screen(rule_detail(rule, self._data.last.get(rule.name)))
            return
        token = self._token(quiet=True)
        if token is not None:
            self.app.push_screen(token_detail(token))

    # -- tokens --------------------------------------------------------------------------

    def action_new_token(self) -> None:
        def made(result: tuple[TokenView, str] | None) -> None:
            if result is None:
                return
            token, secret = result
            self.refresh_now()
            # the secret lives in this dialog only: closing it forgets it
            self.app.push_screen(secret_dialog(token, secret))

        self.app.push_screen(NewTokenDialog(), made)

    def action_revoke_token(self) -> None:
        token = self._token()
        if token is None:
            return
        if token.state == "revoked":
            self.notify(f"API token {token.name} is revoked already.", severity="warning")
            return
        name = token.name

        def answer(yes: bool | None) -> None:
            if yes:
                self.run_engine(
                    lambda: self.engine.api_tokens.revoke(name, actor="console"),
                    after=lambda _view: self.notify(f"API token {name} revoked."),
                    description="revoke API token",
                )

        self.app.push_screen(
            ConfirmDialog(
                f"Revoke API token {name} ({token.role.value})?",
                "Every program using it is refused from its next request (the web console "
                "too); this cannot be undone: a new token has a new secret.",
                yes_label="Revoke",
            ),
            answer,
        )

    # -- notification rules -----------------------------------------------------------------

    def action_toggle_rule(self) -> None:
        rule = self._rule()
        if rule is None:
            return
        name, enable = rule.name, not rule.enabled

        def toggle() -> None:
            self.run_engine(
                lambda: self.engine.notifications.set_enabled(name, enable, actor="console"),
                after=lambda r: self.notify(
                    f"Notification rule {r.name} {'enabled' if r.enabled else 'disabled'}"
                    + ("." if r.enabled else ": nothing is sent until Space enables it.")
                ),
                description="enable notification rule" if enable else "disable rule",
            )

        if enable:
            toggle()
            return
        self.app.push_screen(
            ConfirmDialog(
                f"Disable notification rule {name}?",
                f"Events it matches ({rule.matches}) are not sent to {rule.destination} "
                "until it is enabled again.",
                yes_label="Disable",
            ),
            lambda yes: yes and toggle(),
        )

    def action_test_rule(self) -> None:
        rule = self._rule()
        if rule is None:
            return
        name = rule.name
        self.notify(f"Sending a test message through {name}…", timeout=3)
        self.run_engine(
            lambda: self.engine.notifications.test(name, actor="console"),
            after=lambda outcome: self.notify(
                outcome.sentence[:1].upper() + outcome.sentence[1:] + ".",
                title="Test sent" if outcome.ok else "Test failed",
                severity="information" if outcome.ok else "error",
                timeout=10,
            ),
            description="test notification rule",
        )

    def action_remove_rule(self) -> None:
        rule = self._rule()
        if rule is None:
            return
        name = rule.name

        def answer(yes: bool | None) -> None:
            if yes:
                self.run_engine(
                    lambda: self.engine.notifications.remove_rule(name, actor="console"),
                    after=lambda _none: self.notify(f"Notification rule {name} removed."),
                    description="remove notification rule",
                )

        self.app.push_screen(
            ConfirmDialog(
                f"Remove notification rule {name} ({rule.target} to {rule.destination})?",
                "Nothing more is sent through it; its deliveries (queued and failed ones "
                "too) leave the delivery log with it.",
            ),
            answer,
        )
