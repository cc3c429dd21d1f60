"""The backend contract: what a backend declares, how it says whether it can run, and what it returns.

A backend is a class with a unique lower-case ``name``, declared ``capabilities``, an ``availability()``
answer that is a value (never an exception), and ``compile``/``load`` that return a :class:`Runner`.
Heavy imports (onnxruntime, openvino, ...) belong inside ``availability``/``compile``/``load``, never at
module import, so that knowing a backend's name costs nothing.
"""

from __future__ import annotations

import abc
import difflib
import enum
import importlib.metadata
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

from .errors import OptionError, UnsupportedError
from .priority import Situation, check_priority, decide

if TYPE_CHECKING:
    import torch

    from .spec import InputSpec

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


class Status(str, enum.Enum):
    AVAILABLE = "available"
    NOT_INSTALLED = "not-installed"
    IMPORT_FAILED = "import-failed"
    NO_DEVICE = "no-device"
    UNSUPPORTED_PLATFORM = "unsupported-platform"


@dataclass(frozen=True)
class Availability:
    """Whether a backend can run here, and if not, why and how to fix it.

    ``can_export`` is true when the backend can still write its artifact here for another machine
    (Core ML packages are built on Linux, run on macOS).
    """

    status: Status
    reason: str = ""
    fix: str | None = None
    version: str | None = None
    devices: tuple[str, ...] = ()
    versions: Mapping[str, str] = field(default_factory=dict)
    can_export: bool = False

    @property
    def available(self) -> bool:
        return self.status is Status.AVAILABLE

    @classmethod
    def ok(cls, *, version: str | None, devices: Sequence[str], versions: Mapping[str, str] | None = None,
           reason: str = "") -> "Availability":
        return cls(Status.AVAILABLE, reason=reason, version=version, devices=tuple(devices),
                   versions=dict(versions or {}), can_export=True)

    @classmethod
    def not_installed(cls, package: str, extra: str | None = None, *, requirement: str | None = None
                      ) -> "Availability":
        """``package`` is missing. The fix installs ``requirement`` (a pip requirement: what a third-party
        plugin's users install, ``"motorpool-executorch"``) or, for a built-in backend, ``motorpool[extra]``."""
        if requirement is None and extra is None:
            raise ValueError("Availability.not_installed needs the extra or the pip requirement that installs "
                             f"{package}")
        return cls(Status.NOT_INSTALLED, reason=f"{package} is not installed",
                   fix=f'pip install "{requirement or f"motorpool[{extra}]"}"')

    @classmethod
    def import_failed(cls, package: str, error: BaseException, fix: str | None = None) -> "Availability":
        return cls(Status.IMPORT_FAILED, reason=f"{package} is installed but importing it failed: "
                   f"{type(error).__name__}: {error}", fix=fix or f"reinstall {package} for this Python and torch")

    @classmethod
    def no_device(cls, reason: str, *, fix: str | None = None, version: str | None = None,
                  can_export: bool = False, versions: Mapping[str, str] | None = None) -> "Availability":
        return cls(Status.NO_DEVICE, reason=reason, fix=fix, version=version, can_export=can_export,
                   versions=dict(versions or {}))

    @classmethod
    def unsupported_platform(cls, reason: str, *, fix: str | None = None, version: str | None = None,
                             can_export: bool = False,
                             versions: Mapping[str, str] | None = None) -> "Availability":
        return cls(Status.UNSUPPORTED_PLATFORM, reason=reason, fix=fix, version=version,
                   can_export=can_export, versions=dict(versions or {}))

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value, "available": self.available, "reason": self.reason, "fix": self.fix,
            "version": self.version, "devices": list(self.devices), "versions": dict(self.versions),
            "can_export": self.can_export,
        }


def probe_package(module: str, distribution: str, extra: str) -> tuple[Any, Availability | None]:
    """Import ``module`` for a backend. Returns (module, None) or (None, the availability that explains why not).

    Distinguishes "not installed" (no distribution found) from "installed but the import fails".
    """
    if importlib.util.find_spec(module) is None:
        return None, Availability.not_installed(distribution, extra)
    try:
        return importlib.import_module(module), None
    except Exception as exc:  # a broken install must be an answer, never a crash
        return None, Availability.import_failed(distribution, exc)


