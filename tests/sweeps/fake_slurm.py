"""A fake SLURM for the tests: ``sbatch``, ``srun`` and ``sacct`` on PATH that record what
they are given and run the jobs on this machine.

- ``sbatch SCRIPT`` appends ``{"argv", "script"}`` to ``STATE/sbatch.jsonl``, answers
  ``Submitted batch job <id>`` and starts the job in the background: after the jobs its
  ``--dependency`` names have ended, each array task (``--array=0-N%P``, one at a time) runs
  SCRIPT with the variables SLURM sets (``SLURM_JOB_ID``, ``SLURM_ARRAY_JOB_ID``,
  ``SLURM_ARRAY_TASK_ID``, ``SLURM_NTASKS``, ...); a task's state (``RUNNING``, then
  ``COMPLETED`` or ``FAILED``) is kept in ``STATE/<id>_<index>.state``.
- ``srun [--output F] [--error F] CMD...`` starts ``--ntasks-per-node`` copies of CMD, each
  with its ``SLURM_PROCID``/``SLURM_LOCALID``, its output in F (``%A %a %j %t`` filled in).
- ``sacct -o ... --parsable2 -j ID ...`` prints those states, as submitit reads them.

With ``FAKE_SLURM_CANCEL=1`` in the environment ``sbatch`` only records: every job it is
given is ``CANCELLED`` at once.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

SCRIPT = r"""
import json, os, re, subprocess, sys, time
from pathlib import Path

STATE = Path(os.environ["FAKE_SLURM_STATE"])


def sbatch(argv):
    script = Path(argv[-1])
    text = script.read_text()
    with open(STATE / "sbatch.jsonl", "a") as f:
        f.write(json.dumps({"argv": argv, "script": text}) + "\n")
    counter = STATE / "counter"
    job = int(counter.read_text()) + 1 if counter.exists() else 1000
    counter.write_text(str(job))
    flags = dict(re.findall(r"^#SBATCH --([\w-]+)=?(.*)$", text, re.M))
    array = flags.get("array", "").split("%")[0]
    indices = [None]
    if array:
        indices = list(range(int(array.split("-")[0]), int(array.split("-")[1]) + 1))
    hold = os.environ.get("FAKE_SLURM_CANCEL") == "1"  # record only: every job cancelled
    for i in indices:
        state = STATE / (f"{job}_{i}.state" if i is not None else f"{job}.state")
        state.write_text("CANCELLED" if hold else "PENDING")
    print(f"Submitted batch job {job}", flush=True)
    if hold:
        return
    subprocess.Popen(
        [sys.executable, __file__, "run", str(job), str(script), json.dumps(flags)],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def ended(job_id):
    states = list(STATE.glob(f"{job_id}.state")) + list(STATE.glob(f"{job_id}_*.state"))
    return all(p.read_text() not in ("PENDING", "RUNNING") for p in states)


def run(job, script, flags):
    job, flags = int(job), json.loads(flags)
    for dep in re.findall(r"\d+(?:_\d+)?", flags.get("dependency", "").split(":", 1)[-1]):
        while not ended(dep):
            time.sleep(0.1)
    array = flags.get("array", "").split("%")[0]
    indices = [None]
    if array:
        indices = list(range(int(array.split("-")[0]), int(array.split("-")[1]) + 1))
    for i in indices:
        state = STATE / (f"{job}_{i}.state" if i is not None else f"{job}.state")
        tasks = flags.get("ntasks-per-node", "1")
        env = dict(os.environ, SLURM_JOB_ID=str(job), SLURM_NTASKS=tasks,
                   SLURM_NTASKS_PER_NODE=tasks, SLURM_JOB_NUM_NODES="1",
                   SLURM_NODEID="0", SLURM_JOB_NODELIST="localhost")
        if i is not None:
            env.update(SLURM_ARRAY_JOB_ID=str(job), SLURM_ARRAY_TASK_ID=str(i),
                       SLURM_JOB_ID=str(job * 100 + i))
        state.write_text("RUNNING")
        code = subprocess.call(["bash", script], env=env)
        state.write_text("COMPLETED" if code == 0 else "FAILED")


def srun(argv):
    out = err = None
    while argv and argv[0].startswith("--"):
        flag = argv.pop(0)
        if flag in ("--output", "--error"):
            value = argv.pop(0)
            if flag == "--output":
                out = value
            else:
                err = value
    n = int(os.environ.get("SLURM_NTASKS_PER_NODE", "1"))
    procs = []
    for k in range(n):
        def name(pattern):
            if pattern is None:
                return None
            for tag, value in (("%A", os.environ.get("SLURM_ARRAY_JOB_ID", "")),
                               ("%a", os.environ.get("SLURM_ARRAY_TASK_ID", "")),
                               ("%j", os.environ["SLURM_JOB_ID"]), ("%t", str(k))):
                pattern = pattern.replace(tag, value)
            return open(pattern, "a")
        env = dict(os.environ, SLURM_PROCID=str(k), SLURM_LOCALID=str(k))
        procs.append(subprocess.Popen(argv, env=env, stdout=name(out), stderr=name(err)))
    sys.exit(max(p.wait() for p in procs))


def sacct(argv):
    ids = [argv[i + 1] for i, a in enumerate(argv) if a == "-j"]
    print("JobID|State|NodeList")
    for job in ids:
        for path in sorted(STATE.glob(f"{job}.state")) + sorted(STATE.glob(f"{job}_*.state")):
            print(f"{path.stem}|{path.read_text()}|localhost")


if __name__ == "__main__":
    mode, argv = sys.argv[1], sys.argv[2:]
    {"sbatch": sbatch, "srun": srun, "sacct": sacct}[mode](argv) if mode != "run" else run(*argv)
"""


def install_fake_slurm(bin_dir: Path, state_dir: Path) -> None:
    """Write ``sbatch``, ``srun`` and ``sacct`` into ``bin_dir`` (put it first on PATH and
    ``FAKE_SLURM_STATE=state_dir`` in the environment)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    main = bin_dir / "fakeslurm.py"
    main.write_text(SCRIPT)
    for mode in ("sbatch", "srun", "sacct"):
        path = bin_dir / mode
        path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{main}" {mode} "$@"\n')
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def submissions(state_dir: Path) -> list[dict]:
    """What ``sbatch`` was given, in order: ``{"argv", "script"}`` per call."""
    path = state_dir / "sbatch.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


__all__ = ["install_fake_slurm", "submissions"]

if __name__ == "__main__":  # pragma: no cover
    install_fake_slurm(Path(sys.argv[1]), Path(os.environ["FAKE_SLURM_STATE"]))
