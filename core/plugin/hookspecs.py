"""The hooks a motorpool plugin implements. Each docstring is the contract.

A plugin is a module (or object) named by an entry point in the group ``motorpool.backends``::

    # pyproject.toml of your distribution
    [project.entry-points."motorpool.backends"]
    mybackend = "motorpool_mybackend"

    # motorpool_mybackend/__init__.py
    import motorpool

    class MyBackend(motorpool.Backend):
        name = "mybackend"
        ...

    @motorpool.hookimpl
    def motorpool_register_backends():
        return [motorpool.BackendRecord(MyBackend)]
"""

from __future__ import annotations

from typing import Iterable

import pluggy

PROJECT = "motorpool"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def motorpool_register_backends() -> Iterable["motorpool.BackendRecord"]:  # noqa: F821
    """Return the backends this plugin provides, as an iterable of :class:`motorpool.BackendRecord`.

    Building the records must be cheap and import nothing heavy: the runtime a backend wraps is imported in
    its ``availability``/``compile``/``load``. Each record's backend class must subclass
    :class:`motorpool.Backend` and have a lower-case ``name`` that no other plugin uses.

    A record that is not a ``BackendRecord``, a name already taken, or an exception raised here is reported
    as a :class:`motorpool.PluginWarning` naming this plugin's distribution, and the plugin is skipped;
    other plugins and ``import motorpool`` are unaffected.

    Example::

        @motorpool.hookimpl
        def motorpool_register_backends():
            return [motorpool.BackendRecord(IreeBackend)]
    """
