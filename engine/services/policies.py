"""Backup policies: what to back up, where, when, how long to keep it.

A policy names its sources (VMs and their disks), a target repository, a cron
schedule (UTC), when to take a new full (every N backups, or on a weekday), a
retention (keep last N plus GFS), the copy rules attached to it, verification
after the backup, and a lock period. ``validate`` returns every problem at
once, per field, so the console can show them while the operator types;
``add`` saves nothing unless all of them are fixed.

Immutable targets: retention never merges on them (a merge rewrites files),
so chains must roll over to a new full within the lock period; ``validate``
enforces ``full_every`` against the lock period, and ``lock_space_estimate``
tells how much space a lock period will hold before it is confirmed.

A run is the job kind ``policy_run``: back up every source through the backup
service, lock what landed for the policy's lock period, verify if asked, then
apply retention.
"""

from __future__ import annotations

import builtins
import logging
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from engine.bounds import FULL_EVERY, POLICY_LOCK_DAYS
from engine.catalog.chains import ChainStore
from engine.catalog.copies import CopyStore
from engine.catalog.models import Job, Policy, Repository
from engine.catalog.policies import POLICY_RUN, PolicyStore
from engine.catalog.repositories import RepositoryStore
from engine.catalog.writers import DiskKey
from engine.clock import SYSTEM_CLOCK, Clock, as_utc
from engine.cron import cron_error, cron_iter
from engine.errors import (
    Action,
    JobError,
    JobUnprotected,
    LockNotConfirmed,
    NotFoundError,
    SendenseError,
    ValidationError,
)
from engine.events import EventBus
from engine.jobs import JobHandler
from engine.names import name_error
from engine.services.backup import DiskSource, check_source_text
from engine.services.retention import RetentionRules
from engine.states import JobKind
from engine.units import human_bytes, plural

if TYPE_CHECKING:
    from engine.jobs import JobRunner
    from engine.services.backup import BackupService
    from engine.services.immutability import LockService
    from engine.services.retention import RetentionService
    from engine.services.verify import VerifyService

log = logging.getLogger(__name__)

#: VM and disk names in a policy's sources (the same rule as backups')
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class PolicyRunFailed(SendenseError):
    """A policy run backed up some disks but not all, or none."""


def next_runs(schedule: str, after: datetime, count: int = 5) -> list[datetime]:
    """The next ``count`` times a schedule fires after ``after`` (UTC)."""
    it = cron_iter(schedule, as_utc(after))
    return [as_utc(it.get_next(datetime)) for _ in range(count)]  # type: ignore[misc]


def runs_per_day(schedule: str, reference: datetime) -> float:
    """Average runs a day over the four weeks after ``reference``."""
    it = cron_iter(schedule, as_utc(reference))
    end = as_utc(reference) + timedelta(days=28)  # type: ignore[operator]
    count = 0
    while count < 10_000 and as_utc(it.get_next(datetime)) <= end:  # type: ignore[operator]
        count += 1
    return count / 28


