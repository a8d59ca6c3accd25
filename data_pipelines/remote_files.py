"""What the builders need of ``gs://`` beyond ``hdvila_jax.storage``: finding many input files with one
listing (streamed uploads and ranged reads are ``storage.upload_file`` / ``storage.read_range``).

``gs://`` goes through gcsfs, the filesystem ``hdvila_jax.storage`` uses (so the same environment, an
emulator's ``STORAGE_EMULATOR_HOST`` included, applies); local paths use ``os`` as before.
"""
from __future__ import annotations

from hdvila_jax import storage


class FileSet:
    """Answers "is there a file at this path?" for candidate paths under one folder.

    Locally ``os.path.isfile``. Under a ``gs://`` folder, the folder is listed once, recursively, at the
    first question: a request per candidate (up to four per clip) would take days for HD-VILA-100M.
    """

    def __init__(self, folder: str):
        self.folder = folder
        self._prefix = storage.absolute(folder) + "/" if storage.is_remote(folder) else ""
        self._objects: frozenset[str] | None = None

    def isfile(self, path: str) -> bool:
        """Whether ``path`` is a file (looked up in the listing when it lies under a gs:// folder)."""
        if not (self._prefix and path.startswith(self._prefix)):
            return storage.isfile(path)
        if self._objects is None:
            root = self._prefix[:-1]
            self._objects = frozenset(storage.GS + p for p in storage.remote_filesystem(root).find(root))
        return path in self._objects
