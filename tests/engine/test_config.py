"""Settings: defaults, the TOML file, environment overrides and every bad value.

``load_settings`` takes the environment as a mapping, so each test builds its
own; /etc/sendense is redirected to a tmp path so the machine stays out of it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import engine.config
from engine.config import (
    CapacitySettings,
    ExportSettings,
    JobSettings,
    VerifySettings,
    load_settings,
    parse_size,
    redact_url,
)
from engine.errors import ConfigError


@pytest.fixture(autouse=True)
def no_system_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine.config, "SYSTEM_CONFIG", tmp_path / "etc" / "sendense.toml")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment with no config file and private XDG dirs."""
    return {
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
        "XDG_STATE_HOME": str(tmp_path / "xdg-state"),
    }


def write_config(env: dict[str, str], text: str) -> Path:
    path = Path(env["XDG_CONFIG_HOME"]) / "sendense" / "sendense.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def config_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    return str(caught.value)


# -- good values -------------------------------------------------------------------


def test_no_file_gives_sqlite_in_the_state_dir(env: dict[str, str], tmp_path: Path) -> None:
    settings = load_settings(env)
    expected_state = (
        Path("/var/lib/sendense") if os.geteuid() == 0 else tmp_path / "xdg-state" / "sendense"
    )
    assert settings.state_dir == expected_state
    assert settings.db_url == f"sqlite:///{expected_state}/catalog.db"
    assert settings.mount_root == expected_state / "mounts"
    assert settings.default_repository == expected_state / "repository"
    assert settings.capacity == CapacitySettings()
    assert settings.jobs == JobSettings()
    assert settings.verify == VerifySettings(reverify_days=30, schedule="0 3 * * *")
    assert settings.source is None


def test_values_from_the_toml_file(env: dict[str, str], tmp_path: Path) -> None:
    path = write_config(
        env,
        f"""
[paths]
state_dir = "{tmp_path}/state"
mount_root = "/run/sendense/mounts"

[catalog]
url = "mysql+pymysql://sendense:pw@db1/sendense"

[capacity]
warning_percent = 70
critical_percent = 85.5
full_percent = 97
min_free = "10G"
poll_seconds = 15

[jobs]
max_concurrent = 4
lease_seconds = 60
heartbeat_seconds = 10

[console]
theme = "light"
""",
    )
    settings = load_settings(env)
    assert settings.source == path
    assert settings.state_dir == tmp_path / "state"
    assert settings.default_repository == tmp_path / "state" / "repository"
    assert settings.mount_root == Path("/run/sendense/mounts")
    assert settings.db_url == "mysql+pymysql://sendense:pw@db1/sendense"
    assert settings.capacity.warning_percent == 70
    assert settings.capacity.critical_percent == 85.5
    assert settings.capacity.full_percent == 97
    assert settings.capacity.min_free_bytes == 10 * 1024**3
    assert settings.capacity.poll_seconds == 15
    assert settings.jobs == JobSettings(max_concurrent=4, lease_seconds=60, heartbeat_seconds=10)
    assert settings.theme == "light"


def test_environment_overrides_the_file(env: dict[str, str], tmp_path: Path) -> None:
    write_config(
        env,
        f"""
[paths]
state_dir = "{tmp_path}/from-file"
[catalog]
url = "sqlite:////from/file.db"
[capacity]
warning_percent = 70
critical_percent = 80
""",
    )
    env |= {
        "SENDENSE_DB_URL": "mysql+pymysql://u:p@db2/sendense",
        "SENDENSE_STATE_DIR": str(tmp_path / "from-env"),
        "SENDENSE_MOUNT_ROOT": str(tmp_path / "mounts-env"),
        "SENDENSE_CAPACITY_WARNING_PERCENT": "60",
        "SENDENSE_CAPACITY_CRITICAL_PERCENT": "75",
        "SENDENSE_CAPACITY_FULL_PERCENT": "90",
        "SENDENSE_CAPACITY_MIN_FREE": "512M",
        "SENDENSE_MAX_JOBS": "3",
    }
    settings = load_settings(env)
    assert settings.db_url == "mysql+pymysql://u:p@db2/sendense"
    assert settings.state_dir == tmp_path / "from-env"
    assert settings.mount_root == tmp_path / "mounts-env"
    assert (
        settings.capacity.warning_percent,
        settings.capacity.critical_percent,
        settings.capacity.full_percent,
    ) == (60, 75, 90)
    assert settings.capacity.min_free_bytes == 512 * 1024**2
    assert settings.jobs.max_concurrent == 3


