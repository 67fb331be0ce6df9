"""The Engine: settings, catalog, event bus, job runner and services, wired once.

The console and the CLI build one Engine, ``open()`` it (connect, migrate) and
``start()`` it (job runner, monitors). Everything an operator can do is a
method of a service hanging off it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from engine.catalog import Catalog
from engine.catalog.audit import AuditStore
from engine.catalog.jobs import JobStore
from engine.catalog.repositories import RepositoryStore
from engine.clock import SYSTEM_CLOCK, Clock
from engine.config import Settings, load_settings
from engine.errors import CatalogUnavailable, ConfigError
from engine.events import Event, EventBus
from engine.jobs import JobRunner
from engine.unrecorded import UnrecordedOutcomes

log = logging.getLogger(__name__)


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
        self.jobs = JobRunner(
            self.job_store,
            self.bus,
            settings=settings.jobs,
            clock=clock,
            owner=owner,
            # outcomes of jobs whose catalog went away, for the next engine here
            unrecorded=UnrecordedOutcomes(settings.state_dir / "unrecorded-jobs"),
        )
        self._wire_repositories()
        self._wire_copies()
        self._wire_restore()
        self._wire_backups()
        self._wire_policies()
        self._opened = False
        self._started = False

    def _wire_backups(self) -> None:
        """Backups (``self.backups``), the chain manager (``self.chains``) and whole-disk
        restore (``self.restores``); job kinds backup, consolidate, restore_disk."""
        from engine.catalog.chains import ChainStore
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

        self.chain_store = ChainStore(self.catalog)
        self.chains = ChainService(
            self.chain_store,
            self.repository_store,
            self.bus,
            settings=self.settings,
            clock=self.clock,
            repository_check=writable,
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
        )
        self.restores = DiskRestoreService(
            self.chain_store, self.repository_store, self.jobs, self.bus, clock=self.clock
        )
        self.backups.register()
        self.restores.register()
        self.chains.register(self.jobs)

    def _wire_policies(self) -> None:
        """Immutability locks (``self.locks``), retention (``self.retention``), policies
        (``self.policies``), 3-2-1 compliance (``self.compliance``) and the scheduler
        (``self.scheduler``); job kinds policy_run and locks.maintain."""
        from engine.catalog.locks import LockStore
        from engine.catalog.policies import PolicyStore
        from engine.services.compliance import ComplianceService
        from engine.services.immutability import LockService
        from engine.services.policies import PolicyService
        from engine.services.retention import RetentionService
        from engine.services.scheduler import Scheduler

        self.lock_store = LockStore(self.catalog)
        self.locks = LockService(self.lock_store, self.repository_store, self.bus, clock=self.clock)
        self.locks.subscribe(self.chain_store, self.copy_store)
        self.locks.register(self.jobs)
        self.retention = RetentionService(
            self.chain_store,
            self.copy_store,
            self.repository_store,
            self.bus,
            chains=self.chains,
            locks=self.locks,
            clock=self.clock,
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
        self.copies.lock_check = self.locks.check_supported

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
        self.mounts = MountManager(
            self.settings.mount_root, self.settings.state_dir / "credentials"
        )
        self.repositories = RepositoryService(
            self.repository_store,
            self.job_store,
            self.bus,
            self.mounts,
            SecretBox(self.settings.state_dir / "secret.key"),
            self.capacity,
            clock=self.clock,
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

    def _wire_restore(self) -> None:
        """File-level restore (``self.file_restore``) and NBD exports (``self.exports``)."""
        from engine.services.exports import ExportService
        from engine.services.file_restore import FileRestoreService

        self.file_restore = FileRestoreService(
            self.catalog, self.bus, self.settings, clock=self.clock
        )
        self.exports = ExportService(self.catalog, self.bus, self.settings, clock=self.clock)
        self.jobs.register("restore.files", self.file_restore.run_extract_job)

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
        from engine.catalog.copies import CopyStore
        from engine.catalog.policies import ScheduleStore
        from engine.services.copy import CopyService
        from engine.services.verify import VerifyService

        self.copy_store = CopyStore(self.catalog)
        #: schedule marks: scheduled copy rules, the verify schedule, raised alerts
        self.schedule_store = ScheduleStore(self.catalog)
        self.verifier = VerifyService(
            self.copy_store,
            self.repository_store,
            self.jobs,
            self.bus,
            clock=self.clock,
            reverify_days=self.settings.verify.reverify_days,
        )
        self.copies = CopyService(
            self.copy_store,
            self.repository_store,
            self.jobs,
            self.bus,
            clock=self.clock,
            verifier=self.verifier,
            destination_check=self.repositories.ensure_writable_mount,
            room_check=self.capacity.ensure_room,
        )
        self.copies.marks = self.schedule_store
        self.verifier.register()
        self.copies.register()

    @classmethod
    def from_environment(cls, **kwargs: object) -> Engine:
        return cls(load_settings(), **kwargs)  # type: ignore[arg-type]

    def open(self) -> Engine:
        """Connect to the catalog and migrate it; create the state directory."""
        if self._opened:
            return self
        for directory in (self.settings.state_dir, self.settings.log_dir):
            try:
                Path(directory).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(
                    f"state directory {directory} cannot be created: {exc.strerror}",
                    hint="set SENDENSE_STATE_DIR or [paths] state_dir to a writable place",
                ) from None
        # a missing SQLite catalog is only started afresh when no backups show that
        # one existed (the default repository's chains, the catalog's marker file)
        self.catalog.open(evidence=catalog_evidence(self.settings))
        self._opened = True
        # jobs whose catalog went away under a process here are settled before
        # anything lists or claims them
        self.jobs.settle_unrecorded()
        self._cleanup_restore()
        return self

    def start(self, *, run_scheduler: bool | None = None) -> Engine:
        """Start background work: the job runner and monitors (and the policy scheduler
        when ``run_scheduler``, default: the constructor's flag)."""
        self.open()
        if run_scheduler is not None:
            self.run_scheduler = run_scheduler
        if not self._started:
            self.jobs.start()
            self._start_repositories()
            self.file_restore.start_reaper()
            if self.run_scheduler:
                self.scheduler.start()
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

    def close(self) -> None:
        if self._started:
            self.scheduler.stop()
            self.capacity.stop()
            self.jobs.stop()
            self._started = False
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
