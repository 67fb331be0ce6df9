"""Retention: which restore points a policy keeps (keep-last plus GFS), and why.

Three layers:

- ``gfs_keep``: pure grandfather-father-son selection over points with times.
  ``keep_last`` keeps the newest N; ``daily``/``weekly``/``monthly``/``yearly``
  keep the newest point of each of the N newest days/ISO weeks/months/years
  that have a point (the restic/borg rule). Every kept point carries the rules
  that keep it.
- ``RetentionService.plan``: the dry run. Per chain it turns "not kept" into
  operations that never break a chain: points after the last kept one are
  deleted (``ChainService.delete_point``), points before the first kept one are
  merged into it (``ChainService.consolidate``), points between two kept ones
  stay because a kept point builds on them. On an immutable target nothing is
  merged: a chain goes whole once no point of it is wanted. Each operation is
  checked against locks (never overridable) and the copy rules (a point whose
  required copies do not exist yet is kept unless the operator forces it).
- ``RetentionService.apply``: runs the unblocked operations through the chain
  service (the deletes ``DELETE_BATCH`` chains to a catalog transaction,
  ``ChainService.delete_many``) and records what happened in the audit log. It
  holds the writer lease of every disk of the policy (``engine.writers``) from the
  plan to the last operation, so no backup or merge of those disks runs in between.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from engine.bounds import RETENTION_COUNT
from engine.catalog.chains import ChainStore, RetentionPoint
from engine.catalog.copies import COPY_DONE, CopyStore
from engine.catalog.models import Policy, Repository
from engine.catalog.repositories import RepositoryStore
from engine.catalog.writers import DiskKey
from engine.clock import SYSTEM_CLOCK, Clock
from engine.errors import SendenseError, ValidationError
from engine.events import Event, EventBus
from engine.failpoints import failpoint
from engine.units import plural
from engine.writers import DiskWriters

if TYPE_CHECKING:
    from engine.services.chains import ChainService
    from engine.services.immutability import LockService

log = logging.getLogger(__name__)

RULE_NAMES = ("keep_last", "daily", "weekly", "monthly", "yearly")
#: chains whose tails one catalog transaction deletes (a retention pass over 1,000
#: disks writes its deletions in a few transactions, not one per point)
DELETE_BATCH = 200


@dataclass(frozen=True)
class RetentionRules:
    keep_last: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RetentionRules:
        """From a policy's JSON; raises ValidationError on unknown keys or bad numbers."""
        data = dict(data or {})
        unknown = sorted(set(data) - set(RULE_NAMES))
        if unknown:
            raise ValidationError(
                f"unknown retention rule(s): {', '.join(unknown)}",
                hint=f"use {', '.join(RULE_NAMES)}",
            )
        values: dict[str, int] = {}
        for name in RULE_NAMES:
            raw = data.get(name, 0)
            try:
                number = int(raw if raw not in (None, "") else 0)
            except (TypeError, ValueError):
                raise ValidationError(
                    f"retention {name} must be a whole number, not {raw!r}"
                ) from None
            if number < 0:
                raise ValidationError(f"retention {name} cannot be negative ({number})")
            if number > RETENTION_COUNT.high:
                raise ValidationError(
                    f"retention {name} must be {RETENTION_COUNT.range_text()}, not {number}",
                    hint="keep fewer points, or use a coarser rule (weekly, monthly, yearly)",
                )
            values[name] = number
        return cls(**values)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in RULE_NAMES}

    @property
    def keeps_nothing(self) -> bool:
        return not any(self.as_dict().values())

    def sentence(self) -> str:
        parts = [f"{name.replace('_', ' ')} {n}" for name, n in self.as_dict().items() if n]
        return ", ".join(parts) or "keeps nothing"


class Point(NamedTuple):
    """What GFS needs of a restore point (a tuple: a plan makes one per point)."""

    id: int
    time: datetime


