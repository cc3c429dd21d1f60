"""The Open Inference Protocol (KServe v2, Triton's HTTP/REST protocol): the pieces that do not depend on a
web framework.

- :func:`describe_engine` turns an engine's input spec (and one probe of its outputs) into the protocol's
  model metadata: tensor names, datatypes (``"FP32"``, ``"INT64"``...) and shapes with -1 for dynamic
  dimensions.
- :func:`decode_request` reads an ``/infer`` body: JSON tensors, and Triton's binary tensor extension (the
  ``Inference-Header-Content-Length`` header, each input's ``binary_data_size`` parameter).
- :func:`encode_response` writes the answer, as JSON or, when the client asks (``binary_data`` on a
  requested output, ``binary_data_output`` on the request), as JSON header plus raw bytes.
- :func:`error_response` maps an exception to the protocol's status: :class:`motorpool.InputError` and a
  malformed request -> 400 with the message, a full queue -> 503 with ``Retry-After``, a request that waited
  past its timeout -> 504, an unknown model -> 404.

Spec: https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/ and Triton's
``docs/protocol/extension_binary_data.md``.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
import torch.utils._pytree as pytree

from ..plugin.errors import InputError, MotorpoolError
from .requests import BatcherClosed, QueueFull

#: the protocol's header naming the length of the JSON part of a body that carries binary tensors
HEADER_LENGTH = "Inference-Header-Content-Length"

#: motorpool (torch) dtype name -> Open Inference Protocol datatype
DATATYPES: dict[str, str] = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64", "bfloat16": "BF16",
}
_FROM_DATATYPE = {v: k for k, v in DATATYPES.items()}


class ProtocolError(MotorpoolError, ValueError):
    """A request that does not follow the protocol (answered 400); ``status`` may say otherwise (404)."""

    def __init__(self, message: str, *, status: int = 400):
        super().__init__(message)
        self.status = status


def datatype(dtype: Any) -> str:
    """The protocol's datatype for a torch/NumPy dtype or a motorpool dtype name: ``"FP32"`` for float32."""
    if isinstance(dtype, str):
        name = dtype
    elif isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    else:
        name = np.dtype(dtype).name
    try:
        return DATATYPES[name]
    except KeyError:
        raise ProtocolError(f"dtype {name!r} has no Open Inference Protocol datatype; supported: "
                            f"{', '.join(DATATYPES)}") from None


def numpy_dtype(datatype_: str) -> np.dtype | None:
    """NumPy dtype of a protocol datatype; None for BF16 (NumPy has none: carried as torch.bfloat16)."""
    name = _FROM_DATATYPE.get(datatype_)
    if name is None:
        raise ProtocolError(f"datatype {datatype_!r} is not supported; expected one of "
                            f"{', '.join(_FROM_DATATYPE)}")
    return None if name == "bfloat16" else np.dtype(name)


# -- metadata ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorMeta:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 for a dynamic dimension

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelMeta:
    """What ``GET /v2/models/{name}`` answers, plus what the server needs to route tensors."""

    name: str
    platform: str
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]
    versions: tuple[str, ...] = ("1",)
    #: the engine's batch is dimension 0 of every input and output and may vary
    batched: bool = True
    #: the most rows one request may hold (0: no limit beyond the engine's)
    max_batch_size: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "versions": list(self.versions), "platform": self.platform,
                "inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}

    def output(self, name: str) -> TensorMeta:
        for t in self.outputs:
            if t.name == name:
                return t
        raise ProtocolError(f"model {self.name!r} has no output {name!r}; its outputs are "
                            f"{', '.join(t.name for t in self.outputs)}")


def output_names(tree_outputs: Any) -> list[str]:
    """Names of the tensors in a model's output structure, in pytree order, as ``motorpool run`` names its
    files: ``output`` for one tensor, ``output_0``... for a tuple, ``output_logits`` for a dict entry."""
    leaves, _ = pytree.tree_flatten_with_path(tree_outputs)
    names = []
    for path, _value in leaves:
        parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
        names.append("_".join(["output"] + [re.sub(r"[^A-Za-z0-9_.-]", "_", p) for p in parts]))
    return names


def flatten_outputs(outputs: Any) -> list[Any]:
    return pytree.tree_flatten(outputs)[0]


