"""The commands the how-to guide shows with `$` run and succeed, so the docs stay true."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from adapter.cli import main

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = re.findall(r"^\$ oncall-adapter (.+)$", (ROOT / "docs" / "how-to.md").read_text(), re.M)


def test_the_guide_has_examples() -> None:
    """The guide shows runnable commands (the test below is not vacuous)."""
    assert len(COMMANDS) >= 3


@pytest.mark.parametrize("line", COMMANDS)
def test_example_runs(line: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`oncall-adapter <line>` from the project root exits 0 and prints something."""
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("ONCALL_ADAPTER_CONFIG", raising=False)
    assert main(shlex.split(line)) == 0
    assert capsys.readouterr().out.strip()
