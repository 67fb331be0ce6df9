"""The API served by a real ``sendense daemon``: the unix socket (root, 0600), loopback
TCP with tokens, TLS on an address that is not loopback, live event and job streams,
a clean stop on SIGTERM and a stale socket replaced after SIGKILL."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import ssl
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.clock import FixedClock
from engine.runtime import Engine
from tests.api.conftest import ApiDaemon, bearer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the daemon)")


def test_the_unix_socket_is_roots_and_trusted(api_daemon: ApiDaemon) -> None:
    mode = api_daemon.socket_path.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert api_daemon.socket_path.stat().st_uid == 0
    assert stat.S_IMODE(api_daemon.state.stat().st_mode) == 0o700
    with api_daemon.socket_client() as client:
        answer = client.get("/api/v1/version")
    assert answer.status_code == 200
    assert (answer.json()["caller"], answer.json()["role"]) == ("root (unix socket)", "admin")


def test_loopback_tcp_needs_a_valid_token_of_the_right_role(api_daemon: ApiDaemon) -> None:
    reader = api_daemon.token("tcp-reader", "read")
    revoked = api_daemon.token("tcp-revoked", "admin")
    assert api_daemon.sendense("api", "token", "revoke", "tcp-revoked").returncode == 0
    # a token that expired: made by an engine whose clock says 2020, on the same catalog
    with Engine(api_daemon.settings, clock=FixedClock(datetime(2020, 1, 1, tzinfo=UTC))) as old:
        _view, expired = old.api_tokens.create("tcp-expired", "admin", expires_days=1)
    with api_daemon.client() as client:
        none = client.get("/api/v1/version")
        assert none.status_code == 401 and none.headers["www-authenticate"] == "Bearer"
        ok = client.get("/api/v1/version", headers=bearer(reader))
        assert ok.status_code == 200 and ok.json()["caller"] == "tcp-reader"
        assert client.get("/api/v1/jobs", headers=bearer(reader)).status_code == 200
        wrong_role = client.post("/api/v1/repositories/local/disable", headers=bearer(reader))
        assert wrong_role.status_code == 403
        for secret, says in ((revoked, "was revoked"), (expired, "expired at 2020-01-02")):
            refused = client.get("/api/v1/version", headers=bearer(secret))
            assert refused.status_code == 401 and says in refused.json()["detail"]
    with api_daemon.socket_client() as root:
        calls = root.get("/api/v1/events", params={"source": "api", "level": "debug"}).json()
    assert any(
        e["kind"] == "api.call" and e["actor"] == "tcp-reader" and "403" in e["message"]
        for e in calls
    )


def test_a_token_over_tcp_may_not_back_up_a_file_of_the_appliance(
    api_daemon: ApiDaemon,
) -> None:
    """Through the daemon's own authenticator: a token's request is bound by [api]
    source_roots (none here), root's on the socket is not (tests/api/test_backups.py)."""
    operator = api_daemon.token("tcp-operator", "operate")
    body = {"repo": "local", "vm": "shadow01", "disks": ["sda=/etc/shadow"]}
    with api_daemon.client() as client:
        refused = client.post("/api/v1/backups", json=body, headers=bearer(operator))
    assert refused.status_code == 403
    assert "no path of the appliance is open to tokens" in refused.json()["detail"]
    with api_daemon.socket_client() as root:
        jobs = root.get("/api/v1/jobs", params={"kind": "backup"}).json()
    assert not any("shadow01" in j["title"] for j in jobs)


def test_an_address_off_loopback_is_served_over_tls_only(api_daemon: ApiDaemon) -> None:
    url = api_daemon.url("https")
    port = int(url.rsplit(":", 1)[1])
    cert = api_daemon.state / "api-tls" / "cert.pem"
    key = api_daemon.state / "api-tls" / "key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    status = api_daemon.sendense("api", "status", "--json")
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["tls_fingerprint"] == api_daemon.fingerprint
    assert url in shown["addresses"]
    assert shown["token_source_roots"] == []  # the default: tokens name nbd:// sources only
    said = api_daemon.sendense("api", "status").stdout
    assert "a token may name as a backup's source: nbd:// URIs only" in said
    assert shown["token_repository_roots"] == []  # the default: NFS and CIFS only
    assert "a token may keep a local repository: nowhere (NFS and CIFS" in said
    daemon_status = api_daemon.sendense("daemon", "--status")
    assert f"TLS certificate SHA-256 fingerprint {api_daemon.fingerprint}" in daemon_status.stdout
    # the certificate served is the one whose fingerprint was printed
    served = ssl.get_server_certificate(("127.0.0.1", port))
    der = ssl.PEM_cert_to_DER_cert(served)
    printed = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    assert printed == api_daemon.fingerprint
    reader = api_daemon.token("tls-reader", "read")
    with httpx.Client(verify=ssl.create_default_context(cafile=str(cert))) as client:
        answer = client.get(f"https://127.0.0.1:{port}/api/v1/version", headers=bearer(reader))
        assert answer.status_code == 200 and answer.json()["caller"] == "tls-reader"
        assert client.get(f"https://127.0.0.1:{port}/api/v1/version").status_code == 401
    with pytest.raises(httpx.HTTPError), httpx.Client() as plain:
        plain.get(f"http://127.0.0.1:{port}/api/v1/version", headers=bearer(reader))
    assert b"PRIVATE KEY" not in served.encode()