def distribution_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Capabilities:
    """What a backend declares it can do. Tests and ``auto`` decide on these flags, never on names.

    ``priority`` ranks backends for ``backend="auto"``: a mapping from situations to ranks, lower first.
    A situation names the hardware, the CPU features it needs and the model's traits
    (``"cpu+avx512f/attention": 10``); the most specific key that matches decides. The grammar, the
    features and the traits are in :mod:`motorpool.plugin.priority`; ``"*"`` matches everywhere.
    """

    devices: tuple[str, ...] = ("cpu",)
    precisions: frozenset[str] = frozenset({"fp32"})
    dynamic_batch: bool = True
    dynamic_shapes: bool = False
    #: claimed, not assumed: the engine serializes calls to a backend that does not declare it, and the
    #: conformance suite checks the claim with many threads on the runner itself
    thread_safe: bool = False
    #: claimed, not assumed: the conformance suite saves and loads in a fresh process when declared
    serializable: bool = False
    compile_cost: str = "low"  # "none", "low", "medium", "high": seconds to minutes
    priority: Mapping[str, int] = field(default_factory=lambda: {"*": 100})
    native_inputs: str = "torch"  # "torch" or "numpy": what Runner.run takes without conversion
    #: the ways its int8 is made, among "dynamic" and "static" (calibrated); empty: its one way
    int8_modes: tuple[str, ...] = ()
    #: it runs the model as eager PyTorch does: the baseline every other engine is measured against
    reference: bool = False

    def __post_init__(self) -> None:
        check_priority(self.priority)  # a misspelled key would otherwise never match, silently

    def rank_for(self, situation: "Situation | str") -> int:
        """The rank for ``situation`` (or a bare hardware name, ``"cpu"``)."""
        return decide(self.priority, situation)[0]

    def priority_for(self, situation: "Situation | str") -> tuple[int, str]:
        """The rank for ``situation`` and the key that decided it (``""``: none matched)."""
        return decide(self.priority, situation)

    def to_dict(self) -> dict[str, Any]:
        return {
            "devices": list(self.devices), "precisions": sorted(self.precisions),
            "dynamic_batch": self.dynamic_batch, "dynamic_shapes": self.dynamic_shapes,
            "thread_safe": self.thread_safe, "serializable": self.serializable,
            "compile_cost": self.compile_cost, "priority": dict(self.priority),
            "native_inputs": self.native_inputs, "int8_modes": list(self.int8_modes), "reference": self.reference,
        }


@dataclass(frozen=True)
class Option:
    """One key a backend takes in ``options=``: its ``name``, the ``type`` its value must be (a type or a tuple of
    types; None: any), its ``default`` (what the backend does without it), ``choices`` when only some values
    are valid, and a one-line ``doc``. ``load=True`` marks an option that may come back from a saved
    manifest when the engine is loaded; every other option only shapes the compile (and a manifest cannot
    set it)."""

    name: str
    type: type | tuple[type, ...] | None = None
    default: Any = None
    doc: str = ""
    choices: tuple[Any, ...] | None = None
    load: bool = False

    def check(self, value: Any, backend: str) -> None:
        if self.type is not None and value is not None and not isinstance(value, self.type):
            want = " or ".join(t.__name__ for t in (self.type if isinstance(self.type, tuple) else (self.type,)))
            raise OptionError(f"{backend} option {self.name!r}: expected {want}, got {type(value).__name__} "
                              f"{value!r}")
        if self.choices is not None and value not in self.choices:
            raise OptionError(f"{backend} option {self.name!r}: {value!r} is not one of "
                              f"{', '.join(map(repr, self.choices))}")


