"""``motorpool doctor``: this machine's hardware and every registered backend: can it run, why not, how to fix."""

from __future__ import annotations

import json
import warnings

from ._output import Ticker


def register(sub) -> None:
    p = sub.add_parser("doctor", help="show hardware and every backend's status")
    p.add_argument("--json", action="store_true", help="machine-readable output (for CI)")
    p.set_defaults(func=run)


def probe_backends(ticker: Ticker | None = None, *, names: list[str] | None = None) -> list:
    """What :func:`motorpool.list_backends` returns, with the availability probes run side by side in threads
    (each imports its runtime: seconds for some) and each finished one reported to ``ticker``; only
    ``names`` when given."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from ..plugin.registry import BackendInfo, get_registry, safe_availability

    reg = get_registry()
    names = reg.names() if names is None else [n for n in reg.names() if n in names]
    backends = {name: reg.get(name) for name in names}
    found = {}
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(names)))) as pool:
        futures = {pool.submit(safe_availability, backends[n]): n for n in names}
        for fut in as_completed(futures):
            name = futures[fut]
            found[name] = fut.result()
            if ticker:
                ticker.step(f"probed {name}", advance=True)
    rows = []
    for name in names:
        av, backend = found[name], backends[name]
        rows.append(BackendInfo(name, av.available, av.status.value, av.reason, av.fix, av.version, av.devices,
                                av.can_export, reg.provider(name), backend.capabilities.to_dict()))
    return rows


def collect(ticker: Ticker | None = None) -> dict:
    from .. import __version__
    from ..plugin import hardware
    from ..plugin.registry import get_registry

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = probe_backends(ticker)
    skipped = [{"plugin": p, "distribution": d, "reason": r} for p, d, r in get_registry().skipped]
    from ..plugin.priority import KINDS
    from ..selection.ranking import rank

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the order backend="auto" tries here, per kind of model ("~": a close call, timed)
        by_kind = {kind: rank("fp32", traits=[kind]) for kind in KINDS}
    return {
        "motorpool": __version__,
        "hardware": hardware.detect().to_dict(),
        "backends": [r.to_dict() for r in rows],
        # devices only a backend's runtime sees (OpenVINO's Intel GPU/NPU, Core ML's Neural Engine...)
        "backend_devices": {r.name: list(r.devices) for r in rows if r.available},
        "auto_order": by_kind["dense"].names,
        "auto_by_kind": {kind: r.describe() for kind, r in by_kind.items()},
        "skipped_plugins": skipped,
        "warnings": sorted({str(w.message) for w in caught}),
    }


def run(args) -> int:
    from ..plugin.registry import get_registry

    with Ticker("doctor", total=len(get_registry().names())) as ticker:
        ticker.step("probing backends")
        data = collect(ticker)
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    hw = data["hardware"]
    cpu = hw["cpu"]
    print(f"motorpool {data['motorpool']}")
    print(f"CPU      {cpu['model']} ({cpu['vendor']}, {cpu['arch']}, {cpu['cores']} cores)")
    print(f"ISA      {' '.join(cpu['features']) or '-'}")
    gpus = hw["gpus"]
    print("GPUs     " + ("; ".join(f"{g['kind']}:{g['index']} {g['name']}"
                                   + (f" sm{g['capability']} {g['memory_gb']} GiB" if g.get("capability") else "")
                                   for g in gpus) or "none (no CUDA device, no Apple GPU)"))
    print(f"class    {hw['hardware_class']}   fingerprint {hw['fingerprint']}")
    seen = sorted({d for devs in data["backend_devices"].values() for d in devs})
    print(f"devices  {', '.join(seen) or '-'} (as the available backends see them)")
    for i, (kind, order) in enumerate(data["auto_by_kind"].items()):
        print(f"{'auto' if i == 0 else '':8s} {kind:12s} {order}")
    print()
    print(f"{'backend':14s} {'status':20s} {'version':22s} {'devices':18s} notes")
    for b in data["backends"]:
        status = "available" if b["available"] else b["status"] + (" (export)" if b["can_export"] else "")
        notes = b["reason"] + (f"  fix: {b['fix']}" if b["fix"] else "")
        print(f"{b['name']:14s} {status:20s} {str(b['version'] or '-')[:22]:22s} "
              f"{','.join(b['devices']) or '-':18s} {notes}")
    for s in data["skipped_plugins"]:
        print(f"skipped plugin {s['plugin']!r} from {s['distribution']}: {s['reason']}")
    return 0
