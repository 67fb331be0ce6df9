"""Repositories screen and the guided setup wizard: snapshots on the seeded catalog
(fixed clock) and Pilot tests for a success and three failures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from textual.widgets import Button, Checkbox, Input, Static

from engine.runtime import Engine
from sendense_tui.app import SendenseApp
from sendense_tui.screens.repo_wizard import RepoWizard
from tests.plugins.netservers import free_port_number
from tests.tui.conftest import keys_then_settle, settle


def test_repositories_screen_snapshot(snap_compare, make_app) -> None:
    assert snap_compare(make_app(), terminal_size=(100, 30), run_before=keys_then_settle("2"))


def test_wizard_snapshot(snap_compare, make_app) -> None:
    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=keys_then_settle("2", "a"))


def test_wizard_cifs_fields_snapshot(snap_compare, make_app) -> None:
    async def run_before(pilot) -> None:  # type: ignore[no-untyped-def]
        await settle(pilot)
        await pilot.press("2", "a")
        await settle(pilot)
        await pilot.click("#kind-cifs")
        await settle(pilot)
        pilot.app.screen.query_one("#f-server", Input).value = "bad host!"
        await settle(pilot)

    assert snap_compare(make_app(), terminal_size=(100, 34), run_before=run_before)


def test_remove_confirmation_snapshot(snap_compare, make_app) -> None:
    assert snap_compare(
        make_app(), terminal_size=(80, 24), run_before=keys_then_settle("2", "j", "D")
    )


async def _open_wizard(app: SendenseApp, pilot) -> RepoWizard:  # type: ignore[no-untyped-def]
    await settle(pilot)
    await pilot.press("2")
    await settle(pilot)
    await pilot.press("a")
    await settle(pilot)
    assert isinstance(app.screen, RepoWizard)
    return app.screen


async def _fill(pilot, wizard: RepoWizard, **values: str) -> None:  # type: ignore[no-untyped-def]
    for name, value in values.items():
        wizard.query_one(f"#f-{name}", Input).value = value
    await pilot.pause()


async def _press(pilot, wizard: RepoWizard, button: str) -> None:  # type: ignore[no-untyped-def]
    wizard.query_one(f"#{button}", Button).press()
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def _result(wizard: RepoWizard) -> str:
    return str(wizard.query_one("#wizard-result", Static).content)


async def test_wizard_success_tests_then_saves(
    make_app: Callable[..., SendenseApp], demo_engine: Engine, tmp_path: Path
) -> None:
    app = make_app()
    async with app.run_test(size=(100, 34)) as pilot:
        wizard = await _open_wizard(app, pilot)
        target = tmp_path / "new-repo"
        await _fill(pilot, wizard, name="fresh", path=str(target))
        wizard.query_one("#f-create", Checkbox).value = True
        await pilot.pause()
        assert wizard.query_one("#save", Button).disabled  # not before a passing test
        await _press(pilot, wizard, "test")
        text = _result(wizard)
        assert "✓ write" in text and "Capacity found:" in text
        assert not wizard.query_one("#save", Button).disabled
        await _press(pilot, wizard, "save")
        await settle(pilot)
        assert not isinstance(app.screen, RepoWizard)
    repo = demo_engine.repositories.get("fresh")
    assert (repo.kind, repo.path, repo.enabled) == ("local", str(target), True)
    assert (target / "chains").is_dir()


async def test_wizard_missing_path_is_shown_and_nothing_saved(
    make_app: Callable[..., SendenseApp], demo_engine: Engine, tmp_path: Path
) -> None:
    app = make_app()
    async with app.run_test(size=(100, 34)) as pilot:
        wizard = await _open_wizard(app, pilot)
        await _fill(pilot, wizard, name="nope", path=str(tmp_path / "missing"))
        await _press(pilot, wizard, "test")
        assert f"{tmp_path}/missing does not exist" in _result(wizard)
        assert "choose 'create it'" in _result(wizard)
        assert wizard.query_one("#save", Button).disabled
    assert "nope" not in [r.name for r in demo_engine.repositories.list()]


async def test_wizard_file_instead_of_directory(
    make_app: Callable[..., SendenseApp], demo_engine: Engine, tmp_path: Path
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    app = make_app()
    async with app.run_test(size=(100, 34)) as pilot:
        wizard = await _open_wizard(app, pilot)
        await _fill(pilot, wizard, name="filerepo", path=str(afile))
        await _press(pilot, wizard, "test")
        assert f"{afile} is a file, not a directory" in _result(wizard)
        assert wizard.query_one("#save", Button).disabled
    assert "filerepo" not in [r.name for r in demo_engine.repositories.list()]


async def test_wizard_unreachable_server_then_save_disabled(
    make_app: Callable[..., SendenseApp], demo_engine: Engine
) -> None:
    port = free_port_number()
    app = make_app()
    async with app.run_test(size=(100, 34)) as pilot:
        wizard = await _open_wizard(app, pilot)
        await pilot.click("#kind-nfs")
        await pilot.pause()
        assert not wizard.query_one("#row-path").display
        assert wizard.query_one("#row-server").display
        await _fill(
            pilot, wizard, name="nas", server="127.0.0.1", export="/backups", port=str(port)
        )
        await _press(pilot, wizard, "test")
        text = _result(wizard)
        assert f"server 127.0.0.1 is unreachable on port {port}: connection refused" in text
        assert wizard.query_one("#save", Button).disabled
        await _press(pilot, wizard, "save-disabled")
        await settle(pilot)
    repo = demo_engine.repositories.get("nas")
    assert (repo.kind, repo.enabled, repo.state) == ("nfs", False, "disabled")


async def test_validation_as_you_type(make_app: Callable[..., SendenseApp]) -> None:
    app = make_app()
    async with app.run_test(size=(100, 34)) as pilot:
        wizard = await _open_wizard(app, pilot)
        await _fill(pilot, wizard, path="relative/path")
        err = wizard.query_one("#err-path", Static)
        assert str(err.content) == "the path must be absolute (start with /)"
        await _fill(pilot, wizard, path="/srv/ok")
        assert str(err.content) == ""


async def test_wizard_refuses_system_directories_with_the_engines_sentence(
    make_app: Callable[..., SendenseApp], demo_engine: Engine, tmp_path: Path
) -> None:
    """The same check as `sendense repo add`: shown under the field on Test, and again
    on "Save disabled" (which skips the test); nothing is written or saved."""
    (tmp_path / "link-to-etc").symlink_to("/etc")
    target = tmp_path / "link-to-etc" / f"sendense-wizard-{id(tmp_path)}"
    expected = demo_engine.repositories.path_error(str(target))
    assert expected and "inside the system directory /etc" in expected
    app = make_app()
    async with app.run_test(size=(100, 34)) as pilot:
        wizard = await _open_wizard(app, pilot)
        await _fill(pilot, wizard, name="sneaky", path=str(target))
        wizard.query_one("#f-create", Checkbox).value = True
        await _press(pilot, wizard, "test")
        assert str(wizard.query_one("#err-path", Static).content) == expected
        assert "Fix the fields marked in red first." in _result(wizard)
        await _press(pilot, wizard, "save-disabled")
        assert str(wizard.query_one("#err-path", Static).content) == expected
        await _fill(pilot, wizard, name="1", path="/")
        await _press(pilot, wizard, "test")
        assert "cannot be all digits" in str(wizard.query_one("#err-name", Static).content)
        assert "/ is a system directory" in str(wizard.query_one("#err-path", Static).content)
    assert not target.exists() and not Path("/.sendense").exists()
    assert {"sneaky", "1"}.isdisjoint(r.name for r in demo_engine.repositories.list())


async def test_wizard_imports_an_existing_repository_and_queues_its_import(
    make_app: Callable[..., SendenseApp], demo_engine: Engine, tmp_path: Path
) -> None:
    existing = tmp_path / "moved-disk"
    (existing / "chains").mkdir(parents=True)
    bare = tmp_path / "not-a-repository"
    bare.mkdir()
    app = make_app()
    async with app.run_test(size=(100, 34)) as pilot:
        wizard = await _open_wizard(app, pilot)
        wizard.query_one("#f-import", Checkbox).value = True
        await pilot.pause()
        assert not wizard.query_one("#f-create").display  # nothing is created on import
        assert not wizard.query_one("#save-disabled").display
        # a directory without a repository in it is refused, and nothing is written there
        await _fill(pilot, wizard, name="moved", path=str(bare))
        await _press(pilot, wizard, "test")
        assert "holds no Sendense repository: it has no chains/ directory" in _result(wizard)
        assert wizard.query_one("#save", Button).disabled
        assert list(bare.iterdir()) == []
        await _fill(pilot, wizard, path=str(existing))
        await _press(pilot, wizard, "test")
        assert "✓ layout" in _result(wizard)
        await _press(pilot, wizard, "save")
        await settle(pilot)
        assert not isinstance(app.screen, RepoWizard)
        shown = [n.message for n in app._notifications]
    repo = demo_engine.repositories.get("moved")
    assert (repo.path, repo.enabled) == (str(existing), True)
    [job] = demo_engine.job_store.list(kind="repository.import")
    assert job.params["repository"] == repo.id and job.state == "queued"
    assert any(f"Import job {job.id} queued" in m for m in shown)


async def test_details_say_whether_the_repository_locks_backups_and_whether_it_can(
    make_app: Callable[..., SendenseApp], demo_engine: Engine
) -> None:
    """ "immutable yes" said only that the filesystem takes the flag, not that anything
    was locked: the details now say both, separately."""
    store, now = demo_engine.repository_store, demo_engine.clock.now()
    caps = {"immutable": True, "reflink": False, "fs_type": "ext4"}
    store.update(store.get("primary").id, now, capabilities=caps)  # can, does not
    vault = store.get("offsite-nfs")
    store.update(vault.id, now, immutable=True, immutable_days=30, capabilities=caps)
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("2")
        await settle(pilot)
        table = app.screen.query_one("#repositories")
        shown: dict[str, str] = {}
        for name in ("primary", "offsite-nfs"):
            table.move_cursor(row=table.get_row_index(str(store.get(name).id)))  # type: ignore[attr-defined]
            await settle(pilot)
            shown[name] = str(app.screen.query_one("#repo-detail", Static).content)
        assert "does not lock backups" in shown["primary"]
        assert "filesystem supports immutable files" in shown["primary"]
        assert "locks backups for 30 days" in shown["offsite-nfs"]
        assert "filesystem supports immutable files" in shown["offsite-nfs"]
        assert "immutable yes" not in shown["primary"] + shown["offsite-nfs"]


async def test_the_backups_column_counts_the_copies_a_repository_holds(
    make_app: Callable[..., SendenseApp], demo_engine: Engine
) -> None:
    from textual.widgets import DataTable

    store, now = demo_engine.repository_store, demo_engine.clock.now()
    primary, offsite = store.get("primary"), store.get("offsite-nfs")
    _chain, point = demo_engine.chain_store.add_full(
        repository_id=primary.id, vm_name="web01", disk_name="sda", directory="web01/sda/1",
        now=now, backup={"path": "web01/sda/1/0.qcow2", "state": "complete", "point_time": now},
    )  # fmt: skip
    for state in ("completed", "failed"):  # a failed (or cancelled) copy is no backup
        row = demo_engine.copy_store.create_copy(
            backup_id=point.id, destination_repository_id=offsite.id, path="web01/sda/1/0.qcow2",
            size=1, now=now,
        )  # fmt: skip
        demo_engine.copy_store.update_copy(row.id, state=state)
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("2")
        await settle(pilot)
        table = app.screen.query_one("#repositories", DataTable)
        backups = {name: str(table.get_row(str(store.get(name).id))[-1]) for name in
                   ("primary", "offsite-nfs", "archive-smb")}  # fmt: skip
        assert backups == {"primary": "1", "offsite-nfs": "1", "archive-smb": "0"}
