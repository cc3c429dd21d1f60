"""motorpool: one PyTorch model, compiled and run by whichever inference engine serves it best.

    >>> import motorpool
    >>> engine = motorpool.compile(model, example_inputs)          # backend="auto"
    >>> engine(x)                                                  # called exactly like the model
    >>> engine.save("my-engine"); engine = motorpool.load("my-engine")

Importing motorpool loads no plugin and no runtime; backends are found on first use.
"""

__version__ = "0.1.0"

from .backend import (PRECISIONS, Availability, Backend, BackendRecord, Capabilities, CompileOptions, Runner,
                      Status)
from .compile import BackendInfo, compile, list_backends, load
from .engine import Engine
from .errors import (ArtifactError, BackendUnavailable, CompileError, DuplicateBackendError, InputError,
                     MotorpoolError, PluginError, PluginWarning, UnknownBackendError, UnsupportedError,
                     VerificationError)
from .hookspecs import hookimpl
from .registry import Registry, get_registry
from .report import Candidate, Report
from .spec import InputSpec, TensorSpec
from .verify import TOLERANCES

__all__ = [
    "__version__", "compile", "load", "list_backends", "Engine", "BackendInfo",
    "Backend", "BackendRecord", "Capabilities", "CompileOptions", "Runner", "Availability", "Status", "PRECISIONS",
    "hookimpl", "Registry", "get_registry", "Report", "Candidate", "InputSpec", "TensorSpec", "TOLERANCES",
    "MotorpoolError", "InputError", "BackendUnavailable", "CompileError", "UnsupportedError", "VerificationError",
    "ArtifactError", "UnknownBackendError", "PluginError", "DuplicateBackendError", "PluginWarning",
]
