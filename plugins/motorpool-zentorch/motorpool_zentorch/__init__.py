"""motorpool-zentorch: AMD's zentorch ``torch.compile`` backend for motorpool, shipped as its own distribution.

Written only against motorpool's public plugin facade (``motorpool.plugin``), exactly as a third party would: one :class:`ZentorchBackend`
class and the ``motorpool_register_backends`` hook, found through the ``motorpool.backends`` entry point.
"""

from motorpool.plugin import BackendRecord, hookimpl

from .backend import ZentorchBackend, ZentorchRunner

__version__ = "0.1.0"
__all__ = ["ZentorchBackend", "ZentorchRunner", "motorpool_register_backends"]


@hookimpl
def motorpool_register_backends():
    return [BackendRecord(ZentorchBackend)]
