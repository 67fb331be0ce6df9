"""Repository points are opened the way the catalog says, never the way their headers say.

A QCOW2 header names a backing file and may name an external data file; qemu
follows both. A header rewritten after the point was recorded (by a bad disk,
a bad script or an attacker) could make a restore, an export or a merge read
any file on the appliance, a device or a network URI. So before any qemu
program touches a point, :class:`ImageGuard` builds the chain from the catalog
(files inside the chain directory, parents in catalog order), reads each
file's *own* header (``qemu-img info`` of that file alone: it opens neither
the backing file nor a data file) and refuses, with one sentence naming the
file and a critical ``image.refused`` event, a header that disagrees: another
format, a backing name that is not exactly the parent's plain file name (an
absolute path, a ``json:`` or protocol name, a file elsewhere), an external
data file, encryption, a symlink or a device in place of the file. The spec it
returns spells out every layer (qcow2 over the file protocol, with the parent
as backing and ``null`` under the full), so even a header changed after the
check cannot redirect the read.

:class:`PointReader` decides *where* a point is read from (item 4 of the
trust issue). A point is bad when the catalog marks it so or its last
verification was not ok. A point whose chain holds a bad point is read from a
verified copy of the same files in another repository when one exists (and
says so), and is refused otherwise, naming the copies that are good; with
``force`` it is read anyway and said to be unverified. A header refusal is
never overridden by ``force``.

A header is read once per job, not once per question: a restore checks its chain
when it is queued and again when it starts, a copy job checks a chain for every
file of it and again for the copy; the guard keeps what ``qemu-img info`` said of a
file for a few minutes, keyed by the file's identity (device, inode, size,
modification and change time). Any write, rename over, truncate, chmod or chattr
gives the file a new change time, which no writer can set back, so a file that
changed is read again; the spec spells out every layer, so even a header changed
below the filesystem after the check cannot redirect the read.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from engine.catalog.chains import ChainStore
from engine.catalog.copies import COPY_DONE, CopyStore
from engine.catalog.models import Backup, Chain, Copy, Repository
from engine.errors import Action, SendenseError
from engine.events import Event, EventBus
from engine.safepath import is_within
from engine.services.chain_views import is_bad, why_bad
from engine.tools import qemu_img
from engine.tools.base import ToolError
from engine.tools.blockspec import ImageSpec


class ImageRefused(SendenseError):
    """A repository file's header (or the file itself) disagrees with the catalog; it
    was not opened. ``force`` never overrides this."""

    def __init__(
        self, message: str, *, path: str, backup_id: int | None, problem: str, hint: str
    ) -> None:
        super().__init__(message, hint=hint)
        self.path = path
        self.backup_id = backup_id
        self.problem = problem


class PointUnreadable(SendenseError):
    """A file of a point's chain is missing or cannot be read."""

    def __init__(
        self,
        message: str,
        *,
        backup_id: int | None,
        hint: str | None = None,
        action: Action | None = None,
    ) -> None:
        super().__init__(message, hint=hint, action=action)
        self.backup_id = backup_id


class DamagedPoint(SendenseError):
    """The point (or a point its chain needs) is bad and no verified copy can stand in."""


REFUSED_HINT = (
    "the file changed after it was written; nothing was read through it. Restore from a "
    "good copy (`sendense verify report` lists them) or delete the point"
)


@dataclass(frozen=True)
class Layer:
    """One file of a chain as the catalog records it (path relative to the repository)."""

    backup_id: int | None
    path: str
    #: the file size the catalog recorded (None or 0: not known)
    size: int | None = None


def describe_backing(name: str) -> str:
    """What a foreign backing name points at, in words."""
    if name.startswith("json:"):
        return "a json: specification"
    head = name.split("/", 1)[0]
    if ":" in head:
        return f"the protocol name {name!r}"
    if os.path.isabs(name):
        return f"the absolute path {name}"
    if "/" in name or name in (".", ".."):
        return f"{name}, outside its chain directory"
    return name


@dataclass(frozen=True)
class Problem:
    """What in a file disagrees with the catalog, as a finding kind and a clause."""

    #: wrong_backing (the backing name) | corrupt (not a QCOW2 image) | foreign (the rest)
    kind: str
    text: str


