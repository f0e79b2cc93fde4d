"""How a sweep runs its cells: ``serial`` (one after another, in this process; the default),
``local`` (parallel processes on this machine, through submitit's ``LocalExecutor``) or
``slurm`` (job arrays, through submitit's ``SlurmExecutor``).

The sweep file's ``executor:`` section (:class:`ExecutorConfig`), overridden on the command
line (``--executor``, ``--jobs``, ``--executor-set KEY=VALUE``)::

    executor:
      name: slurm              # serial | local | slurm
      jobs: 2                  # local: cells at once
      partition: gpu           # slurm: the partition
      time: 720                # minutes a cell may run (its job's time limit)
      cpus_per_task: 8
      gpus_per_node: 4         # GPUs per cell
      tasks_per_node: 4        # processes per cell (DDP ranks; default: one per GPU)
      array_parallelism: 16    # slurm: cells running at once (default: all)
      sbatch: {account: lab, qos: normal}   # further sbatch options
      setup: [module load cuda/12.4]        # shell lines before each job
      log_dir: null            # default OUT/logs (submitit's job files and logs)

Every executor runs the phases of the sweep's plan (:mod:`sslpoison.sweeps.plan`) in order:
``local`` starts the next phase when the last one is done; ``slurm`` submits one job array
per phase, each after the previous one (``--dependency=afterany``), so the sweep's process
may end (Ctrl-C) while its jobs go on; started again it waits for the cells still queued or
running (asking ``sacct``) instead of submitting them twice. ``serial`` keeps the grid order.

A cell with several tasks (``tasks_per_node`` > 1, e.g. one per GPU) runs under
torch.distributed: each task exports the variables ``torchrun`` would set (``MASTER_ADDR``,
``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``: submitit's
``TorchDistributedEnvironment`` maps the job's SLURM or local environment onto them), which
:func:`sslpoison.train.dist.init_from_env` reads; rank 0 writes the results.

A failed cell is recorded (status file, its log) and the others go on; the sweep's table
marks it. The stage cache (and the output folder) must be on a filesystem every job sees.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from sslpoison.configbase import Config
from sslpoison.errors import ConfigError, one_line
from sslpoison.sweeps.cells import (
    ALIVE,
    Cell,
    append_traceback,
    cell_state,
    read_status,
    run_cell,
    slurm_states,
    status_path,
    update_status,
)
from sslpoison.train import dist

log = logging.getLogger(__name__)

#: How long a finished job's cell status may still read "running" before it counts as failed.
STATUS_GRACE_S = 60.0

__all__ = ["EXECUTORS", "ExecutorConfig", "Outcome", "make_executor"]

#: The executors, by name (``--executor``).
EXECUTORS = ("serial", "local", "slurm")
#: Seconds between two looks at the jobs in flight.
POLL_S = 0.5


class ExecutorConfig(Config):
    """The ``executor:`` section of a sweep file (see the module doc)."""

    name: Literal["serial", "local", "slurm"] = "serial"
    jobs: PositiveInt = 2
    partition: str | None = None
    time: PositiveInt = 24 * 60
    cpus_per_task: PositiveInt | None = None
    gpus_per_node: NonNegativeInt = 0
    tasks_per_node: PositiveInt | None = None
    nodes: PositiveInt = 1
    mem_gb: PositiveFloat | None = None
    array_parallelism: PositiveInt | None = None
    sbatch: dict[str, str | int | float | bool] = Field(default_factory=dict)
    setup: list[str] = Field(default_factory=list)
    log_dir: str | None = None
    python: str | None = None  # the command that runs Python on the nodes (default: this one)

    @model_validator(mode="after")
    def _consistent(self) -> ExecutorConfig:
        if self.name != "slurm" and self.nodes > 1:
            raise ValueError(f"executor.nodes: {self.name} runs on this machine only; use slurm")
        if self.name == "serial" and self.tasks > 1:
            raise ValueError(
                "executor.tasks_per_node: serial runs the cells in this process; for several "
                "processes per cell use local or slurm (or torchrun with serial)"
            )
        return self

    @property
    def tasks(self) -> int:
        """Processes per cell and node: ``tasks_per_node``, else one per GPU (at least one)."""
        return self.tasks_per_node or max(1, self.gpus_per_node)


@dataclass(frozen=True)
class Outcome:
    """How a cell ended: ``done`` or ``failed`` (with its log and the error's line)."""

    state: str
    log: str | None = None
    error: str | None = None


#: Called in the sweep's process as each cell ends.
Finished = Callable[[Cell, Outcome], None]


def _main_process() -> bool:
    """Whether this process writes the sweep's files (rank 0 under ``torchrun``)."""
    return int(os.environ.get("RANK", "0")) == 0


class SerialExecutor:
    """Every cell in this process, in grid order; each cell's log also goes to
    ``OUT/logs/<cell>.log`` (with the traceback of a failure)."""

    def __init__(self, cfg: ExecutorConfig, out: Path, log_dir: Path) -> None:
        self.cfg, self.out, self.log_dir = cfg, out, log_dir

    def run(self, cells: Sequence[Cell], phases: list[list[str]], on_finished: Finished) -> None:
        main = _main_process()
        for cell in cells:
            log_path = self.log_dir / f"{cell.name}.log"
            status = status_path(self.out, cell.name) if main else None
            handler = None
            if main:
                log_path.parent.mkdir(parents=True, exist_ok=True)
                handler = logging.FileHandler(log_path, encoding="utf-8")
                handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
                logging.getLogger().addHandler(handler)
                update_status(status, executor="serial", job_id=None, log=str(log_path))
            log.info("sweep: cell %s", cell.name)
            try:
                run_cell(cell, status)
            except Exception as e:
                if dist.launched_by_torchrun() or not main:
                    raise  # the other ranks would wait for this one
                append_traceback(log_path)
                error = one_line(e, 300)
                log.error("sweep: cell %s failed: %s (log: %s)", cell.name, error, log_path)
                outcome = Outcome("failed", str(log_path), error)
            else:
                outcome = Outcome(cell_state(self.out, cell.name)[0], str(log_path))
            finally:
                if handler is not None:
                    logging.getLogger().removeHandler(handler)
                    handler.close()
            if main:
                on_finished(cell, outcome)


def _job(cell: Cell, status: Path, threads: int | None) -> None:
    """One cell in a submitit job, in each of its tasks: torch.distributed's variables from
    the job's environment (several tasks), logging to the job's log, CPU threads; the first
    task keeps the status file."""
    import submitit
    import torch

    env = submitit.JobEnvironment()
    if env.num_tasks > 1:  # what `torchrun` would set; every task sees all the node's GPUs
        submitit.helpers.TorchDistributedEnvironment().export(
            set_cuda_visible_devices=False, overwrite=True
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if threads is not None and cell.config.threads is None:
        torch.set_num_threads(threads)
    main = env.global_rank == 0
    run_cell(cell, status if main else None, env.paths.stderr if main else None, env.job_id)


class _Pid:
    """A cell still running on this machine in a process a former sweep started."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def done(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


class SubmititExecutor:
    """``local`` or ``slurm``: each cell a submitit job (see the module doc)."""

    def __init__(self, cfg: ExecutorConfig, out: Path, log_dir: Path, name: str) -> None:
        self.cfg, self.out, self.log_dir, self.name = cfg, out, log_dir, name
        self.in_flight: dict[str, Any] = {}  # cell name → submitit job (or _Pid)
        self.logs: dict[str, str] = {}
        self.gpus: dict[str, int] = {}  # local: cell name → its slot of GPUs

    # ---- the executor -------------------------------------------------------------------

    def _threads(self) -> int | None:
        """CPU threads per cell: ``cpus_per_task``; locally, else the cores shared by jobs."""
        if self.cfg.cpus_per_task is not None:
            return self.cfg.cpus_per_task
        if self.cfg.name == "local":
            return max(1, (os.cpu_count() or 1) // self.cfg.jobs)
        return None

    def _executor(self) -> Any:
        import submitit

        cfg = self.cfg
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if cfg.name == "local":
            ex = submitit.LocalExecutor(self.log_dir, python=cfg.python)
            ex.update_parameters(
                timeout_min=cfg.time,
                tasks_per_node=cfg.tasks,
                gpus_per_node=cfg.gpus_per_node,
                **({"setup": list(cfg.setup)} if cfg.setup else {}),
            )
            return ex
        try:
            ex = submitit.SlurmExecutor(self.log_dir, python=cfg.python)
        except RuntimeError as e:  # no srun: not on a SLURM cluster
            raise ConfigError(f"executor.name: slurm: {e}") from None
        params: dict[str, Any] = {
            "job_name": f"sslpoison-{self.name}",
            "time": cfg.time,
            "nodes": cfg.nodes,
            "ntasks_per_node": cfg.tasks,
            "partition": cfg.partition,
            "cpus_per_task": cfg.cpus_per_task,
            "gpus_per_node": cfg.gpus_per_node or None,
            "mem": None if cfg.mem_gb is None else f"{round(cfg.mem_gb * 1024)}MB",
            "array_parallelism": cfg.array_parallelism or 256,
            "setup": list(cfg.setup) or None,
            "additional_parameters": dict(cfg.sbatch) or None,
        }
        try:
            ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
        except ValueError as e:
            raise ConfigError(f"executor: {one_line(e, 300)}") from None
        return ex

    # ---- the cells ----------------------------------------------------------------------

    def _log_path(self, job_id: str) -> str:
        from submitit.core.utils import JobPaths

        return str(JobPaths(self.log_dir, job_id, 0).stderr)

    def _reattach(self, cells: Sequence[Cell]) -> None:
        """Cells a former sweep's jobs still run (or have queued): wait for those, not again."""
        for cell in cells:
            status = read_status(status_path(self.out, cell.name))
            if status.get("state") not in ("pending", "running") or not status.get("job_id"):
                continue
            if status.get("executor") == "slurm" and self.cfg.name == "slurm":
                from submitit.slurm.slurm import SlurmJob

                job = SlurmJob(folder=self.log_dir, job_id=str(status["job_id"]))
                state = job.watcher.get_state(job.job_id, mode="force").split()[0].upper()
                if state in ALIVE:
                    self.in_flight[cell.name] = job
            elif status.get("state") == "running" and isinstance(status.get("pid"), int):
                handle = _Pid(status["pid"])
                if not handle.done() and status.get("host") == _hostname():
                    self.in_flight[cell.name] = handle
            if cell.name in self.in_flight:
                self.logs[cell.name] = str(status.get("log") or "")
                log.info("sweep: %s is still running (job %s)", cell.name, status["job_id"])

    def _submit(self, ex: Any, cells: list[Cell], threads: int | None) -> list[str]:
        """Submit ``cells`` (one array on SLURM); returns their job ids."""
        for cell in cells:
            update_status(
                status_path(self.out, cell.name),
                state="pending",
                submitted=time.time(),
                started=None,
                ended=None,
                error=None,
                executor=self.cfg.name,
            )
        with ex.batch():
            jobs = [ex.submit(_job, c, status_path(self.out, c.name), threads) for c in cells]
        for cell, job in zip(cells, jobs, strict=True):
            self.in_flight[cell.name] = job
            self.logs[cell.name] = self._log_path(job.job_id)
            update_status(
                status_path(self.out, cell.name), job_id=job.job_id, log=self.logs[cell.name]
            )
        log.info("sweep: submitted %d cells (%s)", len(cells), self.cfg.name)
        return [job.job_id for job in jobs]

    def _give_gpus(self, ex: Any, name: str) -> None:
        """Locally, the next cell's GPUs: its own ``gpus_per_node`` of the machine's (slot
        ``i`` of ``jobs`` gets GPUs ``i·g … i·g + g − 1``), so that cells never share one."""
        g = self.cfg.gpus_per_node
        if not g:
            return
        import torch

        have = torch.cuda.device_count()
        if self.cfg.jobs * g > have:
            raise ConfigError(
                f"executor.gpus_per_node: {self.cfg.jobs} jobs × {g} GPUs asked for, this "
                f"machine has {have}"
            )
        used = {self.gpus[n] for n in self.in_flight if n in self.gpus}
        slot = min(set(range(self.cfg.jobs)) - used)
        self.gpus[name] = slot
        ex.update_parameters(visible_gpus=tuple(range(slot * g, slot * g + g)))

    def _outcome(self, cell: Cell) -> Outcome:
        """How ``cell``'s job ended; a job that ended without saying so (killed, out of
        memory or time) is recorded as failed. A status still "running" — or "pending" while
        SLURM says the job is queued, running or completed — is read again for up to
        :data:`STATUS_GRACE_S` seconds: a shared filesystem may show the job's writes late,
        and submitit may call a job of several tasks done before rank 0 (which writes the
        cell's status) has."""
        state, status = cell_state(self.out, cell.name)
        deadline = time.monotonic() + STATUS_GRACE_S
        while state in ("pending", "running") and time.monotonic() < deadline:
            if state == "pending":  # not started, as far as its status says
                job = slurm_states(self.out, [cell.name]).get(cell.name)
                if job not in ALIVE | {"COMPLETED"}:  # cancelled, failed, or no scheduler
                    break
            time.sleep(0.5)
            state, status = cell_state(self.out, cell.name)
        log_path = self.logs.get(cell.name) or status.get("log")
        if state == "done":
            return Outcome("done", log_path)
        error = status.get("error") or (
            "its job ended before the cell did (killed, out of memory or out of time?)"
        )
        update_status(
            status_path(self.out, cell.name),
            state="failed",
            ended=status.get("ended") or time.time(),
            error=error,
        )
        return Outcome("failed", log_path, error)

    def _collect(self, by_name: dict[str, Cell], on_finished: Finished) -> None:
        for name, job in list(self.in_flight.items()):
            if job.done():
                del self.in_flight[name]
                outcome = self._outcome(by_name[name])
                if outcome.state == "failed":
                    error, where = outcome.error, outcome.log
                    log.error("sweep: cell %s failed: %s (log: %s)", name, error, where)
                else:
                    log.info("sweep: cell %s done", name)
                on_finished(by_name[name], outcome)

    def run(self, cells: Sequence[Cell], phases: list[list[str]], on_finished: Finished) -> None:
        by_name = {c.name: c for c in cells}
        ex, threads = self._executor(), self._threads()
        self._reattach(cells)
        waiting = set(self.in_flight)
        try:
            if self.cfg.name == "slurm":
                after = [str(self.in_flight[n].job_id) for n in waiting]
                for phase in phases:
                    todo = [by_name[n] for n in phase if n not in waiting]
                    if not todo:
                        continue
                    if after:
                        ex.update_parameters(dependency="afterany:" + ":".join(after))
                    after = self._submit(ex, todo, threads)
                while self.in_flight:
                    self._collect(by_name, on_finished)
                    time.sleep(POLL_S)
            else:
                for phase in phases:
                    todo = [by_name[n] for n in phase if n not in waiting]
                    while todo or self.in_flight:
                        while todo and len(self.in_flight) < self.cfg.jobs:
                            self._give_gpus(ex, todo[0].name)
                            self._submit(ex, todo[:1], threads)
                            todo = todo[1:]
                        self._collect(by_name, on_finished)
                        time.sleep(POLL_S)
        except BaseException:
            self._leave()
            raise

    def _leave(self) -> None:
        """On the way out before the end: local jobs are stopped (they resume from their
        checkpoints when the sweep runs again); SLURM jobs go on."""
        if not self.in_flight:
            return
        if self.cfg.name == "slurm":
            log.warning(
                "sweep: %d cells go on in SLURM jobs; `sslpoison sweep FILE --status` shows "
                "them, and the same command again waits for them and makes the table",
                len(self.in_flight),
            )
            return
        for job in self.in_flight.values():
            if hasattr(job, "cancel"):
                job.cancel(check=False)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not all(j.done() for j in self.in_flight.values()):
            time.sleep(0.1)


def _hostname() -> str:
    import socket

    return socket.gethostname()


def make_executor(cfg: ExecutorConfig, out: Path, name: str) -> SerialExecutor | SubmititExecutor:
    """The executor ``cfg`` names, for the sweep ``name`` writing to ``out``."""
    log_dir = Path(cfg.log_dir).expanduser() if cfg.log_dir else out / "logs"
    if cfg.name == "serial":
        return SerialExecutor(cfg, out, log_dir)
    if dist.launched_by_torchrun():
        raise ConfigError(
            f"executor.name: {cfg.name} starts a process per cell; run the sweep without "
            "torchrun (tasks_per_node sets the processes of each cell)"
        )
    return SubmititExecutor(cfg, out, log_dir, name)
