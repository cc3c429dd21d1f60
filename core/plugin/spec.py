"""Input specs: the shapes (with named dynamic dimensions) and dtypes an engine accepts.

Every engine knows its spec; calls are checked against it before any backend sees them, so a wrong shape,
dtype, rank, count or device is an :class:`InputError` naming the input, never a backend's C++ message.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .errors import InputError

Dim = int | str  # an int is static; a str names a dynamic dimension ("batch")
BATCH = "batch"


def dtype_name(dtype: Any) -> str:
    """'float32' for torch.float32, np.float32 or np.dtype('float32')."""
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    return np.dtype(dtype).name


#: numpy's ``dtype.name`` is computed in Python on every access (~5 us); the engine's hot path looks it up
_NP_DTYPE_NAMES = {np.dtype(t): np.dtype(t).name for t in (np.float32, np.float16, np.float64, np.int64, np.int32,
                                                           np.int16, np.int8, np.uint8, np.bool_)}


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


@dataclass(frozen=True)
class TensorSpec:
    """One positional input: its ``name``, its ``shape`` (an int per fixed dimension, a name such as ``"batch"``
    per dynamic one) and its ``dtype`` (a NumPy-style name: ``"float32"``, ``"int64"``, ...)."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str
    #: observed value range of integer/bool examples, so fresh inputs stay valid (token ids, masks)
    low: float | None = None
    high: float | None = None

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_floating(self) -> bool:
        return torch_dtype(self.dtype).is_floating_point

    def describe(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"

    def concrete_shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "low": self.low, "high": self.high}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TensorSpec":
        return cls(d["name"], tuple(d["shape"]), d["dtype"], d.get("low"), d.get("high"))


