"""``[api]`` settings: where the daemon serves the API, and every bad value named."""

from __future__ import annotations

from pathlib import Path

import pytest

import engine.config
from engine.config import ApiSettings, load_settings, parse_listen
from engine.errors import ConfigError


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setattr(engine.config, "SYSTEM_CONFIG", tmp_path / "etc" / "sendense.toml")
    return {
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
        "SENDENSE_STATE_DIR": str(tmp_path / "state"),
    }


def _config(env: dict[str, str], text: str) -> None:
    path = Path(env["XDG_CONFIG_HOME"]) / "sendense" / "sendense.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_defaults_serve_the_socket_in_the_state_directory_only(
    env: dict[str, str], tmp_path: Path
) -> None:
    settings = load_settings(env)
    assert settings.api == ApiSettings()
    assert settings.api_socket == tmp_path / "state" / "api.sock"


def test_values_from_the_file_and_the_environment(env: dict[str, str]) -> None:
    _config(
        env,
        '[api]\nlisten = ["127.0.0.1:8041", "[::1]:8041"]\nsocket = "/run/s/api.sock"\n'
        'tls_cert = "/etc/s/c.pem"\ntls_key = "/etc/s/k.pem"\n',
    )
    settings = load_settings(env)
    assert settings.api.listen == ("127.0.0.1:8041", "[::1]:8041")
    assert settings.api_socket == Path("/run/s/api.sock")
    assert settings.api.tls_cert == Path("/etc/s/c.pem")
    from_env = load_settings({**env, "SENDENSE_API_LISTEN": "0.0.0.0:9000, 127.0.0.1:0"})
    assert from_env.api.listen == ("0.0.0.0:9000", "127.0.0.1:0")
    assert settings.api.source_roots == ()  # tokens name nbd:// sources only
    roots = load_settings({**env, "SENDENSE_API_SOURCE_ROOTS": "/dev/vg0, /srv/images"})
    assert roots.api.source_roots == (Path("/dev/vg0"), Path("/srv/images"))
    assert settings.api.repository_roots == ()  # tokens add NFS and CIFS repositories only
    kept = load_settings({**env, "SENDENSE_API_REPOSITORY_ROOTS": "/srv/backups"})
    assert kept.api.repository_roots == (Path("/srv/backups"),)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('listen = ["8041"]', "api.listen is invalid: '8041' is not HOST:PORT"),
        ('listen = ["::1:8041"]', "write an IPv6 address in brackets"),
        ('listen = ["127.0.0.1:70000"]', "the port must be 0 to 65535"),
        ('listen = ["a b:1"]', "is not a host name or address"),
        ('listen = "127.0.0.1:1"\nsocket = "api.sock"', "api.socket is invalid: must be an abs"),
        ('tls_cert = "/c.pem"', "api.tls_cert and api.tls_key go together"),
        ("port = 1", "api.port is not a known setting"),
        ('source_roots = ["/"]', "/ would let a token name any file of the appliance"),
        ('source_roots = ["images"]', "api.source_roots is invalid: must be an absolute path"),
        ("source_roots = 3", "expected a list of absolute paths"),
        ('repository_roots = ["/"]', "/ would let a token name any file of the appliance"),
        ('repository_roots = ["b"]', "api.repository_roots is invalid: must be an absolute"),
    ],
)
def test_bad_values_name_the_key(env: dict[str, str], text: str, says: str) -> None:
    _config(env, f"[api]\n{text}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert says in str(caught.value)


def test_a_bad_address_from_the_environment_names_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({**env, "SENDENSE_API_LISTEN": "localhost"})
    assert str(caught.value).startswith("environment variable SENDENSE_API_LISTEN (api.listen)")


def test_listen_addresses_parse() -> None:
    assert parse_listen("127.0.0.1:8041") == ("127.0.0.1", 8041)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen("backup.example:443") == ("backup.example", 443)
