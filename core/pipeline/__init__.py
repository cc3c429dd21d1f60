"""The pipeline layer: one model through one backend, checked.

:mod:`.prepare` (eval mode, the examples, the input spec, the output structure; the inputs verification
draws), :mod:`.candidate` (one backend: availability, device, compile or a cache hit, verification, the
gate, the cache store; the wording of a failed candidate), :mod:`.verify` (engine vs eager PyTorch, the
tolerance table) and :mod:`.stored` (verification data kept inside an exported artifact).

May import: :mod:`motorpool.engine` and :mod:`motorpool.plugin`.
"""