def describe_engine(engine: Any, name: str) -> ModelMeta:
    """The protocol's metadata for ``engine``: inputs from its spec; outputs from two probe calls on fresh
    random inputs (the second with every dynamic dimension one larger, so output dims that follow an input's
    dynamic dims read -1)."""
    spec = engine.input_spec
    inputs = tuple(TensorMeta(t.name, datatype(t.dtype), tuple(-1 if isinstance(d, str) else int(d)
                                                               for d in t.shape)) for t in spec.inputs)
    generator = torch.Generator().manual_seed(0)
    first = engine(*spec.random_inputs(generator=generator))
    leaves = flatten_outputs(first)
    shapes = [tuple(int(d) for d in x.shape) for x in leaves]
    if spec.dynamic_dims:
        bigger = {d: spec.example_sizes.get(d, 1) + 1 for d in spec.dynamic_dims}
        try:
            second = flatten_outputs(engine(*spec.random_inputs(generator=generator, sizes=bigger)))
            shapes = [tuple(-1 if a != b else a for a, b in zip(s, x.shape)) if len(s) == len(x.shape)
                      else tuple(-1 for _ in s) for s, x in zip(shapes, second)]
        except InputError:  # e.g. a TensorRT profile that allows no larger size: batch only
            shapes = [(-1,) + s[1:] if s and spec.has_dynamic_batch else s for s in shapes]
    outputs = tuple(TensorMeta(n, datatype(x.dtype), s) for n, x, s in zip(output_names(first), leaves, shapes))
    return ModelMeta(name=name, platform=f"motorpool_{engine.backend}", inputs=inputs, outputs=outputs,
                     batched=spec.has_dynamic_batch,
                     extra={"backend": engine.backend, "device": engine.device, "precision": engine.precision})


# -- requests ------------------------------------------------------------------------------------------------


@dataclass
class InferRequest:
    """A decoded ``/infer`` request: the inputs in the engine's order, and how to answer."""

    inputs: list[Any]
    id: str | None = None
    #: requested outputs: name -> send as binary (None: the request's default)
    outputs: dict[str, bool | None] | None = None
    binary_default: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def timeout_ms(self) -> float | None:
        """Triton's per-request ``timeout`` parameter (microseconds), in milliseconds."""
        value = self.parameters.get("timeout")
        if value is None:
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ProtocolError(f"parameter 'timeout': expected a positive number of microseconds, got {value!r}")
        return value / 1e3


def decompress(body: bytes, encoding: str | None) -> bytes:
    """Undo a request's ``Content-Encoding`` (tritonclient sends gzip or deflate when asked)."""
    if not encoding or encoding == "identity":
        return body
    try:
        if encoding == "gzip":
            return gzip.decompress(body)
        if encoding == "deflate":
            return zlib.decompress(body)
    except (OSError, zlib.error) as exc:
        raise ProtocolError(f"cannot decompress the {encoding} request body: {exc}") from exc
    raise ProtocolError(f"Content-Encoding {encoding!r} is not supported; expected gzip, deflate or none",
                        status=415)


def decode_request(body: bytes, meta: ModelMeta, header_length: int | str | None = None) -> InferRequest:
    """Decode an ``/infer`` body for the model ``meta`` describes.

    ``header_length`` is the ``Inference-Header-Content-Length`` header: the body's first that many bytes are
    JSON, the rest the binary tensors in the order of the inputs that carry ``binary_data_size``. Inputs may
    come in any order; they are returned in the engine's. Raises :class:`ProtocolError` (400) naming what is
    wrong; shapes are left for the engine's own check (its :class:`motorpool.InputError` says what it wants).
    """
    if header_length is not None:
        try:
            header_length = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER_LENGTH}: expected an integer, got {header_length!r}") from None
        if not 0 <= header_length <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} is {header_length} but the body holds {len(body)} bytes")
        head, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        head, binary = body, memoryview(b"")
    try:
        doc = json.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"the request is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise ProtocolError("the request must be a JSON object with an 'inputs' list")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError(f"'parameters' must be an object, got {type(params).__name__}")
    by_name: dict[str, Any] = {}
    offset = 0
    wanted = {t.name: t for t in meta.inputs}
    for i, item in enumerate(doc["inputs"]):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError(f"inputs[{i}] must be an object with a 'name'")
        name = item["name"]
        if name not in wanted:
            raise ProtocolError(f"model {meta.name!r} has no input {name!r}; its inputs are "
                                f"{', '.join(wanted)}")
        if name in by_name:
            raise ProtocolError(f"input {name!r} is given twice")
        tensor, used = _decode_tensor(item, wanted[name], binary, offset)
        offset += used
        by_name[name] = tensor
    if offset != len(binary):
        raise ProtocolError(f"the body holds {len(binary)} bytes of binary tensor data but the inputs' "
                            f"binary_data_size add up to {offset}")
    missing = [n for n in wanted if n not in by_name]
    if missing:
        raise ProtocolError(f"missing input(s) {', '.join(map(repr, missing))}; model {meta.name!r} takes "
                            + ", ".join(f"{t.name} {t.datatype}{list(t.shape)}" for t in meta.inputs))
    inputs = [by_name[n] for n in wanted]
    if any(isinstance(x, torch.Tensor) for x in inputs):  # BF16 came: hand every input over as torch
        inputs = [x if isinstance(x, torch.Tensor) else torch.from_numpy(x) for x in inputs]
    outputs = None
    if doc.get("outputs") is not None:
        if not isinstance(doc["outputs"], list):
            raise ProtocolError("'outputs' must be a list")
        outputs = {}
        for i, item in enumerate(doc["outputs"]):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise ProtocolError(f"outputs[{i}] must be an object with a 'name'")
            meta.output(item["name"])  # raises naming the valid outputs
            oparams = item.get("parameters") or {}
            if "classification" in oparams:
                raise ProtocolError("the classification extension is not supported; request the raw output")
            outputs[item["name"]] = oparams.get("binary_data")
    request_id = doc.get("id")
    return InferRequest(inputs, id=None if request_id is None else str(request_id), outputs=outputs,
                        binary_default=bool(params.get("binary_data_output", False)), parameters=params)


