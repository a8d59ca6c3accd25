"""The one error path of the command lines: a user's mistake (a flag, file, field or row) ends the
program with one ``error: ...`` line and exit 1, without a traceback; ``--debug`` prints the full
traceback before that line.

absl programs call :func:`define_debug_flag` with their other flags, argparse ones
:func:`add_debug_argument`; their ``main`` runs its work inside :func:`user_errors`, naming the
exception types that are user mistakes there::

    with cli_errors.user_errors(SearchError, EncoderError):
        run(...)

Code anywhere may raise :class:`UserError` for a mistake it finds itself (it is a ``SystemExit``, so
it ends a program with its one line even where no :func:`user_errors` is around it).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import traceback
from typing import Iterator, Sequence

DEBUG_HELP = "on an error, print its full traceback (before the one 'error:' line)"
INTERRUPTED = 130  # the shell's exit status after Ctrl-C


class UserError(SystemExit):
    """A user's mistake: the program prints ``error: <message>`` and exits 1."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")
        self.message = message

    def __reduce__(self):
        return type(self), (self.message,)


def define_debug_flag() -> None:
    """Define absl's ``--debug`` (once per process)."""
    from absl import flags
    if "debug" not in flags.FLAGS:
        flags.DEFINE_bool("debug", False, DEBUG_HELP)


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--debug`` to an argparse command line."""
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)


def debug_in_argv(argv: Sequence[str]) -> bool:
    """Whether ``argv`` (not parsed yet) asks for ``--debug``: its last ``--debug``, ``--debug=VALUE``
    or ``--nodebug``."""
    debug = False
    for arg in argv:
        name, _, value = arg.partition("=")
        if name in ("--debug", "-debug"):
            debug = value.lower() not in ("false", "0", "no") if value else True
        elif name in ("--nodebug", "-nodebug"):
            debug = False
    return debug


def _absl_debug() -> bool:
    """absl's parsed ``--debug`` (False where it is not defined or not parsed yet)."""
    from absl import flags
    return "debug" in flags.FLAGS and flags.FLAGS.is_parsed() and bool(flags.FLAGS.debug)


def find_cause(err: BaseException | None, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first error of ``kinds`` in ``err``'s chain of causes (a worker's error may arrive wrapped),
    or None."""
    seen = set()
    while err is not None and not isinstance(err, kinds) and id(err) not in seen:
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return err if err is not None and isinstance(err, kinds) else None


def stop(message: str, code: int) -> None:
    """Print ``message`` to stderr and exit with ``code``; at once (no interpreter shutdown) after Ctrl-C,
    whose work is abandoned while XLA's own threads may still be compiling (a shutdown under them
    crashed the process), or if a thread would keep the interpreter alive (e.g. a checkpoint save left
    unfinished, its server gone)."""
    print(message, file=sys.stderr, flush=True)
    try:
        from absl import logging
        logging.flush()
    except ImportError:  # pragma: no cover -- absl is a dependency
        pass
    if code == INTERRUPTED or any(t.is_alive() and not t.daemon for t in threading.enumerate()
                                  if t is not threading.main_thread()):
        sys.stdout.flush()
        os._exit(code)
    raise SystemExit(code)


@contextlib.contextmanager
def user_errors(*kinds: type[BaseException], debug: bool | None = None,
                interrupted: str | None = None) -> Iterator[None]:
    """Inside: a :class:`UserError`, or an error of ``kinds`` anywhere in an exception's chain of
    causes, ends the program with one ``error: ...`` line and exit 1; with ``interrupted`` set, Ctrl-C
    ends it with that line and exit 130. ``debug`` (default: absl's ``--debug``) prints the
    traceback first. Any other exception goes on up unchanged (a bug: its traceback is wanted)."""
    debug = _absl_debug() if debug is None else debug
    try:
        yield
    except UserError as err:
        _end(err, str(err.code), 1, debug)
    except KeyboardInterrupt as err:
        if interrupted is None:
            raise
        _end(err, interrupted, INTERRUPTED, debug)
    except Exception as err:  # noqa: BLE001 -- re-raised unless one of kinds caused it
        found = find_cause(err, kinds) if kinds else None
        if found is None:
            raise
        _end(err, f"error: {found}", 1, debug)


def _end(err: BaseException, message: str, code: int, debug: bool) -> None:
    if debug:
        traceback.print_exception(err, file=sys.stderr)
    stop(message, code)
