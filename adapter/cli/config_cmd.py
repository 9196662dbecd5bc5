"""`oncall-adapter config show|check`."""

from __future__ import annotations

import argparse

from adapter.config import load_config, render_config

__all__ = ["register"]


def _show(args: argparse.Namespace) -> int:
    print(render_config(load_config(args.config)), end="")
    return 0


def _check(args: argparse.Namespace) -> int:
    load_config(args.config)
    print("configuration is valid")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("config", help="show or check the effective configuration",
                            description="Show or check the effective configuration (file + environment).")
    cmds = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = cmds.add_parser("show", help="print the effective configuration as TOML, secrets masked")
    show.set_defaults(handler=_show)
    check = cmds.add_parser("check", help="validate the configuration and exit (status 2 when invalid)")
    check.set_defaults(handler=_check)
