"""Serving an engine to many callers in one process.

:mod:`.dynamic_batcher` (requests from many threads or coroutines gathered into batches: max batch size, max
queue delay, a bounded queue, per-request timeouts and errors, a draining shutdown) and
:mod:`.prediction_cache` (answers kept by input: an in-process LRU, or Redis shared by several processes)
and :mod:`.cascade` (a fast engine in front of an accurate one, routing the samples it is unsure of).

May import: :mod:`motorpool.pipeline`, :mod:`motorpool.engine`, :mod:`motorpool.plugin`.
"""
