"""The stage cache: a finished stage's outputs under ``ROOT/<stage>/<key>/``.

``key`` hashes the stage's own config slice and its inputs' keys, so an identical stage is
reused (a sweep pre-trains its clean encoder once) and a changed one runs anew. A stage is
complete only when its ``done.json`` exists (written last, atomically); until then its
folder holds the engine's checkpoints, from which an interrupted run resumes.

A damaged entry (``done.json`` that is not JSON, an output that does not load) is a miss:
a warning, then the stage runs again and replaces it. A stage being computed is locked
(``<key>/.lock``, an advisory ``flock`` the kernel releases when its process dies, however
it dies), so that a second process asking for it waits and then reuses it instead of
computing it twice.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sslpoison.errors import (
    ConfigError,
    LockTimeout,
    ModelFileError,
    OutputError,
    one_line,
    warn,
)
from sslpoison.utils import atomic_write_json, stable_hash

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS: no locking
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: Bump when a stage's on-disk outputs change meaning, to invalidate old entries.
CACHE_VERSION = 1
#: Seconds a process waits for another to finish a stage (``$SSLPOISON_LOCK_TIMEOUT``).
DEFAULT_LOCK_TIMEOUT = 24 * 3600.0
LOCK_TIMEOUT_ENV = "SSLPOISON_LOCK_TIMEOUT"


def stage_key(stage: str, **parts: Any) -> str:
    """The cache key of ``stage`` with inputs ``parts`` (config slices, input hashes, seed)."""
    return stable_hash({"stage": stage, "version": CACHE_VERSION, **parts})


def lock_timeout() -> float:
    """``$SSLPOISON_LOCK_TIMEOUT`` (seconds), else :data:`DEFAULT_LOCK_TIMEOUT`."""
    raw = os.environ.get(LOCK_TIMEOUT_ENV)
    try:
        return float(raw) if raw else DEFAULT_LOCK_TIMEOUT
    except ValueError:
        raise ConfigError(f"${LOCK_TIMEOUT_ENV}: {raw!r} is not a number of seconds") from None


@contextmanager
def file_lock(path: Path, what: str, timeout: float | None = None) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created) for the block, waiting at most
    ``timeout`` seconds (default :func:`lock_timeout`) for another process to release it.

    Raises:
        LockTimeout: naming ``what`` and the lock file.
        OutputError: the filesystem cannot lock it (no ``flock``), naming the file.
    """
    if fcntl is None:  # pragma: no cover
        yield
        return
    timeout = lock_timeout() if timeout is None else timeout
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _wait_for_lock(fd, path, what, timeout)
        except OSError as e:  # no flock on this filesystem (some NFS mounts)
            raise OutputError(
                f"{path}: cannot be locked ({e.strerror or e}); the stage cache needs a "
                f"filesystem with flock (set $SSLPOISON_CACHE or cache_dir elsewhere)"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _wait_for_lock(fd: int, path: Path, what: str, timeout: float) -> None:
    """Wait for another process to release ``path`` (open as ``fd``), at most ``timeout`` s."""
    log.info("%s: another process is computing it; waiting (lock %s)", what, path)
    deadline = time.monotonic() + timeout
    while True:
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LockTimeout(
                    f"{what}: another process has held {path} for over {timeout:g} s; "
                    f"when it is done, run again (or raise ${LOCK_TIMEOUT_ENV})"
                ) from None


class StageCache:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def done(self, stage: str, key: str) -> dict[str, Any] | None:
        """The record of a finished stage, or None (also, with a warning, when the record is
        damaged: the stage then runs again)."""
        marker = self.path(stage, key) / "done.json"
        if not marker.exists():
            return None
        try:
            record = json.loads(marker.read_text(encoding="utf-8"))
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:  # JSONDecodeError, UnicodeDecodeError
            warn(f"{marker}: damaged cache record ({one_line(e, 120)}); the stage runs again")
            return None
        return record

    def reuse(
        self, stage: str, key: str, load: Callable[[Path], Any]
    ) -> tuple[Any, dict[str, Any]] | None:
        """(``load(folder)``, record) of a finished stage, or None when it is not finished or
        its output is damaged (a warning: the stage then runs again and replaces it)."""
        record = self.done(stage, key)
        if record is None:
            return None
        folder = self.path(stage, key)
        try:
            out = load(folder)
        except ModelFileError as e:
            warn(f"{stage} cache entry {folder}: damaged ({e}); the stage runs again")
            return None
        log.info("%s: reusing the cached output %s", stage, folder)
        return out, record

    @contextmanager
    def lock(self, stage: str, key: str, wait: bool = True) -> Iterator[None]:
        """Hold ``stage``/``key``'s lock for the block (see :func:`file_lock`); with
        ``wait=False`` (the ranks of one distributed run, which compute a stage together)
        no lock is taken."""
        if not wait:
            yield
            return
        with file_lock(self.path(stage, key) / ".lock", f"stage {stage} {key}"):
            yield

    def finish(self, stage: str, key: str, record: dict[str, Any]) -> None:
        atomic_write_json(self.path(stage, key) / "done.json", record)
