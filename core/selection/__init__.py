"""Choosing the backend (and the precision) for a model on this machine.

:mod:`.dispatch` (what ``motorpool.compile`` does for each kind of ``backend``/``precision``), :mod:`.ranking`
(the declared order for this hardware), :mod:`.auto` (``"auto"`` and lists: try in order, keep the first that
works), :mod:`.fastest` (``"fastest"`` and ``motorpool.select``: measure every candidate, keep the best) with
:mod:`.runs` (one candidate, in this process or a child: :mod:`.isolate`), :mod:`.measured` (what a
measurement found), :mod:`.decisions` (measured winners kept on disk), :mod:`.timing` (how a call is timed),
:mod:`.progress` (the progress line) and :mod:`.precision_search` (``precision="auto"``).

May import: :mod:`motorpool.techniques` (the gate), :mod:`motorpool.pipeline`, :mod:`motorpool.engine`,
:mod:`motorpool.plugin`.
"""
