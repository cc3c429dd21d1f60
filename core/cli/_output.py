"""How the ``motorpool`` command talks: what goes to stdout and stderr, and how it fails.

- motorpool's own results go to stdout; errors, warnings and progress go to stderr, one line each:
  ``motorpool COMMAND: error: ...``, ``motorpool: warning: ...`` (each distinct warning once).
- Exit codes: 0 success, 1 a runtime failure, 2 a usage error (a bad flag value, a MODEL that cannot be
  loaded, an unknown backend), 130 interrupted. No traceback unless ``-v``.
- Messages name the CLI flag, not the Python argument: a library message saying ``pass overwrite=True``
  reads ``pass --overwrite`` here (:func:`cli_words`); the library's own text is unchanged.
- Library noise (third-party warnings, NNCF/coremltools/tqdm progress bars, FX graph dumps written to
  stdout) is kept out unless ``-v``: :func:`library_output` points file descriptor 1 and ``sys.stdout``
  elsewhere while a command computes, so that ``--json`` output is JSON and only JSON.
- ``motorpool cache ls | head -1`` ends quietly: a closed stdout is not an error.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Iterator

#: loggers of libraries that print progress or chatter at INFO; quiet unless -v
NOISY_LOGGERS = ("nncf", "coremltools", "torch", "torchao", "torch._dynamo", "torch._inductor", "torch.export",
                 "torch._export", "torch.fx", "torch.utils._pytree", "onnxscript", "onnx_ir", "openvino", "iree")

_MOTORPOOL_DIR = str(Path(__file__).resolve().parents[1])


class UsageError(Exception):
    """A command-line usage error: exit status 2, one line on stderr."""


class CommandFailed(Exception):
    """A runtime failure already explained in one line: exit status 1."""


def say(text: str) -> None:
    """One line for the user on stderr (progress, 'wrote ...'), never on stdout."""
    print(text, file=sys.stderr, flush=True)


def cli_words(message: str, parser: argparse.ArgumentParser | None) -> str:
    """``message`` with Python keyword arguments the parser has a flag for rewritten as that flag:
    ``overwrite=True`` -> ``--overwrite``, ``verify=False`` -> ``--no-verify``, ``precision='int8'`` ->
    ``--precision int8``."""
    if parser is None:
        return message
    flags: dict[tuple[str, str | None], str] = {}
    for action in parser._actions:  # noqa: SLF001 - argparse has no public walk of its actions
        longs = [o for o in action.option_strings if o.startswith("--")]
        if not longs:
            continue
        flag, dest = longs[0], action.dest
        if isinstance(action, argparse._StoreTrueAction):  # noqa: SLF001
            if dest.startswith("no_"):
                flags[(dest[3:], "False")] = flag
            else:
                flags[(dest, "True")] = flag
        else:
            flags[(dest, None)] = flag

    def swap(m: re.Match) -> str:
        name, value = m.group(1), m.group(2)
        if (name, value) in flags:
            return flags[(name, value)]
        if (name, None) in flags:
            return f"{flags[(name, None)]} {value.strip(chr(39) + chr(34))}"
        return m.group(0)

    return re.sub(r"\b([a-z][a-z0-9_]*)=(True|False|'[^']*'|\"[^\"]*\"|[\w.\-]+)", swap, message)


# -- warnings and library noise --------------------------------------------------------------------------------


def _from_motorpool(filename: str) -> bool:
    try:
        return str(Path(filename).resolve()).startswith(_MOTORPOOL_DIR)
    except (OSError, ValueError):
        return False


class WarningPrinter:
    """A ``warnings.showwarning`` that prints ``motorpool: warning: MESSAGE`` once per distinct message,
    and drops third-party warnings (torch's FutureWarnings, ...) unless verbose."""

    def __init__(self, verbose: bool):
        self.verbose = verbose
        self.seen: set[str] = set()

    def __call__(self, message, category, filename, lineno, file=None, line=None) -> None:
        ours = _from_motorpool(filename) or getattr(category, "__module__", "").startswith("motorpool")
        if not self.verbose and not ours:
            return
        text = " ".join(str(message).split())
        if not ours:
            text = f"{category.__name__} from {Path(filename).name}:{lineno}: {text}"
        if text in self.seen:
            return
        self.seen.add(text)
        try:
            print(f"motorpool: warning: {text}", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass


@contextlib.contextmanager
def cli_warnings(verbose: bool) -> Iterator[WarningPrinter]:
    """Route every warning through :class:`WarningPrinter` for the length of a command."""
    printer = WarningPrinter(verbose)
    saved_env = {k: os.environ.get(k) for k in ("TQDM_DISABLE",)}
    levels = {}
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # the printer de-duplicates by text, across modules too
        warnings.showwarning = printer
        if not verbose:
            os.environ["TQDM_DISABLE"] = "1"  # coremltools' and others' tqdm bars
            for name in NOISY_LOGGERS:
                logger = logging.getLogger(name)
                levels[name] = logger.level
                logger.setLevel(logging.ERROR)
        try:
            yield printer
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@contextlib.contextmanager
def library_output(verbose: bool = False) -> Iterator[None]:
    """While a command computes: whatever libraries write to stdout (``sys.stdout`` and file descriptor 1:
    progress bars, graph dumps, runtime banners) goes to stderr with ``-v`` and nowhere without; without
    ``-v``, what native code writes to file descriptor 2 (runtime log lines) goes nowhere too, while
    ``sys.stderr`` (motorpool's progress, warnings and errors) still reaches the terminal. motorpool's own
    output is printed after, to the real stdout."""
    sink_py = sys.stderr if verbose else open(os.devnull, "w")  # noqa: SIM115 - closed below
    saved_py = sys.stdout
    with contextlib.ExitStack() as stack:
        if not verbose:
            stack.enter_context(_native_stderr_silenced())
        with _stdout_elsewhere(verbose, sink_py, saved_py):
            yield


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null, ``sys.stderr`` to a copy of the old descriptor 2."""
    keep = None
    if sys.stderr is sys.__stderr__ and sys.__stderr__ is not None:  # not already captured (pytest)
        try:
            sys.stderr.flush()
            if sys.stderr.fileno() == 2:
                keep = os.dup(2)
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 2)
                os.close(devnull)
        except (OSError, ValueError, AttributeError):
            keep = None
    if keep is None:
        yield
        return
    saved = sys.stderr
    sys.stderr = os.fdopen(keep, "w", buffering=1, closefd=False)
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        sys.stderr = saved
        os.dup2(keep, 2)
        os.close(keep)


@contextlib.contextmanager
def _stdout_elsewhere(verbose: bool, sink_py, saved_py) -> Iterator[None]:
    saved_fd = None
    try:
        try:
            saved_py.flush()
        except (OSError, ValueError):
            pass
        try:
            if sys.__stdout__ is not None and sys.__stdout__.fileno() == 1:
                sys.__stdout__.flush()
                saved_fd = os.dup(1)
                target = os.open(os.devnull, os.O_WRONLY) if not verbose else os.dup(2)
                os.dup2(target, 1)
                os.close(target)
        except (OSError, ValueError, AttributeError):
            saved_fd = None
        sys.stdout = sink_py
        yield
    finally:
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        sys.stdout = saved_py
        if saved_fd is not None:
            os.dup2(saved_fd, 1)
            os.close(saved_fd)
        if not verbose:
            sink_py.close()


# -- --help shows every default -----------------------------------------------------------------------------


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Append ``(default: X)`` to the help of every option of ``parser`` and its subparsers that has a
    default and does not already say it."""
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub in set(action.choices.values()):
                show_defaults(sub)
            continue
        if not action.option_strings or action.default is None or action.default is argparse.SUPPRESS:
            continue
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction,  # noqa: SLF001
                               argparse._StoreTrueAction, argparse._StoreFalseAction)):  # a switch: off unless given
            continue
        help_text = action.help or ""
        if "default" in help_text.lower():
            continue
        default = action.default
        if isinstance(default, (list, tuple)):
            default = ",".join(str(x) for x in default)
        shown = str(default).replace("%", "%%")
        action.help = (help_text + " " if help_text else "") + f"(default: {shown})"