def _buckets() -> list[tuple[str, Any, Any]]:
    return [
        ("daily", lambda t: t.date(), lambda t: f"{t:%Y-%m-%d}"),
        (
            "weekly",
            lambda t: t.isocalendar()[:2],
            lambda t: f"{t.isocalendar()[0]}-W{t.isocalendar()[1]:02d}",
        ),
        ("monthly", lambda t: (t.year, t.month), lambda t: f"{t:%Y-%m}"),
        ("yearly", lambda t: t.year, lambda t: f"{t:%Y}"),
    ]


def gfs_keep(points: Iterable[Point], rules: RetentionRules) -> dict[int, list[str]]:
    """Point id -> the rules that keep it (points not in the result are not kept)."""
    newest_first = sorted(points, key=lambda p: (p.time, p.id), reverse=True)
    keep: dict[int, list[str]] = {}
    for p in newest_first[: rules.keep_last]:
        keep.setdefault(p.id, []).append(f"last {rules.keep_last}")
    for name, key_of, label_of in _buckets():
        count = getattr(rules, name)
        seen: set[Any] = set()
        for p in newest_first:
            if len(seen) >= count:
                break
            key = key_of(p.time)
            if key in seen:
                continue
            seen.add(key)
            keep.setdefault(p.id, []).append(f"{name} {label_of(p.time)}")
    return keep


# -- the plan ----------------------------------------------------------------------------


@dataclass
class PointDecision:
    backup_id: int
    vm: str
    disk: str
    chain_id: int
    position: int
    kind: str
    point_time: datetime
    #: keep | delete | merge
    action: str
    reasons: list[str] = field(default_factory=list)
    #: why the removal cannot happen now (locks, missing copies); None: it can
    blocked: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "vm": self.vm,
            "disk": self.disk,
            "chain_id": self.chain_id,
            "position": self.position,
            "kind": self.kind,
            "point_time": self.point_time.isoformat(),
            "action": self.action,
            "reasons": list(self.reasons),
            "blocked": self.blocked,
        }


@dataclass
class Operation:
    #: delete (this point and every later point of its chain) | merge (points before
    #: ``backup_id`` into it, which becomes the full)
    kind: str
    chain_id: int
    backup_id: int
    removes: list[int]
    locked: list[str] = field(default_factory=list)
    missing_copies: list[str] = field(default_factory=list)

    def blocked(self, force: bool = False) -> str | None:
        if self.locked:
            return "; ".join(self.locked)
        if self.missing_copies and not force:
            return "; ".join(self.missing_copies)
        return None

    def sentence(self) -> str:
        ids = ", ".join(f"#{i}" for i in self.removes)
        if self.kind == "merge":
            return f"chain {self.chain_id}: merge {ids} into #{self.backup_id} (new full)"
        return f"chain {self.chain_id}: delete {ids}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "chain_id": self.chain_id,
            "backup_id": self.backup_id,
            "removes": list(self.removes),
            "locked": list(self.locked),
            "missing_copies": list(self.missing_copies),
            "text": self.sentence(),
        }


@dataclass
class RetentionPlan:
    policy: str
    rules: RetentionRules
    decisions: list[PointDecision] = field(default_factory=list)
    operations: list[Operation] = field(default_factory=list)
    merges_allowed: bool = True

    @property
    def kept(self) -> list[PointDecision]:
        return [d for d in self.decisions if d.action == "keep"]

    @property
    def removed(self) -> list[PointDecision]:
        return [d for d in self.decisions if d.action != "keep"]

    def sentence(self) -> str:
        blocked = sum(1 for d in self.removed if d.blocked)
        tail = f" ({blocked} blocked)" if blocked else ""
        return (
            f"policy {self.policy}: keeps {plural(len(self.kept), 'point')}, removes "
            f"{len(self.removed)}{tail} ({self.rules.sentence()})"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "rules": self.rules.as_dict(),
            "merges_allowed": self.merges_allowed,
            "summary": self.sentence(),
            "points": [d.as_dict() for d in self.decisions],
            "operations": [o.as_dict() for o in self.operations],
        }


