"""The composition root (engine/runtime.py) wires each service once, explicitly.

Every collaborator reaches a service through its constructor; nothing is set on a
service after it was built (an attribute patched later makes the build work in one
order only, and a service that works in a test without it). Job kinds are registered
one way: each service that owns some returns them from ``job_handlers()`` and the
Engine registers them all in one loop.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Mapping
from pathlib import Path

import pytest

from engine.alerts import AlertSink
from engine.jobs import JobHandler
from engine.runtime import Engine, Reader, job_handlers
from engine.states import JobKind

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNTIME = REPO_ROOT / "engine" / "runtime.py"


def test_every_job_kind_has_its_handler_after_construction(engine: Engine) -> None:
    # runs on SQLite and on MariaDB (catalog_url): the build does not depend on it
    assert sorted(engine.jobs.kinds()) == sorted(kind.value for kind in JobKind)


def _submitted_kinds() -> list[tuple[str, object]]:
    """(where, kind) of every ``<...>.jobs.submit(kind, ...)`` in engine/: the kinds the
    engine can enqueue, resolved from a literal, ``JobKind.X`` or a module constant."""
    found: list[tuple[str, object]] = []
    for path in sorted((REPO_ROOT / "engine").rglob("*.py")):
        rel = path.relative_to(REPO_ROOT)
        module = None
        for node in ast.walk(ast.parse(path.read_text())):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "submit"
                and isinstance(node.func.value, ast.Attribute)
                and node.func.value.attr == "jobs"
            ):
                continue
            arg = node.args[0]
            where = f"{rel}:{node.lineno}"
            if isinstance(arg, ast.Constant):
                found.append((where, arg.value))
            elif isinstance(arg, ast.Attribute) and ast.unparse(arg.value) == "JobKind":
                found.append((where, JobKind.__members__.get(arg.attr)))
            elif isinstance(arg, ast.Name):
                module = module or importlib.import_module(".".join(rel.with_suffix("").parts))
                found.append((where, getattr(module, arg.id, None)))
            else:
                found.append((where, ast.unparse(arg)))
    return found


def test_every_kind_the_engine_enqueues_is_a_registered_job_kind() -> None:
    submitted = _submitted_kinds()
    assert len(submitted) >= 9  # the walk found the services' submits
    kinds = {kind.value for kind in JobKind}
    assert [(where, kind) for where, kind in submitted if kind not in kinds] == []


def test_collaborators_arrive_through_constructors(engine: Engine) -> None:
    # what runtime.py once patched on after construction is there from the start
    assert engine.copies.marks is engine.schedule_store
    assert engine.copies.alert_sink is engine.alert_sink
    assert engine.verifier.alert_sink is engine.alert_sink
    assert engine.scheduler.marks is engine.schedule_store
    assert engine.chains.jobs is engine.jobs
    # the "new data" gate is the repositories service's own method, not a lookup
    gate = engine.repositories.ready_for_new_data
    assert engine.chains.repository_check == gate
    assert engine.backups.repository_check == gate


def test_the_reader_wires_the_listings_over_its_own_catalog(engine: Engine) -> None:
    """The Reader (engine/runtime.py, for commands that only look) builds the listing
    service the Engine builds, over its own catalog and stores, and reads what the
    engine wrote (SQLite and MariaDB)."""
    repo = engine.repository_store.add(
        name="r1", kind="local", path="/srv/r1", now=engine.clock.now()
    )
    job = engine.job_store.create(
        "backup", "backup web", now=engine.clock.now(), repository_id=repo.id
    )
    with Reader(engine.settings) as reader:
        listings = reader.listings
        assert listings.chain_store is reader.chain_store
        assert listings.job_store is reader.job_store
        assert listings.audit is reader.audit
        assert listings.repositories is reader.repository_store
        stores = (reader.chain_store, reader.job_store, reader.audit, reader.repository_store)
        assert all(store.catalog is reader.catalog for store in stores)
        assert reader.catalog is not engine.catalog
        assert [j.id for j in listings.jobs(limit=5).items] == [job.id]
        assert type(listings) is type(engine.listings)


class _Owner:
    def __init__(self, handlers: Mapping[JobKind, JobHandler]) -> None:
        self._handlers = handlers

    def job_handlers(self) -> Mapping[JobKind, JobHandler]:
        return self._handlers


def test_a_kind_claimed_by_two_services_is_refused() -> None:
    def run(ctx: object) -> None:
        return None

    first = _Owner({JobKind.COPY: JobHandler(run)})
    second = _Owner({JobKind.VERIFY: JobHandler(run), JobKind.COPY: JobHandler(run)})
    with pytest.raises(ValueError, match="copy has two handlers"):
        job_handlers([first, second])
    assert set(job_handlers([first])) == {JobKind.COPY}


def _patched_attributes(source: str) -> list[str]:
    """Assignments to an attribute of an attribute of ``self`` (``self.copies.marks =``)
    and any setattr/getattr: wiring done after construction, or duck-typed."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("setattr", "getattr")
        ):
            found.append(f"line {node.lineno}: {node.func.id}()")
        for target in targets:
            for sub in ast.walk(target):
                if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Attribute):
                    found.append(f"line {sub.lineno}: {ast.unparse(sub)}")
    return found