# -- stdout that went away ----------------------------------------------------------------------------------


def stdout_closed() -> int:
    """After a BrokenPipeError on stdout (``| head``): point stdout at /dev/null so the interpreter's final
    flush does not raise again, and end quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    return 0


# -- progress -------------------------------------------------------------------------------------------------

#: set by ``motorpool --progress`` (progress lines even when stderr is not a terminal)
FORCE_PROGRESS = False


class Ticker:
    """A one-line progress display on stderr for a command's slow steps (``motorpool doctor: probing
    coreml [3/8] 2.1s``), rewritten in place; shown only when stderr is a terminal or with ``--progress``."""

    def __init__(self, command: str, total: int | None = None, *, enabled: bool | None = None):
        import threading
        import time

        self.command, self.total, self.count = command, total, 0
        if enabled is None:
            try:
                enabled = FORCE_PROGRESS or sys.stderr.isatty()
            except (AttributeError, ValueError):
                enabled = FORCE_PROGRESS
        self.enabled = enabled
        self._lock = threading.Lock()
        self._clock = time.perf_counter
        self._start = self._clock()
        self._shown = False

    def step(self, text: str, *, advance: bool = False) -> None:
        if advance:
            self.count += 1
        if not self.enabled:
            return
        where = f" [{self.count}/{self.total}]" if self.total else ""
        with self._lock:
            sys.stderr.write(f"\r\033[Kmotorpool {self.command}:{where} {text} ... "
                             f"{self._clock() - self._start:.1f}s")
            sys.stderr.flush()
            self._shown = True

    def close(self) -> None:
        if self.enabled and self._shown:
            with self._lock:
                sys.stderr.write("\r\033[K")
                sys.stderr.flush()

    def __enter__(self) -> "Ticker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
