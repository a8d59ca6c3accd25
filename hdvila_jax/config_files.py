"""Loading trainer configs by file path, as ``ml_collections.config_flags`` does: ``FILE.py[:variant]``
is that file's ``get_config(variant)`` (``get_config()`` without a variant), a ``.json`` file its
contents (e.g. the ``config.json`` the trainer writes into a run directory; local or ``gs://``). The library never
imports ``configs`` by module name; a config file in a package (``configs/stage1.py`` imports
``configs.model``) is loaded with the folder holding that package importable."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
from typing import Iterator

import ml_collections

from hdvila_jax import storage


class ConfigFileError(ValueError):
    """A config file that cannot be found or loaded; the message names it."""


@contextlib.contextmanager
def _package_root_on_path(path: str) -> Iterator[None]:
    folder = os.path.dirname(os.path.abspath(path))
    root = os.path.dirname(folder) if os.path.isfile(os.path.join(folder, "__init__.py")) else folder
    added = root not in sys.path
    if added:
        sys.path.insert(0, root)
    try:
        yield
    finally:
        if added and root in sys.path:
            sys.path.remove(root)


def split_spec(spec: str) -> tuple[str, str]:
    """``"configs/retrieval.py:msrvtt"`` -> ``("configs/retrieval.py", "msrvtt")``; a ``.json`` config has no
    variant; the ``://`` of a ``gs://`` path is not a variant's colon."""
    if spec.endswith(".json"):
        return spec, ""
    scheme, separator, rest = spec.partition("://") if storage.is_remote(spec) else ("", "", spec)
    path, _, variant = rest.partition(":")
    return scheme + separator + path, variant


def load_config(spec: str) -> ml_collections.ConfigDict:
    """``"configs/retrieval.py:msrvtt"`` -> that file's ``get_config("msrvtt")``; ``"run/config.json"``
    -> its contents as a ConfigDict."""
    path, variant = split_spec(spec)
    if storage.is_remote(path) and not path.endswith(".json"):
        raise ConfigFileError(f"config file {path!r}: only .json configs are read from gs://; python configs are local")
    if not storage.isfile(path):
        raise ConfigFileError(f"config file {path!r} does not exist")
    if path.endswith(".json"):
        return ml_collections.ConfigDict(json.loads(storage.read_text(path)))
    name = "hdvila_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigFileError(f"config file {path!r} is not a python file")
    module = importlib.util.module_from_spec(module_spec)
    with _package_root_on_path(path):
        module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigFileError(f"config file {path!r} has no get_config()")
    return module.get_config(variant) if variant else module.get_config()


def sibling_spec(config_file: str, spec: str) -> str:
    """``"stage1:demo"`` named by a config in ``config_file`` -> ``"<its folder>/stage1.py:demo"``."""
    module, _, variant = spec.partition(":")
    path = os.path.join(os.path.dirname(config_file), f"{module}.py")
    return f"{path}:{variant}" if variant else path
