"""The results-store commands of the command line (registered by :mod:`sslpoison.cli`):

``sslpoison runs [FILTERS] [--compare [--metric PATTERN ...]]`` lists (or compares) the
stored runs; ``sslpoison runs import DIR...`` indexes existing run folders;
``sslpoison report [DIR...] [FILTERS] --out report.html`` writes the HTML report, of the
given run folders or else of the store. FILTERS: ``--attack``, ``--defense``, ``--dataset``,
``--preset`` (globs); ``--db PATH`` picks the store (default ``$SSLPOISON_RESULTS`` or
``runs/results.sqlite``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _filters(args: argparse.Namespace):
    from sslpoison.results.store import Filters

    return Filters(args.attack, args.defense, args.dataset, args.preset)


def _describe(args: argparse.Namespace) -> str:
    shown = [f"{k}={getattr(args, k)}" for k in ("attack", "defense", "dataset", "preset")]
    return ", ".join(s for s in shown if not s.endswith("=None"))


def _shown_path(path: str) -> str:
    """``path`` relative to the working directory when it lies below it."""
    p = Path(path)
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def format_runs(runs: list[Any]) -> str:
    """One line per run: id, preset, attack, defenses, downstream datasets, seed, precision,
    minutes, when it finished, its folder."""
    if not runs:
        return "(no run matches)"
    head = ("id", "preset", "attack", "defenses", "datasets", "seed", "precision", "min")
    head += ("finished", "folder")
    lines = [head]
    for r in runs:
        total = r.timings.get("total")
        lines.append(
            (
                str(r.id), r.name, r.attack or "-", ",".join(r.label("defense")) or "-",
                ",".join((r.config.get("eval") or {}).get("datasets") or []) or "-",
                str(r.seed), str(r.provenance.get("precision") or "-"),
                f"{total / 60:.1f}" if total is not None else "-",
                str(r.provenance.get("finished") or "-")[:16], _shown_path(r.folder),
            )
        )  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=False)) + "  " + line[-1]
        for line in lines
    )


def _runs(args: argparse.Namespace) -> int:
    from sslpoison.results.compare import compare, format_comparison
    from sslpoison.results.store import ResultsStore, store_path

    path = store_path(args.db)
    with ResultsStore(path, read_only=True) as store:
        runs = store.runs(_filters(args))
    if args.compare:
        print(format_comparison(compare(runs, args.metric or [])))
    else:
        print(format_runs(runs))
    print(f"{len(runs)} runs in {path}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from sslpoison.results.store import import_runs, store_path

    path = store_path(args.import_db or args.db)
    added, known = import_runs(args.dirs, path)
    print(f"{path}: {added} runs added, {known} already there")
    return 0


def _report(args: argparse.Namespace) -> int:
    from sslpoison.results.html_report import write_report
    from sslpoison.results.store import ResultsStore, run_folders, store_path

    if args.dirs:
        store = ResultsStore(":memory:")
        store.add_folders(run_folders(args.dirs))
        source = f"{len(args.dirs)} run folder(s)"
    else:
        path = store_path(args.db)
        store = ResultsStore(path, read_only=True)
        source = f"store {path}"
    with store:
        runs = store.runs(_filters(args))
    about = source + (f", {_describe(args)}" if _describe(args) else "")
    out = write_report(runs, args.out, args.title, about)
    print(f"report: {out} ({len(runs)} runs, {out.stat().st_size / 1e6:.1f} MB)")
    return 0


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", help="the results store (default $SSLPOISON_RESULTS or "
                        "runs/results.sqlite)")  # fmt: skip
    parser.add_argument("--attack", metavar="GLOB", help="only runs of this attack")
    parser.add_argument("--defense", metavar="GLOB", help="only runs with this defense")
    parser.add_argument(
        "--dataset", metavar="GLOB", help="only runs on this dataset (pre-training or downstream)"
    )
    parser.add_argument("--preset", metavar="GLOB", help="only runs of this config name")


def add_commands(sub: Any) -> None:
    """Add ``runs`` and ``report`` to the command line's subparsers ``sub``."""
    runs = sub.add_parser("runs", help="list or compare the runs in the results store")
    _add_filters(runs)
    runs.add_argument(
        "--compare", action="store_true", help="a table of metrics, mean ± std over seeds"
    )
    runs.add_argument(
        "--metric",
        action="append",
        metavar="GLOB",
        help="with --compare: metric keys to show, e.g. '*/asr' (default: the headline ones)",
    )
    runs.set_defaults(func=_runs, import_db=None)
    runs_sub = runs.add_subparsers(dest="runs_command")
    imp = runs_sub.add_parser("import", help="index existing run folders in the store")
    imp.add_argument("dirs", nargs="+", metavar="DIR", help="run folders, or folders holding them")
    imp.add_argument("--db", dest="import_db", help="the results store")
    imp.set_defaults(func=_import)
    rep = sub.add_parser("report", help="one self-contained HTML page comparing runs")
    rep.add_argument(
        "dirs", nargs="*", metavar="DIR", help="run folders (default: the runs in the store)"
    )
    _add_filters(rep)
    rep.add_argument("--out", default="report.html", help="the HTML file (default report.html)")
    rep.add_argument("--title", default="sslpoison report")
    rep.set_defaults(func=_report)


__all__ = ["add_commands", "format_runs"]