@dataclass
class PolicySpec:
    name: str
    schedule: str
    target: int | str
    #: [{"vm": "web01", "disks": [{"name": "sda", "source": "/dev/vg/web01"}]}]
    sources: list[dict[str, Any]] = field(default_factory=list)
    full_every: int = 7
    #: 0 = Monday … 6 = Sunday; a new full on that day (besides full_every)
    full_weekday: int | None = None
    retention: dict[str, Any] = field(default_factory=lambda: {"keep_last": 7})
    copy_rules: list[str] = field(default_factory=list)
    verify_after: bool = False
    immutable_days: int = 0
    compression: str | None = None
    enabled: bool = True

    @staticmethod
    def parse_source(text: str) -> tuple[str, dict[str, str]]:
        """``VM:DISK=SOURCE`` or ``VM:DISK:qcow2=SOURCE`` -> (vm, {"name": disk,
        "source": source[, "format": "qcow2"]}). A source is read as raw unless the
        format says qcow2 (never probed)."""
        vm, sep, rest = text.partition(":")
        name, sep2, source = rest.partition("=")
        if not sep or not sep2 or not vm or not name or not source or "/" in vm:
            raise ValidationError(
                f"source {text!r} is not VM:DISK=SOURCE (or VM:DISK:qcow2=SOURCE)",
                hint="e.g. web01:sda=/dev/vg/web01, one source per disk",
            )
        disk = DiskSource.parse(rest)
        entry = {"name": disk.name, "source": disk.source}
        if disk.fmt != "raw":
            entry["format"] = disk.fmt
        return vm, entry

    @classmethod
    def sources_from(cls, texts: list[str]) -> list[dict[str, Any]]:
        by_vm: dict[str, list[dict[str, str]]] = {}
        for text in texts:
            vm, disk = cls.parse_source(text)
            by_vm.setdefault(vm, []).append(disk)
        return [{"vm": vm, "disks": disks} for vm, disks in by_vm.items()]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SpaceEstimate:
    days: int
    bytes: int | None
    basis: str

    def sentence(self) -> str:
        if self.bytes is None:
            return f"a {self.days}-day lock: {self.basis}"
        return (
            f"a {self.days}-day lock holds about {human_bytes(self.bytes)} that cannot be "
            f"freed early ({self.basis})"
        )


@dataclass(frozen=True)
class KnownSource:
    """Where a disk is read from, as the catalog knows it, and who says so."""

    disk: DiskSource
    #: "policy nightly-web" or "point #12" (the last backup of the disk's chain)
    origin: str


