"""The engine layer: what a compiled model is once it exists.

:mod:`.engine` (the :class:`Engine`, called exactly like the model), :mod:`.report` (what it is and how it was
chosen), :mod:`.manifest` (the JSON beside a saved artifact, checksums, atomic writes), :mod:`.saved` (opening
a saved directory), :mod:`.artifact_cache` (compiled engines kept on disk, keyed by :mod:`.fingerprint`) and
:mod:`.batching` (an engine's ``map`` over an iterable: rows, padding, splitting).

May import: :mod:`motorpool.plugin` only.
"""
