"""Model-level techniques: model -> model transforms and the quality gate that judges their engines.

:mod:`.gate` (a task metric on the user's data, and the budget an engine's drop must stay within),
:mod:`.held_out` (a gate's data split into a calibration set for static int8 and the samples it scores),
:mod:`.prune` (unstructured and structured pruning) and :mod:`.distill` (knowledge distillation into a
smaller student). Reduced precision for torch modules lives in
:mod:`motorpool.plugin.torch_precision`, because the PyTorch backends call it.

May import: :mod:`motorpool.pipeline`, :mod:`motorpool.engine`, :mod:`motorpool.plugin`.
"""
