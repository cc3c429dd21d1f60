"""Measuring engines and techniques on this machine.

:mod:`.scenarios` (single-stream, offline and server, after MLPerf LoadGen), :mod:`.loadgen` (the real MLPerf
LoadGen over one engine), :mod:`.drivers` (which of the two runs ``bench``), :mod:`.benchmark` (one engine, or
a model over backends x precisions), :mod:`.bench_output` (tables, JSON, Markdown, the chart),
:mod:`.profiling` (where a call's time goes), :mod:`.technique_report` (``motorpool.optimize_report``) and
:mod:`.cost` (cost per 1000 inferences, and bench runs from different machines side by side).

May import: :mod:`motorpool.selection` (to compile as ``compile`` does), :mod:`motorpool.serving`,
:mod:`motorpool.techniques`, :mod:`motorpool.pipeline`, :mod:`motorpool.engine`, :mod:`motorpool.plugin`.
"""
