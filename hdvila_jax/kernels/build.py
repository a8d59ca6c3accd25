"""Compiling a C++ XLA FFI kernel library once per source and toolchain, into a cache directory
(only for the opt-in oneDNN convolutions).

The library's file name carries a digest of the source, the compile command and the jaxlib
version, so an edit or an upgrade builds a new one and an unchanged setup loads the cached one.
The build writes to a temporary file and renames it into place, so processes that build at the
same time (several hosts on one filesystem) never load a half-written library.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import tempfile
from pathlib import Path

import jax
import jaxlib

CACHE_ENV = "HDVILA_KERNEL_CACHE"  # where built libraries are kept; default ~/.cache/hdvila_jax/kernels
COMPILER_ENV = "CXX"  # the C++ compiler; default c++


class BuildError(RuntimeError):
    """The library could not be built: no compiler, missing headers, or a compile error."""


def cache_dir() -> Path:
    """The directory built libraries are kept in (``$HDVILA_KERNEL_CACHE`` or the user's cache)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hdvila_jax" / "kernels"


def compile_command(source: Path, output: Path, include_dirs: list[Path], library_dirs: list[Path],
                    libraries: list[str]) -> list[str]:
    """The compiler call that builds ``source`` into the shared library ``output``, with XLA's FFI
    headers on the include path and the library directories baked in as run paths."""
    include_dirs = [Path(jax.ffi.include_dir()), *include_dirs]
    command = [os.environ.get(COMPILER_ENV, "c++"), "-O2", "-std=c++17", "-shared", "-fPIC",
               *(f"-I{d}" for d in include_dirs), str(source), "-o", str(output)]
    command += [f"-L{d}" for d in library_dirs] + [f"-Wl,-rpath,{d}" for d in library_dirs]
    return command + [f"-l{lib}" for lib in libraries]


def build_library(source: Path, include_dirs: list[Path], library_dirs: list[Path], libraries: list[str]) -> Path:
    """The path of ``source`` built as a shared library against the installed jaxlib's FFI headers,
    compiling it unless the cache has it. Raises :class:`BuildError` with the compiler's message if
    it does not build, ``OSError`` if the cache directory cannot be written."""
    key_command = compile_command(source, Path("out.so"), include_dirs, library_dirs, libraries)
    key = source.read_bytes() + " ".join(key_command).encode() + jaxlib.__version__.encode()
    digest = hashlib.sha256(key)
    library = cache_dir() / f"{source.stem}-{digest.hexdigest()[:16]}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
        partial = Path(tmp) / library.name
        command = compile_command(source, partial, include_dirs, library_dirs, libraries)
        try:
            result = subprocess.run(command, capture_output=True, text=True)
        except OSError as e:
            raise BuildError(f"cannot run the C++ compiler {command[0]!r} (set {COMPILER_ENV}): {e}") from e
        if result.returncode != 0:
            errors = [line for line in result.stderr.splitlines() if "error" in line][:5]
            raise BuildError(f"building {source.name} failed: {shlex.join(command)}\n" + "\n".join(errors))
        os.replace(partial, library)
    return library
