"""motorpool: one PyTorch model, compiled and run by whichever inference engine serves it best.

    >>> import motorpool
    >>> engine = motorpool.compile(model, example_inputs)          # backend="auto"
    >>> engine(x)                                                  # called exactly like the model
    >>> engine.save("my-engine"); engine = motorpool.load("my-engine")

Importing motorpool loads no plugin and no runtime; backends are found on first use.
"""

__version__ = "0.1.0"

from .batcher import BatcherClosed, BatcherStats, DynamicBatcher, QueueFull, pad_to_buckets
from .cache import CachedEngine, LRUStore, RedisStore
from .backend import (PRECISIONS, Availability, Backend, BackendRecord, Capabilities, CompileOptions, Runner,
                      Status)
from .compile import BackendInfo, compile, list_backends, load
from .export import export  # shadows the module name; helpers: `from motorpool.export import ...`
from .engine import Engine
from .errors import (ArtifactError, BackendUnavailable, CompileError, DuplicateBackendError, InputError,
                     MotorpoolError, PluginError, PluginWarning, UnknownBackendError, UnsupportedError,
                     VerificationError)
from .hookspecs import hookimpl
# the functions shadow their modules' names on the package; import helpers with `from motorpool.benchmark import`
from .benchmark import BenchResult, BenchSuite, bench_model, benchmark
from .profile import ProfileResult, profile
from .registry import Registry, get_registry
from .report import Candidate, Report
from .select import Selection, select
from .spec import InputSpec, TensorSpec
from .verify import TOLERANCES
from .errors import GateError
from .gate import Gate, GateResult, Metric
# prune/optimize_report shadow their modules' names; helpers: `from motorpool.prune import prune_iteratively`
from .prune import PruneReport, PruneResult, prune, prune_iteratively
from .optimize_report import OptimizeReport, optimize_report

__all__ = [
    "Gate", "GateResult", "GateError", "Metric", "prune", "prune_iteratively", "PruneReport", "PruneResult",
    "optimize_report", "OptimizeReport",
    "__version__", "compile", "load", "export", "list_backends", "Engine", "BackendInfo",
    "Backend", "BackendRecord", "Capabilities", "CompileOptions", "Runner", "Availability", "Status", "PRECISIONS",
    "select", "Selection", "hookimpl", "Registry", "get_registry", "Report", "Candidate", "InputSpec", "TensorSpec", "TOLERANCES",
    "MotorpoolError", "InputError", "BackendUnavailable", "CompileError", "UnsupportedError", "VerificationError",
    "ArtifactError", "UnknownBackendError", "PluginError", "DuplicateBackendError", "PluginWarning",
    "DynamicBatcher", "QueueFull", "BatcherClosed", "BatcherStats", "pad_to_buckets",
    "CachedEngine", "LRUStore", "RedisStore",
    "benchmark", "bench_model", "BenchResult", "BenchSuite", "profile", "ProfileResult",
]