def check_options(options: Mapping[str, Any], declared: Mapping[str, Option], *, what: str) -> None:
    """Every key of ``options`` is one of ``declared`` (else :class:`OptionError` listing them, with the
    closest name), and every value fits its declaration."""
    for key, value in options.items():
        option = declared.get(key)
        if option is None:
            close = difflib.get_close_matches(key, list(declared), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            valid = ", ".join(sorted(declared)) or "none"
            raise OptionError(f"options: {key!r} is not an option of {what}{hint} (valid: {valid})")
        option.check(value, what)


@dataclass
class CompileOptions:
    """Everything a backend's ``compile`` is told. ``extra`` carries backend-specific options by name."""

    device: str
    precision: str
    spec: "InputSpec"
    calibration: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class Runner(abc.ABC):
    """A compiled model, as a backend returns it. The :class:`~motorpool.Engine` wraps it.

    ``run`` takes a list of inputs already checked against the spec, in the backend's ``native_inputs``
    kind (torch tensors or NumPy arrays), and returns the model's outputs flattened in pytree order.
    """

    device: str = "cpu"
    precision: str = "fp32"
    #: a runner that may be called from many threads at once says so; by default the engine serializes calls
    thread_safe: bool = False
    #: "torch" or "numpy": the kind of array ``run`` takes and returns without conversion
    native_inputs: str = "torch"
    #: what the backend reports about itself (providers, exporter path, blocks...; ``threads``: its own pool's size)
    info: dict[str, Any]
    #: (min, max) per dynamic dimension the compiled artifact was built for (a TensorRT profile, a Core ML
    #: range, an ExecuTorch memory plan); the engine's spec carries them, so a call past one is an InputError
    dim_bounds: dict[str, tuple[int | None, int | None]] | None = None

    @abc.abstractmethod
    def run(self, inputs: list[Any]) -> list[Any]:
        """Run one call. Inputs and outputs are flat lists."""

    @abc.abstractmethod
    def save(self, directory: Path) -> dict[str, Any]:
        """Write the backend's own artifact into ``directory`` (which exists and is empty).

        Returns backend-specific metadata for the manifest (it is handed back to ``Backend.load``).
        Raise :class:`~motorpool.UnsupportedError` if this runner cannot be serialized, saying why.
        """

    def profile_operators(self, inputs: list[Any], *, top: int = 10, calls: int = 5) -> list[Any]:
        """Run ``inputs`` (flat, native kind) ``calls`` times under the backend's own profiler.

        Returns up to ``top`` :class:`motorpool.plugin.OperatorStat`, the most time first (see
        ``motorpool profile``). Optional: a runner without a profiler keeps this default, which raises
        :class:`~motorpool.UnsupportedError`.
        """
        raise UnsupportedError(f"{type(self).__name__} has no operator profiler; motorpool profile still "
                               "splits each call into input conversion, backend and output conversion")


@dataclass(frozen=True)
class BackendRecord:
    """What ``motorpool_register_backends`` returns for each backend: cheap to build, imports nothing heavy."""

    backend: type["Backend"]

    @property
    def name(self) -> str:
        return self.backend.name


class Backend(abc.ABC):
    """Abstract base of every backend, built-in or third-party."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    #: the extra that installs what this backend needs, for the "not installed" fix
    extra: ClassVar[str | None] = None
    description: ClassVar[str] = ""
    #: the keys it takes in ``options=`` (see :class:`Option`); any other key is an :class:`OptionError`
    options: ClassVar[tuple[Option, ...]] = ()

    @classmethod
    def declared_options(cls) -> dict[str, Option]:
        return {o.name: o for o in cls.options}

    def code_in_artifact(self, directory: Path, metadata: dict[str, Any]) -> list[str]:
        """Why loading the artifact in ``directory`` would run code from it; empty when it is data only.

        ``motorpool.load`` refuses an artifact with reasons unless the caller passes ``trust_code=True`` (or
        it sits in motorpool's own private cache). Data formats (ONNX, OpenVINO IR, Core ML packages,
        ``.pt2`` without pickled payloads) return ``[]``; code formats (TorchScript, native binaries,
        pickles) say what and why, naming the file. Decide from the files themselves, never from
        ``metadata`` alone: whoever wrote the directory wrote that too. The default treats an undeclared
        format as code.
        """
        return [f"the {self.name} backend does not declare its artifacts to be data, so motorpool treats them "
                "as code"]

    @abc.abstractmethod
    def availability(self) -> Availability:
        """Whether the backend can run here. Never raises: every failure is an :class:`Availability`."""

    @abc.abstractmethod
    def compile(self, model: "torch.nn.Module", example_inputs: tuple, options: CompileOptions) -> Runner:
        """Compile ``model`` (already in eval mode) for ``options.device``/``options.precision``.

        Raise :class:`~motorpool.UnsupportedError` for what the backend cannot do and
        :class:`~motorpool.CompileError` when its compiler fails; never return a stand-in.
        """

    @abc.abstractmethod
    def load(self, directory: Path, metadata: dict[str, Any], options: CompileOptions) -> Runner:
        """Load what :meth:`Runner.save` wrote. ``metadata`` is what ``save`` returned."""

    def export(self, model: "torch.nn.Module", example_inputs: tuple, options: CompileOptions,
               directory: Path) -> dict[str, Any]:
        """Write this backend's artifact into ``directory`` without building a runnable runner.

        For backends whose artifact can be built where it cannot run (``Availability.can_export`` true
        while not available: a Core ML package built on Linux). ``directory`` exists and is empty; what
        is written there must be what :meth:`load` reads on a machine that can run it, and the returned
        dict is the metadata handed back to :meth:`load`. Check there whatever can be checked without
        running (inputs, outputs, op counts) and put it in the metadata, with ``"static_shapes": True`` when
        the artifact only takes the examples' shapes (its dynamic dimensions could not be kept); raise
        :class:`~motorpool.CompileError` when the conversion fails. Backends that can run here are
        exported by compiling and :meth:`Runner.save`, so the default raises
        :class:`~motorpool.UnsupportedError`.
        """
        raise UnsupportedError(f"{self.name} cannot write its artifact without running it here", backend=self.name)

    def default_device(self, availability: Availability) -> str:
        """The device ``device="auto"`` means for this backend: the first it sees."""
        return availability.devices[0] if availability.devices else self.capabilities.devices[0]

    def supports(self, *, precision: str, device: str | None = None) -> str | None:
        """None if the backend can serve this request, else the reason it cannot."""
        if precision not in self.capabilities.precisions:
            return (f"{self.name} does not support precision {precision!r} "
                    f"(supports {', '.join(sorted(self.capabilities.precisions))})")
        if device is not None and device.split(":")[0] not in self.capabilities.devices:
            return f"{self.name} cannot target device {device!r} (targets {', '.join(self.capabilities.devices)})"
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
