"""API tokens on both catalog backends: made, listed, used, revoked, expired; the
secret never stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import MetaData, select

from engine.clock import FixedClock
from engine.errors import NotFoundError, ValidationError
from engine.runtime import Engine
from engine.services.api_tokens import Role, TokenRefused

ROOT = Path(__file__).resolve().parents[2]


def test_a_token_is_made_listed_and_authenticates(engine: Engine, clock: FixedClock) -> None:
    view, secret = engine.api_tokens.create("grafana", "read", actor="alice")
    assert view.role is Role.READ and view.state == "active" and view.expires_at is None
    assert secret.startswith("sendense_")
    [listed] = engine.api_tokens.list()
    assert listed.name == "grafana" and listed.created_by == "alice"
    assert listed.last_used_at is None
    clock.advance(timedelta(minutes=5))
    used = engine.api_tokens.authenticate(secret)
    assert used.name == "grafana" and used.role is Role.READ
    assert engine.api_tokens.get("grafana").last_used_at == clock.now()
    kinds = [e.kind for e in engine.audit.query(source="api")]
    assert "api.token_created" in kinds


def test_the_secret_is_stored_nowhere_in_clear(engine: Engine) -> None:
    """Every column of every catalog row, read back: neither the secret nor its random
    part appear (only the lookup prefix and a digest)."""
    _view, secret = engine.api_tokens.create("ci", "operate")
    body = secret.rsplit("_", 1)[1]
    metadata = MetaData()
    metadata.reflect(engine.catalog.engine)
    with engine.catalog.session() as session:
        for table in metadata.sorted_tables:
            for row in session.execute(select(table)):
                text = json.dumps([str(value) for value in row])
                assert secret not in text and body not in text, table.name
    if engine.catalog.engine.url.get_backend_name() == "sqlite":
        database = Path(str(engine.catalog.engine.url.database))
        for path in database.parent.glob(database.name + "*"):
            assert body.encode() not in path.read_bytes(), path


def test_revoked_unknown_and_forged_tokens_are_refused(engine: Engine) -> None:
    _view, secret = engine.api_tokens.create("backup-bot", "operate")
    _other, other_secret = engine.api_tokens.create("other", "read")
    # the right prefix with another token's random part: a forgery
    forged = secret.rsplit("_", 1)[0] + "_" + other_secret.rsplit("_", 1)[1]
    for bad in (forged, "sendense_", "", "Bearer " + secret, secret + "x", "x" * 5000):
        with pytest.raises(TokenRefused, match="is not valid"):
            engine.api_tokens.authenticate(bad)
    revoked = engine.api_tokens.revoke("backup-bot", actor="alice")
    assert revoked.state == "revoked"
    with pytest.raises(TokenRefused) as refused:
        engine.api_tokens.authenticate(secret)
    assert refused.value.message == "the API token 'backup-bot' was revoked"
    assert secret not in refused.value.for_humans()
    with pytest.raises(NotFoundError):
        engine.api_tokens.revoke("nobody")
    # the name is free again; the old secret stays refused
    _new, new_secret = engine.api_tokens.create("backup-bot", "admin")
    assert engine.api_tokens.authenticate(new_secret).role is Role.ADMIN
    with pytest.raises(TokenRefused):
        engine.api_tokens.authenticate(secret)


def test_a_token_expires(engine: Engine, clock: FixedClock) -> None:
    view, secret = engine.api_tokens.create("short", "read", expires_days=2)
    assert view.expires_at == clock.now() + timedelta(days=2)
    engine.api_tokens.authenticate(secret)
    clock.advance(timedelta(days=2))
    with pytest.raises(TokenRefused, match="'short' expired at"):
        engine.api_tokens.authenticate(secret)
    assert engine.api_tokens.get("short").state == "expired"


@pytest.mark.parametrize(
    ("name", "role", "days", "says"),
    [
        ("bad name", "read", None, "API token name"),
        ("12", "read", None, "all digits"),
        ("ok", "root", None, "is not a role"),
        ("ok", "read", 0, "expires in 1 to"),
    ],
)
def test_bad_token_input_is_refused(
    engine: Engine, name: str, role: str, days: int | None, says: str
) -> None:
    with pytest.raises(ValidationError, match=says):
        engine.api_tokens.create(name, role, days)
    assert engine.api_tokens.list() == []


def test_a_live_name_is_not_taken_twice(engine: Engine) -> None:
    engine.api_tokens.create("twice", "read")
    with pytest.raises(ValidationError, match="already exists"):
        engine.api_tokens.create("twice", "admin")


def _cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENDENSE_")}
    env.update(SENDENSE_STATE_DIR=str(state), SENDENSE_NO_DAEMON="1")
    return subprocess.run(
        [sys.executable, "-m", "sendense_tui.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def test_the_cli_creates_lists_and_revokes_tokens(tmp_path: Path) -> None:
    state = tmp_path / "state"
    made = _cli(state, "api", "token", "create", "nightly", "--role", "operate", "--expires", "7")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip().splitlines()[-1]
    assert secret.startswith("sendense_")
    listed = json.loads(_cli(state, "api", "token", "list", "--json").stdout)
    assert [(t["name"], t["role"], t["state"]) for t in listed] == [
        ("nightly", "operate", "active")
    ]
    assert secret not in json.dumps(listed)
    again = _cli(state, "api", "token", "create", "nightly", "--role", "read")
    assert again.returncode == 2
    assert again.stderr.startswith("sendense: an API token named 'nightly' already exists")
    revoked = _cli(state, "api", "token", "revoke", "nightly", "--json")
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["state"] == "revoked"
    missing = _cli(state, "api", "token", "revoke", "nobody")
    assert missing.returncode == 2 and "no API token named 'nobody'" in missing.stderr
    assert "Traceback" not in missing.stderr + again.stderr
