"""``motorpool new-backend NAME``: scaffold a backend plugin distribution that passes the conformance suite.

Writes ``pyproject.toml`` (with the ``motorpool.backends`` entry point), one module holding the Backend and
Runner subclasses and the registration hook, a conformance test and a README, into ``--dir`` (default
``./motorpool-NAME``). As generated the backend runs the model with eager PyTorch; every call the author
replaces with their runtime's is marked ``# TODO(author):``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

#: a backend name: what ``Backend.name`` and the entry point are (the registry's own rule)
NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def register(sub) -> None:
    p = sub.add_parser("new-backend", help="scaffold a backend plugin distribution (passes the conformance suite)",
                       description="Scaffold a backend plugin distribution (pyproject with the motorpool.backends entry point, one module, a conformance test) that passes motorpool's conformance suite as generated: it runs the model with eager PyTorch until the author replaces each '# TODO(author):' with their runtime's calls.")
    p.add_argument("name", metavar="NAME", help="the backend's name: lower case, letters, digits and _, "
                                                "starting with a letter (e.g. mynpu)")
    p.add_argument("--dir", metavar="DIR", default=None,
                   help="where to write the distribution; must not exist or be empty (default: ./motorpool-NAME)")
    p.set_defaults(func=run)


def _usage_error(message: str) -> int:
    print(f"motorpool new-backend: error: {message}", file=sys.stderr)
    return 2


def run(args) -> int:
    from ._scaffold import render

    name = args.name
    if not NAME.match(name):
        return _usage_error(f"NAME {name!r} is not a backend name: expected lower case letters, digits and _, "
                            "starting with a letter (e.g. mynpu)")
    taken = _registered_names()
    if name in taken:
        return _usage_error(f"NAME {name!r} is already a registered backend ({', '.join(sorted(taken))} are); "
                            "two backends cannot share a name")
    target = Path(args.dir) if args.dir else Path(f"motorpool-{name.replace('_', '-')}")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        return _usage_error(f"--dir {str(target)!r} already exists and is not an empty directory; "
                            "choose another --dir")
    files = render(name)
    for rel, text in files.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    package = f"motorpool_{name}"
    print(f"wrote {target}/ ({', '.join(files)})")
    print(f"next:  cd {target} && pip install -e . && pytest")
    print(f"then:  replace each '# TODO(author):' in {package}/__init__.py with your runtime's calls")
    return 0


def _registered_names() -> set[str]:
    """Names the registry already holds; an empty set when plugins cannot be loaded (scaffolding needs none)."""
    import warnings

    try:
        from motorpool import get_registry

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return set(get_registry().names())
    except Exception:  # noqa: BLE001 - a broken plugin must not stop the scaffold
        return set()