@dataclass
class ApplyResult:
    plan: RetentionPlan
    done: list[Operation] = field(default_factory=list)
    skipped: list[tuple[Operation, str]] = field(default_factory=list)
    failed: list[tuple[Operation, str]] = field(default_factory=list)
    forced: bool = False

    def sentence(self) -> str:
        removed = sum(len(o.removes) for o in self.done)
        parts = [f"removed {plural(removed, 'point')} in {plural(len(self.done), 'operation')}"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped")
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        return f"retention of {self.plan.policy}: " + ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "summary": self.sentence(),
            "forced": self.forced,
            "done": [o.as_dict() for o in self.done],
            "skipped": [{**o.as_dict(), "why": why} for o, why in self.skipped],
            "failed": [{**o.as_dict(), "error": why} for o, why in self.failed],
        }


class ChainPoint(Protocol):
    """What ``plan_chain`` reads of a point (a catalog row or a ``RetentionPoint``)."""

    @property
    def id(self) -> int: ...

    @property
    def chain_id(self) -> int: ...


def plan_chain(
    points: Sequence[ChainPoint], keep: dict[int, list[str]], *, merges_allowed: bool
) -> tuple[dict[int, tuple[str, list[str]]], list[Operation]]:
    """One chain (points in chain order): action and reasons per point, operations."""
    out: dict[int, tuple[str, list[str]]] = {}
    if not points:
        return out, []
    chain_id = points[0].chain_id
    kept_idx = [i for i, p in enumerate(points) if p.id in keep]
    if not kept_idx:
        for p in points:
            out[p.id] = ("delete", ["no rule keeps any point of this chain"])
        return out, [Operation("delete", chain_id, points[0].id, [p.id for p in points])]
    first, last = kept_idx[0], kept_idx[-1]
    ops: list[Operation] = []
    for i, p in enumerate(points):
        if p.id in keep:
            out[p.id] = ("keep", list(keep[p.id]))
        elif i > last:
            out[p.id] = ("delete", ["no rule keeps it; nothing later builds on it"])
        elif i < first and merges_allowed:
            out[p.id] = (
                "merge",
                [f"no rule keeps it; merged into #{points[first].id}, which builds on it"],
            )
        elif i < first:
            out[p.id] = (
                "keep",
                [
                    f"#{points[first].id} builds on it and merges are off on an immutable "
                    "target (the chain goes whole later)"
                ],
            )
        else:
            later = next(points[j].id for j in kept_idx if j > i)
            out[p.id] = ("keep", [f"#{later} builds on it (incremental chain)"])
    if last + 1 < len(points):
        ops.append(
            Operation("delete", chain_id, points[last + 1].id, [p.id for p in points[last + 1 :]])
        )
    if first > 0 and merges_allowed:
        ops.append(Operation("merge", chain_id, points[first].id, [p.id for p in points[:first]]))
    return out, ops


def _missing_copies(
    points: Sequence[RetentionPoint],
    rules: Sequence[Any],
    copies: dict[int, list[Any]],
    repo_names: dict[int, str],
) -> list[str]:
    """Why removing these points would lose a copy a rule requires (none made yet)."""
    missing = []
    for p in points:
        done = {c.destination_repository_id for c in copies.get(p.id, []) if c.state == COPY_DONE}
        for rule in rules:
            if rule.selection == "fulls" and p.kind != "full":
                continue
            if rule.destination_repository_id not in done:
                dest = repo_names.get(rule.destination_repository_id, "?")
                missing.append(f"#{p.id} has no copy at {dest} yet (copy rule {rule.name})")
    return missing


