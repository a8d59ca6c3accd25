"""Apply name rules that map PyTorch state_dict keys onto a Flax variables tree, strictly.

A rule maps one torch key to ``(collection, path, layout)``. Loading reports, by
name, every key that is missing, unexpected (and not known to be unused) or whose
shape does not fit, and refuses a partial load unless the caller allows it.
"""
from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any, Iterable, Mapping

import jax
import numpy as np
from flax import traverse_util

# Axis permutations torch -> Flax: Linear [out, in] -> Dense [in, out];
# Conv2d [out, in, kh, kw] -> Conv [kh, kw, in, out].
LAYOUTS = {"same": None, "linear": (1, 0), "conv": (2, 3, 1, 0)}


@dataclasses.dataclass(frozen=True)
class Target:
    """Where one torch tensor lands: ``variables[collection][path]``, permuted by ``layout``."""

    collection: str
    path: tuple[str, ...]
    layout: str = "same"

    @property
    def name(self) -> str:
        return "/".join((self.collection,) + self.path)

    def to_flax(self, value: np.ndarray) -> np.ndarray:
        perm = LAYOUTS[self.layout]
        return value if perm is None else value.transpose(perm)

    def to_torch(self, value: np.ndarray) -> np.ndarray:
        perm = LAYOUTS[self.layout]
        return value if perm is None else value.transpose(np.argsort(perm))


Rules = dict[str, Target]


class ConversionError(ValueError):
    """A checkpoint does not fit the model; the message lists the offending keys."""


@dataclasses.dataclass
class ConversionReport:
    """What a load did, key by key."""

    loaded: list[str] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    mismatched: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        return (f"loaded {len(self.loaded)}, ignored {len(self.ignored)}, missing {len(self.missing)}, "
                f"unexpected {len(self.unexpected)}, wrong shape {len(self.mismatched)}")


def _flat(variables: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
    return traverse_util.flatten_dict(jax.tree_util.tree_map(lambda x: x, dict(variables)))


def load_rules(variables: Mapping[str, Any], state_dict: Mapping[str, np.ndarray], rules: Rules, *,
               ignore: Iterable[str] = (), allow_missing: bool = False,
               allow_unexpected: bool = False) -> tuple[dict, ConversionReport]:
    """Copy ``state_dict`` into ``variables`` (arrays or ``ShapeDtypeStruct``s) by ``rules``.

    ``ignore`` holds glob patterns of keys known to be unused. Returns new variables
    (untouched leaves kept as they were) and a report; raises :class:`ConversionError`
    on wrong shapes, and on missing/unexpected keys unless allowed.
    """
    flat = _flat(variables)
    ignore = tuple(ignore)
    report = ConversionReport()
    for key, value in state_dict.items():
        target = rules.get(key)
        if target is None:
            (report.ignored if any(fnmatch.fnmatchcase(key, p) for p in ignore) else report.unexpected).append(key)
            continue
        leaf_key = (target.collection,) + target.path
        if leaf_key not in flat:
            raise ConversionError(f"rule for {key!r} points at {target.name}, which the model does not have")
        leaf = flat[leaf_key]
        array = target.to_flax(np.asarray(value))
        if array.shape != tuple(leaf.shape):
            report.mismatched.append(f"{key}: checkpoint {tuple(np.shape(value))} -> {array.shape}, "
                                     f"model {target.name} expects {tuple(leaf.shape)}")
            continue
        flat[leaf_key] = array.astype(leaf.dtype)
        report.loaded.append(key)
    report.missing = [k for k in rules if k not in state_dict]
    problems = []
    if report.mismatched:
        problems.append("wrong shape:\n  " + "\n  ".join(report.mismatched))
    if report.missing and not allow_missing:
        problems.append("missing from the checkpoint:\n  " + "\n  ".join(report.missing))
    if report.unexpected and not allow_unexpected:
        problems.append("unexpected in the checkpoint:\n  " + "\n  ".join(report.unexpected))
    if problems:
        raise ConversionError(f"checkpoint does not fit the model ({report.summary()}):\n" + "\n".join(problems))
    return traverse_util.unflatten_dict(flat), report


def export_rules(variables: Mapping[str, Any], rules: Rules) -> dict[str, np.ndarray]:
    """The inverse of :func:`load_rules`: a torch-layout state_dict of ``variables`` by ``rules``."""
    flat = _flat(variables)
    return {key: np.ascontiguousarray(t.to_torch(np.asarray(flat[(t.collection,) + t.path])))
            for key, t in rules.items()}


def unfilled_leaves(variables: Mapping[str, Any]) -> list[str]:
    """Paths of leaves that are still abstract (``ShapeDtypeStruct``), i.e. never loaded."""
    return ["/".join(k) for k, v in _flat(variables).items() if isinstance(v, jax.ShapeDtypeStruct)]
