"""docs/cli.md: every command's --help, generated from the parser itself."""

from __future__ import annotations

import argparse
import os

__all__ = ["cli_reference", "walk_commands"]


def walk_commands(parser: argparse.ArgumentParser,
                  path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    """(command path, its help text) for the parser and every sub-command below it."""
    found = [(path, parser.format_help())]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += walk_commands(sub, (*path, name))
    return found


def cli_reference() -> str:
    from adapter.cli import build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"   # argparse wraps to the terminal: fix the width for a stable file
    try:
        pages = walk_commands(build_parser())
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous
    out = ["# Command reference\n\nGenerated from the command-line parser "
           "(`python -m adapter.cli.reference > docs/cli.md`); a test keeps it up to date.\n"]
    for path, text in pages:
        out.append(f"\n## oncall-adapter {' '.join(path)}".rstrip() + f"\n\n```text\n{text.rstrip()}\n```\n")
    return "".join(out)


if __name__ == "__main__":
    print(cli_reference(), end="")
