"""Every command and sub-command answers --help with a description, and the root lists them all."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapter.cli import COMMANDS, build_parser, main
from adapter.cli.reference import cli_reference, walk_commands

PATHS = [path for path, _ in walk_commands(build_parser())]


def test_every_command_module_registers() -> None:
    """Each module in COMMANDS exists and adds at least one command (none silently skipped)."""
    import importlib
    for name in COMMANDS:
        importlib.import_module(name)
    assert len(PATHS) > len(COMMANDS)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "root")
def test_help(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    """`oncall-adapter ... --help` exits 0 and prints a usage line."""
    with pytest.raises(SystemExit) as info:
        main([*path, "--help"])
    assert info.value.code == 0
    assert "usage: oncall-adapter" in capsys.readouterr().out


def test_cli_reference_is_up_to_date() -> None:
    """docs/cli.md is the parser's own help (`python -m adapter.cli.reference > docs/cli.md`)."""
    doc = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
    assert doc.read_text(encoding="utf-8") == cli_reference()
