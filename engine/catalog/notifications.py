"""Notification rules and their deliveries (engine.services.notify decides; this
stores). Rows are handed back detached.

A delivery is taken for sending with a compare-and-set (queued -> sending, with
the engine's owner), so two engines on one catalog never send the same message.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from engine.catalog.db import Catalog, rows_changed
from engine.catalog.models import NotificationDelivery, NotificationRule
from engine.catalog.refs import find_by_ref
from engine.errors import Action, NotFoundError, ValidationError

#: states of a delivery that count as "sent or about to be" (dedup, rate limit)
UNDER_WAY = ("queued", "sending", "sent")


class NotificationStore:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    # -- rules -----------------------------------------------------------------------

    def add_rule(self, *, name: str, now: datetime, **fields: Any) -> NotificationRule:
        try:
            with self.catalog.session() as session:
                if session.scalar(select(NotificationRule.id).where(NotificationRule.name == name)):
                    raise ValidationError(f"a notification rule named {name!r} already exists")
                rule = NotificationRule(name=name, created_at=now, updated_at=now, **fields)
                session.add(rule)
                session.flush()
                return rule
        except IntegrityError:
            raise ValidationError(f"a notification rule named {name!r} already exists") from None

    def get_rule(self, ref: int | str) -> NotificationRule:
        with self.catalog.session() as session:
            rule = find_by_ref(session, NotificationRule, ref, name_column=NotificationRule.name)
            if rule is None:
                raise NotFoundError(
                    f"notification rule {ref!r} does not exist",
                    action=Action("list_notify_rules", "the list of notification rules shows them"),
                )
            return rule

    def rules(self, *, enabled_only: bool = False) -> list[NotificationRule]:
        query = select(NotificationRule).order_by(NotificationRule.name)
        if enabled_only:
            query = query.where(NotificationRule.enabled.is_(True))
        with self.catalog.session() as session:
            return list(session.scalars(query))

    def update_rule(self, rule_id: int, now: datetime, **fields: Any) -> NotificationRule:
        with self.catalog.session() as session:
            rule = session.get(NotificationRule, rule_id)
            if rule is None:
                raise NotFoundError(f"notification rule {rule_id} does not exist")
            for key, value in fields.items():
                if not hasattr(NotificationRule, key):
                    raise AttributeError(key)
                setattr(rule, key, value)
            rule.updated_at = now
            return rule

    def take_digest(self, rule_id: int, expected: datetime | None, due: datetime) -> bool:
        """Mark the digest due at ``due`` as sent by this engine: only the engine whose
        UPDATE still finds the value it read goes on to send it."""
        cond = (
            NotificationRule.digest_sent_for.is_(None)
            if expected is None
            else NotificationRule.digest_sent_for == expected
        )
        with self.catalog.session() as session:
            result = session.execute(
                update(NotificationRule)
                .where(NotificationRule.id == rule_id, cond)
                .values(digest_sent_for=due)
                .execution_options(synchronize_session=False)
            )
            return rows_changed(result) == 1

    def remove_rule(self, rule_id: int) -> None:
        with self.catalog.session() as session:
            rule = session.get(NotificationRule, rule_id)
            if rule is not None:
                for delivery in session.scalars(
                    select(NotificationDelivery).where(NotificationDelivery.rule_id == rule_id)
                ):
                    session.delete(delivery)
                session.flush()
                session.delete(rule)

    # -- deliveries ------------------------------------------------------------------

    def add_delivery(self, **fields: Any) -> NotificationDelivery:
        with self.catalog.session() as session:
            delivery = NotificationDelivery(**fields)
            session.add(delivery)
            session.flush()
            return delivery

    def get_delivery(self, delivery_id: int) -> NotificationDelivery:
        with self.catalog.session() as session:
            delivery = session.get(NotificationDelivery, delivery_id)
            if delivery is None:
                raise NotFoundError(f"notification delivery {delivery_id} does not exist")
            return delivery

    def deliveries(
        self,
        *,
        rule_id: int | None = None,
        states: Sequence[str] | None = None,
        reason: str | None = None,
        limit: int = 100,
    ) -> list[NotificationDelivery]:
        """Newest first."""
        query = select(NotificationDelivery).order_by(NotificationDelivery.id.desc())
        if rule_id is not None:
            query = query.where(NotificationDelivery.rule_id == rule_id)
        if states is not None:
            query = query.where(NotificationDelivery.state.in_(tuple(states)))
        if reason is not None:
            query = query.where(NotificationDelivery.reason == reason)
        with self.catalog.session() as session:
            return list(session.scalars(query.limit(limit)))

    def recent(
        self, rule_id: int, since: datetime, *, kind: str | None = None, subject: str | None = None
    ) -> int:
        """How many deliveries of the rule created since ``since`` are sent or under way
        (optionally of one kind and subject)."""
        query = select(func.count(NotificationDelivery.id)).where(
            NotificationDelivery.rule_id == rule_id,
            NotificationDelivery.created_at >= since,
            NotificationDelivery.state.in_(UNDER_WAY),
            # a test message is not one of the rule's notifications
            func.coalesce(NotificationDelivery.reason, "") != "test",
        )
        if kind is not None:
            query = query.where(NotificationDelivery.kind == kind)
        if subject is not None:
            query = query.where(NotificationDelivery.subject == subject)
        with self.catalog.session() as session:
            return int(session.scalar(query) or 0)

    def counts(self) -> dict[int, dict[str, int]]:
        """Deliveries per rule and state."""
        query = select(
            NotificationDelivery.rule_id, NotificationDelivery.state, func.count()
        ).group_by(NotificationDelivery.rule_id, NotificationDelivery.state)
        result: dict[int, dict[str, int]] = {}
        with self.catalog.session() as session:
            for rule_id, state, count in session.execute(query):
                result.setdefault(int(rule_id), {})[str(state)] = int(count)
        return result

    def held(self, rule_id: int, reason: str) -> list[NotificationDelivery]:
        """The rule's deliveries held for a digest or a rate window, oldest first."""
        query = (
            select(NotificationDelivery)
            .where(
                NotificationDelivery.rule_id == rule_id,
                NotificationDelivery.state == "held",
                NotificationDelivery.reason == reason,
            )
            .order_by(NotificationDelivery.id)
        )
        with self.catalog.session() as session:
            return list(session.scalars(query))

    def fold(self, ids: Sequence[int], into: int, now: datetime) -> int:
        """Held deliveries sent as part of delivery ``into``."""
        if not ids:
            return 0
        with self.catalog.session() as session:
            result = session.execute(
                update(NotificationDelivery)
                .where(
                    NotificationDelivery.id.in_(tuple(ids)), NotificationDelivery.state == "held"
                )
                .values(state="folded", folded_into=into, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            return rows_changed(result)

    def due(self, now: datetime, limit: int = 20) -> list[NotificationDelivery]:
        """Queued deliveries whose (next) attempt is due, oldest first."""
        query = (
            select(NotificationDelivery)
            .where(
                NotificationDelivery.state == "queued",
                (NotificationDelivery.next_attempt_at.is_(None))
                | (NotificationDelivery.next_attempt_at <= now),
            )
            .order_by(NotificationDelivery.id)
            .limit(limit)
        )
        with self.catalog.session() as session:
            return list(session.scalars(query))

    def claim(self, delivery_id: int, owner: str, now: datetime) -> bool:
        """queued -> sending for this engine; False when another engine took it."""
        with self.catalog.session() as session:
            result = session.execute(
                update(NotificationDelivery)
                .where(
                    NotificationDelivery.id == delivery_id,
                    NotificationDelivery.state == "queued",
                )
                .values(state="sending", owner=owner, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            return rows_changed(result) == 1

    def finish(self, delivery_id: int, now: datetime, **fields: Any) -> None:
        """Record an attempt's outcome (state, attempts, last_error, next_attempt_at…)."""
        with self.catalog.session() as session:
            session.execute(
                update(NotificationDelivery)
                .where(NotificationDelivery.id == delivery_id)
                .values(updated_at=now, **fields)
                .execution_options(synchronize_session=False)
            )

    def requeue_stale(self, older_than: datetime) -> int:
        """Deliveries left in sending by an engine that died mid-send go back to the queue."""
        with self.catalog.session() as session:
            result = session.execute(
                update(NotificationDelivery)
                .where(
                    NotificationDelivery.state == "sending",
                    NotificationDelivery.updated_at < older_than,
                )
                .values(state="queued", owner=None)
                .execution_options(synchronize_session=False)
            )
            return rows_changed(result)

    def prune(self, before: datetime) -> int:
        """Forget finished deliveries (sent, failed, suppressed, folded) created before
        ``before``; what is queued or held stays."""
        with self.catalog.session() as session:
            result = session.execute(
                delete(NotificationDelivery)
                .where(
                    NotificationDelivery.created_at < before,
                    NotificationDelivery.state.in_(("sent", "failed", "suppressed", "folded")),
                )
                .execution_options(synchronize_session=False)
            )
            return rows_changed(result)
