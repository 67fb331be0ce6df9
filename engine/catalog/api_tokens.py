"""API tokens (``models.ApiToken``): rows hold a digest of the secret, never the secret."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update

from engine.catalog.db import Catalog
from engine.catalog.models import ApiToken
from engine.clock import as_utc
from engine.errors import Action, NotFoundError


@dataclass(frozen=True)
class TokenRow:
    """One token as the catalog has it (detached from any session)."""

    id: int
    name: str
    role: str
    prefix: str
    digest: str
    created_at: datetime
    created_by: str | None
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


def _row(token: ApiToken) -> TokenRow:
    return TokenRow(
        id=token.id,
        name=token.name,
        role=token.role,
        prefix=token.prefix,
        digest=token.digest,
        created_at=as_utc(token.created_at),  # type: ignore[arg-type]
        created_by=token.created_by,
        expires_at=as_utc(token.expires_at),
        revoked_at=as_utc(token.revoked_at),
        last_used_at=as_utc(token.last_used_at),
    )


class ApiTokenStore:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def add(
        self,
        *,
        name: str,
        role: str,
        prefix: str,
        digest: str,
        now: datetime,
        created_by: str | None,
        expires_at: datetime | None,
    ) -> TokenRow:
        """Insert a token; a revoked token of the same name gives its name up."""
        with self.catalog.session() as session:
            session.execute(
                delete(ApiToken).where(ApiToken.name == name, ApiToken.revoked_at.is_not(None))
            )
            token = ApiToken(
                name=name,
                role=role,
                prefix=prefix,
                digest=digest,
                created_at=now,
                created_by=created_by,
                expires_at=expires_at,
            )
            session.add(token)
            session.flush()
            return _row(token)

    def find(self, name: str) -> TokenRow | None:
        with self.catalog.session() as session:
            token = session.scalar(select(ApiToken).where(ApiToken.name == name))
            return _row(token) if token is not None else None

    def by_prefix(self, prefix: str) -> TokenRow | None:
        with self.catalog.session() as session:
            token = session.scalar(select(ApiToken).where(ApiToken.prefix == prefix))
            return _row(token) if token is not None else None

    def list(self) -> list[TokenRow]:
        with self.catalog.session() as session:
            return [_row(t) for t in session.scalars(select(ApiToken).order_by(ApiToken.name))]

    def revoke(self, name: str, now: datetime) -> TokenRow:
        """Mark a live token revoked (a revoked one stays as it was)."""
        with self.catalog.session() as session:
            token = session.scalar(select(ApiToken).where(ApiToken.name == name))
            if token is None:
                raise NotFoundError(
                    f"there is no API token named {name!r}",
                    action=Action("list_api_tokens", "the list of API tokens shows them"),
                )
            if token.revoked_at is None:
                token.revoked_at = now
                session.flush()
            return _row(token)

    def touch(self, token_id: int, now: datetime) -> None:
        with self.catalog.session() as session:
            session.execute(
                update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now)
            )
