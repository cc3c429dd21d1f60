"""The ``motorpool`` command. Each subcommand lives in its own module here and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (returning an exit code)."""

from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand modules, in the order ``motorpool --help`` lists them
COMMANDS = ["doctor", "demo", "compile", "run", "bench", "loadgen", "profile", "cache", "optimize", "serve",
            "export_triton", "new_backend"]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from ._output import show_defaults

    parser = argparse.ArgumentParser(prog="motorpool", description="Compile a PyTorch model for the fastest "
                                     "inference engine on this machine, verified.")
    parser.add_argument("--version", action="version", version=f"motorpool {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show library output (progress bars, third-party warnings) and tracebacks")
    parser.add_argument("--progress", action="store_true",
                        help="progress lines on stderr even when it is not a terminal")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"motorpool.cli.{name}").register(sub)
    for cmd in sub.choices.values():  # -v after the command name works too
        if not any("--verbose" in a.option_strings for a in cmd._actions):
            cmd.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="show library output and tracebacks")
    show_defaults(parser)
    return parser


def _command_parser(parser: argparse.ArgumentParser, command: str | None):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; see :mod:`motorpool.cli._output` for what goes where and the exit codes."""
    from ..plugin.errors import InputError, MotorpoolError, UnknownBackendError
    from ._output import CommandFailed, UsageError, cli_warnings, cli_words, stdout_closed

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    verbose = bool(getattr(args, "verbose", False))
    from . import _output

    _output.FORCE_PROGRESS = bool(getattr(args, "progress", False))
    cmd = _command_parser(parser, args.command)
    prefix = f"motorpool {args.command}"

    def fail(message: str, code: int) -> int:
        text = " ".join(cli_words(str(message), cmd).split())
        print(f"{prefix}: error: {text}", file=sys.stderr, flush=True)
        return code

    try:
        with cli_warnings(verbose):
            code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
        return code
    except BrokenPipeError:
        return stdout_closed()
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except UsageError as exc:
        return fail(str(exc), 2)
    except CommandFailed as exc:
        return fail(str(exc), 1)
    except (InputError, UnknownBackendError) as exc:  # a MODEL or a name on the command line
        if verbose:
            raise
        return fail(str(exc), 2)
    except MotorpoolError as exc:
        if verbose:
            raise
        return fail(exc, 1)
    except ValueError as exc:  # the library refusing an argument value
        if verbose:
            raise
        return fail(exc, 2)
    except Exception as exc:  # noqa: BLE001 - one line, the traceback with -v
        if verbose:
            raise
        return fail(f"{type(exc).__name__}: {exc} (run with -v for the traceback)", 1)


if __name__ == "__main__":
    sys.exit(main())
