"""Test settings: CPU only, and one persistent XLA compilation cache for the session's processes
(the tests and the entry points they start compile the same tiny steps many times); the GCS
emulator fixtures ``gcs_server`` / ``gcs_bucket`` (``tests/gcs_emulator.py``)."""
import os
import tempfile

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "hdvila_jax_test_xla_cache"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long tests (640x1024 parity, end-to-end training); CI runs them, -m 'not slow' skips them")


@pytest.fixture(scope="module")
def gcs_server():
    """A fake-gcs-server on 127.0.0.1 for one test module (``tests/gcs_emulator.py``), its URL; the
    environment points every GCS client at it while the module runs. Skips when it is not installed."""
    from tests import gcs_emulator
    reason = gcs_emulator.available()
    if reason:
        pytest.skip(reason)
    with gcs_emulator.gcs_emulator() as url:
        yield url


@pytest.fixture
def gcs_bucket(gcs_server):
    """A fresh bucket on the module's ``gcs_server``; its name."""
    from tests import gcs_emulator
    return gcs_emulator.create_bucket(gcs_server)
