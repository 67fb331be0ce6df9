"""engine.tools.base: missing programs, secrets, timeouts."""

from __future__ import annotations

import pytest

from engine.tools import ToolError, ToolMissing, ToolTimeout, qemu_img, run, which


def test_missing_program_names_the_debian_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissing) as err:
        qemu_img.info(tmp_path / "x.qcow2")
    assert str(err.value) == "qemu-img is not installed"
    assert err.value.hint == "install it: apt-get install qemu-utils"
    # sbin programs are still found when a non-login shell left them out of PATH
    assert which("losetup").endswith("/losetup")


def test_secret_is_redacted_from_failure() -> None:
    with pytest.raises(ToolError) as err:
        run(["ls", "/nonexistent/password=s3cr3t-value"], secrets=["s3cr3t-value"])
    text = str(err.value) + err.value.stderr
    assert "s3cr3t-value" not in text
    assert "***" in text


def test_timeout_kills_the_program() -> None:
    with pytest.raises(ToolTimeout, match=r"sleep did not finish within 0\.5 s"):
        run(["sleep", "5"], timeout=0.5)
