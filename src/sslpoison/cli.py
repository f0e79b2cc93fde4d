"""The command line: thin — parse, process-level set-up (threads, process group), call the
library, print what it wrote.

``sslpoison run CONFIG.yaml [--set key=value ...] [--seeds 0,1,2] [--out DIR]``,
``sslpoison sweep SWEEP.yaml [--set key=value ...] [--seeds 0,1,2] [--out DIR]
[--executor serial|local|slurm] [--jobs N] [--executor-set KEY=VALUE ...] [--status]``,
``sslpoison datasets [--check NAME]``, ``sslpoison fetch NAME``; the results store's
``sslpoison runs [import DIR...]`` and ``sslpoison report`` (:mod:`sslpoison.cli_runs`);
``sslpoison encoder inspect SOURCE...`` and ``sslpoison export RUN_DIR ...``
(:mod:`sslpoison.cli_encoders`).

Exit codes: 0 done; 2 a failure the user can fix (a :class:`~sslpoison.errors.UserError`, or
the filesystem refusing a path), printed as one line ``error: <file or key>: <problem>``;
3 a sweep some of whose cells failed (each named with its log; the others finished);
130 interrupted; 1 (with a traceback) a bug. ``--debug`` shows the traceback of every failure.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sslpoison.cli_encoders import add_commands as add_encoder_commands
from sslpoison.cli_runs import add_commands

#: What ``sslpoison --help`` says the tool is for (the module doc is for developers).
DESCRIPTION = (
    "Poison and backdoor self-supervised encoders, defend them, and measure both: "
    "pre-train → attack → defend → evaluate → report, from one YAML experiment."
)

if TYPE_CHECKING:
    from sslpoison.experiment.config import ExperimentConfig
    from sslpoison.experiment.results import Results


def launch(cfg: ExperimentConfig, out: Path) -> Results | None:
    """Process-level set-up, then the run: CPU threads (``threads``), and under ``torchrun``
    the process group, which every rank joins for the training stages and leaves before
    rank 0 alone evaluates (the other ranks return None)."""
    import torch

    from sslpoison.experiment.runner import run_experiment
    from sslpoison.train import dist
    from sslpoison.utils import resolve_device

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = dist.init_from_env(resolve_device(cfg.device))
    return run_experiment(cfg, out, device=device, training_done=dist.leave_group)


def seed_overrides(seeds: str | None) -> list[str]:
    """``--seeds 0,1,2`` as the override ``seeds=[0, 1, 2]`` (none without it)."""
    from sslpoison.errors import ConfigError

    if seeds is None:
        return []
    try:
        values = [int(s) for s in seeds.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds {seeds!r}: expected integers separated by commas") from None
    return [f"seeds={values}"]


def _run(args: argparse.Namespace) -> int:
    from sslpoison.experiment.config import load_config
    from sslpoison.experiment.seeds import run_config
    from sslpoison.utils import safe_name

    cfg = load_config(args.config, [*(args.set or []), *seed_overrides(args.seeds)])
    out = Path(args.out) if args.out else Path("runs") / safe_name(cfg.name)
    results = run_config(cfg, out, run=launch)
    if results is not None:
        print("\n\n".join(results.tables))
        print(f"results: {out / 'results.json'}")
        for name, path in results.artifacts.items():
            print(f"{name}: {path}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from sslpoison.sweeps.sweep import (
        SweepIncomplete,
        load_sweep,
        run_sweep,
        sweep_cells,
        with_executor,
    )
    from sslpoison.utils import safe_name

    sweep, base = load_sweep(args.sweep)
    out = Path(args.out) if args.out else Path("runs") / safe_name(sweep.name)
    overrides = [*(args.set or []), *seed_overrides(args.seeds)]
    if args.status:
        from sslpoison.sweeps.cells import slurm_states, status_table

        names = [c.name for c in sweep_cells(sweep, base, out, overrides)[0]]
        print(status_table(out, names, slurm_states(out, names)))
        return 0
    executor = with_executor(sweep, args.executor, args.jobs, args.executor_set or [])
    try:
        run_sweep(sweep, base, out, overrides, run=launch, executor=executor)
    except SweepIncomplete:
        _print_sweep(out)
        raise
    _print_sweep(out)
    return 0


def _print_sweep(out: Path) -> None:
    table = out / "sweep.md"
    if table.exists():
        print(table.read_text(), end="")
        print(f"sweep: {out / 'sweep.json'}")
    for name, picture in (("plot", "sweep.png"), ("heatmap", "sweep-heatmap.png")):
        if (out / picture).exists():
            print(f"{name}: {out / picture}")


def _datasets(args: argparse.Namespace) -> int:
    from sslpoison.data.registry import dataset_status

    rows = dataset_status()
    for r in rows:
        if r["error"]:
            print(f"warning: {r['name']}: cannot search {r['error']}", file=sys.stderr)
    if args.check:
        row = next((r for r in rows if r["name"] == args.check), None)
        if row is None:
            raise ValueError(f"unknown dataset {args.check!r}")
        print(f"{row['name']}: {'present at ' + str(row['where']) if row['present'] else 'absent'}")
        return 0 if row["present"] else 1
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        state = "present" if r["present"] else "unreadable" if r["error"] else "absent"
        print(f"{r['name']:<{width}}  {state:<10}  {r['where'] or '-'}")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from sslpoison.data.registry import fetch

    print(fetch(args.name, Path(args.dest) if args.dest else None))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sslpoison", description=DESCRIPTION)
    common = argparse.ArgumentParser(add_help=False)
    for p, default in ((parser, False), (common, argparse.SUPPRESS)):
        p.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=default,
            help="debug logging (and tracebacks, as --debug)",
        )
        p.add_argument(
            "--debug",
            action="store_true",
            default=default,
            help="show the traceback of every failure (with debug logging)",
        )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[common], help="run an experiment from a YAML config")
    run.add_argument("config", help="experiment YAML (see configs/)")
    run.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set pretrain.train.epochs=2",
    )
    run.add_argument(
        "--seeds",
        metavar="S,S,...",
        help="run once per seed into OUT/seed-<s>/ and aggregate (mean ± std) into OUT",
    )
    run.add_argument("--out", help="output folder (default runs/<name>)")
    run.set_defaults(func=_run)
    sw = sub.add_parser(
        "sweep", parents=[common], help="run an experiment over a grid of settings (one table)"
    )
    sw.add_argument("sweep", help="sweep YAML: base config, grid, metrics (see configs/)")
    sw.add_argument("--set", action="append", metavar="KEY=VALUE", help="override every run")
    sw.add_argument("--seeds", metavar="S,S,...", help="run every cell over these seeds")
    sw.add_argument("--out", help="output folder (default runs/<sweep name>)")
    sw.add_argument(
        "--executor",
        choices=("serial", "local", "slurm"),
        help="how the cells run: one after another here (serial, the default), as parallel "
        "processes here (local) or as SLURM job arrays (slurm); default: the sweep's executor:",
    )
    sw.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="cells at once (local: processes; slurm: the array's parallelism)",
    )
    sw.add_argument(
        "--executor-set",
        action="append",
        metavar="KEY=VALUE",
        help="override a key of the sweep's executor: section, e.g. partition=gpu, time=120",
    )
    sw.add_argument(
        "--status",
        action="store_true",
        help="show each cell's state (pending, running, done, failed), wall time and log",
    )
    sw.set_defaults(func=_sweep)
    ds = sub.add_parser(
        "datasets", parents=[common], help="list datasets, whether present, and where"
    )
    ds.add_argument("--check", metavar="NAME", help="exit 0 if NAME is present, else 1")
    ds.set_defaults(func=_datasets)
    fe = sub.add_parser("fetch", parents=[common], help="download a dataset (official source)")
    fe.add_argument("name")
    fe.add_argument("--dest", help="folder (default $SSLPOISON_DATA/NAME or ~/.cache/sslpoison)")
    fe.set_defaults(func=_fetch)
    add_commands(sub)
    add_encoder_commands(sub)
    return parser


def user_error(e: BaseException) -> str | None:
    """The one-line message of a failure the user caused, or None for a bug.

    User errors: every :class:`~sslpoison.errors.UserError`; the filesystem refusing a path
    (permissions, a full disk, a file where a folder should be, ...), named with its path;
    and the ``ValueError``s and missing files the library raises for bad input, whose
    messages name the key or the file.
    """
    from sslpoison.errors import UserError, one_line

    if isinstance(e, UserError):
        return one_line(e)
    if isinstance(e, OSError) and e.filename is not None:
        problem = e.strerror or type(e).__name__
        also = f" → {e.filename2}" if e.filename2 is not None else ""
        return one_line(f"{e.filename}{also}: {problem}")
    if isinstance(e, (ValueError, FileNotFoundError)):
        return one_line(e)
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return one_line(f"out of memory ({e}); lower the batch size or the data size")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose or args.debug else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    try:
        return args.func(args)
    except Exception as e:
        message = user_error(e)
        if message is None or args.debug or args.verbose:
            raise
        print(f"error: {message}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
