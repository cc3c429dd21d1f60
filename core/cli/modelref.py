"""MODEL as the command line names it: code that builds the model, or a torch.export program. Never a pickle.

- ``package.module:factory`` (or ``path/to/file.py:factory``): ``factory()`` returns ``(model, example_inputs)``;
  the factory may be a dotted attribute (``pkg.mod:Models.small``). The current directory is importable, as
  with ``python -m``.
- ``path/to/model.pt2``: a program saved by ``torch.export.save``; its stored example inputs are the examples.
  (``torch.export.load`` is PyTorch's own reader: load only programs you trust, as you would run code.)
- ``zoo:NAME``: one of motorpool's built-in test models (``motorpool.testing.zoo``), handy for trying things.

A ``.pt``/``.pth``/``.pkl`` file is refused: it would be unpickled, which runs arbitrary code.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..pipeline.prepare import as_module
from ..plugin.errors import InputError
from ..plugin.trust import pt2_code_reasons

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    name: str
    source: str  # "factory", "torch.export" or "zoo"


def load_model(ref: str, *, batch: int | None = None) -> LoadedModel:
    """Resolve ``ref`` (see the module docstring). ``batch`` re-draws a zoo model's examples at that batch."""
    ref = str(ref).strip()
    if not ref:
        raise InputError("MODEL: expected package.module:factory, a .pt2 file or zoo:NAME, got an empty string",
                         input="MODEL", expected="package.module:factory | FILE.pt2 | zoo:NAME", got=ref)
    if ref.startswith("zoo:"):
        from ..testing import zoo

        name = ref[4:]
        try:
            case = zoo.get(name)
        except KeyError as exc:
            raise InputError(f"MODEL {ref!r}: {exc.args[0]}", input="MODEL", expected=list(zoo.ZOO), got=name)
        model, examples = case.build(batch=batch or 2)
        return LoadedModel(model, examples, f"zoo:{name}", "zoo")
    path = Path(ref)
    if path.suffix == ".pt2":
        return _load_pt2(path)
    if path.suffix.lower() in PICKLE_SUFFIXES and ":" not in ref.split("/")[-1]:
        raise InputError(f"MODEL {ref!r}: motorpool does not load pickled models (unpickling runs arbitrary "
                         "code). Give a factory, package.module:factory returning (model, example_inputs), or "
                         "a torch.export program saved with torch.export.save as a .pt2 file",
                         input="MODEL", expected="package.module:factory | FILE.pt2", got=ref)
    if ":" not in ref:
        raise InputError(f"MODEL {ref!r}: expected package.module:factory (a callable returning (model, "
                         "example_inputs)), a .pt2 file saved by torch.export.save, or zoo:NAME",
                         input="MODEL", expected="package.module:factory | FILE.pt2 | zoo:NAME", got=ref)
    return _load_factory(ref)


def _load_pt2(path: Path) -> LoadedModel:
    if not path.is_file():
        raise InputError(f"MODEL {str(path)!r}: no such file", input="MODEL", expected="an existing .pt2 file",
                         got=str(path))
    reasons = pt2_code_reasons(path)  # torch.export.load unpickles flagged payloads: look before it reads them
    if reasons:
        raise InputError(f"MODEL {str(path)!r} would run code when loaded: {'; '.join(reasons)}. Load it yourself "
                         "with torch.export.load if you trust it, and pass the module (see SECURITY.md)",
                         input="MODEL", expected="a .pt2 without pickled payloads", got=str(path))
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001 - whatever the reader says, the user needs the file named
        raise InputError(f"MODEL {str(path)!r} is not a torch.export program torch {torch.__version__} can read: "
                         f"{type(exc).__name__}: {exc}", input="MODEL", expected="torch.export .pt2",
                         got=str(path)) from exc
    examples = getattr(program, "example_inputs", None)
    args = examples[0] if examples else None
    if not args or not all(isinstance(a, torch.Tensor) for a in args):
        raise InputError(f"MODEL {str(path)!r} stores no example inputs (positional tensors); re-export it with "
                         "torch.export.export(model, example_args) and torch.export.save",
                         input="MODEL", expected="a .pt2 with example inputs", got=str(path))
    return LoadedModel(as_module(program), tuple(args), path.name, "torch.export")


def _load_factory(ref: str) -> LoadedModel:
    module_part, _, attr = ref.rpartition(":")
    if not module_part or not attr:
        raise InputError(f"MODEL {ref!r}: expected package.module:factory", input="MODEL",
                         expected="package.module:factory", got=ref)
    module = _import(module_part, ref)
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise InputError(f"MODEL {ref!r}: {module_part} has no attribute {attr!r}", input="MODEL",
                             expected=f"a callable {attr} in {module_part}", got=ref) from None
    if not callable(target):
        raise InputError(f"MODEL {ref!r}: {attr} is a {type(target).__name__}, not a callable", input="MODEL",
                         expected="a callable returning (model, example_inputs)", got=type(target).__name__)
    made = target()
    if not (isinstance(made, (tuple, list)) and len(made) == 2 and isinstance(made[0], torch.nn.Module)):
        raise InputError(f"MODEL {ref!r}: {attr}() must return (model, example_inputs) with model a "
                         f"torch.nn.Module; it returned {_describe(made)}", input="MODEL",
                         expected="(torch.nn.Module, example_inputs)", got=_describe(made))
    from ..plugin.spec import as_example_tuple

    return LoadedModel(made[0], as_example_tuple(made[1]), ref, "factory")


def _import(module_part: str, ref: str):
    if module_part.endswith(".py"):
        path = Path(module_part)
        if not path.is_file():
            raise InputError(f"MODEL {ref!r}: no such file {module_part}", input="MODEL",
                             expected="an existing .py file", got=module_part)
        name = f"motorpool_model_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    cwd = str(Path.cwd())
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # like python -m: a module in the current directory is found
    try:
        return importlib.import_module(module_part)
    except ModuleNotFoundError as exc:
        if exc.name and module_part.startswith(exc.name):
            raise InputError(f"MODEL {ref!r}: no module named {module_part!r} (searched the current directory "
                             "and the installed packages)", input="MODEL", expected="an importable module",
                             got=module_part) from exc
        raise


def _describe(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}: (" + ", ".join(type(v).__name__ for v in value) + ")"
    return type(value).__name__