def test_runtime_sets_nothing_on_a_service_after_building_it() -> None:
    assert _patched_attributes(RUNTIME.read_text()) == []


@pytest.mark.parametrize(
    "source",
    [
        "self.copies.marks = self.schedule_store",
        "self.verifier.alert_hook: object = hook",
        "engine.file_restore.detach = True",
        "self.a.b.c += 1",
        "setattr(self.copies, 'marks', store)",
        "gate = getattr(service, 'ready_for_new_data', None)",
    ],
)
def test_the_check_catches_each_late_wiring(source: str) -> None:
    assert _patched_attributes(source) != []


def test_job_kinds_are_registered_in_one_place() -> None:
    """One registration style: runtime.py calls ``register_deferred`` once (its loop
    over the kinds' owners) and never ``register``, and no service registers itself
    on a runner."""
    tree = ast.parse(RUNTIME.read_text())

    def calls(name: str) -> list[int]:
        return [
            node.lineno
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == name
        ]

    assert len(calls("register_deferred")) == 1, calls("register_deferred")
    assert calls("register") == []
    services = sorted((REPO_ROOT / "engine" / "services").glob("*.py"))
    assert len(services) > 20
    registering = [
        f"{path.name}:{node.lineno}"
        for path in services
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and node.name == "register"
    ]
    assert registering == []


def test_an_alert_listener_that_fails_does_not_fail_the_publisher() -> None:
    sink = AlertSink()
    heard: list[tuple[str, ...]] = []

    def broken(kinds: tuple[str, ...]) -> None:
        raise RuntimeError("evaluation broke")

    sink.subscribe(broken)
    sink.subscribe(heard.append)
    sink.changed(("rule_failing",))
    assert heard == [("rule_failing",)]


def test_each_kind_runs_the_handler_its_service_declares(engine: Engine) -> None:
    """The runner asks a kind's service for its handler at the kind's first job; that
    is the handler the service declares, and an engine that lives on builds every
    service at start and finds each kind declared by exactly the service it is wired
    to (SQLite and MariaDB)."""
    engine.build_all()  # refuses a kind declared twice or wired to the wrong service
    owners = {
        JobKind.BACKUP: engine.backups,
        JobKind.CONSOLIDATE: engine.chains,
        JobKind.COPY: engine.copies,
        JobKind.VERIFY: engine.verifier,
        JobKind.RESTORE_DISK: engine.restores,
        JobKind.RESTORE_FILES: engine.file_restore,
        JobKind.RESTORE_ARCHIVE: engine.file_restore,
        JobKind.REPOSITORY_IMPORT: engine.imports,
        JobKind.POLICY_RUN: engine.policies,
        JobKind.LOCKS_MAINTAIN: engine.locks,
    }
    assert set(owners) == set(JobKind)
    for kind, service in owners.items():
        assert engine.jobs._resolve(kind)
        assert engine.jobs._handlers[kind] == service.job_handlers()[kind].run


def test_a_service_is_built_once_whoever_asks_first(engine: Engine) -> None:
    # the copy service subscribes to landed backups when built: twice would queue
    # every immediate copy twice
    assert engine.backups is engine.backups
    assert engine.copies is engine.copies
    assert engine.chains.verifier is engine.verifier is engine.copies.verifier


def test_an_alert_reaches_the_scheduler_built_after_the_sink(engine: Engine) -> None:
    """The scheduler subscribes to the alert sink when it is built; an engine builds it
    only when something needs it, so the sink builds it before its first delivery: a
    copy rule that starts failing in a command that never built a scheduler still
    raises its alert at once."""
    assert "scheduler" not in vars(engine)
    heard: list[tuple[str, ...]] = []
    engine.alert_sink.subscribe(heard.append)
    engine.alert_sink.changed(("rule_failing",))
    assert "scheduler" in vars(engine)
    assert heard == [("rule_failing",)]
