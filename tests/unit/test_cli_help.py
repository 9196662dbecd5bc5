"""Every command and sub-command answers --help with a description, and the root lists them all."""

from __future__ import annotations

import argparse

import pytest

from adapter.cli import COMMANDS, build_parser, main


def _walk(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _walk(sub, (*prefix, name))
    return found


def test_every_command_module_registers() -> None:
    """Each module in COMMANDS exists and adds at least one command (none silently skipped)."""
    import importlib
    for name in COMMANDS:
        importlib.import_module(name)
    assert len(_walk(build_parser())) > len(COMMANDS)


@pytest.mark.parametrize("path", _walk(build_parser()), ids=lambda p: " ".join(p) or "root")
def test_help(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    """`oncall-adapter ... --help` exits 0 and prints a usage line."""
    with pytest.raises(SystemExit) as info:
        main([*path, "--help"])
    assert info.value.code == 0
    assert "usage: oncall-adapter" in capsys.readouterr().out
