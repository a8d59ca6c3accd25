"""What a compiled XLA program spends its memory traffic on, by kind of op: a census of the
optimised HLO text (``jax.stages.Compiled.as_text()``) of the instructions that do work, with the
bytes each kind writes per step (its outputs).

Kinds: fusions are named by what they fuse (a convolution or matmul, which TPU HLO both writes as
convolutions; a reduction; else elementwise work and copies); collectives, copies/transposes,
bare convolutions and matmuls, and custom calls keep their names; asynchronous copies between
memory spaces (TPU's prefetches of operands into on-chip memory and back) are their own kind. A while loop's body is counted
once (not per trip). Outputs are counted wherever they live (HBM, or on-chip memory on TPU).
"""
from __future__ import annotations

import collections
import math
import re

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s4": 0.5, "u4": 0.5, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
               "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16,
               "f8e4m3fn": 1, "f8e5m2": 1}
NO_WORK = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all", "partition-id",
           "replica-id", "opt-barrier", "iota"}
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_ARRAY = re.compile(r"\b(" + "|".join(DTYPE_BYTES) + r")\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.+?)\s+([a-z][\w\-]*)\(")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")


def array_bytes(shape: str) -> list[float]:
    """Bytes of each array in an HLO shape (an array or a tuple of them)."""
    return [DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d) for dtype, dims in _ARRAY.findall(shape)]


def written_bytes(opcode: str, shape: str) -> float:
    """Bytes an instruction writes: its outputs; for an asynchronous ``*-start`` (whose tuple also
    holds its operand and a status word) the largest of them."""
    sizes = array_bytes(shape)
    return max(sizes, default=0) if opcode.endswith("-start") else sum(sizes)


def computations(hlo: str) -> tuple[dict[str, list[str]], str]:
    """The instruction lines of each computation, and the name of the entry computation."""
    bodies, entry, current = {}, "", None
    for line in hlo.splitlines():
        header = _HEADER.match(line)
        if header and current is None:
            current = header.group(2)
            bodies[current] = []
            entry = current if header.group(1) else entry
        elif line.strip() == "}" and current is not None:
            current = None
        elif current is not None:
            bodies[current].append(line)
    return bodies, entry


def _called(line: str, attribute: str) -> str | None:
    match = re.search(attribute + r"=%?([\w.\-]+)", line)
    return match.group(1) if match else None


def fusion_kind(body: list[str]) -> str:
    """What a fused computation does, by the heaviest op it holds."""
    text = "\n".join(body)
    for opcode, kind in (("convolution(", "convolution / matmul fusion"), (" dot(", "convolution / matmul fusion"),
                         ("reduce(", "reduction fusion"), ("reduce-window(", "reduction fusion")):
        if opcode in text:
            return kind
    return "elementwise / copy fusion"


def kind_of(opcode: str, line: str, bodies: dict[str, list[str]]) -> str | None:
    """The census kind of one top-level instruction (None for those that do no work)."""
    if opcode in NO_WORK or opcode.endswith("-done"):
        return None
    if opcode == "fusion":
        return fusion_kind(bodies.get(_called(line, "calls") or "", []))
    for collective in COLLECTIVES:
        if opcode.startswith(collective):
            return collective
    if opcode == "copy-start":
        return "async copy between memory spaces (prefetch / evict)"
    if opcode in ("copy", "transpose"):
        return "copy / transpose"
    if opcode in ("dot", "convolution"):
        return "convolution / matmul"
    return opcode


def worked_instructions(hlo: str):
    """``(kind, bytes written, line)`` of each instruction that does work in the entry computation
    and the bodies of its while loops (once each)."""
    bodies, entry = computations(hlo)
    pending, seen = [entry], set()
    while pending:
        name = pending.pop()
        if name in seen or name not in bodies:
            continue
        seen.add(name)
        for line in bodies[name]:
            match = _INSTRUCTION.match(line)
            if not match:
                continue
            shape, opcode = match.groups()
            if opcode == "while":
                pending.append(_called(line, "body") or "")
                continue
            kind = kind_of(opcode, line, bodies)
            if kind is not None:
                yield kind, written_bytes(opcode, shape), line


def _census(keyed) -> list[dict]:
    counts, written = collections.Counter(), collections.Counter()
    for key, nbytes in keyed:
        counts[key] += 1
        written[key] += nbytes
    return [dict(count=counts[k], output_bytes=written[k], key=k) for k in sorted(written, key=lambda k: -written[k])]


def op_profile(hlo: str) -> list[dict]:
    """Rows ``{kind, count, output_bytes}`` of the entry computation (and the bodies of its while
    loops, once each), largest output bytes first."""
    rows = _census((kind, nbytes) for kind, nbytes, _ in worked_instructions(hlo))
    return [dict(kind=row.pop("key"), **row) for row in rows]


NO_SOURCE = "(no source: the compiler's copies and prefetches)"
OUTSIDE_MODEL = "(outside the model: loss, gradients' norm, optimizer)"
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def model_part(op_name: str | None, depth: int = 2) -> str:
    """``"forward video/timesformer"``-style part of an instruction's jax source (its ``op_name``):
    the first ``depth`` Flax module names, and whether it runs in the backward pass."""
    if not op_name:
        return NO_SOURCE
    scopes = op_name.split("/")[1:]  # drop the jitted function's own name
    modules = [s for s in scopes[:-1] if s and not any(c in s for c in ".()")]  # [-1]: the primitive
    if not any(s.startswith(("jvp(", "transpose(")) for s in scopes[:1]) or not modules:
        return OUTSIDE_MODEL
    direction = "backward" if scopes[0].startswith("transpose(") else "forward"
    return f"{direction} {'/'.join(modules[:depth])}"


def module_profile(hlo: str, depth: int = 2) -> list[dict]:
    """Rows ``{part, count, output_bytes}``: what each model part (:func:`model_part`) writes per
    step, largest first."""
    rows = _census((model_part(m.group(1) if (m := _OP_NAME.search(line)) else None, depth), nbytes)
                   for _, nbytes, line in worked_instructions(hlo))
    return [dict(part=row.pop("key"), **row) for row in rows]
