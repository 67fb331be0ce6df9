"""Backup policy rows; the scheduler's compare-and-set lease on ``next_run_at``.

Rows are handed back detached.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from engine.catalog.db import Catalog
from engine.catalog.models import CopyRule, Job, Policy
from engine.errors import NotFoundError, ValidationError

#: the job kind a policy run uses
POLICY_RUN = "policy_run"


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
                rule = session.get(CopyRule, rule_id)
                if rule is None:
                    raise NotFoundError(f"copy rule {rule_id} does not exist")
                rule.policy_id = policy.id
            session.flush()
            return policy

    def get(self, ref: int | str) -> Policy:
        """By id, or by name."""
        with self.catalog.session() as session:
            if isinstance(ref, int) or ref.isdigit():
                policy = session.get(Policy, int(ref))
            else:
                policy = session.scalar(select(Policy).where(Policy.name == ref))
            if policy is None:
                raise NotFoundError(
                    f"policy {ref!r} does not exist", hint="`sendense policy list` shows them"
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

    def delete(self, policy_id: int) -> None:
        with self.catalog.session() as session:
            policy = session.get(Policy, policy_id)
            if policy is not None:
                session.delete(policy)

    def copy_rules(self, policy_id: int) -> list[CopyRule]:
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
            return result.rowcount == 1

    def active_runs(self, policy_id: int) -> list[Job]:
        """Policy-run jobs of this policy that are queued, running or paused."""
        query = select(Job).where(
            Job.kind == POLICY_RUN, Job.state.in_(("queued", "running", "paused"))
        )
        with self.catalog.session() as session:
            jobs = list(session.scalars(query))
        return [j for j in jobs if int((j.params or {}).get("policy_id", -1)) == policy_id]
