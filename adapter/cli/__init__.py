"""`oncall-adapter`: the command line. Each command group lives in its own module with `register()`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from adapter.errors import AdapterError, ConfigError
from adapter.logging import configure_logging

__all__ = ["main"]

# Command modules, in the order their commands appear in --help.
COMMANDS = (
    "adapter.cli.serve",
    "adapter.cli.config_cmd",
    "adapter.cli.mapping",
    "adapter.cli.queue",
    "adapter.cli.replay",
    "adapter.cli.sandbox",
    "adapter.cli.scrape",
    "adapter.cli.reconcile",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oncall-adapter",
        description="Keeps patients and appointments in sync between an EMR (HL7 v2 over MLLP, FHIR) "
                    "and OnCall Health.")
    parser.add_argument("--config", metavar="PATH",
                        help="TOML configuration file (default: $ONCALL_ADAPTER_CONFIG, "
                             "else ./oncall-adapter.toml if present, else built-in defaults)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def _hoist_config(argv: list[str]) -> list[str]:
    """Accept `--config PATH` anywhere on the line (`oncall-adapter serve --config x.toml`)."""
    out: list[str] = []
    config: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            config = ["--config", argv[i + 1]]
            i += 2
            continue
        if arg.startswith("--config="):
            config = [arg]
        else:
            out.append(arg)
        i += 1
    return config + out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_hoist_config(list(sys.argv[1:] if argv is None else argv)))
    # Every command logs to stderr (stdout is for its output), warnings and errors only;
    # `serve` reconfigures from the [logging] section.
    configure_logging(level="WARNING")
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"oncall-adapter: {exc}", file=sys.stderr)
        return 2
    except AdapterError as exc:
        print(f"oncall-adapter: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
