"""The ``motorpool`` command. Each subcommand lives in its own module here and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (returning an exit code)."""

from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand modules, in the order ``motorpool --help`` lists them
COMMANDS = ["doctor", "demo", "compile", "run", "bench", "profile", "cache", "optimize", "serve", "export_triton",
            "new_backend"]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="motorpool", description="Compile a PyTorch model for the fastest "
                                     "inference engine on this machine, verified.")
    parser.add_argument("--version", action="version", version=f"motorpool {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"motorpool.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
