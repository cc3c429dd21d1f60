"""Every run of this plugin's tests compiles afresh: motorpool's artifact cache is pointed at a directory of
this session, so engines an earlier version of this plugin built are never loaded, and the user's own cache
is never written."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_artifact_cache(tmp_path_factory):
    old = os.environ.get("MOTORPOOL_CACHE")
    os.environ["MOTORPOOL_CACHE"] = str(tmp_path_factory.mktemp("motorpool-cache"))
    yield
    if old is None:
        os.environ.pop("MOTORPOOL_CACHE", None)
    else:
        os.environ["MOTORPOOL_CACHE"] = old
