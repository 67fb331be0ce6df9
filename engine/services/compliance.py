"""3-2-1 (and 3-2-1-1-0) compliance per VM.

- 3: at least three copies of the data, counting production (so two backups);
- 2: the backups sit on at least two distinct repositories/devices (two
  repositories on one disk count as one device: one filesystem, two loop-mounted
  images whose files are on one disk, two partitions);
- 1: at least one of them offsite (a repository marked offsite); a lock does not
  stand in for another site;
- stricter 3-2-1-1-0: one copy under an immutability lock, and zero
  verification errors on the VM's backups and copies.

Each shortfall is a sentence saying what to add.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.catalog.chains import ChainStore
from engine.catalog.copies import COPY_DONE, CopyStore
from engine.catalog.models import Repository
from engine.catalog.policies import PolicyStore
from engine.catalog.repositories import RepositoryStore
from engine.clock import SYSTEM_CLOCK, Clock
from engine.fsutil import physical_device
from engine.units import plural

if TYPE_CHECKING:
    from engine.services.immutability import LockService

BAD_VERIFY = ("mismatch", "missing", "check_failed", "chain_broken")


@dataclass
class Compliance:
    vm: str
    #: copies counting production
    copies: int
    repositories: list[str]
    devices: int
    offsite: list[str]
    immutable: list[str]
    verification_errors: int
    shortfalls: list[str] = field(default_factory=list)
    strict_shortfalls: list[str] = field(default_factory=list)

    @property
    def meets_321(self) -> bool:
        return not self.shortfalls

    @property
    def meets_32110(self) -> bool:
        return not self.shortfalls and not self.strict_shortfalls

    @property
    def badge(self) -> str:
        if self.meets_32110:
            return "3-2-1-1-0"
        if self.meets_321:
            return "3-2-1"
        return "not 3-2-1"

    def as_dict(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "badge": self.badge,
            "copies": self.copies,
            "repositories": self.repositories,
            "devices": self.devices,
            "offsite": self.offsite,
            "immutable": self.immutable,
            "verification_errors": self.verification_errors,
            "meets_321": self.meets_321,
            "meets_32110": self.meets_32110,
            "shortfalls": self.shortfalls,
            "strict_shortfalls": self.strict_shortfalls,
        }


def device_key(repo: Repository) -> str:
    """Two repositories on one disk are one device: one filesystem, two loop-mounted
    images on one disk, or two partitions of it (engine.fsutil.physical_device)."""
    if repo.kind == "local":
        try:
            return f"dev:{physical_device(repo.path)}"
        except OSError:
            return f"path:{repo.path}"
    return f"{repo.kind}:{repo.server}:{repo.export}"


@dataclass
class _Holdings:
    """Where one VM's good backups and copies are (ComplianceService._holdings)."""

    #: repositories holding a complete backup or a done copy
    repository_ids: set[int] = field(default_factory=set)
    #: every backup of the VM -> the repository of its chain
    backup_repository: dict[int, int] = field(default_factory=dict)
    #: its done copies
    copy_ids: list[int] = field(default_factory=list)
    #: backups and copies that failed verification (or are bad)
    errors: int = 0


def _shortfalls_321(result: Compliance) -> list[str]:
    """What keeps ``result`` from 3-2-1 (3 copies, 2 devices, 1 offsite)."""
    vm, names = result.vm, result.repositories
    found: list[str] = []
    if not names:
        found.append(f"{vm} has no backup: add a policy that backs it up to a repository")
    elif len(names) < 2:
        found.append(
            f"3 copies: {vm} has production plus 1 backup ({names[0]}); add a copy rule "
            f"from {names[0]} to a second repository"
        )
    if names and result.devices < 2 and len(names) >= 2:
        found.append(
            f"2 devices: {', '.join(names)} are on one disk; copy to a repository "
            "on another disk or server"
        )
    if names and not result.offsite:
        # a lock is not a second site: it counts for 3-2-1-1-0, not for this "1"
        found.append(
            f"1 offsite: no backup of {vm} is offsite; copy to a repository on another "
            "site and mark it offsite"
        )
    return found


def _shortfalls_32110(result: Compliance) -> list[str]:
    """What keeps ``result`` from the strict 3-2-1-1-0 (1 immutable, 0 errors)."""
    vm = result.vm
    found: list[str] = []
    if result.repositories and not result.immutable:
        found.append(
            f"1 immutable: no backup of {vm} is locked; send one to an immutable repository"
        )
    if result.verification_errors:
        found.append(
            f"0 errors: {plural(result.verification_errors, 'verification error')} on "
            f"{vm}'s backups or copies; verify again and replace the bad files"
        )
    return found


