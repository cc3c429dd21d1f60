"""The errors motorpool raises. Each names what was asked, what happened and, where it can, how to fix it."""

from __future__ import annotations

from typing import Any


class MotorpoolError(Exception):
    """Base class of every error motorpool raises on purpose."""


class InputError(MotorpoolError, ValueError):
    """An engine was called with inputs that do not match its input spec.

    ``input`` names the offending input, ``expected`` and ``got`` say what the spec wanted and what came.
    """

    def __init__(self, message: str, *, input: str | None = None, expected: Any = None, got: Any = None):
        super().__init__(message)
        self.input = input
        self.expected = expected
        self.got = got


class BackendUnavailable(MotorpoolError, RuntimeError):
    """The backend cannot run here; ``availability`` carries the reason and the fix."""

    def __init__(self, backend: str, availability: Any = None, message: str | None = None):
        self.backend = backend
        self.availability = availability
        if message is None:
            reason = getattr(availability, "reason", None) or "unavailable"
            fix = getattr(availability, "fix", None)
            message = f"backend {backend!r} is not available: {reason}" + (f" (fix: {fix})" if fix else "")
        super().__init__(message)


class UnknownBackendError(MotorpoolError, KeyError):
    """A backend name that no installed plugin registers."""

    def __init__(self, name: str, valid: list[str]):
        self.name = name
        self.valid = list(valid)
        super().__init__(name)

    def __str__(self) -> str:
        return (
            f"unknown backend {self.name!r}. Choose one of: {', '.join(self.valid) or '(none registered)'}. "
            "Third-party backends register through the 'motorpool.backends' entry point group; "
            "`motorpool doctor` lists what is installed."
        )


class CompileError(MotorpoolError, RuntimeError):
    """Compiling failed. ``reasons`` maps each backend tried to why it was rejected."""

    def __init__(self, message: str, *, backend: str | None = None, reasons: dict[str, str] | None = None):
        super().__init__(message)
        self.backend = backend
        self.reasons = dict(reasons or {})


class UnsupportedError(CompileError):
    """The backend cannot do what was asked (a precision, a device, an option): it says what and why."""


class VerificationError(CompileError):
    """The compiled engine does not compute what the model computes, within the tolerance of its precision.

    ``figures`` holds the measured errors for each check.
    """

    def __init__(self, message: str, *, backend: str | None = None, figures: dict | None = None):
        super().__init__(message, backend=backend)
        self.figures = figures or {}


class GateError(VerificationError):
    """The engine computes the model's function within tolerance but fails a quality gate (motorpool.Gate):
    its task metric dropped more than the budget. ``figures["gate"]`` holds metric, score, baseline, drop."""


class ArtifactError(MotorpoolError, RuntimeError):
    """A saved engine cannot be loaded: missing, corrupt, or made for other hardware or versions."""


class PluginError(MotorpoolError):
    """A plugin misbehaved (bad record, duplicate name). Raised when registering explicitly; warned on autoload."""


class DuplicateBackendError(PluginError, ValueError):
    def __init__(self, name: str, first: str, second: str):
        self.name, self.first, self.second = name, first, second
        super().__init__(f"backend name {name!r} is registered twice: by {first} and by {second}")


class OptionError(MotorpoolError, ValueError):
    """An ``options=`` key no backend asked for declares, or a value of the wrong type or choice."""


class PluginWarning(UserWarning):
    """A plugin was skipped; the message names it and its distribution."""