def _read_sse(response: httpx.Response, until: Any, into: list[dict[str, Any]]) -> None:
    event = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            into.append({"event": event, **json.loads(line[6:])})
            if until(into[-1]):
                return


def test_events_and_a_real_jobs_progress_stream_live(api_daemon: ApiDaemon, tmp_path: Path) -> None:
    """The event stream carries what is recorded while a client listens, whichever
    process published it (a repository added through the API in the daemon, a token
    made by the CLI in a process of its own), and replays from Last-Event-ID; a real
    backup job's own stream ends when the job does."""
    seen: list[dict[str, Any]] = []
    with api_daemon.socket_client(timeout=60) as client:
        with client.stream("GET", "/api/v1/events/stream", params={"level": "debug"}) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            reader = threading.Thread(
                target=_read_sse,
                args=(stream, lambda e: e["event"] == "api.token_created", seen),
                daemon=True,
            )
            reader.start()
            added = client.post(
                "/api/v1/repositories",
                json={"name": "live", "path": str(tmp_path / "live"), "create": True},
            )
            assert added.status_code == 201, added.text
            api_daemon.token("from-another-process", "read")
            reader.join(timeout=30)
            assert not reader.is_alive(), seen
        [repo_added] = [e for e in seen if e["event"] == "repository.added"]
        assert repo_added["message"].startswith("repository live added")
        assert repo_added["actor"] == "root (unix socket)"
        assert seen[-1]["message"].startswith("API token from-another-process created")
        # a client that reconnects says what it saw last and misses nothing
        replayed: list[dict[str, Any]] = []
        with client.stream(
            "GET",
            "/api/v1/events/stream",
            params={"kind": "repository."},
            headers={"Last-Event-ID": str(repo_added["id"] - 1)},
        ) as stream:
            _read_sse(stream, lambda e: True, replayed)
        assert replayed[0]["id"] == repo_added["id"]

        disk = tmp_path / "disk.raw"
        disk.write_bytes(os.urandom(2 * 1024 * 1024))
        queued = api_daemon.sendense(
            "backup",
            "run",
            "--repo",
            "live",
            "--vm",
            "web01",
            "--disk",
            f"sda={disk}",
            "--no-wait",
            "--json",
        )
        assert queued.returncode == 0, queued.stderr
        job_id = json.loads(queued.stdout)["job_id"]
        progress: list[dict[str, Any]] = []
        with client.stream("GET", f"/api/v1/jobs/{job_id}/stream") as stream:
            _read_sse(stream, lambda e: False, progress)
        assert progress[-1]["event"] == "end"
        assert progress[-1]["state"] == "succeeded", progress[-1]
        assert progress[-1]["id"] == job_id


def test_a_stale_socket_is_replaced_and_a_stop_leaves_nothing(tmp_path: Path) -> None:
    daemon = ApiDaemon(tmp_path, listen="")
    try:
        daemon.start()
        first_pid = daemon.proc.pid if daemon.proc else 0
        assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
        assert daemon.socket_path.exists(), "a killed daemon leaves its socket"
        daemon.start()
        assert daemon.proc is not None and daemon.proc.pid != first_pid
        with daemon.socket_client() as client:
            assert client.get("/api/v1/version").status_code == 200
            # a client listening to the live stream does not hold the stop up
            lines: list[str] = []
            with client.stream("GET", "/api/v1/events/stream") as stream:
                listening = threading.Thread(
                    target=lambda: lines.extend(stream.iter_lines()), daemon=True
                )
                listening.start()
                assert daemon.stop() == 0
                listening.join(timeout=30)
                assert not listening.is_alive()
        assert lines[0] == ": connected"
        assert not daemon.socket_path.exists()
        assert not (daemon.state / "api.json").exists()
        assert "Traceback" not in daemon.log.read_text()
    finally:
        daemon.close()


def test_an_address_in_use_stops_the_daemon_with_one_sentence(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        daemon = ApiDaemon(tmp_path, listen=f"127.0.0.1:{port}")
        done = daemon.sendense("daemon")
    assert done.returncode == 2
    assert done.stderr.startswith(
        f"sendense: the API cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert "Traceback" not in done.stderr + done.stdout
    assert not daemon.socket_path.exists()
