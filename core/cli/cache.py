"""``motorpool cache ls|clear|prune``: the on-disk cache of compiled engines (see motorpool.engine.artifact_cache)."""

from __future__ import annotations

import json

from ._output import UsageError


def register(sub) -> None:
    p = sub.add_parser("cache", help="list, clear or prune the cache of compiled engines")
    csub = p.add_subparsers(dest="cache_command", metavar="ACTION")
    ls = csub.add_parser("ls", help="list cached engines, most recently used first")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=_ls)
    clear = csub.add_parser("clear", help="remove every cached engine")
    clear.set_defaults(func=_clear)
    prune = csub.add_parser("prune", help="remove least recently used engines beyond a size, or unused ones")
    prune.add_argument("--max-size", default=None, help="keep at most this much, e.g. 500M, 2G (default: no size limit)")
    prune.add_argument("--older-than-days", type=float, default=None, help="remove engines unused this long (default: no age limit)")
    prune.set_defaults(func=_prune)
    p.set_defaults(func=_ls, json=False)


def _ls(args) -> int:
    from ..engine import artifact_cache as ac

    root = ac.cache_dir(create=False)
    found = ac.entries(root)
    if getattr(args, "json", False):
        print(json.dumps({"path": str(root), "entries": [e.to_dict() for e in found],
                          "total_bytes": sum(e.size_bytes for e in found)}, indent=2))
        return 0
    print(f"cache: {root}  ({len(found)} engines, {ac.format_size(sum(e.size_bytes for e in found))})")
    for e in found:
        d = e.to_dict()
        print(f"  {e.backend:14s} {e.precision or '?':5s} {ac.format_size(e.size_bytes):>10s}  {d['last_used']}  "
              f"{e.model_class or '?'}  {e.digest[:12]}" + ("" if e.valid else "  (invalid: no readable key.json)"))
    return 0


def _clear(args) -> int:
    from ..engine import artifact_cache as ac

    n = ac.clear()
    print(f"removed {n} cached engine(s) from {ac.cache_dir(create=False)}")
    return 0


def _prune(args) -> int:
    from ..engine import artifact_cache as ac

    if args.max_size is None and args.older_than_days is None:
        raise UsageError("say what to prune: --max-size SIZE and/or --older-than-days DAYS")
    try:
        max_bytes = ac.parse_size(args.max_size) if args.max_size is not None else None
    except ValueError as exc:
        raise UsageError(f"--max-size: {exc}") from None
    removed = ac.prune(max_bytes, older_than_s=None if args.older_than_days is None
                       else args.older_than_days * 86400)
    left = ac.entries()
    print(f"removed {len(removed)} engine(s) ({ac.format_size(sum(e.size_bytes for e in removed))}); "
          f"{len(left)} left ({ac.format_size(sum(e.size_bytes for e in left))})")
    return 0
