"""Guided setup for a repository: choose the type, fill only that type's fields
(checked as you type), test the connection and a write, see the capacity found,
then save. Nothing is saved until the test passes, unless the operator chooses
"Save disabled" (kept, but used by nothing until it is fixed and enabled).

"Import an existing repository" is the path for a repository that already holds
backups (after a catalog loss, on a new appliance, a moved disk): the test then
also requires its layout (nothing is created), and saving queues the import job
that reads its chains back into the catalog (engine.services.imports)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, RadioButton, RadioSet, Static
from textual.worker import Worker, WorkerState

from engine.errors import SendenseError
from engine.services.repositories import (
    FIELDS_BY_KIND,
    KIND_LABELS,
    RepositorySpec,
    TestReport,
    validate_field,
)
from engine.views import Repository
from sendense_tui.format import printable, safe_text
from sendense_tui.screens.repositories import describe_report
from sendense_tui.styles import STYLES_DIR

#: field -> (label, placeholder); the export field is labelled per kind
FIELDS: dict[str, tuple[str, str]] = {
    "name": ("Name", "e.g. primary"),
    "path": ("Directory", "/srv/backups"),
    "server": ("Server", "host name or IP address"),
    "export": ("Export / share", ""),
    "port": ("Port", "default"),
    "nfs_version": ("NFS version", "4.1"),
    "mount_options": ("Mount options", "optional, comma separated"),
    "username": ("User", ""),
    "password": ("Password", ""),
    "domain": ("Domain", "optional"),
    "smb_version": ("SMB version", "3.0"),
}
DEFAULTS = {"nfs_version": "4.1", "smb_version": "3.0"}


@dataclass(frozen=True)
class Refused:
    """A test or save worker's answer when the engine's whole check found problems
    (field -> sentence): nothing was tested or saved."""

    problems: dict[str, str]


class RepoWizard(ModalScreen[Repository | None]):
    CSS_PATH = STYLES_DIR / "repositories.tcss"
    BINDINGS = [Binding("escape", "close", "Cancel")]

    def __init__(self, edit: Repository | None = None) -> None:
        super().__init__()
        self.editing = edit
        self.kind = edit.kind if edit else "local"
        self._passed = False
        self.saved: Repository | None = None
        #: the import job queued by saving in "import an existing repository" mode
        self.import_job: Any = None

    # -- layout ------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        title = f"Edit repository {self.editing.name}" if self.editing else "Add a repository"
        with Vertical(id="wizard"):
            yield Label(title, id="wizard-title")
            with RadioSet(id="kind", disabled=self.editing is not None):
                for kind, label in KIND_LABELS.items():
                    yield RadioButton(label, id=f"kind-{kind}", value=kind == self.kind)
            with VerticalScroll(id="wizard-fields"):
                for name, (label, placeholder) in FIELDS.items():
                    with Horizontal(classes="field-row", id=f"row-{name}"):
                        yield Label(label, classes="field-label")
                        yield Input(
                            value=DEFAULTS.get(name, ""),
                            placeholder=placeholder,
                            password=name == "password",
                            id=f"f-{name}",
                            classes="field-input",
                            compact=True,
                        )
                    yield Static("", id=f"err-{name}", classes="field-error -empty")
                yield Checkbox(
                    "create the directory if it does not exist", id="f-create", compact=True
                )
                yield Checkbox(
                    "import an existing repository (read its backups back)",
                    id="f-import",
                    compact=True,
                )
            yield Static(Text("Fill in the fields, then Test.", style="dim"), id="wizard-result")
            with Horizontal(id="wizard-buttons"):
                yield Button("Test", id="test", variant="primary", compact=True)
                yield Button("Save", id="save", variant="success", disabled=True, compact=True)
                yield Button("Save disabled", id="save-disabled", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_mount(self) -> None:
        # the scrolling box of fields is no stop of its own: Tab goes field to field
        # (a focused field scrolls into view)
        self.query_one("#wizard-fields").can_focus = False
        if self.editing is not None:
            # the stored fields come from the catalog: read off the UI thread
            editing = self.editing
            engine: Any = self.app.engine  # type: ignore[attr-defined]
            self.run_worker(
                lambda: engine.repositories.spec_of(editing),
                group="wizard-load",
                thread=True,
                exit_on_error=False,
            )
            self.query_one("#f-name", Input).disabled = True
            self.query_one("#f-password", Input).placeholder = "unchanged"
        self._show_kind()
        self.query_one("#f-name" if self.editing is None else "#test").focus()

    def _show_kind(self) -> None:
        wanted = set(FIELDS_BY_KIND[self.kind])
        for name in FIELDS:
            self.query_one(f"#row-{name}").display = name in wanted
            if name not in wanted:
                self._field_error(name, None)
        importing = self._importing()
        self.query_one("#f-create").display = self.kind == "local" and not importing
        self.query_one("#f-import").display = self.editing is None
        self.query_one("#save-disabled").display = not importing
        export = self.query_one("#row-export Label", Label)
        export.update("Export path" if self.kind == "nfs" else "Share")
        self.query_one("#f-export", Input).placeholder = (
            "/srv/backups" if self.kind == "nfs" else "backups"
        )
        self._invalidate()

    # -- typing ---------------------------------------------------------------------

    def on_radio_set_changed(self, event: RadioSet.Changed) -> None:
        pressed = event.pressed.id or ""
        self.kind = pressed.removeprefix("kind-")
        self._show_kind()

    def on_input_changed(self, event: Input.Changed) -> None:
        name = (event.input.id or "").removeprefix("f-")
        if name not in FIELDS:
            return
        problem = validate_field(self.kind, name, event.value) if event.value else None
        self._field_error(name, problem)
        self._invalidate()

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        if event.checkbox.id == "f-import":
            self._show_kind()
        self._invalidate()

    def _importing(self) -> bool:
        return self.editing is None and self.query_one("#f-import", Checkbox).value

    def _field_error(self, name: str, problem: str | None) -> None:
        err = self.query_one(f"#err-{name}", Static)
        err.update(safe_text(problem or ""))
        err.set_class(not problem, "-empty")

    def _invalidate(self) -> None:
        self._passed = False
        self.query_one("#save", Button).disabled = True

    def spec(self) -> RepositorySpec:
        values: dict[str, Any] = {
            name: self.query_one(f"#f-{name}", Input).value.strip() for name in FIELDS
        }
        values["password"] = self.query_one("#f-password", Input).value  # spaces count
        port = values.pop("port")
        return RepositorySpec(
            kind=self.kind,
            port=int(port) if port.isascii() and port.isdigit() else None,
            create=self.query_one("#f-create", Checkbox).value and not self._importing(),
            **values,
        )

    def _fill(self, spec: RepositorySpec) -> None:
        for name in FIELDS:
            value = getattr(spec, name)
            self.query_one(f"#f-{name}", Input).value = "" if value is None else str(value)
        self._invalidate()

    def _checked(self, spec: RepositorySpec, then: Any) -> Any:
        """Worker side: the engine's whole check (the one ``repo add`` runs: the fields,
        a system directory, a taken name, which reads the catalog), then ``then()``."""
        engine: Any = self.app.engine  # type: ignore[attr-defined]
        problems: dict[str, str] = engine.repositories.validate(spec, existing=self.editing)
        return Refused(problems) if problems else then()

    def _show_problems(self, problems: dict[str, str]) -> None:
        """Each problem under its field (and the others cleared)."""
        for name in FIELDS_BY_KIND[self.kind]:
            self._field_error(name, problems.get(name))
        if problems:
            self._result(Text("Fix the fields marked in red first.", style="bold red"))

    def _result(self, text: Text | str) -> None:
        self.query_one("#wizard-result", Static).update(text)

    # -- buttons ------------------------------------------------------------------------

    def on_button_pressed(self, event: Button.Pressed) -> None:
        button = event.button.id
        if button == "cancel":
            self.dismiss(None)
        elif button == "test":
            self.action_test()
        elif button == "save":
            self._save(enabled=True)
        elif button == "save-disabled":
            self._save(enabled=False)

    def action_close(self) -> None:
        self.dismiss(None)

    def action_test(self) -> None:
        spec = self.spec()
        self._result(Text("Testing: server, mount, write…", style="italic"))
        engine: Any = self.app.engine  # type: ignore[attr-defined]
        editing = self.editing
        importing = self._importing()

        def test() -> TestReport:
            if editing is not None and not spec.password:
                # decrypting the stored password reads the key file: a worker's job
                spec.password = engine.repositories.spec_of(editing, with_password=True).password
            return engine.repositories.test(  # type: ignore[no-any-return]
                spec, existing=editing, import_layout=importing
            )

        self.run_worker(
            lambda: self._checked(spec, test),
            group="wizard-test",
            thread=True,
            exit_on_error=False,
        )

    def _save(self, *, enabled: bool) -> None:
        spec = self.spec()
        if enabled and not self._passed:
            self._result(
                Text("Test first: it must pass before saving (or Save disabled).", style="bold red")
            )
            return
        engine: Any = self.app.engine  # type: ignore[attr-defined]
        if self.editing is not None:
            repo = self.editing
            work = lambda: engine.repositories.edit(repo, spec, actor="console")  # noqa: E731
        elif self._importing():

            def work() -> Repository:
                repo = engine.imports.add_repository(spec, actor="console")
                self.import_job = engine.imports.submit(repo.id, actor="console")
                return repo  # type: ignore[no-any-return]

        else:
            work = lambda: engine.repositories.add(  # noqa: E731
                spec, test=False, enabled=enabled, actor="console"
            )
        self.run_worker(
            lambda: self._checked(spec, work), group="wizard-save", thread=True, exit_on_error=False
        )

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if event.state not in (WorkerState.SUCCESS, WorkerState.ERROR):
            return
        if event.state == WorkerState.ERROR:
            error = worker.error
            text = error.for_humans() if isinstance(error, SendenseError) else repr(error)
            self._result(Text(printable(text, keep_newlines=True), style="bold red"))
            return
        if worker.group == "wizard-load":
            self._fill(worker.result)  # type: ignore[arg-type]
            return
        if isinstance(worker.result, Refused):
            self._show_problems(worker.result.problems)
            return
        if worker.group in ("wizard-test", "wizard-save"):
            self._show_problems({})
        if worker.group == "wizard-test":
            report: TestReport = worker.result  # type: ignore[assignment]
            self._result(describe_report(report))
            self._passed = report.ok
            self.query_one("#save", Button).disabled = not report.ok
            if report.ok:
                self.query_one("#save", Button).focus()
        elif worker.group == "wizard-save":
            self.saved = worker.result  # type: ignore[assignment]
            if self.import_job is not None:
                self.app.notify(
                    f"Import job {self.import_job.id} queued: every file is checked against "
                    "its manifest (Jobs shows the progress).",
                    title=f"Importing {self.saved.name if self.saved else ''}",
                )
            self.dismiss(self.saved)
