"""The Engine: settings, catalog, event bus, job runner and services, wired once.

The console and the CLI build one Engine, ``open()`` it (connect, migrate) and
``start()`` it (job runner, monitors). Everything an operator can do is a
method of a service hanging off it.

A console whose state directory has a ``sendense daemon`` (engine.daemon) is a
client of it: ``attach_daemon`` before ``start`` makes the engine submit jobs
without claiming any (the daemon runs them) and hand the restore mounts and NBD
exports it starts to owners that outlive it (a detached mount, an export
keeper), so that work goes on after the console leaves. If that daemon goes
away, the engine takes over: it claims jobs itself, as a console without a
daemon always does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from engine.catalog import Catalog
from engine.catalog.audit import AuditStore
from engine.catalog.chains import ChainStore
from engine.catalog.jobs import JobStore
from engine.catalog.repositories import RepositoryStore
from engine.clock import SYSTEM_CLOCK, Clock
from engine.config import Settings, load_settings
from engine.errors import CatalogUnavailable, ConfigError
from engine.events import Event, EventBus
from engine.private import ModeRepair, make_private_dir, repair_entries, repair_tree
from engine.unrecorded import UnrecordedOutcomes

# What only the whole Engine needs (jobs, writers, the daemon, the services) is
# imported where it is built: a Reader (a listing) loads none of it.
if TYPE_CHECKING:
    from engine.catalog.capacity import CapacityStore
    from engine.catalog.changes import ChangeStore
    from engine.catalog.copies import CopyStore
    from engine.catalog.locks import LockStore
    from engine.catalog.notifications import NotificationStore
    from engine.catalog.policies import PolicyStore, ScheduleStore
    from engine.daemon import DaemonStatus
    from engine.jobs import JobHandler, RunsJobs
    from engine.services.api_tokens import ApiTokenService
    from engine.services.backup import BackupService
    from engine.services.capacity import CapacityMonitor
    from engine.services.chains import ChainService
    from engine.services.compliance import ComplianceService
    from engine.services.copy import CopyService
    from engine.services.details import DetailService
    from engine.services.exports import ExportService
    from engine.services.file_restore import FileRestoreService
    from engine.services.images import ImageGuard, PointReader
    from engine.services.immutability import LockService
    from engine.services.imports import RepositoryImportService
    from engine.services.listings import ListingService
    from engine.services.metrics import MetricsService
    from engine.services.mounts import MountManager
    from engine.services.notify import NotificationService
    from engine.services.policies import PolicyService
    from engine.services.repositories import RepositoryService
    from engine.services.restore_disk import DiskRestoreService
    from engine.services.retention import RetentionService
    from engine.services.scheduler import Scheduler
    from engine.services.secrets import SecretBox
    from engine.services.verify import VerifyService
    from engine.states import JobKind

log = logging.getLogger(__name__)

#: how often a client engine looks whether its daemon is still there
DAEMON_CHECK_SECONDS = 5.0


def job_handlers(services: Iterable[RunsJobs]) -> dict[JobKind, JobHandler]:
    """Every job kind the services own, with its one handler; a kind two services
    claim is a wiring mistake, refused here rather than one silently winning."""
    handlers: dict[JobKind, JobHandler] = {}
    for service in services:
        for kind, handler in service.job_handlers().items():
            if kind in handlers:
                raise ValueError(f"job kind {kind!s} has two handlers")
            handlers[kind] = handler
    return handlers


#: where the default repository keeps its chains (engine.services.manifests.CHAINS_DIR,
#: spelled here so that opening a catalog does not import the backup services)
_CHAINS_DIR = "chains"


def catalog_evidence(settings: Settings) -> list[Path]:
    """Places whose files show that a catalog existed (see Catalog.open)."""
    return [Path(settings.default_repository) / _CHAINS_DIR]


class Reader:
    """What a command that only looks needs (a listing: restore points, chains, jobs,
    events): the catalog, the stores a listing reads and the listing service, and
    nothing else. The CLI's listings answer in a fraction of the Engine's start-up:
    no job runner, writers, daemon, tools or services that write are imported or
    built.

    ``open()`` connects without migrating (a catalog at an older revision is
    refused with CatalogBehind, a lost one with CatalogUnavailable, as the Engine's
    read-only open does), and writes nothing: no default repository, no mode repair
    of the state directory, no restore clean-up. Two things still write, as any
    command does, because skipping them would mislead: a catalog on a first start
    (no file, no sign that one existed) is created, and job outcomes an outage left
    in ``unrecorded-jobs`` are settled before a listing shows those jobs as running.
    """

    def __init__(self, settings: Settings, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings
        self.clock = clock
        self._compose()

    def _compose(self) -> None:
        """The Engine's catalog half, built the same way (see Engine._compose)."""
        from engine.services.listings import ListingService

        self.catalog = Catalog(self.settings.db_url)
        self.audit = AuditStore(self.catalog)
        self.job_store = JobStore(self.catalog)
        self.repository_store = RepositoryStore(self.catalog)
        self.chain_store = ChainStore(self.catalog)
        #: pages of restore points, chains, jobs and events
        self.listings: ListingService = ListingService(
            self.chain_store, self.job_store, self.audit, self.repository_store
        )
        #: outcomes of jobs whose catalog went away, and the bus that announces them
        #: once they are written (as the job runner does)
        self.unrecorded = UnrecordedOutcomes(self.settings.state_dir / "unrecorded-jobs")
        self.bus = EventBus(self.audit, self.clock)

    def open(self) -> Reader:
        self.catalog.open(evidence=catalog_evidence(self.settings), migrate=False)
        if self.unrecorded.has_pending():
            # a catalog that refuses the writes: they are listed as they stand, and
            # settled by the next engine that writes
            with contextlib.suppress(CatalogUnavailable):
                self.unrecorded.settle(self.job_store, self.bus)
        return self

    def close(self) -> None:
        self.catalog.dispose()

    def __enter__(self) -> Reader:
        try:
            return self.open()
        except BaseException:
            self.close()  # refused (an older or lost catalog): no pool left behind
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