def test_an_empty_environment_variable_is_ignored(env: dict[str, str]) -> None:
    env["SENDENSE_DB_URL"] = ""
    assert load_settings(env).db_url.startswith("sqlite:///")


def test_sendense_config_names_the_file(env: dict[str, str], tmp_path: Path) -> None:
    write_config(env, '[console]\ntheme = "dark"\n')
    chosen = tmp_path / "chosen.toml"
    chosen.write_text('[console]\ntheme = "light"\n')
    env["SENDENSE_CONFIG"] = str(chosen)
    settings = load_settings(env)
    assert settings.source == chosen and settings.theme == "light"


@pytest.mark.parametrize(
    ("text", "size"),
    [("2048", 2048), ("512M", 512 * 1024**2), ("10G", 10 * 1024**3), ("1.5TiB", 1.5 * 1024**4)],
)
def test_sizes(text: str, size: float) -> None:
    assert parse_size(text) == int(size)


def test_redact_url_hides_the_password() -> None:
    assert redact_url("mysql+pymysql://u:s3cr3t@db/x") == "mysql+pymysql://u:***@db/x"


# -- bad values: one line naming the key and where it came from ------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[capacity\nwarning_percent = 70\n", "is not valid TOML"),
        ("[capacity]\nwarning_percnet = 70\n", "capacity.warning_percnet is not a known setting"),
        ("[capacty]\nwarning_percent = 70\n", "capacty.warning_percent is not a known setting"),
        ("verbose = true\n", "verbose is not a known setting"),
        ("capacity = 5\n", "capacity must be a table"),
        ("[capacity]\nwarning_percent = 120\n", "capacity.warning_percent is invalid"),
        ("[capacity]\nfull_percent = 0\n", "capacity.full_percent is invalid"),
        ("[capacity]\nwarning_percent = true\n", "capacity.warning_percent is invalid"),
        (
            "[capacity]\nwarning_percent = 90\ncritical_percent = 85\n",
            "capacity thresholds must rise",
        ),
        ('[paths]\nstate_dir = "var/lib/sendense"\n', "paths.state_dir is invalid"),
        ('[paths]\nmount_root = "mounts"\n', "must be an absolute path"),
        ('[capacity]\nmin_free = "10X"\n', "capacity.min_free is invalid: '10X' is not a size"),
        ("[capacity]\nmin_free = -5\n", "capacity.min_free is invalid"),
        ("[capacity]\npoll_seconds = 0\n", "capacity.poll_seconds is invalid"),
        ("[jobs]\nmax_concurrent = 0\n", "jobs.max_concurrent is invalid"),
        ("[jobs]\nmax_concurrent = 2.5\n", "jobs.max_concurrent is invalid"),
        ("[jobs]\nlease_seconds = 5\nheartbeat_seconds = 5\n", "must be shorter"),
        ('[catalog]\nurl = "catalog.db"\n', "catalog.url is invalid: expected a URL"),
        ('[console]\ntheme = "neon"\n', "console.theme is invalid"),
        ("[verify]\nreverify_days = 0\n", "verify.reverify_days is invalid"),
        ('[verify]\nschedule = "at three"\n', "verify.schedule is invalid: must be a cron"),
        ("[verify]\nreverify_dyas = 7\n", "verify.reverify_dyas is not a known setting"),
    ],
    ids=lambda v: v.splitlines()[-1][:30] if "\n" in v else None,
)
def test_bad_file_values_name_key_and_file(env: dict[str, str], text: str, expected: str) -> None:
    path = write_config(env, text)
    message = config_error(env)
    assert expected in message
    assert str(path) in message
    assert "\n" not in message.strip()


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("SENDENSE_CAPACITY_WARNING_PERCENT", "eighty", "capacity.warning_percent"),
        ("SENDENSE_CAPACITY_FULL_PERCENT", "150", "capacity.full_percent"),
        ("SENDENSE_CAPACITY_MIN_FREE", "10X", "'10X' is not a size"),
        ("SENDENSE_STATE_DIR", "relative/dir", "must be an absolute path"),
        ("SENDENSE_MAX_JOBS", "many", "jobs.max_concurrent"),
        ("SENDENSE_DB_URL", "nonsense", "expected a URL"),
        ("SENDENSE_VERIFY_REVERIFY_DAYS", "monthly", "verify.reverify_days"),
        ("SENDENSE_VERIFY_SCHEDULE", "0 3 * *", "must be a cron expression"),
    ],
)
def test_bad_environment_values_name_the_variable(
    env: dict[str, str], var: str, value: str, expected: str
) -> None:
    env[var] = value
    message = config_error(env)
    assert f"environment variable {var}" in message
    assert expected in message


