"""Names, references and schedules an operator types: the rules every service shares.

- A name is never all digits and is matched whole (``"nas\\n"`` is not ``nas``).
- A reference is a name first, then ``#ID`` / ``ID``; an all-digit name made before
  the rule keeps working by name, and ``#ID`` always reaches the id (both backends).
- A cron expression that never fires is refused wherever a schedule is taken.
- Repository paths: system directories and Sendense's own are refused, through
  symbolic links too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import load_settings
from engine.cron import cron_error
from engine.errors import ConfigError, NotFoundError, ValidationError
from engine.names import ID_MAX, has_unsafe_chars, name_error, parse_id
from engine.runtime import Engine
from engine.services.policies import PolicySpec
from engine.services.repositories import RepositorySpec, repository_path_error


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("1", "cannot be all digits"),
        ("007", "cannot be all digits"),
        ("nas\n", "use letters, digits"),  # re's "$" would have let this one through
        ("nas\r", "use letters, digits"),
        ("na\x1bs", "use letters, digits"),
        (" nas", "use letters, digits"),
        ("#1", "use letters, digits"),
        ("[red]x", "use letters, digits"),
        ("x" * 65, "up to 64"),
        ("", "a name is required"),
    ],
)
def test_names_refused_with_one_sentence(text: str, problem: str) -> None:
    assert problem in (name_error(text) or "")


@pytest.mark.parametrize("text", ["nas", "r1", "1st-floor", "a.b_c-d", "x" * 64])
def test_names_accepted(text: str) -> None:
    assert name_error(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12", 12),
        ("#12", 12),
        ("0", None),
        ("#", None),
        ("1.0", None),
        ("-3", None),
        ("٣", None),  # Arabic-Indic three: str.isdigit() says yes, an id it is not
        ("²", None),
        (str(ID_MAX), ID_MAX),
        (str(ID_MAX + 1), None),  # beyond the id column: not an id, never an overflow
        ("9" * 40, None),
    ],
)
def test_parse_id(text: str, expected: int | None) -> None:
    assert parse_id(text) == expected


def test_unsafe_characters() -> None:
    for text in ("a\nb", "\x1b[2J", "a\rb", "\x9b", "\u202e", "\udcff", "\x7f", "\t"):
        assert has_unsafe_chars(text), repr(text)
    assert not has_unsafe_chars("web01/sda é [x] \\ 日本")


def test_references_resolve_name_first_then_id(engine: Engine, tmp_path: Path) -> None:
    """Both catalog backends: the one resolver behind repositories, copy rules,
    policies and exports."""
    store = engine.repository_store
    now = engine.clock.now()
    for name in ("alpha", "beta"):
        (tmp_path / name).mkdir()
    alpha = store.add(name="alpha", kind="local", path=str(tmp_path / "alpha"), now=now)
    # a name made before the rule, straight into the catalog: it is the id of alpha
    legacy = store.add(name=str(alpha.id), kind="local", path=str(tmp_path / "beta"), now=now)
    assert store.get(str(alpha.id)).id == legacy.id  # the name wins
    assert store.get(f"#{alpha.id}").id == alpha.id  # "#ID" always means the id
    assert store.get(alpha.id).id == alpha.id  # an int is an id
    assert store.get(str(legacy.id)).id == legacy.id  # no such name: the id
    assert store.get("alpha").id == alpha.id
    for missing in ("#999", "999", "gamma", "9" * 30, "#" + "9" * 30, "٣"):
        with pytest.raises(NotFoundError):
            store.get(missing)

    rules = engine.copy_store
    rule = rules.add_rule(
        name=str(legacy.id),
        now=now,
        source_repository_id=alpha.id,
        destination_repository_id=legacy.id,
    )
    other = rules.add_rule(
        name="offsite", now=now, source_repository_id=legacy.id, destination_repository_id=alpha.id
    )
    assert rules.get_rule(str(legacy.id)).id == rule.id
    assert rules.get_rule(f"#{other.id}").id == other.id
    assert rules.get_rule("offsite").id == other.id

    policies = engine.policy_store
    policy = policies.add(
        name=str(other.id),
        now=now,
        schedule="0 2 * * *",
        target_repository_id=alpha.id,
        sources=[],
    )
    assert policies.get(str(other.id)).id == policy.id
    assert policies.get(f"#{policy.id}").id == policy.id
    with pytest.raises(NotFoundError):
        policies.get("#999")


def test_new_names_are_never_all_digits(engine: Engine, tmp_path: Path) -> None:
    (tmp_path / "main").mkdir()
    (tmp_path / "off").mkdir()
    problems = engine.repositories.validate(RepositorySpec(name="12", path=str(tmp_path / "main")))
    assert "cannot be all digits" in problems["name"]
    with pytest.raises(ValidationError, match="cannot be all digits"):
        engine.repositories.add(RepositorySpec(name="12", path=str(tmp_path / "main")))
    assert engine.repositories.list() == []

    engine.repository_store.add(
        name="main", kind="local", path=str(tmp_path / "main"), now=engine.clock.now()
    )
    engine.repository_store.add(
        name="off", kind="local", path=str(tmp_path / "off"), now=engine.clock.now()
    )
    with pytest.raises(ValidationError, match="cannot be all digits"):
        engine.copies.add_rule(name="7", source="main", destination="off")
    with pytest.raises(ValidationError, match="use letters, digits"):
        engine.copies.add_rule(name="r\n7", source="main", destination="off")
    assert engine.copies.list_rules() == []
    spec = PolicySpec(
        name="2024",
        schedule="0 2 * * *",
        target="main",
        sources=PolicySpec.sources_from(["web01:sda=/dev/vg/web01"]),
    )
    assert "cannot be all digits" in engine.policies.validate(spec)["name"]
    spec.name = "nightly"
    policy = engine.policies.add(spec)
    spec.name = "99"  # a rename is held to the same rule
    with pytest.raises(ValidationError, match="cannot be all digits"):
        engine.policies.update(policy.id, spec)
    assert engine.policies.get(policy.id).name == "nightly"


@pytest.mark.parametrize(
    "schedule", ["0 1 31 2 *", "0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 31 2,4 *"]
)
def test_a_schedule_that_never_fires_is_refused(
    engine: Engine, tmp_path: Path, schedule: str
) -> None:
    assert "never fires" in (cron_error(schedule) or "")
    (tmp_path / "main").mkdir()
    (tmp_path / "off").mkdir()
    for name in ("main", "off"):
        engine.repository_store.add(
            name=name, kind="local", path=str(tmp_path / name), now=engine.clock.now()
        )
    spec = PolicySpec(
        name="p",
        schedule=schedule,
        target="main",
        sources=PolicySpec.sources_from(["web01:sda=/dev/vg/web01"]),
    )
    assert "never fires" in engine.policies.validate(spec)["schedule"]
    with pytest.raises(ValidationError, match="never fires"):
        engine.copies.add_rule(
            name="r", source="main", destination="off", mode="scheduled", schedule=schedule
        )
    env = {"SENDENSE_STATE_DIR": str(tmp_path / "state"), "SENDENSE_VERIFY_SCHEDULE": schedule}
    with pytest.raises(ConfigError, match="never fires"):
        load_settings(env)


@pytest.mark.parametrize("schedule", ["0 0 29 2 *", "0 2 * * *", "*/5 * * * 1-5"])
def test_schedules_that_fire_rarely_or_often_are_kept(schedule: str) -> None:
    assert cron_error(schedule) is None  # 29 February comes within any five years


def _refused(path: Path | str, **kwargs: object) -> str:
    problem = repository_path_error(str(path), **kwargs)  # type: ignore[arg-type]
    assert problem is not None, path
    return problem


def test_system_and_own_directories_are_never_repositories(tmp_path: Path) -> None:
    for path in ("/", "/etc", "/usr", "/boot", "/proc", "/sys", "/dev", "/run", "/var", "/tmp"):
        assert "system directory" in _refused(path)
    for path in ("/etc/backups", "/usr/local/backups", "/dev/shm/x", "/run/x", "/proc/1/root"):
        assert "inside the system directory" in _refused(path)
    # symbolic links are followed: a link to /etc, or /proc's view of the root, is /etc
    (tmp_path / "link-to-etc").symlink_to("/etc")
    assert "it leads to /etc/sub" in _refused(tmp_path / "link-to-etc" / "sub")
    (tmp_path / "link-to-root").symlink_to("/")
    assert "inside the system directory /usr (it leads to /usr/x)" in _refused(
        tmp_path / "link-to-root" / "usr" / "x"
    )
    assert "inside the system directory /proc" in _refused("/proc/self/root/srv/x")
    # Sendense's own directories, below and above them; the default repository is allowed
    state = tmp_path / "state"
    own = {"protected": (state, state / "mounts"), "allowed": (state / "repository",)}
    for path in (state, state / "mounts" / "x", state / "inner", tmp_path):
        assert "Sendense's own directory" in _refused(path, **own)
    assert repository_path_error(str(state / "repository"), **own) is None  # type: ignore[arg-type]
    assert repository_path_error(str(tmp_path / "backups"), **own) is None  # type: ignore[arg-type]
    assert repository_path_error("/srv/backups") is None
