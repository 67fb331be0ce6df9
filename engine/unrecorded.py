"""Job outcomes the catalog could not take, kept in the state directory until it can.

When the catalog goes away while a job runs, the job stops (child processes
killed, partial output removed, finished files kept) but its row cannot be moved
out of ``running``. The runner keeps the outcome here, one small JSON file per
job (0600, written atomically). The next engine on this appliance that reaches
the catalog writes it into the row before it claims any work: a compare-and-set
on the lease owner that ran the job, so a row another engine took over (or a
different catalog) is left alone. The job is settled once, as failed "because the
catalog was unavailable while it ran", and never re-run beside a new one.

Without a directory (tests, tools) the outcomes are kept in memory only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.catalog.jobs import JobStore
from engine.errors import CatalogUnavailable, SendenseError
from engine.events import Event, EventBus

log = logging.getLogger(__name__)

#: the job's own error, as recorded when its catalog went away while it ran
CATALOG_FAILURE = "the catalog was unavailable while it ran"


def catalog_failure(error: CatalogUnavailable | None) -> str:
    """The error a job gets when its catalog went away under it."""
    return f"{CATALOG_FAILURE}: {error.message}" if error is not None else CATALOG_FAILURE


@dataclass(frozen=True)
class Outcome:
    job_id: int
    #: the lease owner that ran the job (the compare-and-set key)
    owner: str
    state: str
    error: str | None
    #: when the job ended (its finished_at)
    at: datetime
    title: str = ""
    repository_id: int | None = None

    def as_json(self) -> str:
        data: dict[str, Any] = asdict(self)
        data["at"] = self.at.isoformat()
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Outcome:
        data = json.loads(text)
        data["at"] = datetime.fromisoformat(data["at"])
        return cls(**data)


class UnrecordedOutcomes:
    """Outcomes waiting for the catalog (``directory``: where they outlive the process)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self._memory: dict[int, Outcome] = {}
        self._lock = threading.Lock()

    def keep(self, outcome: Outcome) -> None:
        with self._lock:
            self._memory[outcome.job_id] = outcome
        if self.directory is None:
            return
        try:
            # never parents=True: a state directory that was removed stays removed
            self.directory.mkdir(mode=0o700, exist_ok=True)
            final = self.directory / f"job-{outcome.job_id}.json"
            tmp = final.with_name(f".{final.name}.partial")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, outcome.as_json().encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except OSError as exc:  # the state dir went too: the lapsed lease is all that is left
            log.warning("cannot keep the outcome of job %s: %s", outcome.job_id, exc.strerror)

    def get(self, job_id: int) -> Outcome | None:
        """The outcome this process kept for a job, if its catalog could not take it."""
        with self._lock:
            return self._memory.get(job_id)

    def job_ids(self) -> set[int]:
        """Jobs with an outcome waiting here: no engine here may claim them."""
        return {o.job_id for o in self.pending()} if self.has_pending() else set()

    def pending(self) -> list[Outcome]:
        with self._lock:
            found = dict(self._memory)
        if self.directory is not None and self.directory.is_dir():
            for path in sorted(self.directory.glob("job-*.json")):
                try:
                    outcome = Outcome.from_json(path.read_text())
                except (OSError, ValueError, TypeError, KeyError) as exc:
                    log.warning("ignoring unreadable job outcome %s: %s", path, exc)
                    with contextlib.suppress(OSError):  # said once, not every tick
                        path.rename(path.with_name(f"{path.name}.unreadable"))
                    continue
                found.setdefault(outcome.job_id, outcome)
        return [found[job_id] for job_id in sorted(found)]

    def has_pending(self) -> bool:
        """Cheap enough for every dispatch tick (one small directory read): another
        process on this appliance (a CLI run) may have left an outcome meanwhile."""
        if self._memory:
            return True
        if self.directory is None:
            return False
        try:
            with os.scandir(self.directory) as entries:
                return any(e.name.startswith("job-") and e.name.endswith(".json") for e in entries)
        except OSError:
            return False

    def settle(self, store: JobStore, bus: EventBus | None = None) -> int:
        """Write kept outcomes into their rows; returns how many were settled.

        Raises CatalogUnavailable when the catalog is still away (nothing lost).
        """
        settled = 0
        for outcome in self.pending():
            try:
                written = store.finish(
                    outcome.job_id, outcome.owner, outcome.state, outcome.at, error=outcome.error
                )
            except CatalogUnavailable:
                raise
            except SendenseError as exc:
                log.warning("job %s: cannot settle its kept outcome: %s", outcome.job_id, exc)
                written = False
            self._forget(outcome.job_id)
            if not written:
                continue  # taken over or settled by another engine, or another catalog
            settled += 1
            if bus is not None:
                bus.publish(
                    Event(
                        kind=f"job.{outcome.state}",
                        message=f"{outcome.state}: {outcome.title}"
                        + (f" ({outcome.error})" if outcome.error else ""),
                        level="error" if outcome.state == "failed" else "info",
                        source="jobs",
                        job_id=outcome.job_id,
                        repository_id=outcome.repository_id,
                        data={"settled_after_outage": True},
                    )
                )
        return settled

    def _forget(self, job_id: int) -> None:
        with self._lock:
            self._memory.pop(job_id, None)
        if self.directory is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / f"job-{job_id}.json").unlink()