class RetentionService:
    """Dry run and apply of a policy's retention (``engine.retention``)."""

    def __init__(
        self,
        chain_store: ChainStore,
        copy_store: CopyStore,
        repositories: RepositoryStore,
        bus: EventBus,
        *,
        chains: ChainService,
        locks: LockService,
        clock: Clock = SYSTEM_CLOCK,
        writers: DiskWriters,
    ) -> None:
        #: one writer per disk (held around apply)
        self.writers = writers
        self.chain_store = chain_store
        self.copy_store = copy_store
        self.repositories = repositories
        self.bus = bus
        #: engine.services.chains.ChainService (delete_point, consolidate)
        self.chains = chains
        #: engine.services.immutability.LockService (why_locked_rel, clock_status)
        self.locks = locks
        self.clock = clock

    # -- dry run ----------------------------------------------------------------------

    def series(
        self, policy: Policy
    ) -> dict[tuple[str, str], list[tuple[int, list[RetentionPoint]]]]:
        """The policy's complete points in its target, per (vm, disk) in the order its
        sources name them, per chain (chain id, its points in chain order), oldest chain
        first: one grouped catalog query for all its disks."""
        found: dict[tuple[str, str], list[tuple[int, list[RetentionPoint]]]] = {
            (d.vm, d.disk): [] for d in self.disks_of(policy)
        }
        vms = list(dict.fromkeys(vm for vm, _disk in found))
        # rows come oldest chain first, each chain's points together and in order
        for point in self.chain_store.retention_points(policy.target_repository_id, vms):
            chains = found.get((point.vm_name, point.disk_name))
            if chains is None:
                continue  # a disk of the VM the policy does not back up
            if chains and chains[-1][0] == point.chain_id:
                chains[-1][1].append(point)
            else:
                chains.append((point.chain_id, [point]))
        return found

    @staticmethod
    def disks_of(policy: Policy) -> list[DiskKey]:
        """The disks a policy writes in its target (backups and retention)."""
        return [
            DiskKey(policy.target_repository_id, str(source.get("vm")), str(disk.get("name")))
            for source in policy.sources or []
            for disk in source.get("disks") or []
        ]

    def merges_allowed(self, policy: Policy, repo: Repository) -> bool:
        return not (repo.immutable or policy.immutable_days > 0)

    def plan(self, policy: Policy) -> RetentionPlan:
        """Decide every point of the policy's disks from a few grouped queries: the
        points (``series``), then the locks and copies of every point an operation
        would touch, asked once for the whole plan."""
        rules = RetentionRules.from_dict(policy.retention)
        repo = self.repositories.get(policy.target_repository_id)
        merges = self.merges_allowed(policy, repo)
        plan = RetentionPlan(policy.name, rules, merges_allowed=merges)
        if rules.keeps_nothing:
            raise ValidationError(
                f"policy {policy.name}'s retention keeps nothing; refusing to plan",
                hint="set keep_last or a daily/weekly/monthly/yearly count",
            )
        touched: list[tuple[Operation, list[RetentionPoint], list[RetentionPoint]]] = []
        for (vm, disk), chains in self.series(policy).items():
            every = [p for _chain_id, points in chains for p in points]
            keep = gfs_keep([Point(p.id, p.point_time) for p in every], rules)
            for chain_id, points in chains:
                actions, ops = plan_chain(points, keep, merges_allowed=merges)
                by_id = {p.id: p for p in points}
                for op in ops:
                    removed = [by_id[i] for i in op.removes]
                    # a merge replaces its target's file by the new full (the points
                    # after it are not touched: they keep their files and headers)
                    extra = [by_id[op.backup_id]] if op.kind == "merge" else []
                    touched.append((op, removed + extra, removed))
                plan.operations.extend(ops)
                for p in points:
                    action, reasons = actions[p.id]
                    plan.decisions.append(
                        PointDecision(
                            backup_id=p.id,
                            vm=vm,
                            disk=disk,
                            chain_id=chain_id,
                            position=p.position,
                            kind=p.kind,
                            point_time=p.point_time,
                            action=action,
                            reasons=reasons,
                        )
                    )
        self._check_operations(policy, repo, touched)
        blocked_by: dict[int, str] = {}
        for op in plan.operations:
            why = op.blocked()
            if why:
                blocked_by.update(dict.fromkeys(op.removes, why))
        for decision in plan.decisions:
            decision.blocked = blocked_by.get(decision.backup_id)
        return plan

    def _check_operations(
        self,
        policy: Policy,
        repo: Repository,
        touched: Sequence[tuple[Operation, list[RetentionPoint], list[RetentionPoint]]],
    ) -> None:
        """Each operation's locks (never overridable) and missing copies, from one lock
        lookup and one copy lookup for the whole plan."""
        whys = self.locks.why_locked_many(
            repo, [p.path for _op, files, _r in touched for p in files]
        )
        for op, files, _removed in touched:
            op.locked = [f"#{p.id} {whys[p.path]}" for p in files if whys.get(p.path)]
        rules = self._required_copy_rules(policy, repo)
        if not rules:
            return
        removed_ids = [p.id for _op, _files, removed in touched for p in removed]
        copies = self.copy_store.copies_of_backups(removed_ids)
        repos = {r.id: r.name for r in self.repositories.list()}
        for op, _files, removed in touched:
            op.missing_copies = _missing_copies(removed, rules, copies, repos)

    def _required_copy_rules(self, policy: Policy, repo: Repository) -> list[Any]:
        return [
            r
            for r in self.copy_store.list_rules(source_repository_id=repo.id, enabled_only=True)
            if r.policy_id in (None, policy.id) and r.selection in ("all", "fulls")
        ]

    # -- apply ------------------------------------------------------------------------

    def apply(
        self,
        policy: Policy,
        *,
        force: bool = False,
        actor: str | None = None,
        plan: RetentionPlan | None = None,
        wait: bool = True,
    ) -> ApplyResult:
        """Run the plan's unblocked operations. ``force`` removes points whose copies do
        not exist yet (audited); locks are never overridden. While another writer holds
        one of the policy's disks this waits, or (``wait=False``) raises DiskBusy."""
        with self.writers.hold_all(
            self.disks_of(policy), operation="retention", actor=actor, wait=wait
        ):
            return self._apply(policy, force=force, actor=actor, plan=plan)

    def _done(self, policy: Policy, op: Operation, result: ApplyResult, actor: str | None) -> None:
        failpoint(f"retention.after_{op.kind}")
        result.done.append(op)
        if op.missing_copies:
            self.bus.publish(
                Event(
                    kind="retention.forced",
                    message=f"policy {policy.name}: {op.sentence()} although "
                    + "; ".join(op.missing_copies),
                    level="warning",
                    source="retention",
                    repository_id=policy.target_repository_id,
                    actor=actor,
                    data={"policy_id": policy.id, **op.as_dict()},
                )
            )

    def _apply(
        self,
        policy: Policy,
        *,
        force: bool,
        actor: str | None,
        plan: RetentionPlan | None,
    ) -> ApplyResult:
        status = self.locks.clock_status()
        if not status.ok:
            raise SendenseError(
                f"retention not applied: {status.message}",
                hint="fix the system clock (NTP); retention and lock release wait for it",
            )
        plan = plan or self.plan(policy)
        result = ApplyResult(plan, forced=force)
        # deletes first: they free the room the merges' new fulls need
        ops = sorted(plan.operations, key=lambda o: (o.kind != "delete", o.chain_id))
        runnable: list[Operation] = []
        for op in ops:
            why = op.blocked(force)
            if why:
                result.skipped.append((op, why))
            else:
                runnable.append(op)
        deletes = [op for op in runnable if op.kind == "delete"]
        for start in range(0, len(deletes), DELETE_BATCH):
            batch = deletes[start : start + DELETE_BATCH]
            try:
                outcomes = self.chains.delete_many(
                    [op.backup_id for op in batch], actor=actor or "retention"
                )
            except SendenseError as exc:
                outcomes = dict.fromkeys((op.backup_id for op in batch), exc)
            for op in batch:
                outcome = outcomes[op.backup_id]
                if isinstance(outcome, SendenseError):
                    # this chain stays as it was; the other chains go on
                    result.failed.append((op, outcome.message))
                else:
                    self._done(policy, op, result, actor)
        for op in runnable:
            if op.kind == "delete":
                continue
            try:
                self.chains.consolidate(
                    op.chain_id, new_base_id=op.backup_id, actor=actor or "retention"
                )
            except SendenseError as exc:
                result.failed.append((op, exc.message))
                continue
            self._done(policy, op, result, actor)
        level = "warning" if result.failed else "info"
        self.bus.publish(
            Event(
                kind="retention.applied",
                message=result.sentence(),
                level=level,
                source="retention",
                repository_id=policy.target_repository_id,
                actor=actor,
                data={"policy_id": policy.id, **result.as_dict()},
            )
        )
        return result
