"""Repositories: local directories, NFS exports and CIFS shares behind one interface.

The interface, for every kind:

- ``test(spec)``: check a repository *before* it is saved: fields, server
  (userspace pre-mount checks), mount, layout, a write test (a small file
  written, fsynced, read back and removed), capacity found, capabilities.
- ``add(spec)``: saves only when the test passes, or disabled when asked.
- ``prepare(repo)``: mount if needed, create the layout, write test.
- ``capacity(repo)``, ``list_contents(repo)``, ``health(repo)``, ``detach(repo)``.
- ``enable``/``disable``/``edit``/``remove`` (refused while it holds backups
  or is a copy target, unless forced; a forced removal is audited). Removal,
  forced or not, and moving the location are refused while any lock on the
  repository's files (or on copies of its backups) holds: nothing drops a lock
  before its time.
- ``mount``/``unmount`` (unmount refused while a job uses the repository).

**Before writing into a repository, call ``ensure_writable_mount(repo)``**
(the one write gate: backups, merges and copies go through it): for a network
repository it checks that the path really is the mount, so a backup never lands
on the root filesystem under an empty mount point; it also refuses a disabled
repository and a directory this user may not write into.
``ready_for_new_data(repo)`` adds the capacity gate ("full" takes no new data).

Errors are RepositoryCheckError with a ``reason`` and a sentence that says
what to fix.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.catalog.jobs import JobStore
from engine.catalog.models import Repository
from engine.catalog.repositories import RepositoryStore
from engine.clock import SYSTEM_CLOCK, Clock, as_utc
from engine.config import Settings
from engine.errors import (
    Action,
    CatalogUnavailable,
    NotFoundError,
    NotPermitted,
    ValidationError,
)
from engine.events import Event, EventBus
from engine.names import has_unsafe_chars, name_error
from engine.oserrors import explain_os_error
from engine.platform import can_clone
from engine.private import PRIVATE_DIR, ModeRepair, make_private_dirs, repair_tree
from engine.reach import why_not
from engine.services.capacity import CapacityMonitor, Reading, usage
from engine.services.immutability import LockService, until_text
from engine.services.mounts import MountManager
from engine.services.probe import (
    NFS_PORT,
    SMB_PORT,
    RepositoryCheckError,
    check_nfs,
    check_smb,
    run_with_timeout,
)
from engine.services.secrets import SecretBox
from engine.tools.attrs import AttrError, ImmutableUnsupported, is_immutable, set_immutable
from engine.tools.base import ToolError
from engine.tools.mounts import find_mount, is_mountpoint
from engine.units import human_bytes, plural

log = logging.getLogger(__name__)

KINDS = ("local", "nfs", "cifs")
KIND_LABELS = {"local": "Local directory", "nfs": "NFS export", "cifs": "CIFS/SMB share"}
LAYOUT = ("chains", ".sendense")
WRITE_TEST_BYTES = 64 * 1024
NETWORK_PROBE_TIMEOUT = 10.0
#: walking a large network repository to fix modes may take longer than a probe
MODE_REPAIR_TIMEOUT = 120.0

_HOST_RE = re.compile(
    r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_SHARE_RE = re.compile(r'[^\\/:*?"<>|\[\];=+,\x00-\x1f\x7f]{1,80}')


@dataclass
class RepositorySpec:
    """What an operator fills in to add or edit a repository."""

    name: str
    kind: str = "local"
    #: local: the directory
    path: str = ""
    server: str = ""
    #: NFS export path, or CIFS share name
    export: str = ""
    port: int | None = None
    nfs_version: str = "4.1"
    mount_options: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    domain: str = ""
    smb_version: str = "3.0"
    #: local: create the directory when it does not exist
    create: bool = False
    warning_percent: float | None = None
    critical_percent: float | None = None
    full_percent: float | None = None
    min_free_bytes: int | None = None
    offsite: bool = False

    def fields_for_kind(self) -> list[str]:
        return FIELDS_BY_KIND[self.kind]


FIELDS_BY_KIND: dict[str, list[str]] = {
    "local": ["name", "path"],
    "nfs": ["name", "server", "export", "port", "nfs_version", "mount_options"],
    "cifs": ["name", "server", "export", "port", "username", "password", "domain", "smb_version"],
}


def validate_field(kind: str, name: str, value: Any) -> str | None:
    """A sentence saying what is wrong with one field, or None (used while typing).
    Each field of each kind has its own named check (``_FIELD_CHECKS``); a field
    that does not belong to the kind is not checked."""
    raw = "" if value is None else str(value)
    check = _FIELD_CHECKS.get((kind, name)) or _FIELD_CHECKS.get((_ANY_KIND, name))
    return check(raw, raw.strip()) if check is not None else None


def _check_name(raw: str, _text: str) -> str | None:
    # exactly as typed: "nas\n" must not be trimmed into a valid name
    return name_error(raw)


def _check_local_path(raw: str, text: str) -> str | None:
    if not text:
        return "a directory is required"
    if not raw.startswith("/"):
        return "the path must be absolute (start with /)"
    if has_unsafe_chars(raw):
        return "the path must not contain control characters (line breaks, tabs, escapes)"
    if "/../" in raw + "/":
        return "the path must not contain '..'"
    return None


def _check_server(_raw: str, text: str) -> str | None:
    if not text:
        return "a server (host name or IP address) is required"
    if not _is_host(text):
        return f"{text!r} is not a host name or IP address"
    return None


def _check_nfs_export(raw: str, text: str) -> str | None:
    if not text:
        return "the export path is required (e.g. /srv/backups)"
    if not text.startswith("/"):
        return "the export path must start with /"
    if has_unsafe_chars(raw):
        return "the export path must not contain control characters"
    return None


def _check_cifs_share(_raw: str, text: str) -> str | None:
    if not text:
        return "the share name is required (e.g. backups)"
    if not _SHARE_RE.fullmatch(text):
        return 'a share name has no slashes or \\ : * ? " < > | and is at most 80 characters'
    return None


def _check_port(_raw: str, text: str) -> str | None:
    if text and (not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535):
        return "the port must be a number from 1 to 65535"
    return None


def _check_nfs_version(_raw: str, text: str) -> str | None:
    if text not in ("3", "4", "4.0", "4.1", "4.2"):
        return "the NFS version must be 3, 4, 4.0, 4.1 or 4.2"
    return None


def _check_smb_version(_raw: str, text: str) -> str | None:
    if text and text not in ("2.0", "2.1", "3.0", "3.02", "3.1.1", "3", "default"):
        return "the SMB version must be 2.0, 2.1, 3.0, 3.02 or 3.1.1"
    return None


def _check_username(_raw: str, text: str) -> str | None:
    if not text:
        return "a user name is required"
    if any(c in text for c in "\n\r="):
        return "the user name must not contain '=' or line breaks"
    return None


def _check_domain(_raw: str, text: str) -> str | None:
    if any(c in text for c in "\n\r="):
        return "the domain must not contain '=' or line breaks"
    return None


def _check_password(raw: str, _text: str) -> str | None:
    if "\n" in raw or "\r" in raw:
        return "the password must not contain line breaks"
    return None


#: mount options that would undo the flags every repository is mounted with
#: (``MountManager.REPOSITORY_FLAGS``) or turn the mount into another kind of mount
#: (a bind, a loop device, a remount, a mount helper's own ``x-`` options)
_UNSAFE_MOUNT_OPTIONS = frozenset(
    {"suid", "dev", "exec", "defaults", "users", "owner", "group", "remount", "bind", "rbind"}
    | {"move", "loop", "offset", "sizelimit", "helper"}
)


def _check_mount_options(_raw: str, text: str) -> str | None:
    if any(c in text for c in "\"' \t\n\r\\"):
        return "mount options are NAME or NAME=VALUE separated by commas, without quotes or spaces"
    keys = [o.split("=")[0].lower() for o in text.split(",") if o] if text else []
    if {"password", "credentials", "user", "username"} & set(keys):
        return "credentials do not belong in mount options"
    unsafe = [k for k in keys if k in _UNSAFE_MOUNT_OPTIONS or k.startswith("x-")]
    if unsafe:
        return (
            f"mount option {unsafe[0]!r} is refused: a repository is always mounted "
            "nosuid,nodev,noexec (a share holds backups, never programs or devices)"
        )
    return None


#: a check that applies whatever the repository's kind
_ANY_KIND = "*"

#: (kind, field) -> its check, called with the value as typed and stripped
_FIELD_CHECKS: dict[tuple[str, str], Callable[[str, str], str | None]] = {
    (_ANY_KIND, "name"): _check_name,
    ("local", "path"): _check_local_path,
    ("nfs", "server"): _check_server,
    ("cifs", "server"): _check_server,
    ("nfs", "export"): _check_nfs_export,
    ("cifs", "export"): _check_cifs_share,
    (_ANY_KIND, "port"): _check_port,
    ("nfs", "nfs_version"): _check_nfs_version,
    ("cifs", "smb_version"): _check_smb_version,
    ("cifs", "username"): _check_username,
    ("cifs", "domain"): _check_domain,
    ("cifs", "password"): _check_password,
    (_ANY_KIND, "mount_options"): _check_mount_options,
}


def _is_host(text: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
        return True
    except OSError:
        pass
    return bool(_HOST_RE.fullmatch(text)) and not text.replace(".", "").isdigit()


def validate_spec(spec: RepositorySpec) -> dict[str, str]:
    if spec.kind not in KINDS:
        return {"kind": f"the type must be one of {', '.join(KINDS)}"}
    problems: dict[str, str] = {}
    for name in FIELDS_BY_KIND[spec.kind]:
        problem = validate_field(spec.kind, name, getattr(spec, name))
        if problem:
            problems[name] = problem
    return problems


def check_repository_reach(spec: RepositorySpec, settings: Settings) -> None:
    """Refuse a local repository an API token puts outside ``roots`` (``[api]
    repository_roots``): the daemon writes ``chains/`` and ``.sendense/`` there as
    root, an import reads every image under it, and its points can then be mounted
    and read back; a token would reach any directory of the appliance. NFS and
    CIFS repositories are mounted under the daemon's own mount root and are not
    bound by them. Sendense's own directories are refused to every caller by
    ``RepositoryService.path_error``, a root's token included. Called before
    anything is tested or written."""
    path = spec.path.strip()
    refusal = None if spec.kind != "local" else why_not(path, settings.api.repository_roots)
    if refusal is None:
        return
    raise NotPermitted(
        f"repository {spec.name}: an API token may not keep a repository at {path!r}: " + refusal,
        hint="add it on the appliance itself, or add an NFS or CIFS repository; its "
        "administrator may open a directory to tokens in [api] repository_roots",
    )


@dataclass
class TestStep:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class TestReport:
    ok: bool
    steps: list[TestStep] = field(default_factory=list)
    error: str | None = None
    hint: str | None = None
    reason: str | None = None
    total: int = 0
    used: int = 0
    free: int = 0
    capabilities: dict[str, Any] = field(default_factory=dict)
    #: files and folders closed to other users by this test (engine.private)
    modes_fixed: int = 0
    #: open to others but locked with chattr +i, so left as they are
    modes_locked: list[str] = field(default_factory=list)
    #: the free space kept back on it (``CapacitySettings.reserve``)
    reserve: int = 0
    #: things the operator should know that do not fail the test (a reserve that
    #: leaves no room for a backup)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ContentEntry:
    name: str
    is_dir: bool
    size: int


@dataclass(frozen=True)
class Health:
    state: str
    detail: str | None
    last_seen_at: datetime | None


# -- filesystem checks (no catalog) ---------------------------------------------


def _os_error(path: Path, exc: OSError, doing: str) -> RepositoryCheckError:
    failure = explain_os_error(path, exc, doing)
    return RepositoryCheckError(failure.message, reason=failure.reason, hint=failure.hint)


def check_directory(path: Path, *, create: bool = False) -> list[Path]:
    """The path exists and is a directory (created with its missing parents when
    ``create``). Returns the directories it created, deepest first, so a caller
    whose check then fails can take them away again (``remove_created``)."""
    if path.is_file() or (path.exists() and not path.is_dir()):
        raise RepositoryCheckError(
            f"{path} is a file, not a directory",
            reason="not_directory",
            hint="choose a directory, or a new name for one to be created",
        )
    if path.exists():
        return []
    if not create:
        raise RepositoryCheckError(
            f"{path} does not exist",
            reason="not_found",
            hint="create the directory first, or choose 'create it'",
        )
    missing = [path, *(p for p in path.parents if not p.exists())]
    try:
        make_private_dirs(path)
    except OSError as exc:
        remove_created(missing)
        raise _os_error(path, exc, "creating the directory") from None
    return missing


def remove_created(directories: list[Path]) -> None:
    """Remove directories a failed check created (deepest first; only empty ones)."""
    for directory in directories:
        with contextlib.suppress(OSError):
            directory.rmdir()


#: never a repository, nor anything below them: the system's own trees
SYSTEM_TREES = (
    "/etc",
    "/usr",
    "/boot",
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/var/run",
    "/var/lock",
    "/var/log",
    "/var/cache",
    "/var/spool",
)
#: never a repository themselves (a directory of its own below them is fine)
SYSTEM_TOPS = (
    "/",
    "/var",
    "/var/lib",
    "/var/tmp",
    "/home",
    "/root",
    "/tmp",
    "/srv",
    "/mnt",
    "/media",
    "/opt",
)
_SYSTEM_HINT = "give the repository a directory of its own, e.g. /srv/backups"


def _within(path: Path, tree: Path) -> bool:
    return path == tree or tree in path.parents


def repository_path_error(
    path: str, *, protected: Sequence[Path] = (), allowed: Sequence[Path] = ()
) -> str | None:
    """Why ``path`` may not be a local repository, or None.

    Refused: the system's directories (``SYSTEM_TREES`` and everything below them,
    ``SYSTEM_TOPS`` themselves) and Sendense's own directories (``protected``: the
    state directory and mount root, below or above them), except the ``allowed``
    ones (the configured default repository). Both the path as written and the path
    with every symbolic link followed are checked, so ``/tmp/link-to-etc`` and
    ``/proc/self/root/etc`` are refused like ``/etc``."""
    given = Path(os.path.normpath(path))
    problem = _path_problem(path, given, "", protected, allowed)
    if problem:
        return problem
    try:
        real = Path(os.path.realpath(path))
    except OSError as exc:  # a link into /proc/1/root and the like
        return f"{path} cannot be resolved ({exc.strerror}): {_SYSTEM_HINT}"
    if real == given:
        return None
    return _path_problem(path, real, f" (it leads to {real})", protected, allowed)


def _path_problem(
    path: str, candidate: Path, via: str, protected: Sequence[Path], allowed: Sequence[Path]
) -> str | None:
    if str(candidate) in SYSTEM_TOPS:
        return f"{path} is a system directory{via}: {_SYSTEM_HINT}"
    for tree in SYSTEM_TREES:
        if _within(candidate, Path(tree)):
            return f"{path} is inside the system directory {tree}{via}: {_SYSTEM_HINT}"
    if any(candidate == Path(os.path.realpath(a)) for a in allowed):
        return None
    for own in protected:
        own_real = Path(os.path.realpath(own))
        if _within(candidate, own_real) or candidate in own_real.parents:
            return (
                f"{path} overlaps Sendense's own directory {own}{via}: the catalog, "
                f"keys and mounts live there; {_SYSTEM_HINT}"
            )
    return None


def make_layout(root: Path) -> None:
    for sub in LAYOUT:
        try:
            # backups live under these: root reads them, no one else (engine.private)
            (root / sub).mkdir(mode=PRIVATE_DIR, exist_ok=True)
        except OSError as exc:
            raise _os_error(root, exc, f"creating {sub}/") from None


def repair_modes(root: Path) -> ModeRepair:
    """Close the repository's layout (chains, .sendense and everything under them) to
    group and others; a locked file is reported, never unlocked."""
    repair = ModeRepair()
    for sub in LAYOUT:
        repair.merge(repair_tree(root / sub))
    return repair


def check_existing_layout(root: Path) -> None:
    """A repository to import must already have its layout (never created here)."""
    chains = root / LAYOUT[0]
    if chains.is_symlink() or not chains.is_dir():
        raise RepositoryCheckError(
            f"{root} holds no Sendense repository: it has no {LAYOUT[0]}/ directory",
            reason="no_repository",
            action=Action(
                "import_or_add_repository",
                "give the directory that holds chains/ (the repository's root), or add a "
                "new repository",
            ),
        )


def write_test(root: Path) -> None:
    """Write a small file, fsync it, read it back, remove it. Raises RepositoryCheckError."""
    data = os.urandom(WRITE_TEST_BYTES)
    probe = root / ".sendense" / f"write-test-{os.getpid()}-{data[:4].hex()}"
    if not probe.parent.is_dir():
        probe = root / probe.name
    try:
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            if probe.read_bytes() != data:
                raise RepositoryCheckError(
                    f"{root}: the test file read back differs from what was written",
                    reason="io",
                    hint="the storage is corrupting data: check it before trusting backups to it",
                )
        except OSError as exc:
            raise _os_error(root, exc, "the write test") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)


def probe_capabilities(root: Path) -> dict[str, Any]:
    """Immutable flag and reflink, tried once on a canary file; and the filesystem type."""
    caps: dict[str, Any] = {"immutable": False, "reflink": False, "fs_type": "unknown"}
    with contextlib.suppress(OSError, ToolError):
        caps["fs_type"] = find_mount(root).fstype
    base = root / ".sendense" if (root / ".sendense").is_dir() else root
    canary = base / "canary"
    clone = base / "canary.clone"
    try:
        canary.write_bytes(b"sendense canary\n" * 256)
        try:
            set_immutable(canary, True)
            caps["immutable"] = is_immutable(canary)
        except ImmutableUnsupported:
            caps["immutable"] = False
        except AttrError as exc:
            caps["immutable"] = False
            caps["immutable_note"] = exc.message
        finally:
            with contextlib.suppress(AttrError):
                set_immutable(canary, False)
        caps["reflink"] = can_clone(canary, clone)
    except OSError as exc:
        caps["note"] = f"canary file: {exc.strerror}"
    finally:
        for f in (clone, canary):
            with contextlib.suppress(OSError):
                f.unlink(missing_ok=True)
    return caps


def _room_warning(name: str, free: int, reserve: int) -> str | None:
    """A sentence when the reserve leaves a repository no room (or less room than the
    reserve itself) for backups: a first full backup would be refused there."""
    if free <= reserve:
        return (
            f"repository {name} has {human_bytes(free)} free, all of it inside its "
            f"{human_bytes(reserve)} reserve (capacity.min_free): no backup can land there; "
            "lower min_free or use a bigger filesystem"
        )
    if free - reserve < reserve:
        return (
            f"repository {name} has room for only {human_bytes(free - reserve)} of backups "
            f"above its {human_bytes(reserve)} reserve (capacity.min_free): a first full "
            "backup bigger than that is refused; lower min_free or use a bigger filesystem"
        )
    return None


# -- the service ----------------------------------------------------------------------


class RepositoryService:
    def __init__(
        self,
        store: RepositoryStore,
        jobs: JobStore,
        bus: EventBus,
        mounts: MountManager,
        secrets: SecretBox,
        monitor: CapacityMonitor,
        *,
        locks: LockService,
        clock: Clock = SYSTEM_CLOCK,
        own_directories: Sequence[Path] = (),
        default_repository: Path | None = None,
    ) -> None:
        self.store = store
        #: the state directory and mount root: never (part of) a repository
        self.own_directories = tuple(own_directories)
        #: the one directory below them a repository may use: where the default one lives
        self.default_repository = default_repository
        self.jobs = jobs
        self.bus = bus
        self.mounts = mounts
        self.secrets = secrets
        self.monitor = monitor
        #: holding locks keep a repository from being removed or moved
        self.locks = locks
        self.clock = clock

    # -- reading ---------------------------------------------------------------------

    def get(self, ref: int | str) -> Repository:
        return self.store.get(ref)

    def list(self) -> list[Repository]:
        return self.store.list()

    def backup_count(self, ref: int | str | Repository) -> int:
        return self.store.backup_count(self._repo(ref).id)

    def backup_counts(self) -> dict[int, int]:
        """Restore points held in each repository, by id (none held: not listed)."""
        return self.store.backup_counts()

    def _repo(self, ref: int | str | Repository) -> Repository:
        return ref if isinstance(ref, Repository) else self.store.get(ref)

    def describe_location(self, repo: Repository) -> str:
        if repo.kind == "nfs":
            return f"{repo.server}:{repo.export}"
        if repo.kind == "cifs":
            return f"//{repo.server}/{repo.export}"
        return repo.path

    # -- validating and testing -----------------------------------------------------------

    def path_error(self, path: str) -> str | None:
        """Why ``path`` may not be a local repository (a system directory, Sendense's own
        state directory…), or None."""
        allowed = (self.default_repository,) if self.default_repository else ()
        return repository_path_error(path, protected=self.own_directories, allowed=allowed)

    def validate(
        self, spec: RepositorySpec, *, existing: Repository | None = None
    ) -> dict[str, str]:
        """Field -> what is wrong, for the whole spec, before anything is touched: the
        fields, the directory (never a system directory), the name (not taken).
        ``existing``: the repository being edited (its own name is not "taken", its
        stored password stands in for an empty one, its unchanged path is not checked)."""
        problems = validate_spec(spec)
        if existing is not None:
            problems.pop("password", None)
        if spec.kind == "local" and "path" not in problems:
            moved = existing is None or str(Path(spec.path)) != existing.path
            problem = self.path_error(spec.path) if moved else None
            if problem:
                problems["path"] = problem
        if existing is None and "name" not in problems:
            try:
                self.store.get(spec.name)
                problems["name"] = f"a repository named {spec.name!r} already exists"
            except NotFoundError:
                pass
        return problems

    def test(
        self,
        spec: RepositorySpec,
        *,
        existing: Repository | None = None,
        import_layout: bool = False,
    ) -> TestReport:
        """Check a repository that is not saved yet. Never raises for a failed check.
        ``import_layout``: it must already hold a repository (its ``chains/``
        directory), as for ``repo import``; nothing is created when it does not.

        Nothing is left behind: a spec that does not validate touches nothing; the
        write test and the capability canary remove their files; a directory made for
        ``create`` is removed again when the test fails. The layout (``chains/``,
        ``.sendense/``) is made only once the repository is saved (``prepare``)."""
        report = TestReport(ok=False)
        problems = self.validate(spec, existing=existing)
        if problems:
            report.steps.append(TestStep("fields", False, "; ".join(problems.values())))
            report.error = "; ".join(f"{k}: {v}" for k, v in problems.items())
            report.reason = "invalid"
            return report
        report.steps.append(TestStep("fields", True))
        temp_mount: Repository | None = None
        created: list[Path] = []
        try:
            if spec.kind == "local":
                root = Path(spec.path)
                created = check_directory(root, create=spec.create)
                report.steps.append(TestStep("directory", True, str(root)))
            else:
                self._pre_mount_check(spec)
                report.steps.append(TestStep("server", True, "the server answered"))
                temp_mount = self._row_from_spec(spec, name=f".test-{spec.name}")
                temp_mount.path = str(self.mounts.mount_point(temp_mount.name))
                root = self.mounts.mount(temp_mount, spec.password or None)
                report.steps.append(TestStep("mount", True, str(root)))
            if import_layout:
                check_existing_layout(root)
                report.steps.append(TestStep("layout", True, "chains/ found"))
            write_test(root)
            report.steps.append(TestStep("write", True, "wrote, fsynced, read back and removed"))
            report.total, report.used, report.free, _, _ = usage(str(root))
            report.capabilities = probe_capabilities(root)
            self._note_room(report, spec.name, spec.min_free_bytes)
            report.ok = True
        except RepositoryCheckError as exc:
            report.steps.append(TestStep(exc.reason, False, exc.message))
            report.error, report.hint, report.reason = exc.message, exc.hint, exc.reason
        finally:
            if temp_mount is not None:
                with contextlib.suppress(RepositoryCheckError):
                    self.mounts.unmount(temp_mount, lazy=True)
                self.mounts.remove_credentials(temp_mount.name)
            if not report.ok:
                remove_created(created)
        return report

    def _note_room(self, report: TestReport, name: str, min_free: int | None) -> None:
        """The reserve on the space the test found, and a warning when it leaves no
        room for a backup."""
        report.reserve = self.monitor.settings.reserve(report.total, min_free)
        room = _room_warning(name, report.free, report.reserve)
        if room:
            report.warnings.append(room)

    def _pre_mount_check(self, spec: RepositorySpec) -> None:
        if spec.kind == "nfs":
            check_nfs(
                spec.server, spec.export, port=spec.port or NFS_PORT, version=spec.nfs_version
            )
        else:
            check_smb(
                spec.server,
                spec.export,
                username=spec.username,
                password=spec.password,
                domain=spec.domain,
                port=spec.port or SMB_PORT,
            )

    def pre_mount_check(self, ref: int | str | Repository) -> None:
        """The userspace server check for a saved network repository."""
        repo = self._repo(ref)
        if repo.kind != "local":
            self._pre_mount_check(self.spec_of(repo, with_password=True))

    def spec_of(self, repo: Repository, *, with_password: bool = False) -> RepositorySpec:
        opts = repo.options or {}
        return RepositorySpec(
            name=repo.name,
            kind=repo.kind,
            path=repo.path if repo.kind == "local" else "",
            server=repo.server or "",
            export=repo.export or "",
            port=opts.get("port"),
            nfs_version=str(opts.get("version") or "4.1"),
            mount_options=str(opts.get("mount_options") or ""),
            username=str(opts.get("username") or ""),
            password=self._password(repo) if with_password else "",
            domain=str(opts.get("domain") or ""),
            smb_version=str(opts.get("smb_version") or "3.0"),
            warning_percent=repo.warning_percent,
            critical_percent=repo.critical_percent,
            full_percent=repo.full_percent,
            min_free_bytes=repo.min_free_bytes,
            offsite=repo.offsite,
        )

    def _password(self, repo: Repository) -> str:
        return self.secrets.decrypt(repo.secret) if repo.secret else ""

    def _row_from_spec(self, spec: RepositorySpec, name: str | None = None) -> Repository:
        name = name or spec.name
        options: dict[str, Any] = {}
        if spec.port:
            options["port"] = int(spec.port)
        if spec.kind == "nfs":
            options["version"] = spec.nfs_version
            if spec.mount_options:
                options["mount_options"] = spec.mount_options
        elif spec.kind == "cifs":
            options.update(username=spec.username, smb_version=spec.smb_version)
            if spec.domain:
                options["domain"] = spec.domain
        path = spec.path if spec.kind == "local" else str(self.mounts.mount_point(name))
        return Repository(
            name=name,
            kind=spec.kind,
            path=str(Path(path)),
            server=spec.server or None,
            export=spec.export or None,
            options=options,
        )

    # -- adding and changing ------------------------------------------------------------

    def add(
        self,
        spec: RepositorySpec,
        *,
        test: bool = True,
        enabled: bool = True,
        actor: str | None = None,
    ) -> Repository:
        """Save a repository. With ``test`` (the default) it is saved only if the test
        passes; ``enabled=False`` saves it disabled even when the test fails. A spec
        that does not validate (a system directory, a taken name…) is refused before
        anything is written."""
        problems = self.validate(spec)
        if problems:
            raise ValidationError(
                "the repository cannot be saved: "
                + "; ".join(f"{k}: {v}" for k, v in problems.items())
            )
        report: TestReport | None = None
        if test:
            report = self.test(spec)
            if not report.ok and enabled:
                raise RepositoryCheckError(
                    f"repository {spec.name} was not saved: {report.error}",
                    reason=report.reason or "io",
                    hint=(report.hint or "")
                    + (
                        "; or save it disabled and fix it later"
                        if report.hint
                        else "save it disabled to fix it later"
                    ),
                )
        row = self._row_from_spec(spec)
        now = self.clock.now()
        repo = self.store.add(
            name=row.name,
            kind=row.kind,
            path=row.path,
            now=now,
            server=row.server,
            export=row.export,
            options=row.options,
            secret=self.secrets.encrypt(spec.password) if spec.password else None,
            enabled=enabled,
            state="unknown" if enabled else "disabled",
            warning_percent=spec.warning_percent,
            critical_percent=spec.critical_percent,
            full_percent=spec.full_percent,
            min_free_bytes=spec.min_free_bytes,
            offsite=spec.offsite,
            capabilities=report.capabilities if report and report.ok else {},
        )
        self._event(
            repo,
            "repository.added",
            f"repository {repo.name} added ({KIND_LABELS[repo.kind]}, "
            f"{self.describe_location(repo)})",
            actor=actor,
        )
        if enabled:
            # a failure is recorded in the state and its detail
            with contextlib.suppress(RepositoryCheckError):
                self.prepare(repo)
            self.monitor.watch_all()
        return self.store.get(repo.id)

    def edit(
        self, ref: int | str | Repository, spec: RepositorySpec, *, actor: str | None = None
    ) -> Repository:
        """Change a repository's settings; a changed location is tested first."""
        repo = self._repo(ref)
        if spec.kind != repo.kind:
            raise ValidationError("the type of a repository cannot change; add a new one")
        if spec.name != repo.name:
            raise ValidationError("a repository cannot be renamed (its mount point uses the name)")
        problems = self.validate(spec, existing=repo)
        if problems:
            raise ValidationError(
                "nothing was changed: " + "; ".join(f"{k}: {v}" for k, v in problems.items())
            )
        if repo.kind == "cifs" and not spec.password:
            spec.password = self._password(repo)
        row = self._row_from_spec(spec)
        moved = (row.path, row.server, row.export, row.options) != (
            repo.path,
            repo.server,
            repo.export,
            repo.options,
        )
        if moved:
            self._refuse_if_locked(repo, "moved to another location")
        if moved and repo.enabled:
            # tested beside the current mount (the test mounts on a point of its own),
            # so a refused change leaves the repository as it was, still mounted
            report = self.test(spec, existing=repo)
            if not report.ok:
                raise RepositoryCheckError(
                    f"nothing was changed: {report.error}",
                    reason=report.reason or "io",
                    hint=report.hint,
                )
            if repo.kind != "local":
                self.unmount(repo)
        fields: dict[str, Any] = dict(
            path=row.path,
            server=row.server,
            export=row.export,
            options=row.options,
            warning_percent=spec.warning_percent,
            critical_percent=spec.critical_percent,
            full_percent=spec.full_percent,
            min_free_bytes=spec.min_free_bytes,
            offsite=spec.offsite,
        )
        if spec.password:
            fields["secret"] = self.secrets.encrypt(spec.password)
        repo = self.store.update(repo.id, self.clock.now(), **fields)
        self._event(
            repo, "repository.changed", f"repository {repo.name} settings changed", actor=actor
        )
        if moved and repo.enabled:
            with contextlib.suppress(RepositoryCheckError):
                self.prepare(repo)
            self.monitor.watch_all()
        return self.store.get(repo.id)

    def set_enabled(
        self, ref: int | str | Repository, enabled: bool, *, actor: str | None = None
    ) -> Repository:
        repo = self._repo(ref)
        if not enabled:
            self._refuse_if_busy(repo, "disable")
            if repo.kind != "local":
                self.unmount(repo)
            repo = self.store.update(
                repo.id, self.clock.now(), enabled=False, state="disabled", state_detail=None
            )
        else:
            repo = self.store.update(repo.id, self.clock.now(), enabled=True, state="unknown")
            with contextlib.suppress(RepositoryCheckError):
                self.prepare(repo)
        self.monitor.watch_all()
        self._event(
            repo,
            "repository.enabled" if enabled else "repository.disabled",
            f"repository {repo.name} {'enabled' if enabled else 'disabled'}",
            actor=actor,
        )
        return self.store.get(repo.id)

    def remove(
        self, ref: int | str | Repository, *, force: bool = False, actor: str | None = None
    ) -> None:
        """Forget a repository. Refused while it holds backups or is a copy target,
        unless ``force`` (then the catalog rows are forgotten, files stay on disk,
        and the audit log records who did it)."""
        repo = self._repo(ref)
        self._refuse_if_busy(repo, "remove")
        # before anything else, and whatever ``force`` says: removing the repository
        # would drop lock rows (and forget flagged files) before their time
        self._refuse_if_locked(repo, "removed")
        backups = self.store.backup_count(repo.id)
        rules = self.store.copy_rules_targeting(repo.id)
        policies = self.store.policies_targeting(repo.id)
        if policies:
            raise RepositoryCheckError(
                f"repository {repo.name} cannot be removed: policy "
                f"{', '.join(p.name for p in policies)} writes to it",
                reason="in_use",
                hint="point the policy at another repository first",
            )
        if (backups or rules) and not force:
            what = []
            if backups:
                what.append(f"holds {plural(backups, 'backup')}")
            if rules:
                what.append(f"is the target of copy rule {', '.join(r.name for r in rules)}")
            raise RepositoryCheckError(
                f"repository {repo.name} cannot be removed: it {' and '.join(what)}",
                reason="in_use",
                hint="move or delete them first, or force it (files stay on disk; "
                "the catalog forgets them)",
            )
        if repo.kind != "local":
            try:
                self.detach(repo)
            except RepositoryCheckError:
                if not force:
                    raise
        self.store.delete_with_contents(repo.id)
        self.monitor.watch_all()
        if force and (backups or rules):
            self.bus.publish(
                Event(
                    kind="repository.removed_forced",
                    message=f"repository {repo.name} removed by force: the catalog forgot "
                    f"{backups} backups and {len(rules)} copy rules (files left on disk at "
                    f"{self.describe_location(repo)})",
                    level="warning",
                    source="repositories",
                    actor=actor,
                    data={"repository": repo.name, "backups": backups, "copy_rules": len(rules)},
                )
            )
        else:
            self.bus.publish(
                Event(
                    kind="repository.removed",
                    message=f"repository {repo.name} removed",
                    source="repositories",
                    actor=actor,
                    data={"repository": repo.name},
                )
            )

    def _refuse_if_locked(self, repo: Repository, what: str) -> None:
        """Refuse while any lock on the repository (or on copies of its backups) holds."""
        holding = self.locks.holding_for_repository(repo)
        if not holding:
            return
        latest = holding[0]
        expired = as_utc(latest.expires_at) <= self.clock.now()  # type: ignore[operator]
        raise RepositoryCheckError(
            f"repository {repo.name} cannot be {what}: its files are held by "
            f"{plural(len(holding), 'lock')} "
            + (
                f"(expired at {until_text(latest.expires_at)}, not yet released)"
                if expired
                else f"until {until_text(latest.expires_at)}"
            ),
            reason="locked",
            action=(
                Action(
                    "release_expired_locks", "list its locks; release the expired ones", repo.name
                )
                if expired
                else Action(
                    "locks_hold",
                    "list its locks; locks are never dropped before they expire",
                    repo.name,
                )
            ),
        )

    def _refuse_if_busy(self, repo: Repository, action: str) -> None:
        active = self.jobs.active_for_repository(repo.id)
        if active:
            raise RepositoryCheckError(
                f"cannot {action} repository {repo.name}: job "
                f"{', '.join(f'#{j.id} {j.title}' for j in active[:3])} uses it",
                reason="busy",
                hint="wait for the job to finish or cancel it",
            )

    # -- prepare / mount / detach ---------------------------------------------------------------

    def prepare(self, ref: int | str | Repository) -> TestReport:
        """Mount if needed, create the layout, write-test; record the state."""
        repo = self._repo(ref)
        report = TestReport(ok=False)
        root = Path(repo.path)
        try:
            if repo.kind != "local":
                self.pre_mount_check(repo)
                report.steps.append(TestStep("server", True))
                self.mounts.mount(repo, self._password(repo) if repo.kind == "cifs" else None)
                report.steps.append(TestStep("mount", True, str(root)))

            def work() -> None:
                if repo.kind == "local":
                    check_directory(root)
                make_layout(root)
                write_test(root)

            # a local path can hang as well as a network one (a frozen FUSE directory,
            # a stale bind mount): every kind is touched in a worker with a timeout
            run_with_timeout(f"repository {repo.name}", work, NETWORK_PROBE_TIMEOUT)
            modes = run_with_timeout(
                f"repository {repo.name}", lambda: repair_modes(root), MODE_REPAIR_TIMEOUT
            )
            report.steps.append(TestStep("write", True))
            # a locked file keeps its mode (and is listed): only a failed chmod fails
            report.steps.append(TestStep("modes", not modes.failed, modes.summary()))
            report.modes_fixed, report.modes_locked = modes.fixed, modes.locked
            if modes.fixed or not modes.clean:
                self._event(
                    repo,
                    "repository.modes_repaired",
                    f"repository {repo.name}: {modes.summary()}",
                    level="warning",
                )
            report.total, report.used, report.free, _, _ = run_with_timeout(
                f"repository {repo.name}", lambda: usage(str(root)), NETWORK_PROBE_TIMEOUT
            )
            caps = repo.capabilities or {}
            if not caps:
                caps = run_with_timeout(
                    f"repository {repo.name}",
                    lambda: probe_capabilities(root),
                    NETWORK_PROBE_TIMEOUT,
                )
            report.capabilities = caps
            self._note_room(report, repo.name, repo.min_free_bytes)
            report.ok = True
            self.store.update(
                repo.id,
                self.clock.now(),
                state="ready" if repo.kind == "local" else "mounted",
                state_detail=None,
                last_seen_at=self.clock.now(),
                capabilities=caps,
            )
        except RepositoryCheckError as exc:
            report.steps.append(TestStep(exc.reason, False, exc.message))
            report.error, report.hint, report.reason = exc.message, exc.hint, exc.reason
            state = "unresponsive" if exc.reason == "unresponsive" else "error"
            self.store.update(repo.id, self.clock.now(), state=state, state_detail=exc.message)
            self._event(
                repo, "repository.error", f"repository {repo.name}: {exc.message}", level="error"
            )
            raise
        return report

    def test_repository(self, ref: int | str | Repository) -> TestReport:
        """Test a saved repository (prepare it, and probe its capabilities again)."""
        repo = self._repo(ref)
        try:
            report = self.prepare(repo)
        except RepositoryCheckError:
            repo = self.store.get(repo.id)
            return TestReport(ok=False, error=repo.state_detail, reason="error")
        try:
            report.capabilities = run_with_timeout(
                f"repository {repo.name}",
                lambda: probe_capabilities(Path(repo.path)),
                NETWORK_PROBE_TIMEOUT,
            )
        except RepositoryCheckError as exc:
            return TestReport(ok=False, error=exc.message, hint=exc.hint, reason=exc.reason)
        self.store.update(repo.id, self.clock.now(), capabilities=report.capabilities)
        return report

    def mount(self, ref: int | str | Repository) -> TestReport:
        return self.prepare(ref)

    def unmount(self, ref: int | str | Repository, *, actor: str | None = None) -> None:
        """Unmount a network repository; refused while a job uses it."""
        repo = self._repo(ref)
        if repo.kind == "local":
            raise RepositoryCheckError(
                f"repository {repo.name} is a local directory: there is nothing to unmount",
                reason="not_mounted",
            )
        self._refuse_if_busy(repo, "unmount")
        self.mounts.unmount(repo)
        self.store.update(repo.id, self.clock.now(), state="unmounted", state_detail=None)
        self._event(repo, "repository.unmounted", f"repository {repo.name} unmounted", actor=actor)

    def detach(self, ref: int | str | Repository) -> None:
        """Unmount and remove the credentials file."""
        repo = self._repo(ref)
        if repo.kind != "local":
            self.unmount(repo)
            self.mounts.remove_credentials(repo.name)

    # -- capacity, contents, health -----------------------------------------------------------

    def capacity(self, ref: int | str | Repository) -> Reading:
        return self.monitor.sample(self._repo(ref))

    def list_contents(self, ref: int | str | Repository) -> builtins.list[ContentEntry]:
        repo = self._repo(ref)
        root = Path(repo.path)

        def scan() -> list[ContentEntry]:
            out = []
            with os.scandir(root) as it:
                for entry in it:
                    if entry.name == ".sendense":
                        continue
                    is_dir = entry.is_dir(follow_symlinks=False)
                    size = entry.stat(follow_symlinks=False).st_size if not is_dir else 0
                    out.append(ContentEntry(entry.name, is_dir, size))
            return sorted(out, key=lambda e: e.name)

        if repo.kind != "local":
            self._ensure_mounted(repo)
        return run_with_timeout(f"repository {repo.name}", scan, NETWORK_PROBE_TIMEOUT)

    def health(self, ref: int | str | Repository) -> Health:
        """Probe now: statvfs and a small write (network ones in a worker with a timeout)."""
        repo = self._repo(ref)
        root = Path(repo.path)
        now = self.clock.now()

        def probe() -> None:
            if repo.kind == "local":
                check_directory(root)
            os.statvfs(root)
            write_test(root)

        try:
            if repo.kind != "local":
                self._ensure_mounted(repo)
            run_with_timeout(f"repository {repo.name}", probe, NETWORK_PROBE_TIMEOUT)
        except RepositoryCheckError as exc:
            seen = repo.last_seen_at
            state = "unresponsive" if exc.reason == "unresponsive" else "error"
            detail = exc.message
            if state == "unresponsive":
                detail += f"; last seen {seen:%Y-%m-%d %H:%M UTC}" if seen else "; never seen"
            self.store.update(repo.id, now, state=state, state_detail=detail)
            return Health(state, detail, seen)
        except OSError as exc:
            detail = _os_error(root, exc, "the probe").message
            self.store.update(repo.id, now, state="error", state_detail=detail)
            return Health("error", detail, repo.last_seen_at)
        state = "ready" if repo.kind == "local" else "mounted"
        self.store.update(repo.id, now, state=state, state_detail=None, last_seen_at=now)
        return Health(state, None, now)

    # -- the write guard --------------------------------------------------------------------------

    def ensure_writable_mount(self, ref: int | str | Repository) -> Path:
        """The one write gate: call before writing into a repository (backups, merges
        and copies all come through here). Returns its root directory.

        Refuses a disabled repository, a missing directory, a directory this user may
        not write into, and — for NFS/CIFS — a path that is not the mount itself (an
        empty mount point would let a backup land silently on the root filesystem)
        or a read-only mount."""
        repo = self._repo(ref)
        root = self._ensure_mounted(repo)
        if repo.kind != "local" and not root.is_dir():
            raise RepositoryCheckError(
                f"repository {repo.name}: {root} does not exist or is not a directory",
                reason="not_found",
                hint="check that the repository is mounted",
            )
        # access(2) answers for root too (a read-only or immutable directory)
        if not os.access(root, os.W_OK | os.X_OK):
            raise RepositoryCheckError(
                f"repository {repo.name}: {root} is not writable",
                reason="permission",
                hint="check the mount options and the directory owner",
            )
        return root

    def _refuse_disabled(self, repo: Repository) -> None:
        if not repo.enabled:
            raise RepositoryCheckError(
                f"repository {repo.name} is disabled",
                reason="disabled",
                action=Action(
                    "enable_repository", f"enable repository {repo.name} first", repo.name
                ),
            )

    def _ensure_mounted(self, repo: Repository) -> Path:
        """Enabled and, for NFS/CIFS, mounted read-write right on its path; a local one
        is an existing directory. Reads the mount table, not the share (a hung server
        would block here), so a probe may call it before its timed part."""
        self._refuse_disabled(repo)
        root = Path(repo.path)
        if repo.kind in ("nfs", "cifs"):
            if not is_mountpoint(root):
                raise RepositoryCheckError(
                    f"repository {repo.name}: {root} is not mounted, so nothing may be "
                    "written there (it would land on the local disk)",
                    reason="not_mounted",
                    hint="mount it (repo test / mount) and check the server",
                )
            mounted = find_mount(root)
            if mounted.read_only:
                raise RepositoryCheckError(
                    f"repository {repo.name} is mounted read-only", reason="read_only"
                )
        elif not root.is_dir():
            raise RepositoryCheckError(
                f"repository {repo.name}: {root} does not exist or is not a directory",
                reason="not_found",
                hint="create it or fix the repository's path",
            )
        return root

    def ready_for_new_data(self, ref: int | str | Repository) -> Path:
        """ensure_writable_mount plus the capacity gate: a "full" repository is refused,
        and so is one that does not answer (read first, with a timeout: the mount
        checks would hang on it)."""
        repo = self._repo(ref)
        self._refuse_disabled(repo)
        self.monitor.ensure_room(repo)
        return self.ensure_writable_mount(repo)

    # -- engine start ------------------------------------------------------------------------------

    def ensure_default(self, path: Path) -> Repository | None:
        """A local repository "local" at ``path`` when the catalog has none at all."""
        if self.store.list():
            return None
        make_private_dirs(path)
        repo = self.store.add(
            name="local", kind="local", path=str(path), now=self.clock.now(), state="unknown"
        )
        self._event(repo, "repository.added", f"default local repository created at {path}")
        return repo

    def start(self) -> None:
        """Repair mounts under the mount root, then prepare every enabled repository."""
        repos = self.store.list()
        try:
            for finding in self.mounts.repair(repos):
                if finding.status != "ok":
                    self.bus.publish(
                        Event(
                            kind=f"mount.{finding.status}",
                            message=f"{finding.status} mount {finding.source} on {finding.target}: "
                            f"{finding.action}",
                            level="warning",
                            source="mounts",
                        )
                    )
        except (OSError, ToolError):
            log.exception("mount repair failed")
        enabled = [r for r in repos if r.enabled]
        # read every local one first, side by side under one deadline: one that does
        # not answer is marked unresponsive at once and not prepared (each step would
        # wait out its own timeout); the monitor's polls see it come back
        local = [r for r in enabled if r.kind == "local"]
        try:
            readings = self.monitor.sample_many(local)
        except CatalogUnavailable:
            readings = []
        frozen = {r.repository_id for r in readings if r.unresponsive}
        for repo in enabled:
            if repo.id in frozen:
                continue
            try:
                self.prepare(repo)
            except (RepositoryCheckError, CatalogUnavailable):
                pass  # said by the check / logged once by the catalog
            except Exception:
                log.exception("preparing repository %s failed", repo.name)

    def _event(
        self,
        repo: Repository,
        kind: str,
        message: str,
        *,
        level: str = "info",
        actor: str | None = None,
    ) -> None:
        self.bus.emit(
            "repositories", kind, message, level=level, repository_id=repo.id, actor=actor
        )
