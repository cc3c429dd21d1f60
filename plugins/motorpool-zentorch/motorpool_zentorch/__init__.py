"""motorpool-zentorch: AMD's zentorch ``torch.compile`` backend for motorpool, shipped as its own distribution.

Written only against motorpool's public API, exactly as a third party would: one :class:`ZentorchBackend`
class and the ``motorpool_register_backends`` hook, found through the ``motorpool.backends`` entry point.
"""

import motorpool

from .backend import ZentorchBackend, ZentorchRunner

__version__ = "0.1.0"
__all__ = ["ZentorchBackend", "ZentorchRunner", "motorpool_register_backends"]


@motorpool.hookimpl
def motorpool_register_backends():
    return [motorpool.BackendRecord(ZentorchBackend)]
