"""Backup policy rows; the scheduler's compare-and-set lease on ``next_run_at``;
schedule marks (scheduled copy rules, the verify schedule, raised alerts).

Rows are handed back detached.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from engine.catalog.db import Catalog, rows_changed
from engine.catalog.models import CopyRule, Job, Policy, ScheduleMark
from engine.catalog.refs import find_by_ref
from engine.errors import Action, NotFoundError, ValidationError
from engine.states import JobKind

#: the job kind a policy run uses
POLICY_RUN = JobKind.POLICY_RUN


class PolicyStore:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def add(
        self, *, name: str, now: datetime, copy_rule_ids: Sequence[int] = (), **fields: Any
    ) -> Policy:
        """The policy and its copy-rule attachments, in one transaction."""
        with self.catalog.session() as session:
            if session.scalar(select(Policy.id).where(Policy.name == name)):
                raise ValidationError(f"a policy named {name!r} already exists")
            policy = Policy(name=name, created_at=now, **fields)
            session.add(policy)
            session.flush()
            for rule_id in copy_rule_ids:
                wanted = session.get(CopyRule, rule_id)
                if wanted is None:
                    raise NotFoundError(f"copy rule {rule_id} does not exist")
                wanted.policy_id = policy.id
            session.flush()
            return policy

    def get(self, ref: int | str) -> Policy:
        """By name, else by ``#ID`` / ``ID`` (``engine.names`` has the rule)."""
        with self.catalog.session() as session:
            policy = find_by_ref(session, Policy, ref, name_column=Policy.name)
            if policy is None:
                raise NotFoundError(
                    f"policy {ref!r} does not exist",
                    action=Action("list_policies", "the list of policies shows them"),
                )
            return policy

    def list(self, *, enabled_only: bool = False) -> list[Policy]:
        query = select(Policy).order_by(Policy.name)
        if enabled_only:
            query = query.where(Policy.enabled.is_(True))
        with self.catalog.session() as session:
            return list(session.scalars(query))

    def update(self, policy_id: int, **fields: Any) -> Policy:
        with self.catalog.session() as session:
            policy = session.get(Policy, policy_id)
            if policy is None:
                raise NotFoundError(f"policy {policy_id} does not exist")
            for key, value in fields.items():
                if not hasattr(Policy, key):
                    raise AttributeError(key)
                setattr(policy, key, value)
            return policy

    def replace(
        self, policy_id: int, *, copy_rule_ids: Sequence[int] = (), **fields: Any
    ) -> Policy:
        """New values for a policy and its copy-rule attachments (rules no longer listed
        are detached), in one transaction: all of it is saved, or none."""
        with self.catalog.session() as session:
            policy = session.get(Policy, policy_id)
            if policy is None:
                raise NotFoundError(f"policy {policy_id} does not exist")
            name = fields.get("name")
            if name is not None and session.scalar(
                select(Policy.id).where(Policy.name == name, Policy.id != policy_id)
            ):
                raise ValidationError(f"a policy named {name!r} already exists")
            for key, value in fields.items():
                if not hasattr(Policy, key):
                    raise AttributeError(key)
                setattr(policy, key, value)
            attached = session.scalars(select(CopyRule).where(CopyRule.policy_id == policy_id))
            for rule in attached:
                if rule.id not in copy_rule_ids:
                    rule.policy_id = None
            for rule_id in copy_rule_ids:
                wanted = session.get(CopyRule, rule_id)
                if wanted is None:
                    raise NotFoundError(f"copy rule {rule_id} does not exist")
                wanted.policy_id = policy.id
            session.flush()
            return policy

    def delete(self, policy_id: int) -> None:
        with self.catalog.session() as session:
            policy = session.get(Policy, policy_id)
            if policy is not None:
                session.delete(policy)

    def copy_rules(self, policy_id: int) -> builtins.list[CopyRule]:
        query = select(CopyRule).where(CopyRule.policy_id == policy_id).order_by(CopyRule.name)
        with self.catalog.session() as session:
            return list(session.scalars(query))

    def take_due(self, policy_id: int, expected_next: datetime | None, new_next: datetime) -> bool:
        """The scheduler's lease: move ``next_run_at`` from the value we read to the
        next one. Only one engine's UPDATE matches; it alone starts the run."""
        cond = (
            Policy.next_run_at.is_(None)
            if expected_next is None
            else Policy.next_run_at == expected_next
        )
        with self.catalog.session() as session:
            result = session.execute(
                update(Policy)
                .where(Policy.id == policy_id, cond)
                .values(next_run_at=new_next)
                .execution_options(synchronize_session=False)
            )
            return rows_changed(result) == 1

    def active_runs(self, policy_id: int) -> builtins.list[Job]:
        """Policy-run jobs of this policy that are queued, running or paused."""
        query = select(Job).where(
            Job.kind == POLICY_RUN, Job.state.in_(("queued", "running", "paused"))
        )
        with self.catalog.session() as session:
            jobs = list(session.scalars(query))
        return [j for j in jobs if int((j.params or {}).get("policy_id", -1)) == policy_id]