def _handler_of(kind: JobKind, service: Callable[[], RunsJobs]) -> JobHandler:
    """The handler ``service`` declares for ``kind`` (a kind wired to a service that
    does not declare it is a wiring mistake)."""
    handlers = service().job_handlers()
    if kind not in handlers:
        raise ValueError(f"job kind {kind!s} is wired to a service that does not run it")
    return handlers[kind]


def _has_entries(directory: Path) -> bool:
    try:
        with os.scandir(directory) as entries:
            return any(True for _ in entries)
    except OSError:
        return False


def _needs(*services: object) -> None:
    """Nothing: the services named were built by being asked for."""


T = TypeVar("T")


class _Service(Generic[T]):
    """An Engine method marked ``@_service``: the service it builds is built the first
    time it is used, once (under the engine's build lock), then kept as a plain
    attribute. A command builds only what its work touches: a restore of one disk
    imports and builds no backup, copy, policy or metrics service."""

    def __init__(self, build: Callable[[Engine], T]) -> None:
        self._build = build
        self._name = build.__name__
        self.__doc__ = build.__doc__

    @overload
    def __get__(self, engine: None, owner: type) -> _Service[T]: ...

    @overload
    def __get__(self, engine: Engine, owner: type) -> T: ...

    def __get__(self, engine: Engine | None, owner: type) -> T | _Service[T]:
        if engine is None:
            return self
        with engine._build_lock:
            built = vars(engine)
            if self._name not in built:
                built[self._name] = self._build(engine)
            return built[self._name]  # type: ignore[no-any-return]


_service = _Service


