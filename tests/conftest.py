"""Test settings: CPU only, float32 matmuls at full precision."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long tests (640x1024 parity, end-to-end training); CI runs them, -m 'not slow' skips them")
