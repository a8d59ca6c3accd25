"""The one path layer: local paths and ``gs://`` object paths behind the same small functions.

Every file the trainer's run directory holds (orbax checkpoints, ``config.json``, ``metrics.jsonl``,
TensorBoard events, ``best/``) and every run config or checkpoint the Encoder reads goes through here.

Backend: ``etils.epath`` (the path type orbax takes; already a dependency through orbax), forced onto
its fsspec backend, so ``gs://`` is served by ``gcsfs``. Not TensorFlow's ``tf.io.gfile``: its GCS
filesystem has a fixed endpoint and cannot reach an emulator, so nothing here (nor orbax's metadata
I/O, which goes through epath) uses it. Local paths, relative ones included, are used unchanged
(``os``/``open`` semantics). Array data of orbax checkpoints is written by tensorstore, which talks
to GCS itself.

Importing this module sets up the environment once (``os.environ.setdefault``: what the caller set
wins):

- ``EPATH_USE_TF=false``: epath's gs:// backend is fsspec/gcsfs, not tf.io.gfile (epath reads this
  once per process, so the module must be imported before the first gs:// epath is made);
- ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``: plain ``gcsfs.GCSFileSystem`` (its experimental
  subclass asks the Storage Control gRPC API for each bucket's layout first, which an emulator does
  not serve; it must be set before gcsfs is imported);
- with ``STORAGE_EMULATOR_HOST=http://HOST:PORT`` set (the one variable an emulator needs; gcsfs and
  google-cloud-storage honour it): ``TENSORSTORE_GCS_HTTP_URL`` (tensorstore's endpoint) from it and
  ``GOOGLE_AUTH_TOKEN_FOR_TESTING`` (so tensorstore looks for no credentials), when they are unset.

Without an emulator the same code talks to real GCS with the usual application-default credentials.
gcsfs is imported only when a gs:// path is used (``pip install -e ".[gs]"``); its listing cache is
off (``use_listings_cache=False``): tensorstore and other hosts write objects gcsfs does not see.

On an object store: an object is written whole and appears complete or not at all (so
:func:`write_text` is atomic on both kinds of path); nothing can be appended to; there are no
directories (:func:`makedirs` is a no-op, a "directory" exists while an object lies under it); a
rename is a copy then a delete, not atomic.
"""
from __future__ import annotations

import contextlib
import functools
import glob as _glob
import importlib.util
import logging
import os
import posixpath
import re
import shutil
import tempfile
import threading
import urllib.error
import urllib.request
import uuid
from typing import IO, Iterator

from etils import epath

GS = "gs://"
INSTALL_HINT = 'pip install -e ".[gs]"'
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")  # GCS's rule (dotted names up to 222: not here)
PROBE_TIMEOUT_S = 5.0  # how long the first access to a bucket waits for the server to answer


class StorageError(RuntimeError):
    """A gs:// bucket or server that cannot be used (no such bucket, no server answering, a request
    that failed after the client's retries); the message names the path."""


# what a gs:// access raises as it is: the caller's mistakes and the answers it handles itself
_PASSED_THROUGH = (StorageError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
                   ImportError, ValueError)


def _remote_errors(function):
    """``function(p, ...)`` with the failures of a gs:// ``p`` that are the server's or the network's
    (gcsfs's HTTP errors, aiohttp's connection errors, after gcsfs's retries) raised as one
    :class:`StorageError` naming ``p``; local paths raise what ``os`` raises."""
    @functools.wraps(function)
    def wrapped(p, *args, **kwargs):
        try:
            return function(p, *args, **kwargs)
        except _PASSED_THROUGH:
            raise
        except Exception as e:  # noqa: BLE001 -- only for remote paths, re-raised as StorageError
            if not is_remote(p):
                raise
            raise StorageError(f"{os.fspath(p)}: {type(e).__name__}: {e}") from e
    return wrapped


def configure_environment() -> None:
    """Set the variables of the module docstring where unset (idempotent; run on import and again
    whenever a gs:// path is used, so an emulator named after the import is still honoured)."""
    os.environ.setdefault("EPATH_USE_TF", "false")
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
    if emulator and emulator != "default":
        url = emulator if emulator.startswith(("http://", "https://")) else f"http://{emulator}"
        os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url)
        os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")


def _epath_fsspec_backend():
    from etils.epath import backend
    return backend.fsspec_backend


def reset_filesystems() -> None:
    """Drop the cached gcsfs instances (etils' and fsspec's): the next gs:// access makes a new one
    that reads the environment again (after a fork, or when the emulator changes)."""
    cached = getattr(type(_epath_fsspec_backend())._get_filesystem, "cache_clear", None)
    if cached is not None:
        cached()
    import sys
    if "gcsfs" in sys.modules:
        sys.modules["gcsfs"].GCSFileSystem.clear_instance_cache()