def _decode_tensor(item: Mapping[str, Any], meta: TensorMeta, binary: memoryview, offset: int) -> tuple[Any, int]:
    name = item["name"]
    dt = item.get("datatype")
    if dt != meta.datatype:
        raise InputError(f"input {name!r}: expected datatype {meta.datatype}, got {dt!r}",
                                   input=name, expected=meta.datatype, got=dt)
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise ProtocolError(f"input {name!r}: 'shape' must be a list of non-negative integers, got {shape!r}")
    count = int(np.prod(shape)) if shape else 1
    np_dtype = numpy_dtype(dt)
    itemsize = 2 if np_dtype is None else np_dtype.itemsize
    size = (item.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0:
            raise ProtocolError(f"input {name!r}: binary_data_size must be a non-negative integer, got {size!r}")
        if size != count * itemsize:
            raise ProtocolError(f"input {name!r}: binary_data_size is {size} bytes but shape {shape} of {dt} "
                                f"needs {count * itemsize}")
        if offset + size > len(binary):
            raise ProtocolError(f"input {name!r}: binary_data_size {size} runs past the end of the body "
                                f"({len(binary) - offset} bytes left)")
        raw = binary[offset:offset + size]
        if np_dtype is None:
            return torch.frombuffer(bytearray(raw), dtype=torch.bfloat16).reshape(shape), size
        return np.frombuffer(raw, dtype=np_dtype).reshape(shape).copy(), size
    if "data" not in item:
        raise ProtocolError(f"input {name!r} has neither 'data' nor a binary_data_size parameter")
    try:
        array = np.asarray(item["data"], dtype=np.float32 if np_dtype is None else np_dtype)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"input {name!r}: 'data' is not a list of {dt} values: {exc}") from None
    if array.size != count:
        raise ProtocolError(f"input {name!r}: shape {shape} holds {count} elements but 'data' has {array.size}")
    array = array.reshape(shape)
    if np_dtype is None:
        return torch.from_numpy(array).to(torch.bfloat16), 0
    return array, 0


# -- responses -----------------------------------------------------------------------------------------------


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            return x.view(torch.int16).numpy()  # raw bytes; the datatype says BF16
        return x.numpy()
    return np.asarray(x)


def encode_response(meta: ModelMeta, outputs: Any, request: InferRequest) -> tuple[bytes, int | None]:
    """The ``/infer`` answer for the model's ``outputs`` (its output structure). Returns ``(body,
    header_length)``: ``header_length`` is None for a pure JSON body, else the value of the
    ``Inference-Header-Content-Length`` header (the JSON part's length; the binary tensors follow)."""
    leaves = flatten_outputs(outputs)
    names = [t.name for t in meta.outputs]
    if len(leaves) != len(names):
        raise RuntimeError(f"model {meta.name!r} returned {len(leaves)} tensors; its metadata lists {len(names)}")
    wanted = request.outputs if request.outputs is not None else dict.fromkeys(names)
    entries, blobs = [], []
    for name, value, tmeta in zip(names, leaves, meta.outputs):
        if name not in wanted:
            continue
        binary = wanted[name]
        if binary is None:
            binary = request.binary_default
        array = np.ascontiguousarray(_to_numpy(value))
        dt = "BF16" if isinstance(value, torch.Tensor) and value.dtype == torch.bfloat16 else datatype(array.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": dt, "shape": list(array.shape)}
        if binary:
            blob = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            if dt == "BF16":
                array = torch.from_numpy(array).view(torch.bfloat16).float().numpy()
            entry["data"] = array.reshape(-1).tolist()
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": meta.name, "model_version": meta.versions[-1], "outputs": entries}
    if request.id is not None:
        doc["id"] = request.id
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)


def error_response(exc: BaseException) -> tuple[int, str, dict[str, str]]:
    """``(status, message, headers)`` for an exception raised while answering a request."""
    if isinstance(exc, ProtocolError):
        return exc.status, str(exc), {}
    if isinstance(exc, InputError):
        return 400, str(exc), {}
    if isinstance(exc, QueueFull):
        return 503, str(exc), {"Retry-After": "1"}
    if isinstance(exc, BatcherClosed):
        return 503, f"the server is shutting down: {exc}", {"Retry-After": "1"}
    if isinstance(exc, TimeoutError):
        return 504, str(exc) or "the request timed out", {}
    return 500, f"{type(exc).__name__}: {exc}", {}


def error_body(message: str) -> bytes:
    """The protocol's error object."""
    return json.dumps({"error": message}).encode()


__all__ = ["HEADER_LENGTH", "DATATYPES", "ProtocolError", "TensorMeta", "ModelMeta", "InferRequest", "datatype",
           "numpy_dtype", "describe_engine", "output_names", "flatten_outputs", "decode_request", "decompress",
           "encode_response", "error_response", "error_body"]
