"""The mount manager: network repositories mounted under the configured mount root.

- Each NFS/CIFS repository mounts on ``mount_root/<name>``; mounting is
  idempotent (already mounted from the right source: nothing to do).
- At start, ``repair`` looks at every mount under the mount root: a mount no
  repository claims is *foreign* and is reported (not touched); a mount whose
  statvfs does not answer in time is *stale* and is detached lazily.
- Every ``mount``/``umount`` runs with a timeout (engine.tools.mounts), so a
  dead server cannot hang the engine.
- CIFS credentials go to ``state_dir/credentials/<name>.cred`` (0600) and the
  mount gets ``credentials=<file>``: the password is never on a command line,
  in a log or in a message. The file is removed when the repository is detached.
- The kernel may lack an NFS or CIFS client (containers, this CI):
  ``kernel_client_missing`` says so in a sentence before ``mount`` is tried.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from engine.catalog.models import Repository
from engine.platform import space
from engine.private import make_private_dir, make_private_dirs
from engine.services.probe import RepositoryCheckError, run_with_timeout
from engine.tools.base import ToolError
from engine.tools.mounts import MountInfo, find_mount, is_mountpoint, list_mounts, mount, umount

log = logging.getLogger(__name__)

MOUNT_TIMEOUT = 30.0
STALE_TIMEOUT = 5.0

#: filesystem type names in /proc/filesystems for each network kind
_KERNEL_FS = {"nfs": ("nfs", "nfs4"), "cifs": ("cifs", "smb3")}


@dataclass(frozen=True)
class MountFinding:
    target: str
    source: str
    fstype: str
    #: foreign | stale | ok
    status: str
    repository: str | None = None
    action: str = ""


def kernel_client_missing(kind: str, filesystems: str | None = None) -> str | None:
    """A sentence when this kernel cannot mount ``kind`` (nfs|cifs), else None."""
    if kind not in _KERNEL_FS:
        return None
    if filesystems is None:
        try:
            filesystems = Path("/proc/filesystems").read_text()
        except OSError:
            return None
    known = {line.split()[-1] for line in filesystems.splitlines() if line.strip()}
    if any(name in known for name in _KERNEL_FS[kind]):
        return None
    # the module may be loadable: trust modules.dep when it lists it
    release = os.uname().release
    try:
        deps = Path(f"/lib/modules/{release}/modules.dep").read_text()
    except OSError:
        deps = ""
    if any(f"/{name}.ko" in deps for name in _KERNEL_FS[kind]):
        return None
    what = "NFS" if kind == "nfs" else "CIFS/SMB"
    names = "/".join(_KERNEL_FS[kind])
    return (
        f"this machine's kernel has no {what} client "
        f"({names} is neither in /proc/filesystems nor a loadable module)"
    )


class MountManager:
    def __init__(self, mount_root: Path, credentials_dir: Path) -> None:
        self.mount_root = Path(mount_root)
        self.credentials_dir = Path(credentials_dir)

    # -- paths ----------------------------------------------------------------------

    def mount_point(self, name: str) -> Path:
        return self.mount_root / name

    def credentials_file(self, name: str) -> Path:
        return self.credentials_dir / f"{name}.cred"

    @staticmethod
    def source_of(repo: Repository) -> str:
        if repo.kind == "nfs":
            return f"{repo.server}:{repo.export}"
        return f"//{repo.server}/{repo.export}"

    #: set on every repository mount, after the operator's options so that none of
    #: them undoes it (mount applies the last of two opposite options): a file
    #: server, or whoever set the options, could otherwise serve a device node
    #: (the appliance's own disk as a "backup") or a set-user-ID program
    REPOSITORY_FLAGS = ("nosuid", "nodev", "noexec")

    def mount_options(self, repo: Repository) -> tuple[str, list[str]]:
        """(fstype, options) for ``mount``; never contains a password, always ends
        with ``REPOSITORY_FLAGS``."""
        opts = dict(repo.options or {})
        extra = [o for o in str(opts.get("mount_options") or "").split(",") if o.strip()]
        if repo.kind == "nfs":
            version = str(opts.get("version") or "4.1")
            options = [f"vers={version}", "soft", "timeo=100", "retrans=3"]
            if opts.get("port"):
                options.append(f"port={int(opts['port'])}")
            fstype = "nfs4" if version.startswith("4") else "nfs"
            return fstype, [*options, *extra, *self.REPOSITORY_FLAGS]
        options = [f"credentials={self.credentials_file(repo.name)}"]
        if opts.get("smb_version"):
            options.append(f"vers={opts['smb_version']}")
        if opts.get("port"):
            options.append(f"port={int(opts['port'])}")
        options += ["soft", "echo_interval=10"]
        return "cifs", [*options, *extra, *self.REPOSITORY_FLAGS]

    # -- credentials ------------------------------------------------------------------

    def write_credentials(self, repo: Repository, password: str) -> Path:
        make_private_dir(self.credentials_dir)
        path = self.credentials_file(repo.name)
        opts = repo.options or {}
        lines = [f"username={opts.get('username', '')}", f"password={password}"]
        if opts.get("domain"):
            lines.append(f"domain={opts['domain']}")
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        return path

    def remove_credentials(self, name: str) -> None:
        self.credentials_file(name).unlink(missing_ok=True)

    # -- mount / unmount -------------------------------------------------------------

    def current(self, repo: Repository) -> MountInfo | None:
        target = self.mount_point(repo.name)
        if not is_mountpoint(target):
            return None
        return find_mount(target)

    def mount(self, repo: Repository, password: str | None = None) -> Path:
        """Mount a network repository on its mount point (idempotent)."""
        target = self.mount_point(repo.name)
        source = self.source_of(repo)
        existing = self.current(repo)
        if existing is not None:
            if _same_source(existing.source, source):
                return target
            raise RepositoryCheckError(
                f"{target} already has {existing.source} mounted, not {source}",
                reason="foreign_mount",
                hint=f"unmount it (umount {target}) or rename the repository",
            )
        missing = kernel_client_missing(repo.kind)
        if missing:
            raise RepositoryCheckError(
                f"cannot mount {source}: {missing}",
                reason="no_kernel_client",
                hint="load the kernel module (modprobe nfs / cifs) or run on a host that has it",
            )
        make_private_dirs(target)  # under the mount root, which is root's only
        fstype, options = self.mount_options(repo)
        secrets: list[str] = []
        if repo.kind == "cifs":
            if password is None:
                raise RepositoryCheckError(
                    f"repository {repo.name} has no password stored", reason="credentials"
                )
            self.write_credentials(repo, password)
            secrets.append(password)
        try:
            mount(
                source,
                target,
                fstype=fstype,
                options=options,
                timeout=MOUNT_TIMEOUT,
                secrets=secrets,
            )
        except ToolError as exc:
            raise RepositoryCheckError(
                f"cannot mount {source} on {target}: {exc.message}",
                reason="mount_failed",
                hint=exc.hint,
            ) from None
        return target

    def unmount(self, repo: Repository, *, lazy: bool = False) -> None:
        target = self.mount_point(repo.name)
        try:
            if is_mountpoint(target):
                umount(target, lazy=lazy, timeout=MOUNT_TIMEOUT)
        except ToolError as exc:
            raise RepositoryCheckError(
                f"cannot unmount {target}: {exc.message}", reason="busy", hint=exc.hint
            ) from None
        finally:
            if repo.kind == "cifs" and not is_mountpoint(target):
                self.remove_credentials(repo.name)

    # -- start-up repair ----------------------------------------------------------------

    def repair(self, repositories: list[Repository]) -> list[MountFinding]:
        """Find stale and foreign mounts under the mount root; detach stale ones."""
        findings: list[MountFinding] = []
        root = os.path.realpath(self.mount_root)
        by_target = {
            os.path.realpath(self.mount_point(r.name)): r
            for r in repositories
            if r.kind in ("nfs", "cifs")
        }
        for m in list_mounts():
            if not m.target.startswith(root.rstrip("/") + "/"):
                continue
            repo = by_target.get(m.target)
            if repo is None or not _same_source(m.source, self.source_of(repo)):
                findings.append(
                    MountFinding(
                        m.target,
                        m.source,
                        m.fstype,
                        "foreign",
                        repo.name if repo else None,
                        "left alone: no repository claims this mount",
                    )
                )
                continue
            try:
                run_with_timeout(
                    f"mount {m.target}", functools.partial(space, m.target), STALE_TIMEOUT
                )
                findings.append(MountFinding(m.target, m.source, m.fstype, "ok", repo.name))
            except (RepositoryCheckError, OSError):
                action = "detached (lazy unmount); it is mounted again on start"
                try:
                    umount(m.target, lazy=True, timeout=MOUNT_TIMEOUT)
                except ToolError as exc:
                    action = f"could not detach: {exc.message}"
                findings.append(
                    MountFinding(m.target, m.source, m.fstype, "stale", repo.name, action)
                )
        return findings


def _same_source(a: str, b: str) -> bool:
    def norm(s: str) -> str:
        return s.replace("\\", "/").rstrip("/").lower()

    return norm(a) == norm(b)