class Engine:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock = SYSTEM_CLOCK,
        owner: str | None = None,
        run_scheduler: bool = False,
    ) -> None:
        self.settings = settings
        #: start the policy scheduler in start() (the console and the daemon do; CLI
        #: one-shots and tests do not)
        self.run_scheduler = run_scheduler
        self.clock = clock
        #: when this engine was made: its metrics count the jobs finished from here on,
        #: however much later they are first asked for (services are built at first use)
        self.made_at = clock.now()
        from engine.jobs import engine_owner

        #: held while a service is built (each is built once, whichever thread asks)
        self._build_lock = threading.RLock()
        self.owner = owner or engine_owner()
        self._compose(self.owner)
        self._opened = False
        self._started = False
        #: the daemon that owns long-lived work, when this engine is its client
        self.daemon: DaemonStatus | None = None
        #: False while a daemon runs this engine's jobs
        self.run_jobs = True
        self._want_scheduler = run_scheduler
        self._watch_stop = threading.Event()
        self._watch: threading.Thread | None = None

    def _compose(self, owner: str) -> None:
        """Build what every command uses: the catalog, its core stores, the event bus,
        the writer leases and the job runner.

        Every other store and service is an ``@_service`` method below, built at its
        first use from the ones it needs. Each gets all its collaborators in its
        constructor (nothing is set on a service afterwards), so a service is built
        after what it uses: asking for a collaborator builds it first. Job kinds: the
        runner asks a kind's service for its handler (``job_handlers()``) at the kind's
        first job (JOB_OWNERS below); an engine that lives on builds every service in
        ``start()``, which also refuses a kind that two services claim."""
        from engine.alerts import AlertSink
        from engine.catalog.writers import WriterStore
        from engine.jobs import JobRunner
        from engine.writers import DiskWriters

        settings, clock = self.settings, self.clock

        # -- the catalog, its core stores and the event bus ----------------------------
        self.catalog = Catalog(settings.db_url)
        self.audit = AuditStore(self.catalog)
        self.bus = EventBus(self.audit, clock)
        self.job_store = JobStore(self.catalog)
        self.repository_store = RepositoryStore(self.catalog)
        self.chain_store = ChainStore(self.catalog)

        # -- jobs: one writer per VM disk (backup, consolidate, delete, retention,
        # import) and the runner that holds those leases around jobs -----------------
        self.writers = DiskWriters(
            WriterStore(self.catalog),
            self.repository_store,
            self.chain_store,
            self.bus,
            settings=settings.jobs,
            owner=owner,
            clock=clock,
        )
        self.jobs = JobRunner(
            self.job_store,
            self.bus,
            settings=settings.jobs,
            clock=clock,
            owner=owner,
            writers=self.writers,
            # outcomes of jobs whose catalog went away, for the next engine here
            unrecorded=UnrecordedOutcomes(settings.state_dir / "unrecorded-jobs"),
        )
        #: copies and verification publish here, the scheduler listens (it subscribes
        #: when built; the sink builds it before the first alert it delivers)
        self.alert_sink = AlertSink(listeners=lambda: self.scheduler)

        # -- job kinds: each one's handler from the service that owns it, asked for
        # at the kind's first job ----------------------------------------------------
        for kind, service in self._job_owners().items():
            self.jobs.register_deferred(kind, partial(_handler_of, kind, service))

    def _job_owners(self) -> dict[JobKind, Callable[[], RunsJobs]]:
        """Which service owns each job kind (its ``job_handlers()`` says how it runs)."""
        from engine.states import JobKind

        return {
            JobKind.BACKUP: lambda: self.backups,
            JobKind.CONSOLIDATE: lambda: self.chains,
            JobKind.RESTORE_DISK: lambda: self.restores,
            JobKind.RESTORE_FILES: lambda: self.file_restore,
            JobKind.RESTORE_ARCHIVE: lambda: self.file_restore,
            JobKind.COPY: lambda: self.copies,
            JobKind.VERIFY: lambda: self.verifier,
            JobKind.POLICY_RUN: lambda: self.policies,
            JobKind.REPOSITORY_IMPORT: lambda: self.imports,
            JobKind.LOCKS_MAINTAIN: lambda: self.locks,
        }

    def build_all(self) -> None:
        """Build every service now (an engine that lives on: the console, the daemon):
        each kind's handler is checked against ``_job_owners``, and a kind two services
        claim is refused, before the first job."""
        owners = self._job_owners()
        services = {id(s): s for s in (owner() for owner in owners.values())}
        declared = job_handlers(services.values())
        if set(declared) != set(owners):
            raise ValueError(
                f"job kinds declared {sorted(declared)} and wired {sorted(owners)} differ"
            )
        # what no job kind owns: the console's, the API's and the metrics' services
        _needs(
            self.changes,
            self.capacity_store,
            self.details,
            self.compliance,
            self.scheduler,
            self.metrics,
            self.api_tokens,
            self.notifications,
            self.listings,
            self.exports,
        )

    # -- stores only some commands use --------------------------------------------------

    @_service
    def changes(self) -> ChangeStore:
        """Whether the catalog moved since a screen last read it (a few index lookups)."""
        from engine.catalog.changes import ChangeStore

        return ChangeStore(self.catalog)

    @_service
    def copy_store(self) -> CopyStore:
        from engine.catalog.copies import CopyStore

        return CopyStore(self.catalog)

    @_service
    def lock_store(self) -> LockStore:
        from engine.catalog.locks import LockStore

        return LockStore(self.catalog)

    @_service
    def capacity_store(self) -> CapacityStore:
        from engine.catalog.capacity import CapacityStore

        return CapacityStore(self.catalog)

    @_service
    def policy_store(self) -> PolicyStore:
        from engine.catalog.policies import PolicyStore

        return PolicyStore(self.catalog)

    @_service
    def schedule_store(self) -> ScheduleStore:
        """Schedule marks: scheduled copy rules, the verify schedule, raised alerts."""
        from engine.catalog.policies import ScheduleStore

        return ScheduleStore(self.catalog)

    @_service
    def notification_store(self) -> NotificationStore:
        from engine.catalog.notifications import NotificationStore

        return NotificationStore(self.catalog)

    # -- repositories: immutability locks, capacity, secrets, mounts --------------------

    @_service
    def locks(self) -> LockService:
        from engine.services.immutability import LockService

        return LockService(self.lock_store, self.repository_store, self.bus, clock=self.clock)

    @_service
    def capacity(self) -> CapacityMonitor:
        from engine.services.capacity import CapacityMonitor

        return CapacityMonitor(
            self.repository_store,
            self.capacity_store,
            self.bus,
            self.settings.capacity,
            clock=self.clock,
            # the space figures are counted again only when the catalog moved
            changes=self.changes,
        )

    @_service
    def secrets(self) -> SecretBox:
        """Encrypts secrets at rest (CIFS passwords, notification targets' secrets)."""
        from engine.services.secrets import SecretBox

        return SecretBox(self.settings.state_dir / "secret.key")

    @_service
    def mounts(self) -> MountManager:
        from engine.services.mounts import MountManager

        return MountManager(self.settings.mount_root, self.settings.state_dir / "credentials")

    @_service
    def repositories(self) -> RepositoryService:
        from engine.services.repositories import RepositoryService

        settings = self.settings
        return RepositoryService(
            self.repository_store,
            self.job_store,
            self.bus,
            self.mounts,
            self.secrets,
            self.capacity,
            clock=self.clock,
            locks=self.locks,
            own_directories=(settings.state_dir, settings.mount_root),
            default_repository=settings.default_repository,
        )

    # -- reading points: the header guard every qemu call on a point goes through,
    # and the choice of where a point is read from --------------------------------------

    @_service
    def image_guard(self) -> ImageGuard:
        from engine.services.images import ImageGuard

        return ImageGuard(self.bus)

    @_service
    def point_reader(self) -> PointReader:
        from engine.services.images import PointReader

        return PointReader(self.chain_store, self.copy_store, self.image_guard)

    @_service
    def details(self) -> DetailService:
        """One thing in detail (a job and its log, a point and its files)."""
        from engine.services.details import DetailService

        return DetailService(self.job_store, self.audit, self.chain_store, self.copy_store)

    # -- verification and copy rules ----------------------------------------------------

    @_service
    def verifier(self) -> VerifyService:
        from engine.services.verify import VerifyService

        return VerifyService(
            self.copy_store,
            self.repository_store,
            self.jobs,
            self.bus,
            self.image_guard,
            clock=self.clock,
            reverify_days=self.settings.verify.reverify_days,
            alert_sink=self.alert_sink,
        )

    @_service
    def copies(self) -> CopyService:
        from engine.services.copy import CopyService

        return CopyService(
            self.copy_store,
            self.repository_store,
            self.jobs,
            self.bus,
            self.image_guard,
            clock=self.clock,
            verifier=self.verifier,
            destination_check=self.repositories.ensure_writable_mount,
            room_check=self.capacity.ensure_room,
            locks=self.locks,
            marks=self.schedule_store,
            alert_sink=self.alert_sink,
        )

    # -- file-level restore and NBD exports -----------------------------------------------

    @_service
    def file_restore(self) -> FileRestoreService:
        from engine.services.file_restore import FileRestoreService

        return FileRestoreService(
            self.catalog,
            self.bus,
            self.settings,
            self.point_reader,
            clock=self.clock,
            jobs=self.jobs,
        )

    @_service
    def exports(self) -> ExportService:
        from engine.services.exports import ExportService

        return ExportService(
            self.catalog, self.bus, self.settings, self.point_reader, clock=self.clock
        )

    # -- chains, backups and whole-disk restore -----------------------------------------
    # a backup and a consolidation write new data: mounted, writable, not full

    @_service
    def chains(self) -> ChainService:
        from engine.services.chains import ChainService

        return ChainService(
            self.chain_store,
            self.repository_store,
            self.bus,
            self.image_guard,
            settings=self.settings,
            clock=self.clock,
            repository_check=self.repositories.ready_for_new_data,
            writers=self.writers,
            jobs=self.jobs,
            verifier=self.verifier,
            owner=self.owner,
        )

    @_service
    def backups(self) -> BackupService:
        from engine.services.backup import BackupService

        # the copy rules with `immediate` mode follow the backups this engine lands: the
        # copy service listens for them from the moment it is built
        _needs(self.copies)
        return BackupService(
            self.chain_store,
            self.repository_store,
            self.jobs,
            self.bus,
            self.chains,
            settings=self.settings,
            clock=self.clock,
            repository_check=self.repositories.ready_for_new_data,
            locks=self.locks,
            writers=self.writers,
        )

    @_service
    def restores(self) -> DiskRestoreService:
        from engine.services.restore_disk import DiskRestoreService

        return DiskRestoreService(
            self.chain_store,
            self.repository_store,
            self.jobs,
            self.bus,
            self.point_reader,
            clock=self.clock,
        )

    # -- retention, policies, 3-2-1 compliance and the scheduler -------------------------

    @_service
    def retention(self) -> RetentionService:
        from engine.services.retention import RetentionService

        return RetentionService(
            self.chain_store,
            self.copy_store,
            self.repository_store,
            self.bus,
            chains=self.chains,
            locks=self.locks,
            clock=self.clock,
            writers=self.writers,
        )

    @_service
    def policies(self) -> PolicyService:
        from engine.services.policies import PolicyService

        return PolicyService(
            self.policy_store,
            self.repository_store,
            self.chain_store,
            self.copy_store,
            self.bus,
            jobs=self.jobs,
            locks=self.locks,
            retention=self.retention,
            backups=self.backups,
            verifier=self.verifier,
            clock=self.clock,
        )

    @_service
    def compliance(self) -> ComplianceService:
        from engine.services.compliance import ComplianceService

        return ComplianceService(
            self.chain_store,
            self.copy_store,
            self.repository_store,
            self.policy_store,
            locks=self.locks,
            clock=self.clock,
        )

    @_service
    def scheduler(self) -> Scheduler:
        from engine.services.scheduler import Scheduler

        return Scheduler(
            self.policy_store,
            self.policies,
            self.bus,
            locks=self.locks,
            clock=self.clock,
            marks=self.schedule_store,
            copies=self.copies,
            verifier=self.verifier,
            verify_schedule=self.settings.verify.schedule,
            alert_sink=self.alert_sink,
        )

    # -- reading repositories back from their files (repository import and
    # ``chain check --fix``) --------------------------------------------------------------

    @_service
    def imports(self) -> RepositoryImportService:
        from engine.services.imports import RepositoryImportService

        return RepositoryImportService(
            self.chain_store,
            self.copy_store,
            self.lock_store,
            self.locks.backend,
            self.repositories,
            self.chains,
            self.jobs,
            self.bus,
            self.writers,
            clock=self.clock,
        )

    # -- metrics, API tokens, notifications, listings -----------------------------------

    @_service
    def metrics(self) -> MetricsService:
        from engine.catalog.metrics import MetricsStore
        from engine.services.metrics import MetricsService

        return MetricsService(
            MetricsStore(self.catalog),
            self.repository_store,
            self.capacity,
            reverify_days=self.settings.verify.reverify_days,
            clock=self.clock,
            jobs_since=self.made_at,
        )

    @_service
    def api_tokens(self) -> ApiTokenService:
        from engine.catalog.api_tokens import ApiTokenStore
        from engine.services.api_tokens import ApiTokenService

        return ApiTokenService(ApiTokenStore(self.catalog), self.bus, clock=self.clock)

    @_service
    def notifications(self) -> NotificationService:
        """Delivers only where jobs run (started in start(), like the job runner)."""
        from engine.services.notify import NotificationService

        return NotificationService(
            self.notification_store, self.bus, self.secrets, clock=self.clock, owner=self.owner
        )

    @_service
    def listings(self) -> ListingService:
        """Pages of restore points, chains, jobs and events (CLI listings, the API)."""
        from engine.services.listings import ListingService

        return ListingService(self.chain_store, self.job_store, self.audit, self.repository_store)

    def _existing(self, name: str) -> Any:
        """The service ``name`` if something built it, else None (closing an engine
        builds nothing)."""
        return vars(self).get(name)

    def _start_repositories(self) -> None:
        """A default local repository on a fresh catalog; mount enabled ones; monitor."""
        try:
            self.repositories.ensure_default(self.settings.default_repository)
            self.repositories.start()
        except CatalogUnavailable:
            pass  # logged once by the catalog
        except Exception:
            log.exception("starting repositories")
        self.capacity.start()

    def ensure_default_repository(self) -> None:
        """The embedded default repository ("local") on a catalog that has none, so a
        newcomer's first command has somewhere to go (the repositories service is
        built only then)."""
        if not self.repository_store.list():
            self.repositories.ensure_default(self.settings.default_repository)

    def _cleanup_restore(self) -> None:
        """Mounts, loop devices and exports left by an engine that crashed."""
        from engine.catalog.restore import RestoreStore
        from engine.errors import SendenseError

        try:
            left = RestoreStore(self.catalog).anything_live() or _has_entries(
                self.settings.state_dir / "restore"
            )
        except CatalogUnavailable:
            return  # logged once by the catalog
        if not left:
            return  # nothing to tear down: the mount and export services need not be built
        for cleanup in (self.file_restore.cleanup_leftovers, self.exports.cleanup_leftovers):
            try:
                cleanup()
            except CatalogUnavailable:
                pass  # logged once by the catalog
            except SendenseError as exc:
                log.warning("restore cleanup at start: %s", exc)

    @classmethod
    def from_environment(cls, **kwargs: object) -> Engine:
        return cls(load_settings(), **kwargs)  # type: ignore[arg-type]

    def open(self, *, read_only: bool = False) -> Engine:
        """Connect to the catalog and migrate it; create the state directory.

        ``read_only`` (a command that only looks): the catalog is not migrated (one at
        an older revision is refused, see Catalog.open) and neither restore mounts nor
        interrupted merges are cleaned up: that is the work of an engine that writes."""
        if self._opened:
            return self
        for directory in (self.settings.state_dir, self.settings.log_dir):
            try:
                make_private_dir(directory)
            except OSError as exc:
                raise ConfigError(
                    f"state directory {directory} cannot be created: {exc.strerror}",
                    hint="set SENDENSE_STATE_DIR or [paths] state_dir to a writable place",
                ) from None
        # a missing SQLite catalog is only started afresh when no backups show that
        # one existed (the default repository's chains, the catalog's marker file)
        self.catalog.open(evidence=catalog_evidence(self.settings), migrate=not read_only)
        self._opened = True
        self._keep_state_private()
        # jobs whose catalog went away under a process here are settled before
        # anything lists or claims them
        self.jobs.settle_unrecorded()
        if not read_only:
            self._cleanup_restore()
            self._recover_merges()
        return self

    def _keep_state_private(self) -> None:
        """Close the state directory to other users: itself, the mount root, what lies
        directly in it (catalog, secret.key, the default repository's root…) and the
        trees of logs, credentials and exports. Mounted filesystems (repositories,
        restore mounts) are not entered; a repository's own tree is repaired when it
        is prepared (``repo test``)."""
        state = Path(self.settings.state_dir)
        repair = ModeRepair()
        try:
            make_private_dir(self.settings.mount_root)
        except OSError as exc:
            repair.failed.append((str(self.settings.mount_root), exc.strerror or str(exc)))
        try:
            top = [entry.path for entry in os.scandir(state) if not os.path.ismount(entry.path)]
        except OSError:
            top = []
        repair.merge(repair_entries([state, *top]))
        for sub in ("logs", "credentials", "exports"):
            if (state / sub).is_dir():
                repair.merge(repair_tree(state / sub))
        if repair.fixed or not repair.clean:
            self.bus.publish(
                Event(
                    kind="security.modes_repaired",
                    message=f"state directory {state}: {repair.summary()}",
                    source="engine",
                    level="warning",
                    data={"fixed": repair.fixed, "locked": repair.locked},
                )
            )

    def _recover_merges(self) -> None:
        """Finish or roll back consolidations a crashed engine left half-way."""
        from engine.errors import SendenseError

        try:
            if not self.chain_store.open_intents():
                return  # no merge was left half-way: the chain service need not be built
            for sentence in self.chains.recover():
                log.warning("%s", sentence)
        except SendenseError as exc:
            log.warning("recovering interrupted merges at start: %s", exc)

    def start(
        self, *, run_scheduler: bool | None = None, prepare_repositories: bool = True
    ) -> Engine:
        """Start background work: the job runner and monitors (and the policy scheduler
        when ``run_scheduler``, default: the constructor's flag).

        ``prepare_repositories`` False (a command that waits for its one job): every
        repository is left as it is, neither mounted, write-tested and mode-repaired
        nor watched for capacity, no reaper tends restore mounts and NBD exports, and
        services are built as the job asks for them. That is the work of the engine
        that lives on (the daemon, the console: it builds every service here), and at
        50 repositories it cost a command seconds before its job began; the job itself
        still passes the write gate (RepositoryService.ready_for_new_data mounts and
        checks its repository)."""
        self.open()
        if run_scheduler is not None:
            self.run_scheduler = self._want_scheduler = run_scheduler
        if self.daemon is not None and self.daemon.running:
            self.run_scheduler = False  # the daemon's scheduler starts due runs
        if not self._started:
            if prepare_repositories:
                self.build_all()
            if self.run_jobs:
                self.jobs.start()
                # the engine that runs the jobs sends the notifications: a console
                # attached to a daemon would send each one a second time
                self.notifications.start()
            if prepare_repositories:
                self._start_repositories()
                # expiring restore mounts and NBD exports is the work of the engine
                # that lives on, like preparing repositories
                self.file_restore.start_reaper()
                self.exports.start_reaper()
            if self.run_scheduler:
                self.scheduler.start()
            if not self.run_jobs:
                self._watch_daemon()
            self._started = True
            self.bus.publish(
                Event(
                    kind="engine.started",
                    message=f"engine {self.jobs.owner} started",
                    source="engine",
                    level="debug",
                )
            )
        return self

    # -- the daemon that owns long-lived work ---------------------------------------

    def attach_daemon(self, status: DaemonStatus) -> None:
        """Before start(): record what ``ensure_daemon`` found. With a daemon running,
        this engine claims no job and runs no scheduler (the daemon does), and the
        mounts and exports it starts outlive it; without one it works as it always
        did (``status.problem`` says why, for the console's banner)."""
        self.daemon = status
        client = status.running
        self.run_jobs = not client
        self.file_restore.set_detach(client)
        self.exports.set_detach(client)

    def _watch_daemon(self) -> None:
        self._watch_stop.clear()
        self._watch = threading.Thread(
            target=self._watch_loop, name="sendense-daemon-watch", daemon=True
        )
        self._watch.start()

    def _watch_loop(self) -> None:
        while not self._watch_stop.wait(DAEMON_CHECK_SECONDS):
            if self.check_daemon():
                return

    def check_daemon(self) -> bool:
        """Whether this client engine had to take over: its daemon is gone, so it now
        claims jobs itself and keeps the mounts and exports it starts from here on.
        (A daemon that replaced it, e.g. systemd's, is simply followed.)"""
        status = self.daemon
        if status is None or not status.running or not self._started:
            return False
        from engine.daemon import DaemonStatus, find_daemon

        info = find_daemon(self.settings)
        if info is not None:
            if info.ready and info.pid != status.pid:
                self.daemon = DaemonStatus(pid=info.pid, log_file=status.log_file)
            return False
        problem = f"the sendense daemon (pid {status.pid}) stopped"
        self.attach_daemon(DaemonStatus(problem=problem, log_file=status.log_file))
        self.jobs.start()
        self.notifications.start()
        if self._want_scheduler:
            self.run_scheduler = True
            self.scheduler.start()
        self.bus.publish(
            Event(
                kind="daemon.lost",
                message=f"{problem}: this console runs its work itself now",
                source="engine",
                level="warning",
            )
        )
        return True

    def work_here(self) -> list[str]:
        """What runs in this engine and stops when it closes, in words ("job 7",
        "restore mount 3", "NBD export point-12"); empty when a daemon or a keeper
        owns everything it started."""
        work = [f"job {job_id}" for job_id in self.jobs.running_ids()]
        file_restore, exports = self._existing("file_restore"), self._existing("exports")
        try:
            if file_restore is not None:
                work += [f"restore mount {mount_id}" for mount_id in file_restore.own_mounts()]
            if exports is not None:
                work += [f"NBD export {name}" for name in exports.own_exports()]
        except CatalogUnavailable:
            if exports is not None:
                work += [f"NBD export #{export_id}" for export_id in exports.own_servers()]
        return work

    def close(self) -> None:
        self._watch_stop.set()
        if self._watch is not None:
            self._watch.join(timeout=5)
            self._watch = None
        # what was never built was never started: closing builds nothing
        if self._started:
            for name in ("scheduler", "capacity"):
                if (service := self._existing(name)) is not None:
                    service.stop()
            self.jobs.stop()
            self._started = False
        # also when started on its own (tests, a console's action)
        if (notifications := self._existing("notifications")) is not None:
            notifications.stop()
        self.writers.close()
        if self._opened:
            for name in ("file_restore", "exports"):
                service = self._existing(name)
                if service is None:
                    continue
                try:
                    service.close()
                except CatalogUnavailable:
                    pass  # logged once by the catalog
                except Exception:
                    log.exception("stopping restore mounts / NBD exports")
        self.catalog.dispose()
        self._opened = False

    def __enter__(self) -> Engine:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
