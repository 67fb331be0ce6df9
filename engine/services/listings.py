"""Pages of the four long listings the CLI and the API share: restore points,
chains, jobs and the audit log (``engine.listings``).

Each page is read with a keyset query on an indexed order (engine.paging): the
cost of a page is the rows it shows, not the catalog's size, and ``next_cursor``
continues exactly after its last row. ``more`` counts what is left (one indexed
COUNT that stops after MORE_MAX + 1 rows), so a front end can say "1,234 more:
--after X", or "more than 10,000 more" deep in a large catalog.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from engine import paging
from engine.catalog.audit import LEVELS, AuditStore
from engine.catalog.chains import ChainStore, chain_key
from engine.catalog.jobs import JobStore
from engine.catalog.models import AuditEntry, Backup, Chain, Job
from engine.catalog.repositories import RepositoryStore
from engine.paging import Page, decode_cursor, encode_cursor, paged
from engine.services.chain_views import ChainView, PointView

T = TypeVar("T")


def _page(
    listing: str,
    rows: list[T],
    limit: int,
    key_of: Callable[[T], Sequence[Any]],
    count_after: Callable[[T, int], int],
) -> Page[T]:
    """A page from ``limit + 1`` rows read: the extra row only says there are more.
    ``count_after(row, at_most)`` counts what follows ``row``, stopping at ``at_most``."""
    if len(rows) <= limit:
        return Page(rows)
    shown = rows[:limit]
    return Page(
        shown,
        encode_cursor(listing, key_of(shown[-1])),
        count_after(shown[-1], paging.MORE_MAX + 1),
    )


class ListingService:
    def __init__(
        self,
        chain_store: ChainStore,
        job_store: JobStore,
        audit: AuditStore,
        repositories: RepositoryStore,
    ) -> None:
        self.chain_store = chain_store
        self.job_store = job_store
        self.audit = audit
        self.repositories = repositories

    def _repository_id(self, repository: int | str | None) -> int | None:
        return self.repositories.get(repository).id if repository is not None else None

    # -- restore points (VM, disk, chain, position) -----------------------------------

    def points(
        self,
        *,
        repository: int | str | None = None,
        vm: str | None = None,
        after: str | None = None,
        limit: int = 50,
    ) -> Page[tuple[Backup, Chain]]:
        repo_id = self._repository_id(repository)
        key = decode_cursor("points", after) if after is not None else None
        rows = self.chain_store.point_page(
            after=key,  # type: ignore[arg-type]  # decode_cursor checked the types
            limit=limit + 1,
            repository_id=repo_id,
            vm_name=vm,
        )

        def key_of(row: tuple[Backup, Chain]) -> tuple[str, str, int, int]:
            backup, chain = row
            return (*chain_key(chain), backup.position)

        return _page(
            "points",
            rows,
            limit,
            key_of,
            lambda row, at_most: self.chain_store.count_points(
                after=key_of(row), repository_id=repo_id, vm_name=vm, at_most=at_most
            ),
        )

    def all_points(
        self, *, repository: int | str | None = None, vm: str | None = None
    ) -> Iterator[tuple[Backup, Chain]]:
        return paged(
            lambda after, n: self.points(repository=repository, vm=vm, after=after, limit=n)
        )

    # -- chains (VM, disk, id), each with its live points and lock badges ------------

    def chains(
        self,
        *,
        repository: int | str | None = None,
        include_retired: bool = True,
        chain_id: int | None = None,
        after: str | None = None,
        limit: int = 20,
    ) -> Page[ChainView]:
        repo_id = self._repository_id(repository)
        key = decode_cursor("chains", after) if after is not None else None
        filters: dict[str, Any] = {
            "repository_id": repo_id,
            "include_retired": include_retired,
            "chain_id": chain_id,
        }
        rows = self.chain_store.chain_page(after=key, limit=limit + 1, **filters)  # type: ignore[arg-type]
        page = _page(
            "chains",
            rows,
            limit,
            chain_key,
            lambda chain, at_most: self.chain_store.count_chains(
                after=chain_key(chain), at_most=at_most, **filters
            ),
        )
        return Page(self._views(page.items), page.next_cursor, page.more)

    def _views(self, chains: list[Chain]) -> list[ChainView]:
        """The page's chains with their points and the locks holding them: three
        queries for the page, whatever the catalog holds."""
        repos = {r.id: r.name for r in self.repositories.list()}
        backups = self.chain_store.live_backups_of([c.id for c in chains])
        locks = self.chain_store.holding_locks_of([c.id for c in chains])
        views = []
        for chain in chains:
            points = [
                PointView(b, locks[b.id].expires_at, locks[b.id].state)
                if b.id in locks
                else PointView(b, None)
                for b in backups.get(chain.id, [])
            ]
            views.append(ChainView(chain, repos.get(chain.repository_id, "?"), points))
        return views

    def all_chains(
        self, *, repository: int | str | None = None, include_retired: bool = True
    ) -> Iterator[ChainView]:
        return paged(
            lambda after, n: self.chains(
                repository=repository, include_retired=include_retired, after=after, limit=n
            ),
            batch=50,  # a chain carries its points: fewer chains a step
        )

    # -- jobs, newest first ---------------------------------------------------------

    def jobs(
        self,
        *,
        states: Sequence[str] | None = None,
        kind: str | None = None,
        after: str | None = None,
        limit: int = 50,
    ) -> Page[Job]:
        before = decode_cursor("jobs", after)[0] if after is not None else None
        rows = self.job_store.list(states=states, kind=kind, before_id=before, limit=limit + 1)
        return _page(
            "jobs",
            rows,
            limit,
            lambda job: (job.id,),
            lambda job, at_most: self.job_store.count(
                states=states, kind=kind, before_id=job.id, at_most=at_most
            ),
        )

    def all_jobs(
        self, *, states: Sequence[str] | None = None, kind: str | None = None
    ) -> Iterator[Job]:
        return paged(lambda after, n: self.jobs(states=states, kind=kind, after=after, limit=n))

    # -- the audit log, newest first ------------------------------------------------

    def events(
        self,
        *,
        min_level: str = "info",
        source: str | None = None,
        text: str | None = None,
        job_id: int | None = None,
        after: str | None = None,
        limit: int = 50,
    ) -> Page[AuditEntry]:
        if min_level not in LEVELS:
            min_level = "info"
        before = decode_cursor("events", after)[0] if after is not None else None
        filters: dict[str, Any] = {
            "min_level": min_level,
            "source": source,
            "text": text,
            "job_id": job_id,
        }
        rows = self.audit.query(before_id=before, limit=limit + 1, **filters)
        return _page(
            "events",
            rows,
            limit,
            lambda entry: (entry.id,),
            lambda entry, at_most: self.audit.count(before_id=entry.id, at_most=at_most, **filters),
        )

    def all_events(
        self,
        *,
        min_level: str = "info",
        source: str | None = None,
        text: str | None = None,
        job_id: int | None = None,
    ) -> Iterator[AuditEntry]:
        return paged(
            lambda after, n: self.events(
                min_level=min_level, source=source, text=text, job_id=job_id, after=after, limit=n
            )
        )
