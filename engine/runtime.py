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

import logging
import os
import threading
from pathlib import Path

from engine.catalog import Catalog
from engine.catalog.audit import AuditStore
from engine.catalog.chains import ChainStore
from engine.catalog.jobs import JobStore
from engine.catalog.repositories import RepositoryStore
from engine.catalog.writers import WriterStore
from engine.clock import SYSTEM_CLOCK, Clock
from engine.config import Settings, load_settings
from engine.daemon import DaemonStatus, find_daemon
from engine.errors import CatalogUnavailable, ConfigError
from engine.events import Event, EventBus
from engine.jobs import JobRunner, engine_owner
from engine.private import ModeRepair, make_private_dir, repair_entries, repair_tree
from engine.states import JobKind
from engine.unrecorded import UnrecordedOutcomes
from engine.writers import DiskWriters

log = logging.getLogger(__name__)

#: how often a client engine looks whether its daemon is still there
DAEMON_CHECK_SECONDS = 5.0


def catalog_evidence(settings: Settings) -> list[Path]:
    """Places whose files show that a catalog existed (see Catalog.open)."""
    from engine.services.backup import CHAINS_DIR

    return [Path(settings.default_repository) / CHAINS_DIR]


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
        self.catalog = Catalog(settings.db_url)
        self.audit = AuditStore(self.catalog)
        self.bus = EventBus(self.audit, clock)
        self.job_store = JobStore(self.catalog)
        self.repository_store = RepositoryStore(self.catalog)
        self.chain_store = ChainStore(self.catalog)
        owner = owner or engine_owner()
        #: one writer per VM disk: backup, consolidate, delete, retention, import
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
        self._wire_locks()
        self._wire_repositories()
        self._wire_images()
        self._wire_copies()
        self._wire_restore()
        self._wire_backups()
        self._wire_policies()
        self._wire_imports()
        self._wire_metrics()
        self._wire_api()
        self._wire_notifications()
        from engine.services.listings import ListingService

        #: pages of restore points, chains, jobs and events (CLI listings, the API)
        self.listings = ListingService(
            self.chain_store, self.job_store, self.audit, self.repository_store
        )
        self._opened = False
        self._started = False
        #: the daemon that owns long-lived work, when this engine is its client
        self.daemon: DaemonStatus | None = None
        #: False while a daemon runs this engine's jobs
        self.run_jobs = True
        self._want_scheduler = run_scheduler
        self._watch_stop = threading.Event()
        self._watch: threading.Thread | None = None

    def _wire_backups(self) -> None:
        """Backups (``self.backups``), the chain manager (``self.chains``) and whole-disk
        restore (``self.restores``); job kinds backup, consolidate, restore_disk."""
        from engine.services.backup import BackupService
        from engine.services.chains import ChainService
        from engine.services.restore_disk import DiskRestoreService

        def writable(repo: object) -> None:
            service = getattr(self, "repositories", None)
            gate = getattr(service, "ready_for_new_data", None) or getattr(
                service, "ensure_writable_mount", None
            )
            if gate is not None:
                gate(repo)

        self.chains = ChainService(
            self.chain_store,
            self.repository_store,
            self.bus,
            self.image_guard,
            settings=self.settings,
            clock=self.clock,
            repository_check=writable,
            verifier=self.verifier,
            owner=self.jobs.owner,
            writers=self.writers,
        )
        self.backups = BackupService(
            self.chain_store,
            self.repository_store,
            self.jobs,
            self.bus,
            self.chains,
            settings=self.settings,
            clock=self.clock,
            repository_check=writable,
            locks=self.locks,
            writers=self.writers,
        )
        self.restores = DiskRestoreService(
            self.chain_store,
            self.repository_store,
            self.jobs,
            self.bus,
            self.point_reader,
            clock=self.clock,
        )
        self.backups.register()
        self.restores.register()
        self.chains.register(self.jobs)

    def _wire_locks(self) -> None:
        """Immutability locks (``self.locks``): a step of the backup and copy jobs, which
        get it in their constructors; job kind locks.maintain."""
        from engine.catalog.locks import LockStore
        from engine.services.immutability import LockService

        self.lock_store = LockStore(self.catalog)
        self.locks = LockService(self.lock_store, self.repository_store, self.bus, clock=self.clock)
        self.locks.register(self.jobs)

    def _wire_policies(self) -> None:
        """Retention (``self.retention``), policies (``self.policies``), 3-2-1 compliance
        (``self.compliance``) and the scheduler (``self.scheduler``); job kind
        policy_run."""
        from engine.catalog.policies import PolicyStore
        from engine.services.compliance import ComplianceService
        from engine.services.policies import PolicyService
        from engine.services.retention import RetentionService
        from engine.services.scheduler import VERIFY_ALERT_KINDS, Scheduler

        self.retention = RetentionService(
            self.chain_store,
            self.copy_store,
            self.repository_store,
            self.bus,
            chains=self.chains,
            locks=self.locks,
            clock=self.clock,
            writers=self.writers,
        )
        self.policy_store = PolicyStore(self.catalog)
        self.policies = PolicyService(
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
        self.policies.register()
        self.compliance = ComplianceService(
            self.chain_store,
            self.copy_store,
            self.repository_store,
            self.policy_store,
            locks=self.locks,
            clock=self.clock,
        )
        self.scheduler = Scheduler(
            self.policy_store,
            self.policies,
            self.bus,
            locks=self.locks,
            clock=self.clock,
            marks=self.schedule_store,
            copies=self.copies,
            verifier=self.verifier,
            verify_schedule=self.settings.verify.schedule,
        )
        # a failing copy rule raises (and a recovered one clears) its alert at once
        self.copies.alert_hook = self.scheduler.alert_hook(("rule_failing",))
        # a file found bad raises its critical alert at once, a good result clears it
        self.verifier.alert_hook = self.scheduler.alert_hook(VERIFY_ALERT_KINDS)

    def _wire_imports(self) -> None:
        """Reading repositories back from their files (``self.imports``): repository
        import (job kind repository.import) and ``chain check --fix``."""
        from engine.services.imports import RepositoryImportService

        self.imports = RepositoryImportService(
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
        self.imports.register()

    def _wire_metrics(self) -> None:
        """Prometheus metrics (``self.metrics``): the exposition of ``/metrics`` and
        ``sendense metrics``, read from the capacity readings and the catalog."""
        from engine.catalog.metrics import MetricsStore
        from engine.services.metrics import MetricsService

        self.metrics = MetricsService(
            MetricsStore(self.catalog),
            self.repository_store,
            self.capacity,
            reverify_days=self.settings.verify.reverify_days,
            clock=self.clock,
        )

    def _wire_api(self) -> None:
        """Tokens of the HTTP API (``self.api_tokens``); the daemon serves the API."""
        from engine.catalog.api_tokens import ApiTokenStore
        from engine.services.api_tokens import ApiTokenService

        self.api_tokens = ApiTokenService(ApiTokenStore(self.catalog), self.bus, clock=self.clock)

    def _wire_notifications(self) -> None:
        """Notification rules and their delivery (``self.notifications``); it delivers
        only where jobs run (started in start(), like the job runner)."""
        from engine.catalog.notifications import NotificationStore
        from engine.services.notify import NotificationService

        self.notification_store = NotificationStore(self.catalog)
        self.notifications = NotificationService(
            self.notification_store,
            self.bus,
            self.secrets,
            clock=self.clock,
            owner=self.jobs.owner,
        )

    def _wire_repositories(self) -> None:
        """Repositories (``self.repositories``), mounts and the capacity monitor
        (``self.capacity``)."""
        from engine.catalog.capacity import CapacityStore
        from engine.services.capacity import CapacityMonitor
        from engine.services.mounts import MountManager
        from engine.services.repositories import RepositoryService
        from engine.services.secrets import SecretBox

        self.capacity_store = CapacityStore(self.catalog)
        self.capacity = CapacityMonitor(
            self.repository_store,
            self.capacity_store,
            self.bus,
            self.settings.capacity,
            clock=self.clock,
        )
        #: encrypts secrets at rest (CIFS passwords, notification targets' secrets)
        self.secrets = SecretBox(self.settings.state_dir / "secret.key")
        self.mounts = MountManager(
            self.settings.mount_root, self.settings.state_dir / "credentials"
        )
        self.repositories = RepositoryService(
            self.repository_store,
            self.job_store,
            self.bus,
            self.mounts,
            self.secrets,
            self.capacity,
            clock=self.clock,
            locks=self.locks,
            own_directories=(self.settings.state_dir, self.settings.mount_root),
            default_repository=self.settings.default_repository,
        )

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

    def _wire_images(self) -> None:
        """The catalog's view of copies (``self.copy_store``), the header guard every
        qemu call on a point goes through (``self.image_guard``) and the choice of
        where a point is read from (``self.point_reader``)."""
        from engine.catalog.copies import CopyStore
        from engine.services.details import DetailService
        from engine.services.images import ImageGuard, PointReader

        self.copy_store = CopyStore(self.catalog)
        self.image_guard = ImageGuard(self.bus)
        self.point_reader = PointReader(self.chain_store, self.copy_store, self.image_guard)
        #: one thing in detail (a job and its log, a point and its files)
        self.details = DetailService(self.job_store, self.audit, self.chain_store, self.copy_store)

    def _wire_restore(self) -> None:
        """File-level restore (``self.file_restore``) and NBD exports (``self.exports``)."""
        from engine.services.exports import ExportService
        from engine.services.file_restore import FileRestoreService

        self.file_restore = FileRestoreService(
            self.catalog,
            self.bus,
            self.settings,
            self.point_reader,
            clock=self.clock,
            jobs=self.jobs,
        )
        self.exports = ExportService(
            self.catalog, self.bus, self.settings, self.point_reader, clock=self.clock
        )
        self.jobs.register(JobKind.RESTORE_FILES, self.file_restore.run_extract_job)

    def _cleanup_restore(self) -> None:
        """Mounts, loop devices and exports left by an engine that crashed."""
        from engine.errors import SendenseError

        for cleanup in (self.file_restore.cleanup_leftovers, self.exports.cleanup_leftovers):
            try:
                cleanup()
            except CatalogUnavailable:
                pass  # logged once by the catalog
            except SendenseError as exc:
                log.warning("restore cleanup at start: %s", exc)

    def _wire_copies(self) -> None:
        """Copy rules and copy jobs (``self.copies``), verification (``self.verifier``)."""
        from engine.catalog.policies import ScheduleStore
        from engine.services.copy import CopyService
        from engine.services.verify import VerifyService

        #: schedule marks: scheduled copy rules, the verify schedule, raised alerts
        self.schedule_store = ScheduleStore(self.catalog)
        self.verifier = VerifyService(
            self.copy_store,
            self.repository_store,
            self.jobs,
            self.bus,
            self.image_guard,
            clock=self.clock,
            reverify_days=self.settings.verify.reverify_days,
        )
        self.copies = CopyService(
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
        )
        self.copies.marks = self.schedule_store
        self.verifier.register()
        self.copies.register()

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
            for sentence in self.chains.recover():
                log.warning("%s", sentence)
        except SendenseError as exc:
            log.warning("recovering interrupted merges at start: %s", exc)

    def start(self, *, run_scheduler: bool | None = None) -> Engine:
        """Start background work: the job runner and monitors (and the policy scheduler
        when ``run_scheduler``, default: the constructor's flag)."""
        self.open()
        if run_scheduler is not None:
            self.run_scheduler = self._want_scheduler = run_scheduler
        if self.daemon is not None and self.daemon.running:
            self.run_scheduler = False  # the daemon's scheduler starts due runs
        if not self._started:
            if self.run_jobs:
                self.jobs.start()
                # the engine that runs the jobs sends the notifications: a console
                # attached to a daemon would send each one a second time
                self.notifications.start()
            self._start_repositories()
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
        self.file_restore.detach = client
        self.exports.detach = client

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
        try:
            work += [f"restore mount {mount_id}" for mount_id in self.file_restore.own_mounts()]
            work += [f"NBD export {name}" for name in self.exports.own_exports()]
        except CatalogUnavailable:
            work += [f"NBD export #{export_id}" for export_id in self.exports.own_servers()]
        return work

    def close(self) -> None:
        self._watch_stop.set()
        if self._watch is not None:
            self._watch.join(timeout=5)
            self._watch = None
        if self._started:
            self.scheduler.stop()
            self.capacity.stop()
            self.jobs.stop()
            self._started = False
        # also when started on its own (tests, a console's action)
        self.notifications.stop()
        self.writers.close()
        if self._opened:
            for stop in (self.file_restore.close, self.exports.close):
                try:
                    stop()
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