class _WithoutTraceback(logging.Filter):
    """Keeps a log record's message and drops its traceback: gcsfs logs one per request that runs out of
    retries, dozens when a server goes away; what failed reaches the caller as a :class:`StorageError`."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("gcsfs").addFilter(_WithoutTraceback())
configure_environment()
try:  # epath caches its TensorFlow decision once per process: make it read EPATH_USE_TF as set above
    from etils.epath import gpath as _gpath
    _gpath._is_tf_installed.cache_clear()
except (ImportError, AttributeError):  # pragma: no cover -- another etils layout: the variable still counts
    pass
# etils keeps one gcsfs instance per process; a forked child (grain worker processes) must not reuse it
os.register_at_fork(after_in_child=lambda: getattr(type(_epath_fsspec_backend())._get_filesystem,
                                                   "cache_clear", lambda: None)())


def is_remote(p: str | os.PathLike) -> bool:
    """Whether ``p`` is a URL (``gs://bucket/x``, any ``scheme://``) rather than a local path."""
    return bool(_SCHEME.match(os.fspath(p)))


def _check_remote(p: str) -> None:
    """A gs:// path needs gcsfs; other schemes are not supported."""
    if not p.startswith(GS):
        raise ValueError(f"{p!r}: only local paths and gs:// paths are supported")
    configure_environment()
    if importlib.util.find_spec("gcsfs") is None:
        raise ImportError(f"{p} is a gs:// path, which needs gcsfs (not installed): {INSTALL_HINT}")
    import fsspec.config
    fsspec.config.conf.setdefault("gcs", {}).setdefault("use_listings_cache", False)
    _probe_bucket(p)


_probed: set[tuple[str, str]] = set()  # (endpoint, bucket) found usable by this process


def _probe_bucket(p: str) -> None:
    """Check once per process and bucket, within :data:`PROBE_TIMEOUT_S`, that the server answers and
    the bucket exists, so that a wrong address or bucket name is a :class:`StorageError` at the first
    access rather than minutes of the client's retries. Without an emulator the probe asks gcsfs
    (real GCS: its credentials and retries)."""
    bucket = p[len(GS):].split("/", 1)[0]
    if not _BUCKET_NAME.match(bucket):
        raise StorageError(f"{p}: {bucket!r} is not a bucket name (3-63 lowercase letters, digits, '-', '_' and '.', "
                           "starting and ending with a letter or digit): gs://BUCKET/...")
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
    key = (emulator, bucket)
    if key in _probed:
        return
    if emulator and emulator != "default":
        url = emulator if emulator.startswith(("http://", "https://")) else f"http://{emulator}"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"{url}/storage/v1/b/{bucket}", timeout=PROBE_TIMEOUT_S):
                pass
        except urllib.error.HTTPError as e:
            if e.code == 404:
                raise StorageError(f"{p}: bucket gs://{bucket} does not exist (on {url})") from None
            raise StorageError(f"{p}: the GCS server at {url} answered HTTP {e.code} for bucket {bucket}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise StorageError(f"{p}: no GCS server answers at STORAGE_EMULATOR_HOST={emulator} ({reason})") from None
    else:
        try:
            found = _epath_fsspec_backend().fs(p).exists(bucket)
        except Exception as e:  # noqa: BLE001 -- gcsfs raises many kinds (auth, HTTP, connection)
            raise StorageError(f"{p}: cannot reach GCS: {e}") from None
        if not found:
            raise StorageError(f"{p}: bucket gs://{bucket} does not exist or is not visible to these credentials")
    _probed.add(key)


def remote_filesystem(p: str | os.PathLike):
    """The gcsfs filesystem (an fsspec ``AbstractFileSystem``) for the gs:// path ``p``, after the checks
    every gs:// access gets (gcsfs installed, the emulator's environment, the bucket probed once): for
    what the path API lacks, such as one listing of a whole folder with each object's details."""
    text = os.fspath(p)
    _check_remote(text)
    return _epath_fsspec_backend().fs(text)


def path(p: str | os.PathLike) -> epath.Path:
    """``p`` as an ``epath.Path`` (what orbax takes): gs:// through fsspec/gcsfs, local as given."""
    text = os.fspath(p)
    if is_remote(text):
        _check_remote(text)
    return epath.Path(text)


def absolute(p: str | os.PathLike) -> str:
    """A local path made absolute (``os.path.abspath``); a gs:// path as it is, without a trailing
    slash (``os.path.abspath`` would turn it into a local ``./gs:/bucket`` folder)."""
    text = os.fspath(p)
    if is_remote(text):
        scheme, _, rest = text.partition("://")
        return f"{scheme}://{rest.rstrip('/')}"
    return os.path.abspath(text)


def join(base: str | os.PathLike, *parts: str) -> str:
    """``base/part/...``: ``/``-joined for a URL, ``os.path.join`` for a local path."""
    text = os.fspath(base)
    return posixpath.join(text, *parts) if is_remote(text) else os.path.join(text, *parts)


def dirname(p: str | os.PathLike) -> str:
    """The folder holding ``p``; a bucket root (``gs://bucket``) is its own folder."""
    text = os.fspath(p)
    if not is_remote(text):
        return os.path.dirname(text)
    text = absolute(text)
    scheme, _, rest = text.partition("://")
    return f"{scheme}://{posixpath.dirname(rest) or rest}"


@_remote_errors
def exists(p: str | os.PathLike) -> bool:
    """Whether a file or folder (on gs://: an object or a prefix with objects under it) is at ``p``."""
    text = os.fspath(p)
    return path(text).exists() if is_remote(text) else os.path.exists(text)


@_remote_errors
def isdir(p: str | os.PathLike) -> bool:
    """Whether ``p`` is a folder (on gs://: a prefix with objects under it)."""
    text = os.fspath(p)
    return path(text).is_dir() if is_remote(text) else os.path.isdir(text)


@_remote_errors
def isfile(p: str | os.PathLike) -> bool:
    """Whether ``p`` is a file (on gs://: an object)."""
    text = os.fspath(p)
    return path(text).is_file() if is_remote(text) else os.path.isfile(text)


def makedirs(p: str | os.PathLike) -> None:
    """Create folder ``p`` and its parents if missing; a no-op on gs:// (no directories there)."""
    text = os.fspath(p)
    if is_remote(text):
        _check_remote(text)
    else:
        os.makedirs(text, exist_ok=True)


@_remote_errors
def read_text(p: str | os.PathLike, encoding: str = "utf-8") -> str:
    """The whole contents of the text file at ``p``."""
    text = os.fspath(p)
    if is_remote(text):
        return path(text).read_text(encoding=encoding)
    with open(text, encoding=encoding) as f:
        return f.read()


@_remote_errors
def read_bytes(p: str | os.PathLike) -> bytes:
    """The whole contents of the file at ``p``."""
    text = os.fspath(p)
    if is_remote(text):
        return path(text).read_bytes()
    with open(text, "rb") as f:
        return f.read()


@_remote_errors
def write_bytes(p: str | os.PathLike, data: bytes) -> None:
    """Replace the file at ``p`` with ``data``, atomically: a reader sees the old or the new contents,
    never a part (locally a temporary file in the same folder, then ``os.replace``; on gs:// one
    object upload, which is atomic). The folder is created if missing."""
    text = os.fspath(p)
    if is_remote(text):
        path(text).write_bytes(data)
        return
    folder = os.path.dirname(os.path.abspath(text))
    os.makedirs(folder, exist_ok=True)
    # open(..., "xb") rather than mkstemp: the file gets the permissions open() gives (umask), not 0600
    tmp = os.path.join(folder, f".{os.path.basename(text)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, text)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(p: str | os.PathLike, contents: str, encoding: str = "utf-8") -> None:
    """Replace the text file at ``p`` with ``contents``, atomically (see :func:`write_bytes`)."""
    write_bytes(p, contents.encode(encoding))


@_remote_errors
def glob(pattern: str) -> list[str]:
    """The paths matching ``pattern`` (``*``, ``?``, ``[...]``; ``**`` for any depth), sorted; gs://
    patterns through gcsfs, returned as gs:// paths."""
    if is_remote(pattern):
        return sorted(GS + found for found in remote_filesystem(pattern).glob(pattern))
    return sorted(_glob.glob(pattern, recursive=True))


@_remote_errors
def listdir(p: str | os.PathLike) -> list[str]:
    """The names in folder ``p``, sorted."""
    text = os.fspath(p)
    if is_remote(text):
        return sorted(child.name for child in path(text).iterdir())
    return sorted(os.listdir(text))


@_remote_errors
def rename(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move a file or folder to ``target`` (which must not exist). Locally ``os.rename`` (atomic);
    on gs:// every object is copied, then deleted: not atomic."""
    source, target = os.fspath(source), os.fspath(target)
    if is_remote(source) != is_remote(target):
        raise ValueError(f"cannot rename {source} to {target}: one is local, the other remote")
    if is_remote(source):
        path(source).rename(path(target))
    else:
        os.rename(source, target)


@_remote_errors
def rmtree(p: str | os.PathLike, missing_ok: bool = False) -> None:
    """Delete the folder ``p`` and everything under it (no error for a missing one if ``missing_ok``)."""
    text = os.fspath(p)
    if missing_ok and not exists(text):
        return
    if is_remote(text):
        path(text).rmtree()
    else:
        shutil.rmtree(text)


@_remote_errors
def open_file(p: str | os.PathLike, mode: str = "rb") -> IO:
    """``p`` opened like ``open(p, mode)``; on gs:// a buffered gcsfs file (reads fetch blocks by ranged
    GETs; a file opened for writing becomes one object when it is closed)."""
    text = os.fspath(p)
    if is_remote(text):
        return path(text).open(mode)
    return open(text, mode)


@_remote_errors
def size(p: str | os.PathLike) -> int:
    """The size in bytes of the file at ``p``."""
    text = os.fspath(p)
    return path(text).stat().length if is_remote(text) else os.path.getsize(text)


@_remote_errors
def remove(p: str | os.PathLike, missing_ok: bool = False) -> None:
    """Delete the file at ``p`` (no error for a missing one if ``missing_ok``)."""
    text = os.fspath(p)
    try:
        if is_remote(text):
            path(text).unlink()
        else:
            os.remove(text)
    except FileNotFoundError:
        if not missing_ok:
            raise


def copy(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy one file, either side local or gs:// (the target is replaced atomically, as by
    :func:`write_bytes`). A local file goes to a bucket streamed (:func:`upload_file`); otherwise the
    file is read whole, so this is for files that fit in memory."""
    if is_remote(target) and not is_remote(source):
        upload_file(os.fspath(source), target)
    else:
        write_bytes(target, read_bytes(source))


def upload_file(local: str, target: str | os.PathLike) -> None:
    """Put the local file ``local`` at the gs:// object ``target``, streamed and atomic: the object
    appears whole when the upload completes, or not at all (gcsfs: one request below 5 MB, else a
    resumable upload that creates the object with its last chunk)."""
    _put_file(target, local)


@_remote_errors
def _put_file(target: str | os.PathLike, local: str) -> None:
    text = os.fspath(target)
    if not is_remote(text):
        raise ValueError(f"{text}: upload_file writes gs:// objects; a local file is moved with os.replace")
    remote_filesystem(text).put_file(local, absolute(text))


def read_range(p: str | os.PathLike, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of a local file or gs:// object (one ranged GET: no read-ahead)."""
    reader = RangeReader(p)
    try:
        return reader.read(start, end - start)
    finally:
        reader.close()


@contextlib.contextmanager
def local_copy(p: str | os.PathLike) -> Iterator[str]:
    """A local path holding the file ``p``, for libraries that need one (PyAV, tokenizers): ``p``
    itself when local, else a temporary download (same file name) removed on exit."""
    text = os.fspath(p)
    if not is_remote(text):
        yield text
        return
    with tempfile.TemporaryDirectory(prefix="hdvila_gs_") as folder:
        local = os.path.join(folder, posixpath.basename(absolute(text)) or "file")
        with open(local, "wb") as f:
            f.write(read_bytes(text))
        yield local


class RangeReader:
    """Reads byte ranges of one file: locally with ``os.pread`` on one descriptor that threads share
    (opened on first use, again in a new process); on gs:// one ranged GET per read, through this
    process's gcsfs client. Picklable (grain sends data sources to its worker processes)."""

    def __init__(self, p: str | os.PathLike):
        self.path = os.fspath(p)
        self._remote = is_remote(self.path)
        if self._remote:
            _check_remote(self.path)
        self._fd: int | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset`` (fewer where the file ends). OSError when the file
        cannot be read; :class:`StorageError` when a gs:// request fails after the client's retries."""
        if self._remote:
            fs = _epath_fsspec_backend().fs(self.path)
            try:
                return fs.cat_file(self.path, start=offset, end=offset + length)
            except OSError:
                raise
            except Exception as e:  # noqa: BLE001 -- gcsfs's HTTP errors are not OSErrors
                raise StorageError(f"{self.path}: reading bytes {offset}..{offset + length} failed: {e}") from None
        return os.pread(self._descriptor(), length, offset)

    def _descriptor(self) -> int:
        with self._lock:
            if self._fd is None or self._pid != os.getpid():
                self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
            return self._fd

    def close(self) -> None:
        """Close the local descriptor (if this process opened one)."""
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = None

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def __del__(self):
        self.close()
