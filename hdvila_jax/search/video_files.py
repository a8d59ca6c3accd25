"""The video files a ``--videos`` argument names, local or ``gs://``: every file with a video extension
below a folder (recursively), or every file a glob matches; each with a state that changes when the
file does (so an index build knows which files it has already encoded)."""
from __future__ import annotations

import glob
import os

from hdvila_jax import storage
from hdvila_jax.search.index import SearchError

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".wmv",
                    ".3gp", ".gif", ".ogv")
FileState = list[int]


def list_videos(pattern: str) -> list[str]:
    """The files of ``pattern`` (see :func:`video_files`), sorted."""
    return list(video_files(pattern))


def video_files(pattern: str) -> dict[str, FileState]:
    """``{file: state}``, sorted by file, of every file with a video extension below the folder
    ``pattern`` (hidden files left out), or of every file the glob ``pattern`` matches (any name).
    Local paths come as ``pattern`` gives them; gs:// ones as ``gs://bucket/...``. The state is
    ``[size, mtime_ns]`` of a local file, ``[size, generation]`` of an object (a rewritten object gets
    a new generation). Errors name ``--videos``."""
    remote = storage.is_remote(pattern)
    if storage.isdir(pattern):
        below = _gs_files(pattern, folder=True) if remote else _local_files_below(pattern)
        found = {path: state for path, state in below.items() if _is_video_name(path)}
        if not found:
            raise SearchError(f"--videos={pattern!r}: no files ending in {', '.join(VIDEO_EXTENSIONS)} below it")
    else:
        found = _gs_files(pattern, folder=False) if remote else _local_glob(pattern)
        if not found:
            raise SearchError(f"--videos={pattern!r} matches no files")
    return dict(sorted(found.items()))


def _is_video_name(path: str) -> bool:
    name = path.rsplit("/", 1)[-1] if storage.is_remote(path) else os.path.basename(path)
    return name.lower().endswith(VIDEO_EXTENSIONS) and not name.startswith(".")


def _local_state(path: str) -> FileState:
    """``[size, mtime_ns]``; ``[-1, -1]`` for a file that cannot be stat'ed (a link that loops or leads
    nowhere): it is listed, and reading it reports it as unreadable."""
    try:
        stat = os.stat(path)
    except OSError:
        return [-1, -1]
    return [stat.st_size, stat.st_mtime_ns]


def _local_files_below(folder: str) -> dict[str, FileState]:
    paths = [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names]
    return {path: _local_state(path) for path in paths}


def _local_glob(pattern: str) -> dict[str, FileState]:
    return {path: _local_state(path) for path in glob.glob(pattern, recursive=True)
            if os.path.isfile(path) or os.path.islink(path)}


def _gs_files(pattern: str, folder: bool) -> dict[str, FileState]:
    """The objects below the prefix ``pattern`` (``folder``) or matching the glob ``pattern``, with their
    states, from one listing (``storage.remote_filesystem``). As a local
    glob, a wildcard matches no hidden name unless the pattern's name starts with a dot."""
    fs = storage.remote_filesystem(pattern)
    listing = fs.find(pattern, detail=True) if folder else fs.glob(pattern, detail=True)
    hidden_ok = folder or pattern.rsplit("/", 1)[-1].startswith(".")
    return {storage.GS + name: [int(info["size"]), int(info["generation"])] for name, info in listing.items()
            if info["type"] == "file" and (hidden_ok or not name.rsplit("/", 1)[-1].startswith("."))}