class ComplianceService:
    """``engine.compliance``: 3-2-1 per VM from chains, copies, locks and verifications."""

    def __init__(
        self,
        chain_store: ChainStore,
        copy_store: CopyStore,
        repositories: RepositoryStore,
        policies: PolicyStore,
        *,
        locks: LockService,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.chain_store = chain_store
        self.copy_store = copy_store
        self.repositories = repositories
        self.policies = policies
        self.locks = locks
        self.clock = clock

    def vms(self) -> list[str]:
        names = {c.vm_name for c in self.chain_store.list_chains()}
        for policy in self.policies.list():
            names.update(str(s.get("vm")) for s in policy.sources or [])
        return sorted(names)

    def report(self, vm: str) -> Compliance:
        """3-2-1 and 3-2-1-1-0 for one VM: where its good backups and copies are held,
        on how many devices and sites, whether one is locked, and the bad ones."""
        repos = {r.id: r for r in self.repositories.list()}
        holdings = self._holdings(vm)
        held_repos = [repos[i] for i in sorted(holdings.repository_ids) if i in repos]
        locked_repo_ids = self._locked_repository_ids(holdings)
        result = Compliance(
            vm=vm,
            copies=1 + len(held_repos),
            repositories=[r.name for r in held_repos],
            devices=len({device_key(r) for r in held_repos}),
            offsite=[r.name for r in held_repos if r.offsite],
            immutable=[r.name for r in held_repos if r.immutable or r.id in locked_repo_ids],
            verification_errors=holdings.errors,
        )
        result.shortfalls.extend(_shortfalls_321(result))
        result.strict_shortfalls.extend(_shortfalls_32110(result))
        return result

    def _holdings(self, vm: str) -> _Holdings:
        """The repositories that hold a complete backup or a done copy of ``vm``, and
        how many of its backups and copies failed verification."""
        holdings = _Holdings()
        for b, chain in self.chain_store.list_backups(vm_name=vm):
            holdings.backup_repository[b.id] = chain.repository_id
            if b.state == "complete":
                holdings.repository_ids.add(chain.repository_id)
            if b.verify_state in BAD_VERIFY or b.state == "bad":
                holdings.errors += 1
        copies = self.copy_store.copies_of_backups(list(holdings.backup_repository))
        for rows in copies.values():
            for c in rows:
                if c.state == COPY_DONE:
                    holdings.repository_ids.add(c.destination_repository_id)
                    holdings.copy_ids.append(c.id)
                if c.verify_state in BAD_VERIFY:
                    holdings.errors += 1
        return holdings

    def _locked_repository_ids(self, holdings: _Holdings) -> set[int]:
        """Repositories where a lock in force protects one of these backups or copies."""
        return {
            lock.repository_id
            for lock in self.locks.list(states=("active", "pending", "drift"))
            if lock.backup_id in holdings.backup_repository or lock.copy_id in holdings.copy_ids
        }

    def reports_for_vms(self, vms: list[str]) -> dict[str, Compliance]:
        """``report`` of many VMs at once (the Policies screen's 500 VMs): the holdings
        of all of them in a few grouped queries, each repository's device looked up
        once, instead of a catalog pass per VM."""
        repos = {r.id: r for r in self.repositories.list()}
        devices: dict[int, str] = {}
        found: dict[str, Compliance] = {}
        for vm, held in self.copy_store.protection_by_vm(vms, BAD_VERIFY).items():
            held_repos = [repos[i] for i in sorted(held.holding_repository_ids) if i in repos]
            for r in held_repos:
                if r.id not in devices:
                    devices[r.id] = device_key(r)
            result = Compliance(
                vm=vm,
                copies=1 + len(held_repos),
                repositories=[r.name for r in held_repos],
                devices=len({devices[r.id] for r in held_repos}),
                offsite=[r.name for r in held_repos if r.offsite],
                immutable=[
                    r.name for r in held_repos if r.immutable or r.id in held.locked_repository_ids
                ],
                verification_errors=held.errors,
            )
            result.shortfalls.extend(_shortfalls_321(result))
            result.strict_shortfalls.extend(_shortfalls_32110(result))
            found[vm] = result
        return found

    def report_all(self) -> list[Compliance]:
        return [self.report(vm) for vm in self.vms()]

    def for_policy(self, policy: Any) -> str:
        """The weakest badge over a policy's VMs."""
        order = {"not 3-2-1": 0, "3-2-1": 1, "3-2-1-1-0": 2}
        badges = [self.report(str(s.get("vm"))).badge for s in policy.sources or []]
        return min(badges, key=lambda b: order[b]) if badges else "not 3-2-1"
