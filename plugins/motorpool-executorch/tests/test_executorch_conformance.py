"""motorpool's conformance suite, run against the ExecuTorch backend: this is all a plugin author writes."""

import pytest

pytest.importorskip("executorch", reason='executorch is not installed: pip install -e plugins/motorpool-executorch')
pytest.importorskip("motorpool_executorch", reason="the plugin is not installed: pip install -e plugins/motorpool-executorch")

import motorpool  # noqa: E402
from motorpool.testing.conformance import BackendConformance  # noqa: E402


@pytest.mark.notyet(["executorch"], models=["gru"], raises=motorpool.UnsupportedError,
                    reason="executorch 1.5's lowering (to_edge_transform_and_lower) fixes nn.GRU's batch dimension "
                           "to the example's size, so the program cannot keep the batch dynamic; the backend "
                           "refuses it at compile time (LSTM keeps it dynamic and passes)")
class TestExecuTorch(BackendConformance):
    backends = ("executorch",)