@dataclass(frozen=True)
class InputSpec:
    """What an engine takes (``engine.input_spec``): one :class:`TensorSpec` per positional input, the ``device``
    its tensors live on, and ``example_sizes``, the size each dynamic dimension had in the examples.

    ``check(inputs)`` raises :class:`~motorpool.InputError` naming the input, what was expected and what came;
    ``random_inputs(...)`` draws fresh inputs of the spec (integer inputs within the examples' range).
    """

    inputs: tuple[TensorSpec, ...]
    device: str = "cpu"
    #: example sizes of each dynamic dimension, used to draw fresh inputs
    example_sizes: Mapping[str, int] = field(default_factory=dict)
    #: (min, max) per dynamic dimension that has bounds (an engine built for batch 1..64); None: unbounded
    bounds: Mapping[str, tuple[int | None, int | None]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.inputs)

    def __iter__(self):
        return iter(self.inputs)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def dynamic_dims(self) -> set[str]:
        return {d for t in self.inputs for d in t.shape if isinstance(d, str)}

    @property
    def has_dynamic_batch(self) -> bool:
        return BATCH in self.dynamic_dims

    def describe(self) -> str:
        return "(" + ", ".join(t.describe() for t in self.inputs) + f") on {self.device}"

    def to_dict(self) -> dict[str, Any]:
        d = {"inputs": [t.to_dict() for t in self.inputs], "device": self.device,
             "example_sizes": dict(self.example_sizes)}
        if self.bounds:
            d["bounds"] = {k: list(v) for k, v in self.bounds.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "InputSpec":
        return cls(tuple(TensorSpec.from_dict(t) for t in d["inputs"]), d.get("device", "cpu"),
                   dict(d.get("example_sizes", {})), {k: tuple(v) for k, v in (d.get("bounds") or {}).items()})

    def with_device(self, device: str) -> "InputSpec":
        return replace(self, device=device)

    def with_bounds(self, bounds: Mapping[str, tuple[int | None, int | None]] | None) -> "InputSpec":
        """The spec with (min, max) bounds on some dynamic dimensions; a name that is not one is an error."""
        if not bounds:
            return self
        unknown = set(bounds) - self.dynamic_dims
        if unknown:
            raise ValueError(f"bounds name {sorted(unknown)}, which are not dynamic dimensions of "
                             f"{self.describe()}")
        return replace(self, bounds={**self.bounds, **{k: (v[0], v[1]) for k, v in bounds.items()}})

    @classmethod
    def from_examples(cls, examples: Sequence[torch.Tensor], *, names: Sequence[str] | None = None,
                      dynamic_batch: bool = True,
                      dynamic_dims: Mapping[str, Mapping[int, str]] | None = None,
                      device: str = "cpu") -> "InputSpec":
        """Build a spec from example tensors. Dimension 0 is the dynamic ``batch`` unless told otherwise;
        ``dynamic_dims`` names more, e.g. ``{"input_ids": {1: "seq"}}``."""
        names = list(names) if names else [f"input{i}" for i in range(len(examples))]
        dynamic_dims = dynamic_dims or {}
        unknown = set(dynamic_dims) - set(names)
        if unknown:
            raise ValueError(f"dynamic_dims names unknown inputs {sorted(unknown)}; inputs are {names}")
        specs, sizes = [], {}
        for name, ex in zip(names, examples):
            shape: list[Dim] = list(ex.shape)
            if dynamic_batch and ex.dim() > 0:
                shape[0] = BATCH
            for axis, dim_name in dynamic_dims.get(name, {}).items():
                if not -ex.dim() <= axis < ex.dim():
                    raise ValueError(f"dynamic_dims: input {name!r} has rank {ex.dim()}, no axis {axis}")
                shape[axis] = dim_name
            for axis, d in enumerate(shape):
                if isinstance(d, str):
                    if d in sizes and sizes[d] != ex.shape[axis]:
                        raise ValueError(f"dynamic dimension {d!r} has size {sizes[d]} in one example and "
                                         f"{ex.shape[axis]} in {name!r}")
                    sizes[d] = int(ex.shape[axis])
            low = high = None
            if not ex.dtype.is_floating_point and not ex.dtype.is_complex and ex.numel():
                low, high = float(ex.min()), float(ex.max())
            specs.append(TensorSpec(name, tuple(shape), dtype_name(ex.dtype), low, high))
        return cls(tuple(specs), device, sizes)

    # -- checking calls ---------------------------------------------------------------------------

    def check(self, inputs: Sequence[Any]) -> dict[str, int]:
        """Raise :class:`InputError` unless ``inputs`` match. Returns the sizes of the dynamic dims."""
        if len(inputs) != len(self.inputs):
            raise InputError(
                f"expected {len(self.inputs)} input(s) {self.describe()}, got {len(inputs)}",
                input=None, expected=len(self.inputs), got=len(inputs))
        sizes: dict[str, int] = {}
        for spec, value in zip(self.inputs, inputs):
            if isinstance(value, torch.Tensor):
                if value.layout is not torch.strided:
                    raise InputError(f"input {spec.name!r}: expected a dense (strided) tensor {spec.describe()}, "
                                     f"got a {str(value.layout).removeprefix('torch.')} tensor; pass "
                                     "x.to_dense()", input=spec.name, expected="torch.strided", got=str(value.layout))
                dtype, shape, dev = dtype_name(value.dtype), tuple(value.shape), value.device
                if _device_type(str(dev)) != _device_type(self.device) or (
                        ":" in self.device and str(dev) != self.device):
                    raise InputError(f"input {spec.name!r}: expected a tensor on {self.device}, got one on {dev}",
                                     input=spec.name, expected=self.device, got=str(dev))
            elif isinstance(value, np.ndarray):
                if value.dtype == object:
                    raise InputError(f"input {spec.name!r}: expected {spec.dtype} values, got a NumPy object array",
                                     input=spec.name, expected=spec.dtype, got="object")
                dtype, shape = _NP_DTYPE_NAMES.get(value.dtype) or value.dtype.name, value.shape
            else:
                raise InputError(
                    f"input {spec.name!r}: expected a torch.Tensor or numpy.ndarray {spec.describe()}, "
                    f"got {type(value).__name__}", input=spec.name, expected="Tensor", got=type(value).__name__)
            if len(shape) != spec.rank:
                raise InputError(
                    f"input {spec.name!r}: expected rank {spec.rank} {list(spec.shape)}, got rank {len(shape)} "
                    f"{list(shape)}", input=spec.name, expected=spec.shape, got=shape)
            if dtype != spec.dtype:
                raise InputError(f"input {spec.name!r}: expected dtype {spec.dtype}, got {dtype}",
                                 input=spec.name, expected=spec.dtype, got=dtype)
            for axis, (want, have) in enumerate(zip(spec.shape, shape)):
                if isinstance(want, str):
                    if have < 1:
                        raise InputError(f"input {spec.name!r}: dimension {axis} ({want}) must be at least 1, "
                                         f"got {have}", input=spec.name, expected=want, got=shape)
                    self._check_bound(spec.name, axis, want, have)
                    seen = sizes.setdefault(want, have)
                    if seen != have:
                        raise InputError(
                            f"input {spec.name!r}: dimension {axis} ({want!r}) is {have} but another input has "
                            f"{want!r}={seen}; inputs sharing a dimension must agree",
                            input=spec.name, expected=seen, got=have)
                elif want != have:
                    raise InputError(
                        f"input {spec.name!r}: expected shape {list(spec.shape)}, got {list(shape)} "
                        f"(dimension {axis} must be {want})", input=spec.name, expected=spec.shape, got=shape)
        return sizes

    def _check_bound(self, name: str, axis: int, dim: str, size: int) -> None:
        low, high = self.bounds.get(dim, (None, None))
        if (low is not None and size < low) or (high is not None and size > high):
            span = f"{low if low is not None else 1}..{high if high is not None else 'any'}"
            raise InputError(f"input {name!r}: dimension {axis} ({dim}) is {size}, outside the bounds {span} this "
                             f"engine was built for", input=name, expected=span, got=size)

    # -- drawing fresh inputs -----------------------------------------------------------------------

    def random_inputs(self, *, generator: torch.Generator | None = None,
                      sizes: Mapping[str, int] | None = None, device: str | None = None) -> list[torch.Tensor]:
        """Fresh random inputs of the spec (never zeros): normal floats; integers within the examples' range."""
        dims = {**self.example_sizes, **(sizes or {})}
        out = []
        for t in self.inputs:
            shape = t.concrete_shape(dims)
            dtype = torch_dtype(t.dtype)
            if dtype == torch.bool:
                x = torch.rand(shape, generator=generator) > 0.5
            elif dtype.is_floating_point:
                x = torch.randn(shape, generator=generator).to(dtype)
            else:
                low = int(t.low) if t.low is not None else 0
                high = int(t.high) if t.high is not None else 100
                x = torch.randint(low, high + 1, shape, generator=generator, dtype=dtype)
            out.append(x.to(device or self.device))
        return out


def _device_type(device: str) -> str:
    return device.split(":")[0]


def input_names(model: torch.nn.Module, count: int) -> list[str]:
    """Names of the model's positional inputs, from ``forward``'s signature where it tells them."""
    try:
        params = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params[:count]]
    if len(names) < count or len(set(names)) != len(names):
        return [f"input{i}" for i in range(count)]
    return names


def as_example_tuple(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    """Accept one tensor, a tuple/list of tensors, or NumPy arrays; return a tuple of tensors."""
    if isinstance(example_inputs, (torch.Tensor, np.ndarray)):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)) or not example_inputs:
        raise InputError(f"example_inputs: expected a tensor or a non-empty tuple of tensors, "
                         f"got {type(example_inputs).__name__}", input="example_inputs",
                         expected="tuple of tensors", got=type(example_inputs).__name__)
    out = []
    for i, x in enumerate(example_inputs):
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, torch.Tensor):
            raise InputError(f"example_inputs[{i}]: expected a torch.Tensor or numpy.ndarray, got "
                             f"{type(x).__name__}", input=f"example_inputs[{i}]", expected="Tensor",
                             got=type(x).__name__)
        out.append(x)
    return tuple(out)