def header_problem(head: qemu_img.ImageInfo, expected: str | None) -> Problem | None:
    """What in a point's own header disagrees with the catalog (None: nothing).

    ``expected`` is the parent's plain file name, None for the full.
    """
    if head.format != "qcow2":
        return Problem("corrupt", f"it is a {head.format or 'unknown'} image, not QCOW2")
    specific = (head.raw.get("format-specific") or {}).get("data") or {}
    if specific.get("data-file"):
        return Problem(
            "foreign", f"its header names the external data file {specific['data-file']!r}"
        )
    if specific.get("encrypt"):
        return Problem("foreign", "it is encrypted (Sendense never writes encrypted points)")
    actual = head.backing_filename or None
    if actual != expected:
        if actual is None:
            text = f"its header names no backing file, but its parent is {expected}"
        elif expected is None:
            said = describe_backing(actual)
            text = f"its header names {said} as its backing file, but it is the full"
        else:
            said = describe_backing(actual)
            text = f"its header names {said} as its backing file instead of its parent {expected}"
        return Problem("wrong_backing", text)
    if actual is not None and head.backing_format not in (None, "qcow2"):
        return Problem(
            "foreign", f"its header gives its backing file the format {head.backing_format}"
        )
    return None


@dataclass(frozen=True)
class Inspection:
    """One file of a chain, checked: where it is, its own header, what is wrong."""

    path: Path
    head: qemu_img.ImageInfo | None
    problem: Problem | None


#: how long a header read stays good for a file that has not changed (see above)
HEADER_SECONDS = 300.0
#: headers kept at most (a chain of 100 points in a few repositories at once)
HEADERS_KEPT = 1024
#: headers of one chain read at the same time
HEADER_READERS = 4

#: a file as it was when its header was read: device, inode, size, mtime, ctime
FileIdentity = tuple[int, int, int, int, int]


