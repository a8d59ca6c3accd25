"""Read PyTorch-layout state_dicts as numpy arrays without unpickling arbitrary code."""
from __future__ import annotations

import io
import os
from typing import Mapping

import numpy as np

from hdvila_jax import storage

StateDict = dict[str, np.ndarray]
WRAPPER_KEYS = ("state_dict", "model", "module")


def _unwrap(obj: Mapping, path: str) -> Mapping:
    """Descend into ``{'state_dict': {...}}``-style wrappers of training checkpoints."""
    while isinstance(obj, Mapping):
        wrapped = [k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
        if not wrapped or any(hasattr(v, "shape") for v in obj.values()):
            return obj
        obj = obj[wrapped[0]]
    raise ValueError(f"{path}: expected a mapping of parameter names to tensors, got {type(obj).__name__}")


def load_state_dict(path: str | os.PathLike) -> StateDict:
    """Load ``.safetensors``, ``.npz`` or a torch file (``.bin``/``.pt``/``.pth``/``.ckpt``) as numpy,
    from a local path or a ``gs://`` object (read whole into memory, as loading does anyway).

    Torch files go through ``torch.load(weights_only=True)``, which refuses pickled code.
    """
    path = os.fspath(path)
    if not storage.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    remote = storage.is_remote(path)
    if path.endswith(".safetensors"):
        from safetensors.numpy import load, load_file
        return dict(load(storage.read_bytes(path)) if remote else load_file(path))
    if path.endswith(".npz"):
        with np.load(io.BytesIO(storage.read_bytes(path)) if remote else path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    try:
        import torch
    except ImportError as e:  # torch is an optional dependency (extra 'convert')
        raise ImportError(f"reading {path} needs torch: pip install 'hdvila_jax[convert]'") from e
    source = io.BytesIO(storage.read_bytes(path)) if remote else path
    try:
        obj = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a loadable weights-only torch checkpoint ({e})") from e
    out = {}
    for key, value in _unwrap(obj, path).items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        out[key] = value.detach().cpu().float().numpy() if value.is_floating_point() else value.cpu().numpy()
    return out
