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

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.catalog.chains import ChainStore
from engine.catalog.copies import CopyStore
from engine.catalog.fleet import BAD_VERIFY, FleetStore, VmHoldings
from engine.catalog.models import Repository
from engine.catalog.policies import PolicyStore
from engine.catalog.repositories import RepositoryStore
from engine.clock import SYSTEM_CLOCK, Clock
from engine.fsutil import physical_device
from engine.units import plural

if TYPE_CHECKING:
    from engine.services.immutability import LockService

__all__ = ["BAD_VERIFY", "Compliance", "ComplianceService", "device_key"]


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
        fleet: FleetStore | None = None,
    ) -> None:
        self.chain_store = chain_store
        #: the aggregates the reports are made of (engine.catalog.fleet)
        self.fleet = fleet or FleetStore(chain_store.catalog)
        self.copy_store = copy_store
        self.repositories = repositories
        self.policies = policies
        self.locks = locks
        self.clock = clock

    def vms(self) -> list[str]:
        names = set(self.fleet.vm_names())
        for policy in self.policies.list():
            names.update(str(s.get("vm")) for s in policy.sources or [])
        return sorted(names)

    def report(self, vm: str) -> Compliance:
        """3-2-1 and 3-2-1-1-0 for one VM: where its good backups and copies are held,
        on how many devices and sites, whether one is locked, and the bad ones."""
        return self.report_many([vm])[0]

    def report_many(self, vms: Sequence[str]) -> list[Compliance]:
        """``report`` for each of ``vms`` (in that order), set-based: three aggregate
        queries and one device lookup per repository, whatever the fleet's size."""
        repos = {r.id: r for r in self.repositories.list()}
        devices: dict[int, str] = {}
        holdings = self.fleet.holdings(vms)
        out = []
        for vm in vms:
            held = holdings.get(vm) or VmHoldings()
            held_repos = [repos[i] for i in sorted(held.repository_ids) if i in repos]
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
            out.append(result)
        return out

    def reports_for_vms(self, vms: list[str]) -> dict[str, Compliance]:
        """``report_many`` keyed by VM (the Policies screen's 500 VMs)."""
        return {result.vm: result for result in self.report_many(vms)}

    def report_all(self) -> list[Compliance]:
        return self.report_many(self.vms())

    def for_policy(self, policy: Any) -> str:
        """The weakest badge over a policy's VMs."""
        order = {"not 3-2-1": 0, "3-2-1": 1, "3-2-1-1-0": 2}
        vms = [str(s.get("vm")) for s in policy.sources or []]
        badges = [c.badge for c in self.report_many(vms)]
        return min(badges, key=lambda b: order[b]) if badges else "not 3-2-1"
