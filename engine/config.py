"""Settings: a TOML file plus environment overrides.

Where the file is looked for, first hit wins:

1. ``$SENDENSE_CONFIG`` (must exist when set),
2. ``$XDG_CONFIG_HOME/sendense/sendense.toml`` (``~/.config/...``),
3. ``/etc/sendense/sendense.toml``.

No file at all is fine: the defaults give an embedded SQLite catalog in the
state directory and a local repository under it. Environment variables
override the file (``SENDENSE_DB_URL``, ``SENDENSE_STATE_DIR``,
``SENDENSE_MOUNT_ROOT``, ``SENDENSE_CAPACITY_*``, ``SENDENSE_VERIFY_*``,
``SENDENSE_EXPORT_*``, ``SENDENSE_API_*``). A
wrong value stops with one line that names the key and where it came from.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from engine.bounds import REVERIFY_DAYS
from engine.errors import ConfigError

SYSTEM_CONFIG = Path("/etc/sendense/sendense.toml")

_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str | int) -> int:
    """'10G', '512M', '2048' -> bytes (binary units)."""
    if isinstance(text, int):
        if text < 0:
            raise ValueError("a size cannot be negative")
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ValueError(f"{text!r} is not a size (examples: 512M, 10G, 1T)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


#: the reserve when ``[capacity] min_free`` is not set: the smaller of this...
DEFAULT_MIN_FREE_BYTES = 5 * 1024**3
#: ...and this share of the filesystem (5 GiB would swallow a small disk whole)
DEFAULT_MIN_FREE_SHARE = 0.05


def default_min_free(filesystem_bytes: int) -> int:
    """The proportional reserve: the smaller of 5 GiB and 5 % of the filesystem."""
    return min(DEFAULT_MIN_FREE_BYTES, int(max(0, filesystem_bytes) * DEFAULT_MIN_FREE_SHARE))


@dataclass(frozen=True)
class CapacitySettings:
    warning_percent: float = 80.0
    critical_percent: float = 90.0
    full_percent: float = 95.0
    #: the free space kept on every repository; None: proportional (default_min_free)
    min_free_bytes: int | None = None
    poll_seconds: float = 60.0
    #: after a write seen by watchdog, sample again this soon (debounce)
    debounce_seconds: float = 0.3

    def reserve(self, filesystem_bytes: int, repository_min_free: int | None = None) -> int:
        """The free space a repository on a filesystem this big keeps: its own setting,
        else ``[capacity] min_free``, else the smaller of 5 GiB and 5 % of it."""
        if repository_min_free is not None:
            return int(repository_min_free)
        if self.min_free_bytes is not None:
            return int(self.min_free_bytes)
        return default_min_free(filesystem_bytes)


@dataclass(frozen=True)
class JobSettings:
    max_concurrent: int = 2
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 5.0


@dataclass(frozen=True)
class VerifySettings:
    #: a file last verified longer ago than this is re-read by the scheduled verification
    reverify_days: int = 30
    #: cron of the scheduled verification (default: every day at 03:00 UTC)
    schedule: str = "0 3 * * *"
    #: every this many days an incremental that could use change tracking (a bitmap,
    #: an extent list) compares every block's digest instead and checks that the
    #: tracking missed nothing (engine.services.changes)
    tracking_check_days: int = 7


@dataclass(frozen=True)
class ExportSettings:
    """Limits every NBD export gets unless its start says otherwise."""

    #: stopped after this long without a client connected
    idle_minutes: float = 30.0
    #: stopped this long after it started, clients or not
    max_hours: float = 8.0

    @property
    def idle_seconds(self) -> float:
        return self.idle_minutes * 60

    @property
    def max_age_seconds(self) -> float:
        return self.max_hours * 3600


#: sane bounds for export limits (a week idle, 30 days in all)
EXPORT_IDLE_MINUTES_MAX = 7 * 24 * 60.0
EXPORT_MAX_HOURS_MAX = 30 * 24.0


@dataclass(frozen=True)
class ApiSettings:
    """Where ``sendense daemon`` serves the HTTP API (section ``[api]``)."""

    #: the root-only unix socket; None: ``STATE_DIR/api.sock``
    socket: Path | None = None
    #: TCP addresses, "HOST:PORT" ("[::1]:8041" for IPv6); none by default. Any
    #: address that is not loopback is served over TLS only.
    listen: tuple[str, ...] = ()
    #: certificate and key (PEM) for TLS; None: a self-signed pair in the state
    #: directory when TLS is needed
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: directories whose files and block devices an API token may name as a backup's
    #: source (``POST /backups``, a policy's sources); none by default: a token names
    #: NBD sources only. The unix socket (root) is not bound by them.
    source_roots: tuple[Path, ...] = ()
    #: directories inside which an API token may put a local repository (``POST
    #: /repositories``, a changed path, an import); none by default: a token adds NFS
    #: and CIFS repositories only, which the daemon mounts under its own mount root.
    #: The unix socket (root) is not bound by them.
    repository_roots: tuple[Path, ...] = ()


def parse_listen(text: str) -> tuple[str, int]:
    """'127.0.0.1:8041' / '[::1]:8041' / 'backup.example:8041' -> (host, port)."""
    host, sep, port = str(text).strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:8041)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:8041")
    if not re.fullmatch(r"[A-Za-z0-9.:_-]{1,253}", host):
        raise ValueError(f"{text!r}: {host!r} is not a host name or address")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: the port must be 0 to 65535")
    return host, int(port)


def _listen(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError(f"expected a list of HOST:PORT, got {value!r}")
    addresses = tuple(str(item).strip() for item in items if str(item).strip())
    for address in addresses:
        parse_listen(address)
    return addresses


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    db_url: str
    mount_root: Path
    default_repository: Path
    capacity: CapacitySettings = field(default_factory=CapacitySettings)
    jobs: JobSettings = field(default_factory=JobSettings)
    verify: VerifySettings = field(default_factory=VerifySettings)
    exports: ExportSettings = field(default_factory=ExportSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    theme: str = "dark"
    #: the file the settings came from, None when only defaults and env were used
    source: Path | None = None

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def api_socket(self) -> Path:
        """The HTTP API's unix socket (``[api] socket``, else in the state directory)."""
        return self.api.socket or self.state_dir / "api.sock"

    @property
    def catalog_identity(self) -> str:
        """A short name of the catalog these settings open (its URL without a password,
        hashed): the daemon says it on every API answer, and a CLI asks the daemon for a
        listing only when the daemon's catalog is its own."""
        return catalog_identity(self.db_url)

    def with_state_dir(self, state_dir: Path) -> Settings:
        """Settings rooted in another state directory (tests, --state-dir)."""
        return default_settings(state_dir)


