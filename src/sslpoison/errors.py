"""The errors a user can cause, and the warnings a run records.

Every failure a user can cause — a damaged data file, a broken model file, a bad config or
sweep, an output folder that cannot be written, a training run whose numbers blew up — is a
:class:`UserError` whose message names the file or the key and the problem, on one line.
``sslpoison`` prints it as ``error: <message>`` and exits 2; anything else is a bug and keeps
its traceback. The subclasses also derive from the built-in class that code already catches
(``ValueError``, ``OSError``, ...), so callers of the library are not surprised.

:func:`warn` logs a warning and adds it to the warnings of the run under way (see
:func:`collecting_warnings`), which ``results.json`` keeps: what a config explicitly allowed (a
``subset`` larger than the data, empty classes, ...) and what a run repaired (a damaged cache
entry recomputed) is never silent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

log = logging.getLogger("sslpoison")

__all__ = [
    "ConfigError",
    "DataError",
    "DataFileMissing",
    "LockTimeout",
    "ModelFileError",
    "ModelFileMissing",
    "NumericsError",
    "OutputError",
    "UserError",
    "collecting_warnings",
    "one_line",
    "warn",
]


class UserError(Exception):
    """A failure the user caused and can fix; the message names the file or key."""


class ConfigError(UserError, ValueError):
    """A config (or sweep) that cannot run; the message names the key and the problem."""


class DataError(UserError, ValueError):
    """A data file that cannot be read as the dataset it should be; names the file."""


class DataFileMissing(DataError, FileNotFoundError):
    """A data file the dataset needs is not there; names it."""


class ModelFileError(UserError, ValueError):
    """A model file (weights or card) that cannot be loaded; names the file."""


class ModelFileMissing(ModelFileError, FileNotFoundError):
    """A model file (weights or card) that is not there; names it."""


class OutputError(UserError, OSError):
    """An output or cache folder that cannot be written; names the folder."""


class NumericsError(UserError, FloatingPointError):
    """Training whose loss stopped being a finite number; names the stage."""


class LockTimeout(UserError, TimeoutError):
    """Another process held a stage's lock for longer than the timeout; names the lock."""


def one_line(message: object, limit: int = 600) -> str:
    """``message`` on one line (line breaks and runs of spaces collapsed), at most ``limit``
    characters (the rest elided as ``…``)."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


_WARNINGS: ContextVar[list[str] | None] = ContextVar("sslpoison_warnings", default=None)


@contextmanager
def collecting_warnings() -> Iterator[list[str]]:
    """Within the block (one run), :func:`warn` appends to the list it yields; on leaving it,
    the previous collection (or none) is back, so runs in one process never share a list."""
    warnings: list[str] = []
    token = _WARNINGS.set(warnings)
    try:
        yield warnings
    finally:
        _WARNINGS.reset(token)


def warn(message: str, loud: bool = True) -> None:
    """Record ``message`` in the current run's warnings and log it: as a warning, or (not
    ``loud``: what the config explicitly allowed, e.g. ``allow_smaller``) at info level, so
    that a correct preset prints no warning."""
    message = one_line(message)
    warnings = _WARNINGS.get()
    if warnings is not None:
        if message in warnings:
            return
        warnings.append(message)
    if loud:
        log.warning("warning: %s", message)
    else:
        log.info("note: %s", message)
