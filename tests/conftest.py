import os
import tempfile

import pytest

# The suite must never read or pollute a user's caches: every cache motorpool keeps goes to a temporary dir.
_CACHE = tempfile.mkdtemp(prefix="motorpool-test-cache-")
os.environ["MOTORPOOL_CACHE"] = _CACHE
# Off by default so that one test's compiled engine never stands in for another's compile; the cache's
# own tests (tests/test_artifact_cache.py) pass cache=True.
os.environ.setdefault("MOTORPOOL_NO_CACHE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def fresh_registry(monkeypatch):
    """A registry of its own for one test, empty (no entry points loaded): backends are registered by hand."""
    import motorpool
    from motorpool.plugin.registry import set_registry

    reg = motorpool.Registry(autoload=False)
    previous = set_registry(reg)
    yield reg
    set_registry(previous)
