"""motorpool-iree: an IREE backend for motorpool, shipped as its own distribution.

Written only against motorpool's public API, exactly as a third party would: one :class:`IreeBackend` class
and the ``motorpool_register_backends`` hook, found through the ``motorpool.backends`` entry point.
"""

from motorpool.plugin import BackendRecord, hookimpl

from .backend import IreeBackend, IreeRunner

__version__ = "0.1.0"
__all__ = ["IreeBackend", "IreeRunner", "motorpool_register_backends"]


@hookimpl
def motorpool_register_backends():
    return [BackendRecord(IreeBackend)]
