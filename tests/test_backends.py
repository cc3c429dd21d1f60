"""The project's own backend tests: the conformance suite, run over every built-in backend and device.

Built-in backends are the entry points motorpool itself declares; one whose module is missing or whose
runtime is not installed still shows, as SKIPPED with its reason. Third-party plugins run the same suite
in their own tests (``pytest plugins/motorpool-iree``). Filter with ``--motorpool-backends=eager,onnxruntime``.
Known gaps are declared below with their reason; each is a strict xfail, so a gap that closes is noticed.
"""

import importlib.metadata

from motorpool.testing.conformance import BackendConformance


def builtin_backends() -> tuple[str, ...]:
    return tuple(sorted(ep.name for ep in importlib.metadata.entry_points(group="motorpool.backends")
                        if ep.value.startswith("motorpool.backends.")))


class TestBackends(BackendConformance):
    backends = builtin_backends()
