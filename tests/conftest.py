"""Test settings: CPU only, and one persistent XLA compilation cache for the session's processes
(the tests and the entry points they start compile the same tiny steps many times)."""
import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "hdvila_jax_test_xla_cache"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long tests (640x1024 parity, end-to-end training); CI runs them, -m 'not slow' skips them")