def catalog_identity(db_url: str) -> str:
    parts = urlsplit(db_url)
    if parts.password is not None:
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{parts.username or ''}@{host}")
    return hashlib.sha256(urlunsplit(parts).encode()).hexdigest()[:16]


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if _is_root():
        return Path("/var/lib/sendense")
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "sendense"


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def default_settings(state_dir: Path) -> Settings:
    return Settings(
        state_dir=state_dir,
        db_url=sqlite_url(state_dir / "catalog.db"),
        mount_root=state_dir / "mounts",
        default_repository=state_dir / "repository",
    )


def find_config_file(env: Mapping[str, str]) -> tuple[Path | None, bool]:
    """The file to read and whether the operator named it explicitly."""
    if env.get("SENDENSE_CONFIG"):
        return Path(env["SENDENSE_CONFIG"]), True
    xdg = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    for candidate in (Path(xdg) / "sendense" / "sendense.toml", SYSTEM_CONFIG):
        if candidate.is_file():
            return candidate, False
    return None, False


class _Reader:
    """Pulls typed values out of the parsed TOML, naming key and file on error."""

    def __init__(self, data: dict[str, Any], origin: str) -> None:
        self.data = data
        self.origin = origin
        self.used: set[str] = set()

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.origin}: {key} {problem}")

    def get(self, key: str, convert: Callable[[Any], Any], default: Any) -> Any:
        section, _, name = key.partition(".")
        table = self.data.get(section, {})
        if not isinstance(table, dict):
            raise self.fail(section, f"must be a table ([{section}]), got {table!r}")
        self.used.add(key)
        if name not in table:
            return default
        try:
            return convert(table[name])
        except (TypeError, ValueError) as exc:
            raise self.fail(key, f"is invalid: {exc}") from None

    def reject_unknown(self) -> None:
        for section, table in self.data.items():
            if not isinstance(table, dict):
                raise self.fail(section, "is not a known setting")
            for name in table:
                if f"{section}.{name}" not in self.used:
                    raise self.fail(f"{section}.{name}", "is not a known setting (typo?)")


