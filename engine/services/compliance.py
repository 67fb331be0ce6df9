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
from typing import Any

from engine.catalog.chains import ChainStore
from engine.catalog.copies import COPY_DONE, CopyStore
from engine.catalog.models import Repository
from engine.catalog.policies import PolicyStore
from engine.catalog.repositories import RepositoryStore
from engine.clock import SYSTEM_CLOCK, Clock
from engine.fsutil import physical_device
from engine.units import plural

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


class ComplianceService:
    """``engine.compliance``: 3-2-1 per VM from chains, copies, locks and verifications."""

    def __init__(
        self,
        chain_store: ChainStore,
        copy_store: CopyStore,
        repositories: RepositoryStore,
        policies: PolicyStore,
        *,
        locks: Any,
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
        repos = {r.id: r for r in self.repositories.list()}
        held: set[int] = set()
        errors = 0
        backups = [b for b, _c in self.chain_store.list_backups(vm_name=vm)]
        backup_repo = {b.id: c.repository_id for b, c in self.chain_store.list_backups(vm_name=vm)}
        for b in backups:
            if b.state == "complete":
                held.add(backup_repo[b.id])
            if b.verify_state in BAD_VERIFY or b.state == "bad":
                errors += 1
        copies = self.copy_store.copies_of_backups([b.id for b in backups])
        copy_ids: list[int] = []
        for rows in copies.values():
            for c in rows:
                if c.state == COPY_DONE:
                    held.add(c.destination_repository_id)
                    copy_ids.append(c.id)
                if c.verify_state in BAD_VERIFY:
                    errors += 1
        held_repos = [repos[i] for i in sorted(held) if i in repos]
        names = [r.name for r in held_repos]
        devices = len({device_key(r) for r in held_repos})
        offsite = [r.name for r in held_repos if r.offsite]
        locked_repo_ids = {
            lock.repository_id
            for lock in self.locks.list(states=("active", "pending", "drift"))
            if lock.backup_id in backup_repo or lock.copy_id in copy_ids
        }
        immutable = [r.name for r in held_repos if r.immutable or r.id in locked_repo_ids]
        result = Compliance(
            vm=vm,
            copies=1 + len(held_repos),
            repositories=names,
            devices=devices,
            offsite=offsite,
            immutable=immutable,
            verification_errors=errors,
        )
        if not held_repos:
            result.shortfalls.append(
                f"{vm} has no backup: add a policy that backs it up to a repository"
            )
        elif len(held_repos) < 2:
            result.shortfalls.append(
                f"3 copies: {vm} has production plus 1 backup ({names[0]}); add a copy rule "
                f"from {names[0]} to a second repository"
            )
        if held_repos and devices < 2 and len(held_repos) >= 2:
            result.shortfalls.append(
                f"2 devices: {', '.join(names)} are on one disk; copy to a repository "
                "on another disk or server"
            )
        if held_repos and not offsite:
            # a lock is not a second site: it counts for 3-2-1-1-0, not for this "1"
            result.shortfalls.append(
                f"1 offsite: no backup of {vm} is offsite; copy to a repository on another "
                "site and mark it offsite"
            )
        if held_repos and not immutable:
            result.strict_shortfalls.append(
                f"1 immutable: no backup of {vm} is locked; send one to an immutable repository"
            )
        if errors:
            result.strict_shortfalls.append(
                f"0 errors: {plural(errors, 'verification error')} on {vm}'s backups or copies; "
                "verify again and replace the bad files"
            )
        return result

    def report_all(self) -> list[Compliance]:
        return [self.report(vm) for vm in self.vms()]

    def for_policy(self, policy: Any) -> str:
        """The weakest badge over a policy's VMs."""
        order = {"not 3-2-1": 0, "3-2-1": 1, "3-2-1-1-0": 2}
        badges = [self.report(str(s.get("vm"))).badge for s in policy.sources or []]
        return min(badges, key=lambda b: order[b]) if badges else "not 3-2-1"