class ScheduleStore:
    """Rows of ``schedule_marks``: a next-run time per schedule, a row per raised alert.

    Both are taken with compare-and-set statements, so engines sharing the catalog
    agree on who starts a run and who announces an alert.
    """

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def get(self, key: str) -> ScheduleMark | None:
        with self.catalog.session() as session:
            return session.get(ScheduleMark, key)

    def list(self, prefix: str = "") -> list[ScheduleMark]:
        query = select(ScheduleMark).order_by(ScheduleMark.key)
        if prefix:
            query = query.where(ScheduleMark.key.like(prefix + "%"))
        with self.catalog.session() as session:
            rows = list(session.scalars(query))
        return [r for r in rows if r.key.startswith(prefix)]  # "_" is a LIKE wildcard

    def _insert(self, row: ScheduleMark) -> bool:
        try:
            with self.catalog.session() as session:
                session.add(row)
                session.flush()
        except IntegrityError:
            return False  # another engine wrote the row first
        return True

    def take_due(
        self,
        key: str,
        expected: datetime | None,
        new_due: datetime,
        now: datetime,
        *,
        schedule: str | None = None,
    ) -> bool:
        """Move ``key``'s next run from ``expected`` (None: no row yet) to ``new_due``;
        True for the one engine whose statement matched. ``schedule``: the cron text
        the time was computed from (kept in ``message``)."""
        if expected is None:
            return self._insert(
                ScheduleMark(key=key, due_at=new_due, message=schedule, updated_at=now)
            )
        with self.catalog.session() as session:
            result = session.execute(
                update(ScheduleMark)
                .where(ScheduleMark.key == key, ScheduleMark.due_at == expected)
                .values(due_at=new_due, message=schedule, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            return rows_changed(result) == 1

    def raise_alert(self, key: str, level: str, message: str, now: datetime) -> str | None:
        """Record a raised alert. Returns "raised" (new), "changed" (its level moved),
        or None (already raised at that level, by us or by another engine)."""
        if self._insert(ScheduleMark(key=key, level=level, message=message, updated_at=now)):
            return "raised"
        current = self.get(key)
        if current is None or current.level == level:
            if current is not None and current.message != message:
                with self.catalog.session() as session:
                    session.execute(
                        update(ScheduleMark)
                        .where(ScheduleMark.key == key)
                        .values(message=message)
                        .execution_options(synchronize_session=False)
                    )
            return None
        with self.catalog.session() as session:
            result = session.execute(
                update(ScheduleMark)
                .where(ScheduleMark.key == key, ScheduleMark.level == current.level)
                .values(level=level, message=message, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            return "changed" if rows_changed(result) == 1 else None

    def clear_alert(self, key: str) -> ScheduleMark | None:
        """Remove a raised alert; returns it for the one engine that removed it."""
        row = self.get(key)
        if row is None:
            return None
        with self.catalog.session() as session:
            result = session.execute(
                delete(ScheduleMark)
                .where(ScheduleMark.key == key)
                .execution_options(synchronize_session=False)
            )
            return row if rows_changed(result) == 1 else None

    def forget(self, key: str) -> None:
        with self.catalog.session() as session:
            session.execute(
                delete(ScheduleMark)
                .where(ScheduleMark.key == key)
                .execution_options(synchronize_session=False)
            )
