"""``/api/v1/jobs``: list (filters), show, cancel, pause, resume, retry, and a job's
progress as server-sent events (``/jobs/{id}/stream``, ending with the job).

Steering a job needs ``operate``; the audit log records who (the job's own events
carry the caller's name as their actor).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from engine.names import ID_MAX
from engine.shapes import event_dict, job_dict
from engine.views import FINAL_STATES
from sendense_api import sse
from sendense_api.deps import EngineDep, Operator, Reader
from sendense_api.routes._common import PAGED, After, Limit, ShapedRoute, page_response

router = APIRouter(prefix="/jobs", tags=["jobs"], route_class=ShapedRoute)

JobId = Annotated[int, Path(ge=1, le=ID_MAX, description="the job's id")]
JobState = Literal[
    "queued", "running", "paused", "succeeded", "failed", "failed_unprotected", "cancelled"
]


@router.get("", responses=PAGED)
def list_jobs(
    engine: EngineDep,
    _caller: Reader,
    state: Annotated[list[JobState] | None, Query(description="repeatable")] = None,
    kind: Annotated[str | None, Query(max_length=64)] = None,
    limit: Limit = 50,
    after: After = None,
) -> Response:
    """A page of jobs, newest first (as ``sendense jobs list``); the next page's cursor
    is the ``X-Next-Cursor`` header."""
    page = engine.listings.jobs(states=state, kind=kind, after=after, limit=limit)
    return page_response(page, [job_dict(job) for job in page.items])


@router.get("/{job_id}")
def show_job(job_id: JobId, engine: EngineDep, _caller: Reader) -> dict[str, Any]:
    """The job, its error split into sentence and hints, and its log (oldest first)."""
    details = engine.details.job(job_id)
    return {
        **job_dict(details.job),
        "result": details.job.result,
        "sentence": details.sentence,
        "hints": details.hints,
        "repository": details.repository,
        "log": [event_dict(entry) for entry in details.log],
    }


def _steer(verb: str) -> Any:
    def steer(job_id: JobId, engine: EngineDep, caller: Operator) -> dict[str, Any]:
        getattr(engine.jobs, verb)(job_id, actor=caller.name)
        return job_dict(engine.jobs.get(job_id))

    steer.__name__ = f"{verb}_job"
    return steer


for _verb, _summary in (
    ("cancel", "Cancel a queued, paused or running job"),
    ("pause", "Pause a queued or running job"),
    ("resume", "Resume a paused job"),
    ("retry", "Queue a failed or cancelled job again"),
):
    router.add_api_route(f"/{{job_id}}/{_verb}", _steer(_verb), methods=["POST"], summary=_summary)


@router.get("/{job_id}/stream", response_class=StreamingResponse)
async def stream_job(job_id: JobId, request: Request, engine: EngineDep, _caller: Reader) -> Any:
    """Server-sent events: ``progress`` (the job's shape) whenever it changes, then
    ``end`` once it is finished (or paused: nothing moves until someone resumes it)."""
    first = await run_in_threadpool(engine.jobs.get, job_id)  # 404 before the stream
    stopping = request.app.state.stopping

    async def events() -> AsyncIterator[str]:
        bridge = sse.BusBridge(engine.bus, lambda event: event.job_id == job_id)
        try:
            job, last, said_at = first, None, time.monotonic()
            while not stopping.is_set():
                shape = job_dict(job)
                if shape != last:
                    yield sse.message("progress", shape, event_id=job_id)
                    last, said_at = shape, time.monotonic()
                elif time.monotonic() - said_at >= sse.KEEPALIVE_SECONDS:
                    # a job queued behind others says nothing for a long time: the
                    # comment tells a follower (and any proxy) the stream still lives
                    yield ": keepalive\n\n"
                    said_at = time.monotonic()
                if job.state in (*FINAL_STATES, "paused"):
                    yield sse.message("end", shape, event_id=job_id)
                    return
                # woken by the job's next event, or at the tick anyway (a job run by
                # another engine publishes on that engine's bus)
                await bridge.next(sse.TICK_SECONDS)
                job = await run_in_threadpool(engine.jobs.get, job_id)
        finally:
            bridge.close()

    return StreamingResponse(events(), media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)
