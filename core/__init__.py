"""motorpool: one PyTorch model, compiled and run by whichever inference engine serves it best.

    >>> import motorpool
    >>> engine = motorpool.compile(model, example_inputs)          # backend="auto"
    >>> engine(x)                                                  # called exactly like the model
    >>> engine.save("my-engine"); engine = motorpool.load("my-engine")

Importing motorpool loads no plugin and no runtime; backends are found on first use.
"""

from ._version import __version__

# the front doors
from .compile import compile, load
from .export import export
# the plugin contract (backend authors: import from motorpool.plugin, which has the helpers too)
from .plugin.contract import (PRECISIONS, Availability, Backend, BackendRecord, Capabilities, CompileOptions, Runner,
                              Status)
from .plugin.errors import (ArtifactError, BackendUnavailable, CompileError, DuplicateBackendError, GateError,
                            InputError, MotorpoolError, OptionError, PluginError, PluginWarning, UnknownBackendError,
                            UnsupportedError, VerificationError)
from .plugin import hardware  # motorpool.hardware.detect(), .summary(), .fingerprint()
from .plugin.hookspecs import hookimpl
from .plugin.registry import BackendInfo, Registry, get_registry, list_backends
from .plugin.spec import InputSpec, TensorSpec
# engines, and how they are checked
from .engine.engine import Engine
from .engine.report import Candidate, Report
from .pipeline.verify import TOLERANCES
# choosing, techniques, serving, measuring
from .selection.fastest import select
from .selection.measured import Selection
from .techniques.gate import Gate, GateResult, Metric
from .techniques.distill import DistillReport, distill
from .techniques.prune import PruneReport, PruneResult, prune, prune_iteratively
from .serving.cascade import Cascade, CascadeCalibration
from .serving.dynamic_batcher import DynamicBatcher
from .serving.padding import pad_to_buckets
from .serving.prediction_cache import CachedEngine
from .serving.requests import BatcherClosed, BatcherStats, QueueFull
from .serving.stores import LRUStore, RedisStore
from .serving.triton import export_triton
from .measuring.benchmark import BenchResult, BenchSuite, bench_model, benchmark
from .measuring.profiling import ProfileResult, profile
from .measuring.technique_report import OptimizeReport, optimize_report

__all__ = [
    "__version__", "compile", "load", "export",
    "PRECISIONS", "Availability", "Backend", "BackendRecord", "Capabilities", "CompileOptions", "Runner", "Status",
    "ArtifactError", "BackendUnavailable", "CompileError", "DuplicateBackendError", "GateError", "InputError",
    "MotorpoolError", "OptionError", "PluginError", "PluginWarning", "UnknownBackendError", "UnsupportedError", "VerificationError",
    "hardware", "hookimpl", "BackendInfo", "Registry", "get_registry", "list_backends", "InputSpec", "TensorSpec",
    "Engine", "Candidate", "Report", "TOLERANCES",
    "select", "Selection", "Gate", "GateResult", "Metric", "PruneReport", "PruneResult", "prune", "prune_iteratively",
    "DynamicBatcher", "pad_to_buckets", "CachedEngine", "BatcherClosed", "BatcherStats", "QueueFull", "LRUStore",
    "RedisStore", "BenchResult", "BenchSuite", "bench_model", "benchmark", "ProfileResult", "profile",
    "OptimizeReport", "optimize_report", "distill", "DistillReport", "Cascade", "CascadeCalibration", "export_triton",
]
