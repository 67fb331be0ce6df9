"""``sendense notify …`` as an operator runs it: the real CLI in subprocesses against a
webhook server on loopback (SQLite catalog in a tmp state directory)."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from sendense_tui.cli import main
from tests.engine import notifyservers
from tests.engine.notifyservers import WebhookServer, closed_port

ROOT = Path(__file__).resolve().parents[2]
HMAC_KEY = "cli-hmac-k3y"
PASSWORD = "cli-mail-pa55"

webhook = notifyservers.webhook


Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def sendense(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """``sendense(state, *args, stdin="", real=False)``: the real CLI in a subprocess
    with ``real``, else the same ``main`` in-process (quicker; used for most calls)."""

    def run(
        state: Path, *args: str, stdin: str = "", real: bool = False
    ) -> subprocess.CompletedProcess[str]:
        if real:
            return real_sendense(state, *args, stdin=stdin)
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = main(["--state-dir", str(state), *args])
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    return run


def real_sendense(state: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sendense_tui.cli", "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
        input=stdin,
    )


def test_rules_from_the_command_line_keep_their_secrets_out_of_listings_and_the_catalog(
    tmp_path: Path, webhook: WebhookServer, sendense: Run
) -> None:
    state = tmp_path / "state"
    key_file = tmp_path / "hmac.key"
    key_file.write_text(HMAC_KEY + "\n")
    done = sendense(
        state, "notify", "rule", "add", "ops", "--webhook", webhook.url,
        "--secret-file", str(key_file), "--kind", "job.failed", "--kind", "copy.",
        "--dedup", "30", "--max-per-hour", "5",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    shown = webhook.url.removesuffix("/hook") + "/…"
    assert done.stdout == f"notification rule ops added: kind job.failed|copy. to {shown}\n"
    # the password from stdin, never from the command line
    done = sendense(
        state, "notify", "rule", "add", "mail", "--smtp", "127.0.0.1:2525", "--starttls",
        "--from", "backup@example.com", "--to", "ops@example.com", "--user", "backup",
        "--password-file", "-", "--digest", "07:30", stdin=PASSWORD + "\n", real=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr

    done = sendense(state, "notify", "rule", "list", "--json")
    assert done.returncode == 0, done.stderr
    assert HMAC_KEY not in done.stdout and PASSWORD not in done.stdout
    mail, ops = json.loads(done.stdout)
    assert (ops["secret"], mail["secret"]) == ("set", "set")
    assert ops["kinds"] == ["job.failed", "copy."] and ops["min_level"] is None
    assert (ops["dedup_minutes"], ops["max_per_hour"]) == (30, 5)
    assert mail["destination"] == "ops@example.com via 127.0.0.1:2525, STARTTLS"
    assert (mail["min_level"], mail["digest_at"]) == ("warning", "07:30")
    done = sendense(state, "notify", "rule", "list")
    assert "set" in done.stdout and HMAC_KEY not in done.stdout
    for name in ("catalog.db", "catalog.db-wal"):
        stored = state / name
        if stored.exists():
            data = stored.read_bytes()
            assert HMAC_KEY.encode() not in data and PASSWORD.encode() not in data

    done = sendense(state, "notify", "rule", "disable", "ops")
    assert done.returncode == 0 and done.stdout == "notification rule ops disabled\n"
    done = sendense(state, "notify", "rule", "enable", "ops", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["enabled"] is True

    done = sendense(state, "notify", "test", "ops", real=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"the test message of notification rule ops was delivered to {shown}\n"
    [hit] = webhook.received
    signature = hmac.new(HMAC_KEY.encode(), hit.body, hashlib.sha256).hexdigest()
    assert hit.headers["X-Sendense-Signature"] == f"sha256={signature}"
    assert hit.json["kind"] == "notify.test" and hit.json["actor"] == "cli"

    done = sendense(state, "notify", "deliveries", "--json")
    [delivery] = json.loads(done.stdout)
    assert (delivery["rule"], delivery["state"], delivery["reason"]) == ("ops", "sent", "test")

    done = sendense(state, "notify", "rule", "remove", "mail")
    assert done.returncode == 0 and done.stdout == "notification rule mail removed\n"
    done = sendense(state, "notify", "rule", "list", "--json")
    assert [rule["name"] for rule in json.loads(done.stdout)] == ["ops"]


def test_notify_test_exits_1_with_the_targets_reason(tmp_path: Path, sendense: Run) -> None:
    state = tmp_path / "state"
    port = closed_port()
    url, shown = f"http://127.0.0.1:{port}/hook", f"http://127.0.0.1:{port}/…"
    # a URL with a token comes from a file (or stdin), like the other secrets
    done = sendense(state, "notify", "rule", "add", "dead", "--webhook-url-file", "-", stdin=url)
    assert done.returncode == 0, done.stderr
    done = sendense(state, "notify", "test", "dead", real=True)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines()[0] == (
        f"sendense: the test message of notification rule dead was not delivered to {shown}: "
        f"{shown} cannot be reached: connection refused"
    )
    assert "Traceback" not in done.stderr
    done = sendense(state, "notify", "test", "dead", "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout)["ok"] is False
    done = sendense(state, "notify", "deliveries", "--failed")
    assert done.returncode == 0
    assert done.stdout.count("connection refused") == 2 and "failed (test)" in done.stdout


def test_bad_input_is_refused_with_exit_2_and_nothing_saved(tmp_path: Path, sendense: Run) -> None:
    state = tmp_path / "state"
    empty = tmp_path / "empty"
    empty.write_text("")
    refusals = [
        (["--webhook", "file:///etc/passwd"], "is not an http:// or https:// URL"),
        (["--smtp", "mail", "--to", "a@b", "--from", "c@d", "--secret-file", str(empty)],
         "--secret-file (the HMAC key) goes with --webhook"),
        (["--webhook", "http://h/", "--to", "a@b"], "go with --smtp"),
        (["--webhook", "http://h/", "--secret-file", str(empty)], "is empty: no HMAC key"),
        (["--webhook", "http://h/", "--secret-file", str(tmp_path / "nope")],
         "the HMAC key cannot be read from"),
        (["--webhook", "http://h/", "--digest", "7pm"], "digest time '7pm' is not HH:MM"),
        (["--smtp", "mail:99999", "--to", "a@b", "--from", "c@d"], "the port is not 1 to 65535"),
        (["--apprise-url-file", "-"], "is empty: no apprise URL"),
    ]  # fmt: skip
    for options, sentence in refusals:
        done = sendense(state, "notify", "rule", "add", "r1", *options)
        assert done.returncode == 2, (options, done.stderr)
        assert sentence in done.stderr and "Traceback" not in done.stderr
    done = sendense(state, "notify", "test", "nosuch")
    assert done.returncode == 2
    assert done.stderr.startswith("sendense: notification rule 'nosuch' does not exist")
    done = sendense(state, "notify", "rule", "list", "--json")
    assert json.loads(done.stdout) == []
