"""``sendense jobs list|show|cancel|pause|resume|retry``, and how every command that
waits for a job ends: ``finish_job`` (0, or one sentence and exit 1) and
``interruptible`` (Ctrl+C or SIGTERM: one sentence and exit 4; the job goes back
to the queue as the engine closes)."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from engine.errors import CatalogUnavailable
from engine.shapes import job_dict
from engine.states import FINAL_JOB_STATES
from sendense_tui.commands import (
    CliContext,
    add_paging,
    add_parser,
    check_paging,
    id_argument,
    page_size,
    print_page,
    stream,
)
from sendense_tui.exitcodes import CommandFailed, CommandInterrupted
from sendense_tui.format import (
    as_time,
    human_bytes,
    human_duration,
    human_rate,
    percent,
    printable,
    short_time,
)

if TYPE_CHECKING:  # the daemon (and the tools it starts) loads only for work left behind
    from engine.daemon import DaemonStatus
    from engine.views import Job
    from sendense_tui.daemon_client import FollowedJob

#: job states that end a command's wait (a paused job waits for someone to resume it)
WAIT_ENDS = (*FINAL_JOB_STATES, "paused")
#: how a queued job's message says why it has not started (engine.catalog.jobs.WAITING)
WAITING = "waiting: "


def print_queued(ctx: CliContext, job: Any) -> int:
    """What ``--no-wait`` prints once a job is queued; returns the exit code 0. The
    command ends before the job does, so a ``sendense daemon`` must run it: one is
    started in the background when none runs (engine.daemon)."""
    daemon = ensure_runner(ctx)
    if ctx.json:
        ctx.print_json({"job_id": job.id, "state": job.state, "daemon_pid": daemon.pid})
    else:
        print(printable(f"queued job {job.id}: {job.title}"))
    return 0


def ensure_runner(
    ctx: CliContext, *, without: str | None = "it waits for the console or `sendense daemon`"
) -> DaemonStatus:
    """A daemon for work this command leaves behind (a queued job, a mount to expire);
    says on stderr when one was started, or why none runs and, if ``without`` says
    one, what that means for the work."""
    from engine.daemon import ensure_daemon

    daemon = ensure_daemon(ctx.settings)
    if ctx.json:
        return daemon
    if daemon.started:
        print(
            printable(f"started the sendense daemon (pid {daemon.pid}), log {daemon.log_file}"),
            file=sys.stderr,
        )
    elif not daemon.running and without is not None:
        note = f"note: no sendense daemon runs ({daemon.problem}); {without}"
        print(printable(note), file=sys.stderr)
    return daemon


#: what became of a job whose wait was interrupted, by its state once the runner stopped
_AFTER_INTERRUPT = {
    "queued": "it went back to the queue",
    "paused": "it is paused",
    "cancelled": "it was cancelled",
    "succeeded": "it had just finished",
    "failed": "it had just failed",
}


@contextmanager
def interruptible(engine: Any, job_id: int) -> Iterator[None]:
    """Around a wait for a job: Ctrl+C or SIGTERM ends the command with one sentence
    (exit 4) saying what became of the job. The runner is stopped first, as closing
    the engine would: a running job is handed back to the queue."""
    try:
        yield
    except KeyboardInterrupt:
        engine.jobs.stop()
        state = engine.jobs.get(job_id).state
        outcome = _AFTER_INTERRUPT.get(state, f"it is {state}")
        hint = (
            f"the daemon or the console runs it; `sendense jobs cancel {job_id}` stops it"
            if state == "queued"
            else f"`sendense jobs show {job_id}` says more"
        )
        raise CommandInterrupted(
            f"interrupted while waiting for job {job_id}: {outcome}", hint=hint
        ) from None


def job_failed(job: Job) -> CommandFailed:
    """A job that did not succeed, as one sentence (its error's first line) and the
    error's own hint, or where to read more."""
    # a job's error is its exception's for_humans(): a sentence, then "  -> hint" lines
    # (one per nested error); anything else on further lines is detail for `jobs show`
    lines = [line.strip() for line in (job.error or "").splitlines() if line.strip()]
    first = lines[0] if lines else ""
    hint = "; ".join(line[2:].strip() for line in lines[1:] if line.startswith("->"))
    what = f"job {job.id} ({job.title})"
    if job.state == "paused":
        return CommandFailed(
            f"{what} was paused before it finished",
            hint=f"resume it: sendense jobs resume {job.id}",
        )
    verb = {
        "cancelled": "was cancelled",
        # the points are written and good, but their immutability flag is not set
        "failed_unprotected": "wrote its files but could NOT protect them",
    }.get(job.state, job.state)
    return CommandFailed(
        f"{what} {verb}" + (f": {first}" if first else ""),
        hint=hint or f"`sendense jobs show {job.id}` and `sendense events` say more",
    )


def finish_job(ctx: CliContext, job: Job, data: dict[str, Any], done: Callable[[], None]) -> int:
    """How a command that waited for a job ends: ``--json`` prints ``data``; else
    ``done()`` prints the success. A job that did not succeed exits 1 with one
    sentence on stderr (after the JSON, for scripts)."""
    if ctx.json:
        ctx.print_json(data)
    elif job.state == "succeeded":
        done()
    if job.state != "succeeded":
        raise job_failed(job)
    return 0


class EndedUnrecorded(CatalogUnavailable):
    """The job ended in this process, but its catalog could not record how."""


def check_recorded(engine: Any, job_id: int) -> None:
    """Raise EndedUnrecorded when the job ended here but its row could not take the
    outcome (the catalog went away, or turned read-only: the row still says running).
    A catalog that answers again gets the outcome first."""
    kept = engine.jobs.unrecorded.get(job_id)
    if kept is None:
        return
    engine.jobs.settle_unrecorded()
    if engine.jobs.unrecorded.get(job_id) is None:
        return  # recorded now: the row tells
    why = kept.error or f"the catalog is unavailable: {engine.catalog.outage or 'no answer'}"
    raise EndedUnrecorded(
        f"job {job_id} ended {kept.state}, but the catalog could not record it: {why}",
        hint=f"it is recorded when the catalog answers again (`sendense jobs show {job_id}`)",
    )


@contextmanager
def following(job_id: int) -> Iterator[None]:
    """While a command waits for its job: a catalog that goes away ends the wait with
    one sentence naming the job (exit 3); leaving the engine then stops the job
    (its partial output removed), and its row is settled when the catalog answers."""
    try:
        yield
    except EndedUnrecorded:
        raise
    except CatalogUnavailable as exc:
        hint = f"{exc.hint}; " if exc.hint else ""
        raise CatalogUnavailable(
            f"lost the catalog while following job {job_id}: {exc.message}",
            hint=f"{hint}a job that could not finish is recorded as failed when the "
            f"catalog answers again (`sendense jobs show {job_id}`)",
        ) from None


def wait_with_progress(engine: Any, job_id: int, *, show: bool) -> Any:
    """Wait for a job; on a terminal, draw a progress bar (bytes, rate, ETA)."""
    with interruptible(engine, job_id), following(job_id):
        return _wait_with_progress(engine, job_id, show=show)


def job_in_daemon(ctx: CliContext, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """Hand a job to the running daemon of this catalog (sendense_tui.daemon_client):
    the queued job's shape, or None when there is none to take it or it refused (the
    command then runs the job itself, and says any refusal in its own words)."""
    from sendense_tui.daemon_client import DaemonUnanswered, submit_job

    try:
        return submit_job(ctx.settings, path, body)
    except DaemonUnanswered as exc:
        raise CommandInterrupted(
            f"the sendense daemon took the request but {exc}: the job may be queued",
            hint="`sendense jobs list` shows whether it is",
        ) from None


def follow_in_daemon(
    ctx: CliContext, job: dict[str, Any], *, draw: str | None, say_waiting: bool = False
) -> FollowedJob:
    """Wait for a job the daemon runs, as the command's own wait would look: ``draw``
    "bar" (a progress bar on stdout), "line" (a progress line on stderr) or None;
    ``say_waiting``: "waiting: <why>" on stderr while another writer holds its disk
    (the job's message then, engine.catalog.jobs.JobStore.note), as ``wait_for_job``.
    Ctrl+C or SIGTERM ends the wait only: the job goes on in the daemon."""
    from sendense_tui.daemon_client import DaemonUnanswered, follow_job

    job_id = int(job["id"])
    said: set[str] = set()

    def waiting(shape: dict[str, Any]) -> None:
        message = shape.get("message")
        if (
            shape.get("state") == "queued"
            and isinstance(message, str)
            and message.startswith(WAITING)
            and message not in said
        ):
            said.add(message)
            sys.stderr.write(f"\n{printable(message)}\n")
            sys.stderr.flush()

    try:
        with _daemon_progress(draw, printable(str(job.get("title", ""))[:40])) as show:

            def moved(shape: dict[str, Any]) -> None:
                if say_waiting:
                    waiting(shape)
                show(shape)

            return follow_job(ctx.settings, job_id, moved)
    except KeyboardInterrupt:
        raise CommandInterrupted(
            f"interrupted while waiting for job {job_id}: it goes on in the sendense daemon",
            hint=f"`sendense jobs show {job_id}` follows it; `sendense jobs cancel {job_id}` "
            "stops it",
        ) from None
    except DaemonUnanswered as exc:
        raise CommandInterrupted(
            str(exc),
            hint=f"`sendense jobs show {job_id}` says what became of it (a job the daemon "
            "was running when it stopped runs again at its next start)",
        ) from None


def write_progress_line(done: int, total: int, message: str) -> None:
    """The progress line a waiting command keeps rewriting on stderr (a terminal)."""
    pct = f"{100 * done / total:5.1f}%" if total else "  ?  "
    line = printable(message[:40])
    sys.stderr.write(f"\r{pct} {human_bytes(done)} / {human_bytes(total)}  {line}")
    sys.stderr.flush()


@contextmanager
def _daemon_progress(draw: str | None, title: str) -> Iterator[Callable[[dict[str, Any]], None]]:
    if draw is None:
        yield lambda shape: None
        return
    if draw == "line":
        shown = False

        def line(shape: dict[str, Any]) -> None:
            nonlocal shown
            done, total = int(shape.get("bytes_done") or 0), int(shape.get("bytes_total") or 0)
            write_progress_line(done, total, str(shape.get("message") or ""))
            shown = True

        try:
            yield line
        finally:
            if shown:
                sys.stderr.write("\n")
        return
    with _progress_bar() as bar:
        task = bar.add_task(title, total=None)

        def update(shape: dict[str, Any]) -> None:
            total = int(shape.get("bytes_total") or 0) or None
            bar.update(task, completed=int(shape.get("bytes_done") or 0), total=total)

        yield update


def _progress_bar() -> Any:
    """The bar a command draws while it waits for a job (bytes, rate, ETA)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=False,
    )


def is_job_end(event: Any, job_id: int) -> bool:
    """Whether ``event`` says job ``job_id`` ended (or stopped where a wait ends), or
    ended here without its catalog recording it."""
    return (
        event.job_id == job_id
        and event.kind.startswith("job.")
        and (event.kind[4:] in WAIT_ENDS or bool(event.data.get("unrecorded")))
    )


@contextmanager
def job_ends(engine: Any, job_id: int) -> Iterator[threading.Event]:
    """An event set when this engine's runner ends job ``job_id``: a wait wakes at once
    instead of at its next look at the catalog (which still catches a job another
    engine ran)."""
    ended = threading.Event()

    def on_event(event: Any) -> None:
        if is_job_end(event, job_id):
            ended.set()

    unsubscribe = engine.bus.subscribe(on_event)
    try:
        yield ended
    finally:
        unsubscribe()


def _wait_with_progress(engine: Any, job_id: int, *, show: bool) -> Any:
    with job_ends(engine, job_id) as ended:
        return _follow(engine, job_id, ended, show=show)


def _follow(engine: Any, job_id: int, ended: threading.Event, *, show: bool) -> Any:
    if not show:
        while (job := engine.jobs.get(job_id)).state not in WAIT_ENDS:
            check_recorded(engine, job_id)
            ended.wait(0.2)
            ended.clear()  # the row says the rest: a wake never turns into a busy loop
        return job
    with _progress_bar() as bar:
        job = engine.jobs.get(job_id)
        task = bar.add_task(printable(job.title[:40]), total=job.bytes_total or None)
        while True:
            job = engine.jobs.get(job_id)
            bar.update(task, completed=job.bytes_done, total=job.bytes_total or None)
            if job.state in WAIT_ENDS:
                return job
            check_recorded(engine, job_id)
            ended.wait(0.2)
            ended.clear()


def report_job(ctx: CliContext, job: Any) -> int:
    data = {
        "job_id": job.id,
        "state": job.state,
        "error": job.error,
        "result": job.result,
        "bytes_done": job.bytes_done,
        "bytes_total": job.bytes_total,
    }

    def done() -> None:
        print(printable(f"job {job.id} finished: {job.title}"))
        for key, value in (job.result or {}).items():
            if not isinstance(value, list | dict):
                print(printable(f"  {key}: {value}"))

    return finish_job(ctx, job, data, done)


def register(subparsers: Any) -> None:
    parser = add_parser(subparsers, "jobs", help="list and steer jobs")
    sub = parser.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    lister = add_parser(sub, "list", help="list jobs, newest first")
    lister.add_argument("--state", action="append", help="only jobs in this state (repeatable)")
    lister.add_argument("--kind", help="only jobs of this kind (backup, copy, verify…)")
    add_paging(lister, "jobs")
    lister.set_defaults(func=list_jobs)
    show = add_parser(sub, "show", help="one job in detail")
    show.add_argument("job_id", type=id_argument("a job"))
    show.set_defaults(func=show_job)
    for verb, text in (
        ("cancel", "cancel a queued, paused or running job"),
        ("pause", "pause a queued or running job"),
        ("resume", "resume a paused job"),
        ("retry", "queue a failed or cancelled job again"),
    ):
        steer = add_parser(sub, verb, help=text)
        steer.add_argument("job_id", type=id_argument("a job"))
        steer.set_defaults(func=steer_job, verb=verb)


def _job_row(job: dict[str, Any], now: datetime) -> list[str]:
    pct = percent(job["bytes_done"], job["bytes_total"])
    return [
        str(job["id"]),
        job["state"],
        job["kind"],
        job["title"],
        "-" if pct is None else f"{pct:.0f}%",
        human_rate(job["rate"]) if job["state"] == "running" else "-",
        short_time(as_time(job["finished_at"] or job["started_at"] or job["created_at"]), now),
    ]


JOB_HEADERS = ["ID", "STATE", "KIND", "TITLE", "DONE", "RATE", "WHEN"]


def list_jobs(args: argparse.Namespace, ctx: CliContext) -> int:
    """A page of jobs, newest first (``--all``: all, streamed)."""
    check_paging(args)
    now = datetime.now(UTC)
    if args.every:
        with ctx.reader() as reader:
            rows = reader.listings.all_jobs(states=args.state, kind=args.kind)
            return stream(ctx, rows, job_dict, lambda j: _job_row(job_dict(j), now), JOB_HEADERS)
    limit = page_size(args)
    page = ctx.listing_page(
        "/jobs",
        {"state": args.state, "kind": args.kind, "after": args.after, "limit": limit},
        lambda listings: listings.jobs(
            states=args.state, kind=args.kind, after=args.after, limit=limit
        ).shaped(job_dict),
    )
    return print_page(ctx, page, lambda row: _job_row(row, now), JOB_HEADERS, "no jobs")


def show_job(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine(read_only=True) as engine:
        job = engine.jobs.get(args.job_id)
    data = job_dict(job)
    if ctx.json:
        ctx.print_json(data)
        return 0
    data["bytes_done"] = human_bytes(job.bytes_done)
    data["bytes_total"] = human_bytes(job.bytes_total)
    data["rate"] = human_rate(job.rate)
    data["eta_seconds"] = human_duration(job.eta_seconds)
    for key, value in data.items():
        print(printable(f"{key + ':':14} {'-' if value is None else value}"))
    return 0


def steer_job(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        call = getattr(engine.jobs, args.verb)
        job = call(args.job_id, actor="cli")
        job = engine.jobs.get(job.id)
    if job.state == "queued":  # resumed or retried: something must run it
        ensure_runner(ctx)
    if ctx.json:
        ctx.print_json(job_dict(job))
    else:
        note = " (the running work stops at its next check)" if job.cancel_requested else ""
        print(printable(f"job {job.id} {job.state}{note}: {job.title}"))
    return 0