def _percent(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a percentage, got {value!r}")
    number = float(value)
    if not 0 < number <= 100:
        raise ValueError(f"must be between 0 and 100, got {value!r}")
    return number


def _positive(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    number = float(value)
    if number <= 0:
        raise ValueError(f"must be greater than 0, got {value!r}")
    return number


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or int(value) != float(value) or int(value) < 1:
        raise ValueError(f"must be a whole number of at least 1, got {value!r}")
    return int(value)


def _reverify_days(value: Any) -> int:
    days = _positive_int(value)
    if days > REVERIFY_DAYS.high:
        raise ValueError(f"must be {REVERIFY_DAYS.range_text()}, got {value!r}")
    return days


def _bounded(upper: float) -> Callable[[Any], float]:
    """A number greater than 0 and at most ``upper``."""

    def convert(value: Any) -> float:
        number = _positive(value)
        if not math.isfinite(number) or number > upper:
            raise ValueError(f"must be at most {upper:g}, got {value!r}")
        return number

    return convert


def _cron(value: Any) -> str:
    from engine.cron import cron_error

    problem = cron_error(value) if isinstance(value, str) else "it is not text"
    if problem:
        raise ValueError(
            f"must be a cron expression that fires (five fields, e.g. '0 3 * * *'): {problem}"
        )
    return value.strip()


def _abs_path(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a path, got {value!r}")
    path = Path(value).expanduser()
    if not path.is_absolute():
        raise ValueError(f"must be an absolute path, got {value!r}")
    return path


def _abs_paths(value: Any) -> tuple[Path, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError(f"expected a list of absolute paths, got {value!r}")
    paths = tuple(_abs_path(str(item).strip()) for item in items if str(item).strip())
    for path in paths:
        if path == Path(path.anchor):
            raise ValueError("/ would let a token name any file of the appliance")
    return paths


def _db_url(value: Any) -> str:
    if not isinstance(value, str) or "://" not in value:
        raise ValueError(
            f"expected a URL such as sqlite:////var/lib/sendense/catalog.db or "
            f"mysql+pymysql://user:pass@host/sendense, got {_redact_url(str(value))!r}"
        )
    return value


def _theme(value: Any) -> str:
    if value not in ("dark", "light"):
        raise ValueError(f"must be 'dark' or 'light', got {value!r}")
    return str(value)


def _redact_url(url: str) -> str:
    redacted = re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)
    if redacted == url and "@" in url and not re.match(r"^[\w+.-]+://[^:/@]*@", url):
        # a malformed URL (typo in the scheme) may still carry user:password@; a
        # well-formed one with a user name and no password has nothing to hide
        redacted = re.sub(r"([^:/@\s]+:)[^@\s]*@", r"\1***@", url)
    return redacted


ENV_KEYS: dict[str, str] = {
    "SENDENSE_DB_URL": "catalog.url",
    "SENDENSE_STATE_DIR": "paths.state_dir",
    "SENDENSE_MOUNT_ROOT": "paths.mount_root",
    "SENDENSE_DEFAULT_REPOSITORY": "paths.default_repository",
    "SENDENSE_CAPACITY_WARNING_PERCENT": "capacity.warning_percent",
    "SENDENSE_CAPACITY_CRITICAL_PERCENT": "capacity.critical_percent",
    "SENDENSE_CAPACITY_FULL_PERCENT": "capacity.full_percent",
    "SENDENSE_CAPACITY_MIN_FREE": "capacity.min_free",
    "SENDENSE_CAPACITY_POLL_SECONDS": "capacity.poll_seconds",
    "SENDENSE_MAX_JOBS": "jobs.max_concurrent",
    "SENDENSE_VERIFY_REVERIFY_DAYS": "verify.reverify_days",
    "SENDENSE_VERIFY_SCHEDULE": "verify.schedule",
    "SENDENSE_VERIFY_TRACKING_CHECK_DAYS": "verify.tracking_check_days",
    "SENDENSE_EXPORT_IDLE_MINUTES": "exports.idle_minutes",
    "SENDENSE_EXPORT_MAX_HOURS": "exports.max_hours",
    "SENDENSE_THEME": "console.theme",
    "SENDENSE_API_SOCKET": "api.socket",
    "SENDENSE_API_LISTEN": "api.listen",
    "SENDENSE_API_TLS_CERT": "api.tls_cert",
    "SENDENSE_API_TLS_KEY": "api.tls_key",
    "SENDENSE_API_SOURCE_ROOTS": "api.source_roots",
    "SENDENSE_API_REPOSITORY_ROOTS": "api.repository_roots",
}


def _read_config_file(path: Path, *, explicit: bool) -> dict[str, Any]:
    """The config file's tables; nothing when a file not named by SENDENSE_CONFIG is
    missing; ConfigError with what to fix when it cannot be read."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if explicit:
            raise ConfigError(
                f"config file {path} (from SENDENSE_CONFIG) does not exist",
                hint="fix SENDENSE_CONFIG or create the file",
            ) from None
        return {}
    except PermissionError:
        raise ConfigError(
            f"config file {path} cannot be read: permission denied",
            hint=f"run as a user that may read it, or chmod o+r {path}",
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory, not a TOML file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read the config file and the environment; raise ConfigError on any bad value."""
    env = dict(os.environ if env is None else env)
    path, explicit = find_config_file(env)
    data = _read_config_file(path, explicit=explicit) if path is not None else {}

    # Environment overrides are merged in as if they were in the file, so the
    # same validation applies and the message names the variable.
    origin = str(path) if path else "environment"
    env_origin: dict[str, str] = {}
    for var, key in ENV_KEYS.items():
        if env.get(var, "") != "":
            section, _, name = key.partition(".")
            table = data.setdefault(section, {})
            if not isinstance(table, dict):
                raise ConfigError(
                    f"{origin}: {section} must be a table ([{section}]), got {table!r}"
                )
            table[name] = env[var]
            env_origin[key] = var

    class _EnvAwareReader(_Reader):
        def fail(self, key: str, problem: str) -> ConfigError:
            if key in env_origin:
                return ConfigError(f"environment variable {env_origin[key]} ({key}) {problem}")
            return ConfigError(f"{self.origin}: {key} {problem}")

    reader = _EnvAwareReader(data, origin)
    state_dir = reader.get("paths.state_dir", _abs_path, None) or default_state_dir(env)
    base = default_settings(state_dir)
    capacity = CapacitySettings(
        warning_percent=reader.get("capacity.warning_percent", _percent, 80.0),
        critical_percent=reader.get("capacity.critical_percent", _percent, 90.0),
        full_percent=reader.get("capacity.full_percent", _percent, 95.0),
        min_free_bytes=reader.get("capacity.min_free", parse_size, None),
        poll_seconds=reader.get("capacity.poll_seconds", _positive, 60.0),
    )
    if not capacity.warning_percent < capacity.critical_percent < capacity.full_percent:
        from_env = [
            var
            for key, var in env_origin.items()
            if key.startswith("capacity.") and "_percent" in key
        ]
        where = origin + (f" with {', '.join(from_env)} from the environment" if from_env else "")
        raise ConfigError(
            f"{where}: capacity thresholds must rise: warning_percent "
            f"({capacity.warning_percent:g}) < critical_percent ({capacity.critical_percent:g}) "
            f"< full_percent ({capacity.full_percent:g})"
        )
    jobs = JobSettings(
        max_concurrent=reader.get("jobs.max_concurrent", _positive_int, 2),
        lease_seconds=reader.get("jobs.lease_seconds", _positive, 30.0),
        heartbeat_seconds=reader.get("jobs.heartbeat_seconds", _positive, 5.0),
    )
    if jobs.heartbeat_seconds >= jobs.lease_seconds:
        # a lease that lapses between heartbeats lets another engine run the job too
        raise ConfigError(
            f"{origin}: jobs.heartbeat_seconds ({jobs.heartbeat_seconds:g}) must be shorter "
            f"than jobs.lease_seconds ({jobs.lease_seconds:g})",
            hint="a heartbeat of a third of the lease or less is safe",
        )
    verify = VerifySettings(
        reverify_days=reader.get("verify.reverify_days", _reverify_days, 30),
        schedule=reader.get("verify.schedule", _cron, "0 3 * * *"),
        tracking_check_days=reader.get("verify.tracking_check_days", _reverify_days, 7),
    )
    exports = ExportSettings(
        idle_minutes=reader.get(
            "exports.idle_minutes", _bounded(EXPORT_IDLE_MINUTES_MAX), ExportSettings.idle_minutes
        ),
        max_hours=reader.get(
            "exports.max_hours", _bounded(EXPORT_MAX_HOURS_MAX), ExportSettings.max_hours
        ),
    )
    api = ApiSettings(
        socket=reader.get("api.socket", _abs_path, None),
        listen=reader.get("api.listen", _listen, ()),
        tls_cert=reader.get("api.tls_cert", _abs_path, None),
        tls_key=reader.get("api.tls_key", _abs_path, None),
        source_roots=reader.get("api.source_roots", _abs_paths, ()),
        repository_roots=reader.get("api.repository_roots", _abs_paths, ()),
    )
    if (api.tls_cert is None) != (api.tls_key is None):
        raise ConfigError(
            f"{origin}: api.tls_cert and api.tls_key go together: give both or neither",
            hint="with neither, Sendense makes a self-signed pair when TLS is needed",
        )
    settings = replace(
        base,
        db_url=reader.get("catalog.url", _db_url, base.db_url),
        mount_root=reader.get("paths.mount_root", _abs_path, base.mount_root),
        default_repository=reader.get(
            "paths.default_repository", _abs_path, base.default_repository
        ),
        capacity=capacity,
        jobs=jobs,
        verify=verify,
        exports=exports,
        api=api,
        theme=reader.get("console.theme", _theme, "dark"),
        source=path if path and path.is_file() else None,
    )
    reader.reject_unknown()
    return settings


def redact_url(url: str) -> str:
    """A catalog URL fit for a log line or the screen (password hidden)."""
    return _redact_url(url)
