"""A sweep's cells, each one run, and their status files.

A :class:`Cell` is opaque to the executors (:mod:`sslpoison.sweeps.executors`): a name, a
validated config, its folder and the callable that runs it, ``run(config, folder)`` (the CLI
passes its launcher; a multi-seed run plugs in the same way). :func:`run_cell` runs one where
it is called — in the sweep's process (``serial``) or in a job's (``local``, ``slurm``) — and
keeps its status file up to date.

Status files: ``OUT/status/<cell>.json`` (JSON, written atomically under a lock, since the
sweep and the cell's job both write it): ``state`` (``pending`` → ``running`` → ``done`` |
``failed``), ``submitted``/``started``/``ended`` (Unix times), ``executor``, ``job_id``,
``log`` (the cell's log file), ``host`` and ``pid`` of the process running it, ``error`` (one
line). ``sslpoison sweep FILE --status`` reads them (:func:`status_table`); whether a cell is
done is decided by its ``results.json``, as before.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sslpoison.errors import one_line
from sslpoison.experiment.cache import file_lock
from sslpoison.experiment.config import ExperimentConfig
from sslpoison.sweeps.checks import finished_results
from sslpoison.utils import atomic_write_json

log = logging.getLogger(__name__)

#: The states of a cell, in order.
STATES = ("pending", "running", "done", "failed")
#: Scheduler (sacct) states of a job still queued or running.
ALIVE = frozenset({"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED"})

__all__ = [
    "STATES",
    "Cell",
    "read_status",
    "run_cell",
    "slurm_states",
    "status_path",
    "status_table",
    "update_status",
]


@dataclass(frozen=True)
class Cell:
    """One run of a sweep: ``run(config, folder)`` writes ``folder/results.json``."""

    name: str
    config: ExperimentConfig
    folder: Path
    run: Callable[[ExperimentConfig, Path], Any]


def status_path(out: Path, name: str) -> Path:
    """The status file of cell ``name`` of the sweep in ``out``."""
    return Path(out) / "status" / f"{name}.json"


def read_status(path: Path) -> dict[str, Any]:
    """A cell's status (``{}`` when there is none, or it cannot be read)."""
    try:
        status = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


def update_status(path: Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into the status file at ``path`` (under its lock); returns it."""
    path = Path(path)
    with file_lock(path.parent / ".lock", f"status {path}", timeout=60.0):
        status = read_status(path) | fields
        atomic_write_json(path, status)
    return status


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def local_process_gone(status: dict[str, Any]) -> bool:
    """Whether a cell the status says is running ran on this machine in a process that has
    ended (killed, out of memory) without saying so."""
    return (
        status.get("state") == "running"
        and status.get("host") == socket.gethostname()
        and isinstance(status.get("pid"), int)
        and not _process_alive(status["pid"])
    )


def run_cell(
    cell: Cell, status: Path | None, log_path: Path | str | None = None, job_id: str | None = None
) -> Any:
    """Run ``cell`` here, recording in its ``status`` file (None: another rank's process,
    which records nothing) that it runs, then that it is done or failed (with the error's
    last line); a failure is re-raised after its traceback is appended to ``log_path`` when
    that is a file of ours (``serial``; a job's own log has the traceback already)."""
    if status is not None:
        update_status(
            status,
            state="running",
            started=time.time(),
            ended=None,
            error=None,
            host=socket.gethostname(),
            pid=os.getpid(),
            **({"log": str(log_path)} if log_path is not None else {}),
            **({"job_id": job_id} if job_id is not None else {}),
        )
    try:
        result = cell.run(cell.config, cell.folder)
    except BaseException as e:
        if status is not None:
            error = "interrupted" if isinstance(e, KeyboardInterrupt) else one_line(e, 300)
            update_status(status, state="failed", ended=time.time(), error=error)
        raise
    if status is not None:
        done = finished_results(cell.folder) is not None
        error = None if done else "the run ended without writing results.json"
        update_status(status, state="done" if done else "failed", ended=time.time(), error=error)
    return result


def append_traceback(log_path: Path) -> None:
    """Append the exception being handled, with its traceback, to ``log_path``."""
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(traceback.format_exc())


def _when(t: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if isinstance(t, float) else "-"


def _wall(status: dict[str, Any]) -> str:
    start, end = status.get("started"), status.get("ended")
    if not isinstance(start, float):
        return "-"
    seconds = (end if isinstance(end, float) else time.time()) - start
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def cell_state(out: Path, name: str) -> tuple[str, dict[str, Any]]:
    """(state, status) of cell ``name``: ``done`` when its ``results.json`` is complete,
    else its status file's state (``failed`` for a process that ended without saying so,
    ``pending`` when it has none)."""
    status = read_status(status_path(out, name))
    if finished_results(Path(out) / name) is not None:
        return "done", status
    state = status.get("state", "pending")
    if state == "done" or local_process_gone(status):
        state = "failed"
    return state if state in STATES else "pending", status


def status_table(out: Path, names: list[str], jobs: dict[str, str] | None = None) -> str:
    """One line per cell: state, start, wall time (so far, for a running one), log; then
    the count per state. ``jobs``: the scheduler's state of the jobs of cells said to be
    pending or running (SLURM's, by cell): a job that ended without its cell saying so makes
    the cell ``failed``."""
    rows = [("cell", "state", "started", "wall", "log")]
    counts = dict.fromkeys(STATES, 0)
    for name in names:
        state, status = cell_state(out, name)
        job = (jobs or {}).get(name)
        if state in ("pending", "running") and job is not None and job not in ALIVE:
            state, status = "failed", status | {"error": f"its job ended: {job}"}
        counts[state] += 1
        note = f" ({status['error']})" if state == "failed" and status.get("error") else ""
        log_file = str(status.get("log") or "-")
        rows.append((name, state, _when(status.get("started")), _wall(status), log_file + note))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
             for r in rows]  # fmt: skip
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    return "\n".join([*lines, f"{len(names)} cells: {summary}"])


def slurm_states(out: Path, names: list[str]) -> dict[str, str]:
    """``sacct``'s state of the job of each cell whose status says it is pending or running
    on SLURM (one ``sacct`` call; empty where there is no ``sacct``)."""
    import shutil

    wanted = {}
    for name in names:
        status = read_status(status_path(out, name))
        queued = status.get("state") in ("pending", "running") and status.get("job_id")
        if status.get("executor") == "slurm" and queued:
            wanted[name] = str(status["job_id"])
    if not wanted or shutil.which("sacct") is None:
        return {}
    from submitit.slurm.slurm import SlurmInfoWatcher

    watcher = SlurmInfoWatcher(delay_s=0)
    for job_id in wanted.values():
        watcher.register_job(job_id)
    watcher.update()
    states = {n: watcher.get_state(j, mode="cache").split()[0].upper() for n, j in wanted.items()}
    return {n: s for n, s in states.items() if s != "UNKNOWN"}
