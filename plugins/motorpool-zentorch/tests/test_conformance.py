"""motorpool's conformance suite, run against the zentorch backend: this is all a plugin author writes.

Off AMD EPYC CPUs every check is SKIPPED with the backend's own reason (unsupported-platform).
"""

from motorpool.testing.conformance import BackendConformance


class TestZentorch(BackendConformance):
    backends = ("zentorch",)