def test_thresholds_from_the_environment_that_do_not_rise(env: dict[str, str]) -> None:
    env["SENDENSE_CAPACITY_CRITICAL_PERCENT"] = "50"  # below the default warning at 80
    message = config_error(env)
    assert "capacity thresholds must rise" in message
    assert "SENDENSE_CAPACITY_CRITICAL_PERCENT" in message


def test_a_bad_db_url_from_the_environment_is_shown_without_its_password(
    env: dict[str, str],
) -> None:
    env["SENDENSE_DB_URL"] = "mysql+pymysql//u:hunter2@db/x"  # missing the ':'
    message = config_error(env)
    assert "hunter2" not in message


def test_sendense_config_pointing_to_a_missing_file(env: dict[str, str], tmp_path: Path) -> None:
    env["SENDENSE_CONFIG"] = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert str(tmp_path / "nope.toml") in str(caught.value)
    assert "SENDENSE_CONFIG" in str(caught.value) and "does not exist" in str(caught.value)
    assert caught.value.hint


def test_a_config_path_that_is_a_directory(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    env["SENDENSE_CONFIG"] = str(tmp_path / "conf.d")
    assert "is a directory" in config_error(env)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file anyway")
def test_an_unreadable_config_file(env: dict[str, str]) -> None:
    path = write_config(env, '[console]\ntheme = "dark"\n')
    path.chmod(0)
    message = config_error(env)
    assert str(path) in message and "permission denied" in message


def test_a_config_file_that_is_not_text(env: dict[str, str]) -> None:
    path = write_config(env, "")
    path.write_bytes(b"\xff\xfe\x00binary")
    message = config_error(env)
    assert str(path) in message and "not UTF-8" in message


def test_verify_settings_from_the_file_and_the_environment(env: dict[str, str]) -> None:
    write_config(env, '[verify]\nreverify_days = 14\nschedule = "30 1 * * 6"\n')
    assert load_settings(env).verify == VerifySettings(reverify_days=14, schedule="30 1 * * 6")
    env["SENDENSE_VERIFY_REVERIFY_DAYS"] = "7"
    env["SENDENSE_VERIFY_SCHEDULE"] = "0 4 * * *"
    assert load_settings(env).verify == VerifySettings(reverify_days=7, schedule="0 4 * * *")


def test_export_limits_from_the_file_and_the_environment(env: dict[str, str]) -> None:
    assert load_settings(env).exports == ExportSettings(idle_minutes=30, max_hours=8)
    write_config(env, "[exports]\nidle_minutes = 5\nmax_hours = 0.5\n")
    settings = load_settings(env)
    assert (settings.exports.idle_seconds, settings.exports.max_age_seconds) == (300, 1800)
    env["SENDENSE_EXPORT_IDLE_MINUTES"] = "2.5"
    assert load_settings(env).exports.idle_minutes == 2.5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("idle_minutes = 0", "exports.idle_minutes is invalid: must be greater than 0"),
        ("idle_minutes = 10081", "exports.idle_minutes is invalid: must be at most 10080"),
        ("idle_minutes = nan", "exports.idle_minutes is invalid: must be at most 10080"),
        ("max_hours = -1", "exports.max_hours is invalid: must be greater than 0"),
        ("max_hours = 1e999", "exports.max_hours is invalid: must be at most 720"),
        ("max_hours = 'soon'", "exports.max_hours is invalid"),
        ("max_age = 3", "exports.max_age is not a known setting"),
    ],
)
def test_bad_export_limits_name_key_and_file(env: dict[str, str], text: str, expected: str) -> None:
    path = write_config(env, f"[exports]\n{text}\n")
    message = config_error(env)
    assert message.startswith(f"{path}: {expected}"), message
