"""The plugin contract, and the one facade a backend author imports from: ``motorpool.plugin``.

Here lives what a backend *is* (``Backend``, ``Runner``, ``Capabilities``, ``Availability``, ``BackendRecord``,
``CompileOptions``; :mod:`.contract`), how backends are found (the pluggy hook in :mod:`.hookspecs`, the
:mod:`.registry` with ``list_backends`` and ``safe_availability``), what they are given and may raise
(:mod:`.spec`, :mod:`.errors`, :mod:`.hardware`), and the helpers they share: the one ``torch.export``
wrapper and device placement (:mod:`.helpers`), calibration feeds (:mod:`.calibration`), reduced precision for
torch modules (:mod:`.torch_precision`), operator tables (:mod:`.operator_stats`), the private cache root
(:mod:`.paths`) and the trust model's checks: code in a ``.pt2``, paths inside ``artifact/``, allowed load
options (:mod:`.trust`, SECURITY.md).

This package is the bottom layer: its modules import only each other (and torch, numpy, pluggy), never
another part of motorpool. Built-in backends import only from this facade, exactly like a third-party one::

    from motorpool.plugin import Availability, Backend, Capabilities, Runner, hookimpl
"""

from .calibration import MAX_CALIBRATION_BATCHES, calibration_batches, calibration_feeds, numpy_feeds
from .contract import (PRECISIONS, Availability, Backend, BackendRecord, Capabilities, CompileOptions, Option,
                       Runner, Status, check_options, distribution_version, probe_package)
from .errors import (ArtifactError, BackendUnavailable, CompileError, DuplicateBackendError, GateError,
                     InputError, MotorpoolError, OptionError, PluginError, PluginWarning, UnknownBackendError, UnsupportedError,
                     VerificationError)
from .hardware import detect as detect_hardware
from .helpers import (FlatOutputs, TorchRunner, own_frame, capture_inputs, export_program, first_line, flatten_outputs,
                      fp32_strict, host_device, model_device, output_count, place, quiet_exporters, quiet_loggers,
                      save_exported, to_numpy, torch_availability, torch_devices)
from .hookspecs import hookimpl
from .operator_stats import OperatorStat, operator_table, torch_operator_profile
from .paths import CacheWarning, cache_root, private_dir, private_dir_problem, usable_cache_dir
from .registry import BackendInfo, Registry, get_registry, list_backends, safe_availability
from .spec import BATCH, InputSpec, TensorSpec, torch_dtype
from .torch_precision import INT8_OPTION, cast_model, prepare_torch_precision
from .trust import (TrustWarning, allowed_options, artifact_file, check_artifact_tree, pt2_code_reasons,
                    torch_export_file_reasons)

__all__ = [
    "PRECISIONS", "Availability", "Backend", "BackendRecord", "Capabilities", "CompileOptions", "Option", "Runner",
    "Status", "check_options", "OptionError", "INT8_OPTION",
    "distribution_version", "probe_package", "hookimpl",
    "ArtifactError", "BackendUnavailable", "CompileError", "DuplicateBackendError", "GateError", "InputError",
    "MotorpoolError", "PluginError", "PluginWarning", "UnknownBackendError", "UnsupportedError", "VerificationError",
    "BATCH", "InputSpec", "TensorSpec", "torch_dtype", "detect_hardware",
    "BackendInfo", "Registry", "get_registry", "list_backends", "safe_availability",
    "FlatOutputs", "TorchRunner", "own_frame", "capture_inputs", "export_program", "first_line", "flatten_outputs", "fp32_strict",
    "host_device", "model_device", "output_count", "place", "quiet_exporters", "quiet_loggers", "save_exported",
    "to_numpy", "torch_availability", "torch_devices",
    "MAX_CALIBRATION_BATCHES", "calibration_batches", "calibration_feeds", "numpy_feeds",
    "cast_model", "prepare_torch_precision",
    "OperatorStat", "operator_table", "torch_operator_profile", "cache_root", "private_dir",
    "CacheWarning", "private_dir_problem", "usable_cache_dir",
    "TrustWarning", "allowed_options", "artifact_file", "check_artifact_tree", "pt2_code_reasons",
    "torch_export_file_reasons",
]