class PolicyService:
    """Policies (``engine.policies``): validate, save, run, preview retention."""

    def __init__(
        self,
        store: PolicyStore,
        repositories: RepositoryStore,
        chain_store: ChainStore,
        copy_store: CopyStore,
        bus: EventBus,
        *,
        jobs: JobRunner,
        locks: LockService,
        retention: RetentionService,
        backups: BackupService | None = None,
        verifier: VerifyService | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.store = store
        self.repositories = repositories
        self.chain_store = chain_store
        self.copy_store = copy_store
        self.bus = bus
        self.jobs = jobs
        #: engine.services.immutability.LockService
        self.locks = locks
        #: engine.services.retention.RetentionService
        self.retention = retention
        #: engine.services.backup.BackupService
        self.backups = backups
        #: engine.services.verify.VerifyService
        self.verifier = verifier
        self.clock = clock

    def job_handlers(self) -> dict[JobKind, JobHandler]:
        return {POLICY_RUN: JobHandler(self.run_job, writes=self.disks_of_job)}

    def disks_of_job(self, job: Job) -> list[DiskKey]:
        """A policy run writes every disk of the policy (backups, then retention)."""
        return self.retention.disks_of(self.store.get(int((job.params or {})["policy_id"])))

    # -- validation -------------------------------------------------------------------

    def _target(self, ref: int | str) -> Repository | None:
        try:
            return self.repositories.get(ref)
        except NotFoundError:
            return None

    def validate(self, spec: PolicySpec, *, existing_id: int | None = None) -> dict[str, str]:
        """Field -> what is wrong with it. Empty: the policy can be saved."""
        problems: dict[str, str] = {}
        problems.update(self._check_name(spec, existing_id))
        cron = cron_error(spec.schedule, now=self.clock.now())
        if cron:
            problems["schedule"] = cron
        repo, target_problem = self._check_target(spec)
        problems.update(target_problem)
        problems.update(self._validate_sources(spec.sources))
        problems.update(_check_full_every(spec))
        if spec.full_weekday is not None and spec.full_weekday not in range(7):
            problems["full_weekday"] = "the full weekday is 0 (Monday) to 6 (Sunday)"
        problems.update(_check_retention(spec))
        problems.update(self._validate_copy_rules(spec, repo))
        problems.update(self._check_lock(spec, repo, problems))
        return problems

    def _check_name(self, spec: PolicySpec, existing_id: int | None) -> dict[str, str]:
        """A valid name no other policy has."""
        name_problem = name_error(spec.name)
        if name_problem:
            return {"name": name_problem}
        try:
            other = self.store.get(spec.name)
        except NotFoundError:
            return {}
        if other.id != existing_id:
            return {"name": f"a policy named {spec.name!r} already exists"}
        return {}

    def _check_target(self, spec: PolicySpec) -> tuple[Repository | None, dict[str, str]]:
        """The target repository (None when there is none) and what is wrong with it."""
        repo = self._target(spec.target) if spec.target not in (None, "") else None
        if repo is None:
            names = ", ".join(r.name for r in self.repositories.list()) or "none yet"
            return None, {
                "target": f"repository {spec.target!r} does not exist (repositories: {names})"
                if spec.target not in (None, "")
                else f"choose a target repository ({names})"
            }
        if not repo.enabled or repo.state == "disabled":
            return repo, {
                "target": f"repository {repo.name} is disabled: backups cannot go there "
                "(enable it first, or choose another)"
            }
        return repo, {}

    def _check_lock(
        self, spec: PolicySpec, repo: Repository | None, problems: dict[str, str]
    ) -> dict[str, str]:
        """The lock period: within bounds, supported by the target, and short chains
        enough that old points can go without merging locked files."""
        if spec.immutable_days < 0:
            return {"immutable_days": "the lock period cannot be negative"}
        if POLICY_LOCK_DAYS.problem(spec.immutable_days):
            return {"immutable_days": str(POLICY_LOCK_DAYS.problem(spec.immutable_days))}
        if repo is None:
            return {}
        found: dict[str, str] = {}
        lock_days = max(spec.immutable_days, repo.immutable_days if repo.immutable else 0)
        if spec.immutable_days > 0 and "target" not in problems:
            try:
                self.locks.check_supported(repo)
            except SendenseError as exc:
                found["immutable_days"] = exc.message
        if lock_days > 0 and "schedule" not in problems and "full_every" not in problems:
            limit = self.max_full_every(spec.schedule, lock_days)
            weekly_ok = spec.full_weekday is not None and lock_days >= 7
            if spec.full_every > limit and not weekly_ok:
                found["full_every"] = (
                    f"backups are locked for {plural(lock_days, 'day')}, so a chain "
                    f"must start a "
                    f"new full at least every {plural(limit, 'backup')} (asked: every "
                    f"{spec.full_every}); otherwise old points could only go by merging "
                    "locked files"
                )
        return found

    def max_full_every(self, schedule: str, lock_days: int) -> int:
        """The longest chain (in backups) an immutable target allows: one lock period."""
        per_day = runs_per_day(schedule, self.clock.now())
        return max(1, int(per_day * lock_days))

    def _validate_sources(self, sources: list[dict[str, Any]]) -> dict[str, str]:
        if not sources:
            return {"sources": "add at least one VM with a disk (VM:DISK=SOURCE)"}
        seen: set[tuple[str, str]] = set()
        for entry in sources:
            vm = str(entry.get("vm") or "")
            if not NAME_RE.fullmatch(vm):
                return {"sources": f"VM name {vm!r} is not valid (letters, digits, . _ -)"}
            disks = entry.get("disks") or []
            if not disks:
                return {"sources": f"VM {vm} has no disks"}
            for disk in disks:
                name = str(disk.get("name") or "")
                if not NAME_RE.fullmatch(name):
                    return {"sources": f"disk name {name!r} of {vm} is not valid"}
                if not str(disk.get("source") or "").strip():
                    return {"sources": f"disk {vm}/{name} has no source path or URI"}
                try:
                    check_source_text(DiskSource.from_policy(disk))
                except SendenseError as exc:
                    return {"sources": f"{vm}: {exc.message}"}
                if (vm, name) in seen:
                    return {"sources": f"disk {vm}/{name} is listed twice"}
                seen.add((vm, name))
        return {}

    def _validate_copy_rules(self, spec: PolicySpec, repo: Repository | None) -> dict[str, str]:
        for ref in spec.copy_rules:
            try:
                rule = self.copy_store.get_rule(ref)
            except NotFoundError:
                return {"copy_rules": f"copy rule {ref!r} does not exist"}
            if repo is not None and rule.source_repository_id != repo.id:
                return {
                    "copy_rules": f"copy rule {rule.name} copies from another repository, "
                    f"not from {repo.name}"
                }
        return {}

    # -- saving ------------------------------------------------------------------------

    def lock_cost(
        self, spec: PolicySpec, *, existing_id: int | None = None
    ) -> SpaceEstimate | None:
        """What saving ``spec`` would newly lock, or None when it starts no lock period
        and lengthens none (a lock cannot be shortened later: a longer one is a
        decision the operator confirms, having seen this estimate)."""
        before = self.store.get(existing_id).immutable_days if existing_id is not None else 0
        if spec.immutable_days <= before:
            return None
        vms = [str(s["vm"]) for s in spec.sources]
        return self.lock_space_estimate(spec.target, vms, spec.immutable_days, spec.schedule)

    def _lock_confirmed(
        self, spec: PolicySpec, existing_id: int | None, confirmed: bool, refused: str
    ) -> None:
        if confirmed:
            return
        estimate = self.lock_cost(spec, existing_id=existing_id)
        if estimate is not None:
            raise LockNotConfirmed(
                f"{refused}: a {spec.immutable_days}-day lock cannot be shortened later "
                f"({estimate.sentence()})",
                estimate=estimate,
                days=spec.immutable_days,
            )

    def add(
        self, spec: PolicySpec, *, actor: str | None = None, confirm_lock: bool = False
    ) -> Policy:
        """Save a new policy. One that locks its backups (``immutable_days``) is refused
        with LockNotConfirmed (carrying ``lock_cost``) unless ``confirm_lock``."""
        problems = self.validate(spec)
        if problems:
            raise ValidationError(
                f"policy {spec.name or '(unnamed)'} was not saved: "
                + "; ".join(f"{k}: {v}" for k, v in problems.items()),
                hint="fix these and save again; nothing was changed",
            )
        self._lock_confirmed(spec, None, confirm_lock, f"policy {spec.name} was not saved")
        repo = self.repositories.get(spec.target)
        rule_ids = [self.copy_store.get_rule(r).id for r in spec.copy_rules]
        now = self.clock.now()
        policy = self.store.add(
            name=spec.name,
            now=now,
            copy_rule_ids=rule_ids,
            enabled=spec.enabled,
            schedule=spec.schedule.strip(),
            target_repository_id=repo.id,
            sources=spec.sources,
            full_every=spec.full_every,
            full_weekday=spec.full_weekday,
            retention=RetentionRules.from_dict(spec.retention).as_dict(),
            verify_after=spec.verify_after,
            immutable_days=spec.immutable_days,
            compression=spec.compression,
            next_run_at=next_runs(spec.schedule, now, 1)[0],
        )
        self._event(
            "policy.added",
            f"policy {policy.name} added: {spec.schedule} to {repo.name}, "
            f"{RetentionRules.from_dict(policy.retention).sentence()}"
            + (f", locked {spec.immutable_days} days" if spec.immutable_days else ""),
            repository_id=repo.id,
            actor=actor,
        )
        return policy

    def spec_of(self, ref: int | str) -> PolicySpec:
        """A stored policy as a spec: the starting point of an edit."""
        policy = self.store.get(ref)
        return PolicySpec(
            name=policy.name,
            schedule=policy.schedule,
            target=self.repositories.get(policy.target_repository_id).name,
            sources=[dict(s) for s in policy.sources or []],
            full_every=policy.full_every,
            full_weekday=policy.full_weekday,
            retention=dict(policy.retention or {}),
            copy_rules=[r.name for r in self.store.copy_rules(policy.id)],
            verify_after=policy.verify_after,
            immutable_days=policy.immutable_days,
            compression=policy.compression,
            enabled=policy.enabled,
        )

    def update(
        self,
        name_or_id: int | str,
        spec: PolicySpec,
        *,
        actor: str | None = None,
        confirm_lock: bool = False,
    ) -> Policy:
        """Replace a policy's settings with ``spec`` (validated like ``add``; nothing is
        saved unless all of it is right; a longer lock period needs ``confirm_lock``).
        A new schedule, or enabling it, moves the next run to the schedule's next time
        from now (missed runs are not caught up)."""
        current = self.store.get(name_or_id)
        problems = self.validate(spec, existing_id=current.id)
        if spec.immutable_days < current.immutable_days and "immutable_days" not in problems:
            problems["immutable_days"] = (
                f"policy {current.name} locks its backups for {current.immutable_days} days; "
                f"lock periods can be extended, never shortened (asked: {spec.immutable_days})"
            )
        if problems:
            raise ValidationError(
                f"policy {current.name} was not changed: "
                + "; ".join(f"{k}: {v}" for k, v in problems.items()),
                hint="fix these and save again; nothing was changed",
            )
        self._lock_confirmed(
            spec, current.id, confirm_lock, f"policy {current.name} was not changed"
        )
        repo = self.repositories.get(spec.target)
        rule_ids = [self.copy_store.get_rule(r).id for r in spec.copy_rules]
        schedule = spec.schedule.strip()
        fields: dict[str, Any] = {}
        if schedule != current.schedule or (spec.enabled and not current.enabled):
            fields["next_run_at"] = next_runs(schedule, self.clock.now(), 1)[0]
        policy = self.store.replace(
            current.id,
            copy_rule_ids=rule_ids,
            name=spec.name,
            enabled=spec.enabled,
            schedule=schedule,
            target_repository_id=repo.id,
            sources=spec.sources,
            full_every=spec.full_every,
            full_weekday=spec.full_weekday,
            retention=RetentionRules.from_dict(spec.retention).as_dict(),
            verify_after=spec.verify_after,
            immutable_days=spec.immutable_days,
            compression=spec.compression,
            **fields,
        )
        renamed = f" (was {current.name})" if policy.name != current.name else ""
        self._event(
            "policy.updated",
            f"policy {policy.name}{renamed} changed: {schedule} to {repo.name}, "
            f"{RetentionRules.from_dict(policy.retention).sentence()}"
            + (f", locked {spec.immutable_days} days" if spec.immutable_days else ""),
            repository_id=repo.id,
            actor=actor,
        )
        return policy

    def set_enabled(self, ref: int | str, enabled: bool, *, actor: str | None = None) -> Policy:
        policy = self.store.get(ref)
        fields: dict[str, Any] = {"enabled": enabled}
        if enabled:
            fields["next_run_at"] = next_runs(policy.schedule, self.clock.now(), 1)[0]
        policy = self.store.update(policy.id, **fields)
        self._event(
            "policy.enabled" if enabled else "policy.disabled",
            f"policy {policy.name} {'enabled' if enabled else 'disabled'}",
            actor=actor,
        )
        return policy

    def remove(self, ref: int | str, *, actor: str | None = None) -> None:
        policy = self.store.get(ref)
        if self.store.active_runs(policy.id):
            raise JobError(f"policy {policy.name} is running; remove it when the run ends")
        self.store.delete(policy.id)
        self._event("policy.removed", f"policy {policy.name} removed", actor=actor)

    # -- reading -----------------------------------------------------------------------

    def get(self, ref: int | str) -> Policy:
        return self.store.get(ref)

    def list(self) -> list[Policy]:
        return self.store.list()

    def copy_rules(self, policy: Policy) -> builtins.list[Any]:
        return self.store.copy_rules(policy.id)

    def known_source(self, repository_id: int, vm: str, disk: str) -> KnownSource | None:
        """The source a backup of ``vm``/``disk`` into this repository reads, as the
        catalog knows it: a policy that backs the disk up into this repository (an
        enabled one first), else the source and format the chain's last point recorded.
        None when neither says (a point from before formats were recorded, a URI whose
        credentials were hidden): the operator is asked, never a guess."""
        policies = sorted(self.store.list(), key=lambda p: (not p.enabled, p.name))
        for policy in policies:
            if policy.target_repository_id != repository_id:
                continue
            for entry in policy.sources or []:
                if entry.get("vm") != vm:
                    continue
                for d in entry.get("disks") or []:
                    if d.get("name") == disk:
                        return KnownSource(DiskSource.from_policy(d), f"policy {policy.name}")
        chain = self.chain_store.current_chain(repository_id, vm, disk)
        points = self.chain_store.backups(chain.id) if chain is not None else []
        last = next((b for b in reversed(points) if b.state == "complete" and b.source), None)
        if last is None or last.source is None or "***@" in last.source:
            return None
        tracking = last.tracking or {}
        fmt = tracking.get("source_format") or ("qcow2" if tracking.get("bitmap") else None)
        if fmt not in ("raw", "qcow2"):
            return None
        return KnownSource(DiskSource(disk, last.source, fmt), f"point #{last.id}")

    def lock_space_estimate(
        self, target: int | str, vms: builtins.list[str], days: int, schedule: str
    ) -> SpaceEstimate:
        """The space ``days`` of locked backups will hold, from recent backup sizes."""
        repo = self._target(target)
        if repo is None or days <= 0:
            return SpaceEstimate(days, None, "no lock")
        per_disk: dict[tuple[str, str], list[int]] = {}
        for vm in vms:
            for backup, chain in self.chain_store.list_backups(repository_id=repo.id, vm_name=vm):
                if backup.state == "complete":
                    per_disk.setdefault((chain.vm_name, chain.disk_name), []).append(
                        backup.file_size
                    )
        if not per_disk:
            return SpaceEstimate(days, None, "no backups yet to estimate from")
        per_run = sum(sum(s[-14:]) / len(s[-14:]) for s in per_disk.values())
        try:
            per_day = runs_per_day(schedule, self.clock.now())
        except (ValueError, KeyError):
            per_day = 1.0
        total = int(per_run * max(per_day, 1 / 7) * days)
        count = sum(min(len(s), 14) for s in per_disk.values())
        return SpaceEstimate(
            days,
            total,
            f"from the last {plural(count, 'backup')} of {plural(len(per_disk), 'disk')}, "
            f"{human_bytes(per_run)} a run, {per_day:.1f} run(s) a day",
        )

    def preview(self, ref: int | str) -> Any:
        """Retention dry run (what would be removed or merged, and why)."""
        return self.retention.plan(self.store.get(ref))

    def apply_retention(
        self, ref: int | str, *, force: bool = False, actor: str | None = None, wait: bool = True
    ) -> Any:
        return self.retention.apply(self.store.get(ref), force=force, actor=actor, wait=wait)

    # -- running -----------------------------------------------------------------------

    def run_now(self, ref: int | str, *, actor: str | None = None, trigger: str = "manual") -> Job:
        """Queue a run; refused while a run of the same policy is queued or running."""
        policy = self.store.get(ref)
        active = self.store.active_runs(policy.id)
        if active:
            raise JobError(
                f"policy {policy.name} is already running (job {active[0].id})",
                hint="one run of a policy at a time; wait for it or cancel it",
            )
        repo = self.repositories.get(policy.target_repository_id)
        return self.jobs.submit(
            POLICY_RUN,
            f"policy {policy.name}: back up {', '.join(s['vm'] for s in policy.sources)} "
            f"to {repo.name}",
            {"policy_id": policy.id, "trigger": trigger},
            repository_id=repo.id,
            actor=actor,
        )

    def _mode(self, policy: Policy, vm: str, now: datetime) -> str:
        if policy.full_weekday is None or now.weekday() != policy.full_weekday:
            return "auto"
        for backup, _chain in self.chain_store.list_backups(
            repository_id=policy.target_repository_id, vm_name=vm
        ):
            if backup.kind == "full" and as_utc(backup.point_time).date() == now.date():  # type: ignore[union-attr]
                return "auto"
        return "full"

    def run_job(self, ctx: Any) -> dict[str, Any]:
        policy = self.store.get(int(ctx.params["policy_id"]))
        repo = self.repositories.get(policy.target_repository_id)
        now = self.clock.now()
        result: dict[str, Any] = {"policy": policy.name, "runs": [], "locked": 0}
        failures: list[str] = []
        unprotected: list[str] = []
        if self.backups is None:
            raise PolicyRunFailed("no backup service is wired to the policies")
        for source in policy.sources:
            vm = str(source["vm"])
            disks = [DiskSource.from_policy(d) for d in source["disks"]]
            try:
                if source.get("named_by_token"):
                    # an API token named them: checked again, as the job reads as root
                    self.backups.check_token_reach(disks)
                run = self.backups.run(
                    repo.id,
                    vm,
                    disks,
                    mode=self._mode(policy, vm, now),
                    compression=policy.compression,
                    full_every=policy.full_every,
                    ctx=ctx,
                    actor=f"policy:{policy.name}",
                    # the backup job locks each point as a step (the longer of the
                    # repository's period and the policy's)
                    lock_days=policy.immutable_days or None,
                )
            except SendenseError as exc:
                failures.append(f"{vm}: {exc.message}")
                continue
            result["runs"].append(run.as_dict())
            failures += [f"{vm}/{d.disk}: {d.error}" for d in run.failed]
            unprotected += [
                f"{vm}/{d.disk} #{d.backup_id}: {d.unprotected}" for d in run.unprotected
            ]
            result["locked"] += sum(
                1 for d in run.disks if d.ok and d.locked_until and not d.unprotected
            )
            if policy.verify_after and self.verifier is not None:
                ids = [d.backup_id for d in run.disks if d.ok and d.backup_id]
                targets = [t for i in ids for t in self.verifier.targets("backup", i)]
                outcomes = self.verifier.verify_targets(targets, job_id=ctx.job_id)
                bad = [r for r in outcomes if getattr(r, "outcome", "ok") != "ok"]
                if bad:
                    failures.append(f"{vm}: verification after the backup failed")
        if not failures and not unprotected:
            try:
                applied = self.retention.apply(policy, actor=f"policy:{policy.name}")
                result["retention"] = applied.sentence()
            except SendenseError as exc:
                result["retention"] = f"not applied: {exc.message}"
        outcome = "ok" if not failures else ("partial" if result["runs"] else "failed")
        if outcome == "ok" and unprotected:
            outcome = "unprotected"
        self.store.update(policy.id, last_run_at=now, last_result=outcome)
        if failures:
            raise PolicyRunFailed(
                f"policy {policy.name}: "
                + "; ".join(failures + [f"NOT protected: {u}" for u in unprotected]),
                hint="fix the cause; the next scheduled run tries again",
            )
        if unprotected:
            result["retention"] = "not applied: some new points are not protected"
            raise JobUnprotected(
                f"policy {policy.name}: backed up, but NOT protected: " + "; ".join(unprotected),
                result=result,
                action=Action(
                    "check_locks_points",
                    "the points are good backups; fix the cause, then a lock check sets the flag "
                    "(the lock job retries it too)",
                ),
            )
        return result

    def _event(self, kind: str, message: str, **fields: Any) -> None:
        self.bus.emit("policies", kind, message, **fields)


def _check_full_every(spec: PolicySpec) -> dict[str, str]:
    if not isinstance(spec.full_every, int) or spec.full_every < 1:
        return {"full_every": "a new full every N backups needs N of at least 1"}
    if FULL_EVERY.problem(spec.full_every):
        return {"full_every": str(FULL_EVERY.problem(spec.full_every))}
    return {}


def _check_retention(spec: PolicySpec) -> dict[str, str]:
    try:
        rules = RetentionRules.from_dict(spec.retention)
    except ValidationError as exc:
        return {"retention": exc.message}
    if rules.keeps_nothing:
        return {
            "retention": "this retention keeps nothing: every backup would be deleted; set "
            "keep_last or a daily/weekly/monthly/yearly count"
        }
    return {}
