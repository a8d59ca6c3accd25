"""The data commands' checks of their inputs and output before any work, each failure one line naming
the flag (``hdvila_jax.cli_errors``): files and folders that must exist, the build options' values,
an output folder that must be creatable and writable."""
from __future__ import annotations

import argparse
import os

from data_pipelines.annotations import AnnotationError
from data_pipelines.clip_encoder import BuildOptions
from hdvila_jax import storage
from hdvila_jax.cli_errors import UserError

# What a data command reports as a user's mistake (one line, exit 1) rather than as a bug.
INPUT_ERRORS = (AnnotationError, storage.StorageError)


def missing_inputs(files: dict[str, str | None], folders: dict[str, str | None]) -> list[str]:
    """``--flag PATH: no such file|folder`` for each given ``files`` / ``folders`` entry (flag -> path)
    that is not there."""
    missing = [f"{flag} {path}: no such file" for flag, path in files.items() if path and not storage.isfile(path)]
    return missing + [f"{flag} {path}: no such folder" for flag, path in folders.items()
                      if path and not storage.isdir(path)]


def check_build_options(parser: argparse.ArgumentParser, **options) -> None:
    """``parser.error`` naming the first bad build option (``BuildOptions`` fields: frame_height, ...)."""
    try:
        BuildOptions(**options).validate()
    except ValueError as err:
        parser.error(str(err))


def check_at_least_one(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """``parser.error`` naming the first of the integer flags ``names`` set below 1."""
    for name in names:
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")


def make_output_folder(flag: str, path: str) -> None:
    """Create the output folder ``path`` given by ``flag`` (and its parents); a file there, a folder that
    cannot be created or a local one that cannot be written is a :class:`UserError` naming the flag."""
    if storage.isfile(path):
        raise UserError(f"{flag} {path} is a file; name a folder (new, or an earlier build's output)")
    try:
        storage.makedirs(path)
    except OSError as err:
        raise UserError(f"{flag} {path}: cannot create the folder ({err.strerror or err})") from err
    except storage.StorageError as err:
        raise UserError(f"{flag} {path}: cannot create the folder ({err})") from err
    if not storage.is_remote(path) and not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: the folder is not writable")