def file_identity(st: os.stat_result) -> FileIdentity:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class ImageGuard:
    """Builds the explicit open spec of a chain from the catalog, checking each header."""

    def __init__(self, bus: EventBus, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.bus = bus
        self._monotonic = monotonic
        self._heads: OrderedDict[tuple[Path, FileIdentity], tuple[float, qemu_img.ImageInfo]]
        self._heads = OrderedDict()
        self._heads_lock = threading.Lock()

    def _header(self, path: Path, st: os.stat_result) -> qemu_img.ImageInfo:
        """``qemu-img info`` of the file alone, or what it said of this very file (same
        identity) less than HEADER_SECONDS ago. Raises what info raises (never kept)."""
        key = (path, file_identity(st))
        now = self._monotonic()
        with self._heads_lock:
            kept = self._heads.get(key)
            if kept is not None and now - kept[0] < HEADER_SECONDS:
                return kept[1]
        head = qemu_img.info(ImageSpec.file(path, "qcow2"))
        with self._heads_lock:
            self._heads[key] = (now, head)
            self._heads.move_to_end(key)
            while len(self._heads) > HEADERS_KEPT:
                self._heads.popitem(last=False)
        return head

    def chain_spec(
        self,
        repository: Repository,
        directory: str,
        layers: Sequence[Layer],
        *,
        announce: bool = True,
    ) -> ImageSpec:
        """The spec of the top layer of ``layers`` (full first, catalog order), every
        layer spelled out. Raises ImageRefused (and publishes a critical event unless
        ``announce`` is False) or PointUnreadable."""
        if not layers:
            raise PointUnreadable("the chain has no points to open", backup_id=None)
        spec: ImageSpec | None = None
        inspected = self._inspect_all(repository, directory, layers)
        for layer, found in zip(layers, inspected, strict=True):
            inspection = found.result()  # in catalog order: the first problem is the one said
            if inspection.problem is not None:
                self._refuse(repository, layer, inspection.problem.text, announce=announce)
            spec = ImageSpec.file(inspection.path, "qcow2", backing=spec)
        assert spec is not None
        return spec

    def _inspect_all(
        self, repository: Repository, directory: str, layers: Sequence[Layer]
    ) -> list[Future[Inspection]]:
        """Every layer inspected, side by side: each header is read from its file alone
        (``qemu-img info`` opens nothing it names), and the parent name each is judged
        against is the catalog's, so none waits for the one below it. A chain of 30
        points is 30 ``qemu-img info`` runs; one after the other they were most of a
        restore's start."""
        # the plain file name the catalog gives each layer's parent (None: the full)
        parents = [None, *(PurePosixPath(layer.path).name for layer in layers[:-1])]
        if len(layers) == 1:
            done: Future[Inspection] = Future()
            try:
                done.set_result(self.inspect(repository, directory, layers[0], None))
            except Exception as exc:
                done.set_exception(exc)
            return [done]
        with ThreadPoolExecutor(
            max_workers=min(HEADER_READERS, len(layers)), thread_name_prefix="sendense-headers"
        ) as pool:
            return [
                pool.submit(self.inspect, repository, directory, layer, parent)
                for layer, parent in zip(layers, parents, strict=True)
            ]

    def inspect(
        self, repository: Repository, directory: str, layer: Layer, parent: str | None
    ) -> Inspection:
        """Check one file of a chain without opening anything its header names.
        ``parent`` is the plain file name the catalog gives its parent (None: the
        full). Raises PointUnreadable when the file is missing or unreadable."""
        root = Path(os.path.realpath(repository.path))
        chain_dir = root / directory
        if not is_within(root, chain_dir) or os.path.realpath(chain_dir) != str(chain_dir):
            what = "its chain directory is not a plain directory inside the repository"
            return Inspection(chain_dir, None, Problem("foreign", what))
        rel = PurePosixPath(layer.path)
        if rel.is_absolute() or ".." in rel.parts or rel.parent != PurePosixPath(directory):
            what = f"the catalog places it outside its chain directory {directory}"
            return Inspection(chain_dir, None, Problem("foreign", what))
        path = chain_dir / rel.name
        point = f" (point #{layer.backup_id})" if layer.backup_id else ""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise PointUnreadable(
                f"{layer.path}{point} is missing from repository {repository.name}",
                backup_id=layer.backup_id,
                action=Action(
                    "check_chain_unreadable",
                    "check that the repository is mounted; a chain check says what is wrong "
                    "and a copy may still have it",
                ),
            ) from None
        except OSError as exc:
            raise PointUnreadable(
                f"{layer.path}{point} in repository {repository.name} cannot be read: "
                f"{exc.strerror}",
                backup_id=layer.backup_id,
            ) from None
        if stat.S_ISLNK(st.st_mode):
            return Inspection(path, None, Problem("foreign", "it is a symbolic link"))
        if not stat.S_ISREG(st.st_mode):
            return Inspection(
                path, None, Problem("foreign", "it is not a regular file (a device or a pipe)")
            )
        try:
            head = self._header(path, st)
        except qemu_img.NotAnImage:
            return Inspection(path, None, Problem("corrupt", "it is not a QCOW2 image"))
        except ToolError as exc:
            raise PointUnreadable(
                f"{layer.path}{point} in repository {repository.name} cannot be read: "
                f"{exc.message}",
                backup_id=layer.backup_id,
                hint=exc.hint,
            ) from None
        problem = header_problem(head, parent)
        if problem is None and layer.size and st.st_size != layer.size:
            raise PointUnreadable(
                f"{layer.path}{point} in repository {repository.name} changed size since it "
                f"was written ({st.st_size} bytes, the catalog recorded {layer.size})",
                backup_id=layer.backup_id,
                action=Action(
                    "check_chain_copy", "check the chain; a verified copy may still have it"
                ),
            )
        return Inspection(path, head, problem)

    def _refuse(
        self, repository: Repository, layer: Layer, problem: str, *, announce: bool
    ) -> None:
        point = f" (point #{layer.backup_id})" if layer.backup_id else ""
        message = f"refused to open {layer.path}{point} in repository {repository.name}: {problem}"
        if announce:
            self.bus.publish(
                Event(
                    kind="image.refused",
                    message=message,
                    level="critical",
                    source="images",
                    repository_id=repository.id,
                    data={"path": layer.path, "backup_id": layer.backup_id, "problem": problem},
                )
            )
        raise ImageRefused(
            message,
            path=layer.path,
            backup_id=layer.backup_id,
            problem=problem,
            hint=REFUSED_HINT,
        )


@dataclass(frozen=True)
class ReadPlan:
    """Where a point will be read from, decided from the catalog alone."""

    backup: Backup
    chain: Chain
    #: the repository whose files are read
    repository: Repository
    #: the chain's files there, full first, up to the point
    layers: tuple[Layer, ...]
    #: read from a copy in another repository
    from_copy: bool = False
    #: a bad point read anyway (force)
    unverified: bool = False
    #: why the read is not the plain one (the damage, or the refusal of the own files)
    reason: str | None = None
    #: the sentence for the operator when the read is not the plain one
    note: str | None = None


@dataclass(frozen=True)
class PointRead:
    """A point ready to be opened: its spec and where it comes from."""

    plan: ReadPlan
    spec: ImageSpec

    @property
    def note(self) -> str | None:
        return self.plan.note

    @property
    def repository(self) -> str:
        return self.plan.repository.name

    def as_dict(self) -> dict[str, Any]:
        return {
            "read_from": self.plan.repository.name,
            "from_copy": self.plan.from_copy,
            "unverified": self.plan.unverified,
            "note": self.plan.note,
        }


class PointReader:
    """Chooses the good place to read a point from and opens it through the guard."""

    def __init__(self, chains: ChainStore, copies: CopyStore, guard: ImageGuard) -> None:
        self.chains = chains
        self.copies = copies
        self.guard = guard

    def _links(self, backup: Backup) -> list[Backup]:
        return [b for b in self.chains.backups(backup.chain_id) if b.position <= backup.position]

    def _copy_places(
        self, links: Sequence[Backup]
    ) -> tuple[list[tuple[Repository, list[Copy]]], dict[int, list[str]]]:
        """Repositories holding a verified copy of every link (name order), and for
        each link the repositories where its own copy verified ok."""
        repos = self.copies.repositories_by_id()
        per_link = self.copies.copies_of_backups([b.id for b in links])
        good: dict[int, dict[int, Copy]] = {}
        for b in links:
            for c in per_link.get(b.id, []):
                if c.state == COPY_DONE and c.verify_state == "ok":
                    good.setdefault(b.id, {})[c.destination_repository_id] = c
        named = {b.id: sorted(repos[r].name for r in good.get(b.id, {})) for b in links}
        everywhere = set.intersection(*(set(good.get(b.id, {})) for b in links))
        places = [
            (repos[r], [good[b.id][r] for b in links])
            for r in sorted(everywhere, key=lambda r: repos[r].name)
            if repos[r].enabled
        ]
        return places, named

    def _own(self, backup: Backup) -> ReadPlan:
        _backup, chain, repo = self.chains.locate(backup.id)
        links = self._links(backup)
        return ReadPlan(backup, chain, repo, tuple(Layer(b.id, b.path, b.file_size) for b in links))

    @staticmethod
    def _forced(own: ReadPlan, reason: str) -> ReadPlan:
        return replace(
            own,
            unverified=True,
            reason=reason,
            note=f"{reason}: read anyway because it was forced; the data is UNVERIFIED",
        )

    def _from_copy(
        self, plan: ReadPlan, place: Repository, rows: Sequence[Copy], reason: str
    ) -> ReadPlan:
        layers = tuple(
            Layer(b.id, c.path, c.size) for b, c in zip(self._links(plan.backup), rows, strict=True)
        )
        return ReadPlan(
            plan.backup,
            plan.chain,
            place,
            layers,
            from_copy=True,
            reason=reason,
            note=f"{reason}: read from the verified copy on repository {place.name}",
        )

    def plan(self, backup_id: int, *, force: bool = False) -> ReadPlan:
        """Where to read ``backup_id`` from (catalog only); DamagedPoint when it is bad
        with no verified copy and no ``force``."""
        backup, chain, repo = self.chains.locate(backup_id)
        if backup.state == "deleted":
            raise PointUnreadable(f"restore point {backup_id} was deleted", backup_id=backup_id)
        links = self._links(backup)
        if not links or links[-1].id != backup.id:
            raise PointUnreadable(
                f"restore point {backup_id} is not part of its chain in the catalog",
                backup_id=backup_id,
                action=Action("check_chain", "check the chain"),
            )
        own = ReadPlan(backup, chain, repo, tuple(Layer(b.id, b.path, b.file_size) for b in links))
        bad = [b for b in links if is_bad(b)]
        if not bad:
            return own
        damage = "; ".join(f"point #{b.id} is bad ({why_bad(b)})" for b in bad)
        places, named = self._copy_places(links)
        if places:
            return self._from_copy(own, *places[0], damage)
        if force:
            return self._forced(own, damage)
        listed = [f"#{b.id} on {', '.join(named[b.id])}" for b in links if named[b.id]]
        copies = (
            "verified copies exist only of " + "; ".join(listed) + ", not of the whole chain"
            if listed
            else "no verified copy of it exists"
        )
        raise DamagedPoint(
            f"restore point {backup_id} ({chain.vm_name}/{chain.disk_name}) is not served: "
            f"{damage}, and {copies}",
            action=Action(
                "read_unverified",
                "read it anyway, unverified (force); the verification report lists bad "
                "points and good copies",
            ),
        )

    def open(self, backup_id: int, *, force: bool = False) -> PointRead:
        """The spec to read ``backup_id`` with, from the place :meth:`plan` names. When
        the guard refuses that place's files (or one is missing), the other verified
        copies are tried, then, when forced, the point's own repository; the first
        error is raised when none can be opened."""
        plan = self.plan(backup_id, force=force)
        try:
            return PointRead(plan, self._spec(plan))
        except (ImageRefused, PointUnreadable) as exc:
            error = exc
        reason = plan.reason or error.message
        places, _named = self._copy_places(self._links(plan.backup))
        others = [
            self._from_copy(plan, place, rows, reason)
            for place, rows in places
            if place.id != plan.repository.id
        ]
        if force and plan.from_copy:
            others.append(self._forced(self._own(plan.backup), reason))
        for other in others:
            try:
                return PointRead(other, self._spec(other))
            except (ImageRefused, PointUnreadable):
                continue
        raise error

    def _spec(self, plan: ReadPlan) -> ImageSpec:
        return self.guard.chain_spec(plan.repository, plan.chain.directory, plan.layers)
