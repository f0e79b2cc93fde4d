"""``sslpoison report``: one self-contained HTML page comparing stored runs.

The page has one section per attack (``none`` for runs without one), each with:

* **Encoders**: dataset × encoder × probe, with the numbers the attack defines — accuracy (CA
  for the clean encoder, BA otherwise), accuracy drop (CA − BA; an indiscriminate attack's
  own ``acc_drop``), ASR (ASR-B for the clean encoder), FP, zero-shot accuracy and ASR,
  targeted success, the poisoning numbers — as mean ± std over the seeds of each setting;
* **Effects against their null controls**: each effect (ASR, FP, accuracy drop, a defended
  encoder's ASR) beside its null control (ASR-B, unseen triggers, clean duplicates, the
  defense on the clean encoder) over the seeds of each setting, with the verdict of
  :func:`~sslpoison.results.stats.versus_control` and the test it applies;
* **Defenses compared**: accuracy against ASR (scatter plot, error bars over seeds), with
  the clean images each defense used and its wall time (zero-shot accuracy and ASR too for
  CLIP models);
* **Filters of the pre-training data**: each filter's precision, recall and AUROC against the
  planted poisons, the clean data it removed and its wall time (filter, pre-training again);
* **Sweeps**: for settings of one preset that differ in a numeric key, the headline numbers
  against it (line plots);
* **Detectors**: each verdict, with the inverted triggers;
* **Pictures**: trigger examples, confusion matrices and the runs' other figures;

then every run with its config, provenance and timings folded away. Images are inlined as
data URIs and the page references nothing outside itself. Tables sort by a click on their
header; long sections start folded.
"""

from __future__ import annotations

import datetime
import html
import json
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from sslpoison.attacks import ATTACKS
from sslpoison.defenses.base import FILTER
from sslpoison.eval.controls import null_controls
from sslpoison.eval.rows import ATTACKED, CLEAN
from sslpoison.eval.zero_shot import ZERO_SHOT
from sslpoison.results.compare import (
    BASELINES,
    Group,
    first_probe,
    format_cell,
    group_runs,
    mean_std,
)
from sslpoison.results.names import attack_title, defense_metrics, defense_title
from sslpoison.results.report import defense_seconds
from sslpoison.results.report_figures import (
    Point,
    Series,
    defense_scatter,
    file_uri,
    sweep_figure,
)
from sslpoison.results.stats import TEST, versus_control
from sslpoison.results.store import StoredRun
from sslpoison.utils import atomic_write_text

#: The encoder table's number columns, in order: (column, header). ``drop`` holds CA − BA of
#: a backdoor evaluation and an indiscriminate attack's ``acc_drop``.
COLUMNS = (
    ("acc", "accuracy"),
    ("drop", "acc. drop"),
    ("acc_drop_null", "acc. drop, null control"),
    ("asr", "ASR"),
    ("asr_other_trigger", "ASR, other triggers"),
    ("fp", "FP"),
    ("fp_other_trigger", "FP, other triggers"),
    ("zs_acc", "zero-shot acc."),
    ("zs_asr", "zero-shot ASR"),
    ("zs_asr_other_trigger", "zero-shot ASR, other triggers"),
    ("targeted_success", "targeted success"),
    ("acc_clean", "acc. trained clean"),
    ("acc_poisoned", "acc. trained poisoned"),
    ("removed_poisons", "poisons removed"),
    ("removed_clean", "clean removed"),
    ("removed_unpoisoned", "removed (unpoisoned set)"),
    ("poisons", "poisons"),
    ("poison_rate", "poison rate"),
    ("poison_linf", "poison L∞"),
    ("poison_l2", "poison L2"),
)
#: Metrics drawn against a swept setting.
SWEPT = ("asr", "acc", "fp", "zs_asr", "targeted_success", "drop")
#: Sections longer than this many table lines start folded.
FOLD_AFTER = 80

#: A line of the encoder table: (dataset, encoder, probe, target, setting).
LineKey = tuple[str | None, str, str, str | None, str | None]


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


# --- what each run contributes ------------------------------------------------------------


def encoder_cells(run: StoredRun) -> dict[LineKey, dict[str, float]]:
    """The run's numbers by table line (dataset, encoder, probe, target, setting) and column:
    every row measured on a dataset, but for an attacked run only the first probe's accuracy,
    ASR and FP (the attack's own view); ``drop`` = the clean encoder's accuracy minus this
    encoder's, same dataset and probe (backdoor evaluations), or the attack's ``acc_drop``."""
    probe, attacked = first_probe(run.config), run.attack is not None
    found: dict[LineKey, dict[str, float]] = {}
    for r in run.rows:
        if r.dataset is None:
            continue
        if attacked and r.metric in ("acc", "asr", "fp") and r.probe != probe:
            continue
        column = "drop" if r.metric == "acc_drop" else r.metric
        found.setdefault((r.dataset, r.encoder, r.probe, r.target, r.setting), {})[column] = r.value
    if attacked:
        for (d, e, p, t, s), cells in found.items():
            clean = found.get((d, CLEAN, p, t, s), {}).get("acc")
            if e not in (CLEAN, *BASELINES) and "acc" in cells and clean is not None:
                cells.setdefault("drop", clean - cells["acc"])
    return found


def merged(group: Group, cells: Callable[[StoredRun], dict]) -> dict[Any, dict[str, list]]:
    """``cells(run)`` of every run of the group, each value listed over the runs."""
    out: dict[Any, dict[str, list]] = {}
    for run in group.runs:
        for line, values in cells(run).items():
            slot = out.setdefault(line, {})
            for column, value in values.items():
                slot.setdefault(column, []).append(value)
    return out


def _role_order(encoder: str) -> tuple[int, str]:
    order = {CLEAN: 0, ATTACKED: 1}
    return (order.get(encoder, 3 if encoder in BASELINES else 2), encoder)


# --- HTML pieces ------------------------------------------------------------------------------


class Raw(str):
    """HTML already made (a table cell), not text to escape."""


def number_td(values: Sequence[float], digits: int = 4) -> Raw:
    """A table cell: mean ± std over seeds (its sort value: the mean; each run's value in its
    tooltip)."""
    if not values:
        return Raw('<td class="num">-</td>')
    mean = mean_std(values)[0]
    runs = len(values)
    title = f' title="{runs} runs: {esc(", ".join(f"{v:g}" for v in values))}"' if runs > 1 else ""
    text = esc(format_cell(values, digits))
    return Raw(f'<td class="num" data-v="{mean:.6g}"{title}>{text}</td>')


def group_td(group: Group) -> Raw:
    """A setting's cell: its short label, the full one in the tooltip."""
    return Raw(f'<td title="{esc(group.full_label)}">{esc(group.label)}</td>')


def table(headers: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    """A sortable table of ``lines`` of cells: text, or :class:`Raw` ``<td>`` elements."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for line in lines:
        cells = [c if isinstance(c, Raw) else f"<td>{esc(c)}</td>" for c in line]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def fold(title: str, body: str, open_: bool = True, level: int = 3) -> str:
    opened = " open" if open_ else ""
    return f"<details{opened}><summary><h{level}>{esc(title)}</h{level}></summary>{body}</details>"


def figure(uri: str | None, caption: str) -> str:
    """An image (a data URI) with its caption; a note when the file could not be read."""
    text = esc(caption)
    if uri is None:
        return f'<figure class="missing"><figcaption>{text}: file not found</figcaption></figure>'
    return f'<figure><img src="{uri}" alt="{text}"><figcaption>{text}</figcaption></figure>'


# --- the sections of one attack ---------------------------------------------------------------


def encoders_section(groups: Sequence[Group]) -> str:
    per_group = [(g, merged(g, encoder_cells)) for g in groups]
    used = {c for _, lines in per_group for cells in lines.values() for c in cells}
    columns = [(c, h) for c, h in COLUMNS if c in used]
    columns += [(c, c) for c in sorted(used - {c for c, _ in COLUMNS})]
    with_target = any(k[3] for _, lines in per_group for k in lines)
    with_setting = any(k[4] for _, lines in per_group for k in lines)
    headers = ["setting", "runs", "dataset", "encoder", "probe"]
    headers += ["target"] * with_target + ["countermeasure"] * with_setting
    out = []
    for g, lines in per_group:
        order = sorted(lines, key=lambda k: (k[0], _role_order(k[1]), k[2], k[3] or "", k[4] or ""))
        for d, e, p, t, s in order:
            cells = lines[d, e, p, t, s]
            line = [group_td(g), str(len(g.runs)), d, e, p]
            line += [t or "-"] * with_target + [s or "-"] * with_setting
            out.append(line + [number_td(cells.get(c, [])) for c, _ in columns])
    notes = ["mean ± std over the seeds of each setting (each run's value in the tooltip)."]
    if "asr" in used:
        notes.append(
            "Accuracy is CA for the clean encoder and BA for the others, the clean encoder's "
            "ASR is ASR-B, acc. drop = CA − BA (same probe and dataset); only the first probe "
            "of eval.probes is shown."
        )
    if "fp" in used:
        notes.append("FP: the number of triggered non-target test images called the target.")
    if "zs_acc" in used:
        notes.append("Zero-shot: the CLIP model's own prompt classifier (probe zero_shot).")
    if "acc_clean" in used:
        notes.append(
            "acc. drop = accuracy of the victim trained clean − trained poisoned (victim "
            "features: the linear head on the poisoned features before inversion)."
        )
    body = table([*headers, *(h for _, h in columns)], out)
    body += f"<p class=note>{esc(' '.join(notes))}</p>"
    return fold("Encoders", body, open_=len(out) <= FOLD_AFTER)


def controls_section(groups: Sequence[Group]) -> str | None:
    """Each effect beside its null control (:func:`~sslpoison.eval.controls.null_controls`),
    mean ± std over the seeds of each setting, and the verdict."""
    lines = []
    for g in groups:
        found = g.rows(lambda row, run: True)
        for pair in null_controls(found):
            effect, control = found[pair.effect], found[pair.control]
            e, c = [r.value for r in effect], [r.value for r in control]
            verdict = versus_control(e, c)
            cells = [effect[0].key, number_td(e), control[0].key, number_td(c), pair.what]
            lines.append([group_td(g), str(len(g.runs)), *cells, verdict.text()])
    if not lines:
        return None
    headers = ["setting", "runs", "effect", "mean ± std", "null control", "mean ± std"]
    headers += ["control is", "verdict"]
    note = f"<p class=note>test: {esc(TEST)}; untested with fewer than two seeds.</p>"
    body = table(headers, lines) + note
    return fold("Effects against their null controls", body, open_=len(lines) <= FOLD_AFTER)


def defense_cost(run: StoredRun, encoder: str) -> dict[str, float]:
    """Clean images and wall seconds of a defense's stage record (the original run's when
    the stage came from the cache)."""
    record = run.stages.get(f"defense:{encoder}") or {}
    found = {"clean": record.get("clean_images"), "wall": defense_seconds(record)}
    return {k: v for k, v in found.items() if isinstance(v, (int, float))}


def defenses_section(groups: Sequence[Group], attack: str | None) -> str | None:
    points, lines, with_fp, with_zs = [], [], False, False
    for g in groups:
        cells = merged(g, encoder_cells)
        defended = {
            (d, e) for (d, e, p, t, s), c in cells.items()
            if e not in (CLEAN, ATTACKED, *BASELINES) and p != ZERO_SHOT and t is None
            and s is None and "acc" in c
        }  # fmt: skip
        if not defended:
            continue
        names = sorted({e for _, e in defended})
        costs = merged(g, lambda run, names=names: {e: defense_cost(run, e) for e in names})
        keys = sorted(
            {(d, e, p) for (d, e, p, t, s) in cells if t is None and s is None and p != ZERO_SHOT}
        )
        for d, e, p in keys:
            c = cells[d, e, p, None, None]
            if "acc" not in c or "asr" not in c or e in BASELINES:
                continue
            if e not in (CLEAN, ATTACKED) and (d, e) not in defended:
                continue
            (acc, acc_s), (asr, asr_s) = mean_std(c["acc"]), mean_std(c["asr"])
            points.append(Point(e, d, acc, asr, acc_s, asr_s))
            cost = costs.get(e, {})
            zs = cells.get((d, e, ZERO_SHOT, None, None), {})
            lines.append(
                [group_td(g), str(len(g.runs)), d, e]
                + [number_td(c.get(k, [])) for k in ("acc", "asr", "fp")]
                + [number_td(zs.get(k, [])) for k in ("zs_acc", "zs_asr")]
                + [number_td(cost.get("clean", []), 0), number_td(cost.get("wall", []), 1)]
            )
            with_fp = with_fp or "fp" in c
            with_zs = with_zs or "zs_asr" in zs
    if not points:
        return None
    title = f"{attack_title(attack)}: accuracy against ASR per encoder (best: bottom right)"
    headers = ["setting", "runs", "dataset", "encoder", "accuracy", "ASR", "FP"]
    headers += ["zero-shot acc.", "zero-shot ASR", "clean images", "wall s"]
    dropped = [i for i, used in ((6, with_fp), (7, with_zs), (8, with_zs)) if not used]
    headers = [h for i, h in enumerate(headers) if i not in dropped]
    lines = [[cell for i, cell in enumerate(line) if i not in dropped] for line in lines]
    note = (
        "<p class=note>clean images: the clean pre-training images the defense used; wall s: "
        "its wall time (training, and MI estimation for MIMIC; for a filter of the pre-training "
        "data the filter and the pre-training again on what it kept; the original run's when "
        "the stage came from the cache). clean and attacked are the references.</p>"
    )
    listed = fold(f"{len(lines)} lines", table(headers, lines) + note, len(lines) <= FOLD_AFTER, 4)
    body = figure(defense_scatter(points, title), "accuracy against ASR") + listed
    return fold("Defenses compared", body)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def swept_cells(run: StoredRun) -> dict[tuple[str, str, str], float]:
    """The run's numbers worth plotting against a swept setting: (metric, dataset, encoder)."""
    out = {}
    probe = first_probe(run.config)
    for (d, e, p, t, s), cells in encoder_cells(run).items():
        if t is not None or s is not None or e in BASELINES:
            continue
        if p not in (probe, ZERO_SHOT) and not (p == "linear" and "drop" in cells):
            continue
        for metric in SWEPT:
            if metric in cells and not (metric == "drop" and e == CLEAN and "acc" in cells):
                out[metric, d, e] = cells[metric]
    return out


def sweep_panels(members: Sequence[Group], x: str) -> dict[str, list[Series]]:
    """The lines of one sweep: for each metric, one line per (dataset, encoder, the other
    settings that differ), over the values of the setting ``x`` (lines of one point left out)."""
    panels: dict[str, dict[str, list]] = {}
    for g in members:
        others = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in g.differs.items() if k != x)
        cells = merged(g, lambda run: {0: swept_cells(run)}).get(0, {})
        for (metric, d, e), values in cells.items():
            line = f"{d} · {e}" + (f" · {others}" if others else "")
            panels.setdefault(metric, {}).setdefault(line, []).append(
                (g.differs[x], *mean_std(values))
            )
    shown = {}
    for metric, lines in panels.items():
        series = [
            Series(k if len(k) <= 60 else k[:57] + "...", tuple(points))
            for k, points in lines.items()
            if len(points) > 1
        ]
        if series:
            shown[dict(COLUMNS).get(metric, metric)] = series
    return shown


def sweeps_section(groups: Sequence[Group]) -> str | None:
    """Line plots of the headline numbers against each numeric setting that differs between
    the groups of one preset."""
    by_name: dict[str, list[Group]] = {}
    for g in groups:
        by_name.setdefault(g.name, []).append(g)
    figures = []
    for name, members in by_name.items():
        for x in dict.fromkeys(k for g in members for k in g.differs):
            xs = [g.differs.get(x) for g in members]
            if len(members) < 2 or not all(_number(v) for v in xs) or len(set(xs)) < 2:
                continue
            if panels := sweep_panels(members, x):
                title = f"{name}: against {x}"
                figures.append(figure(sweep_figure(panels, x, title), title))
    return fold("Sweeps", "".join(figures)) if figures else None


def filters_section(groups: Sequence[Group]) -> str | None:
    """One line per setting and filter of the pre-training data: its scores against the
    planted poisons, the clean data it removed, its wall time (filter, pre-training again)."""

    def cells(run: StoredRun) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for r in run.rows:
            if r.probe == FILTER and r.dataset is None:
                out.setdefault(r.encoder, {})[r.metric] = r.value
        return out

    per_group = [(g, merged(g, cells)) for g in groups]
    used = [
        m for m in defense_metrics() if any(m.name in v for _, c in per_group for v in c.values())
    ]
    lines = []
    for g, found in per_group:
        for name, values in sorted(found.items()):
            tds = [number_td(values.get(m.name, []), m.digits) for m in used]
            lines.append([group_td(g), str(len(g.runs)), name, defense_title(name), *tds])
    if not lines:
        return None
    headers = ["setting", "runs", "defense", "what", *(m.header for m in used)]
    note = (
        "<p class=note>precision and recall of the removed items against the planted poisons, "
        "AUROC of the filter's scores, clean out: the share of clean items removed (without a "
        "pre-training-data attack only this); filter s / again s: wall seconds of the filter "
        "and of the pre-training again on what it kept. The encoder pre-trained again is in "
        "the tables above under the defense's name.</p>"
    )
    return fold("Filters of the pre-training data", table(headers, lines) + note)


def detectors_section(groups: Sequence[Group]) -> str | None:
    def cells(run: StoredRun) -> dict[tuple[str, str], dict[str, float]]:
        out: dict[tuple[str, str], dict[str, float]] = {}
        for r in run.rows:
            if r.dataset is None and r.probe != FILTER:
                out.setdefault((r.probe, r.encoder), {})[r.metric] = r.value
        return out

    per_group = [(g, merged(g, cells)) for g in groups]
    metrics = sorted({m for _, c in per_group for v in c.values() for m in v} - {"flagged"})
    lines, pictures = [], []
    for g, found in per_group:
        for (detector, encoder), values in sorted(found.items()):
            flags = values.get("flagged", [])
            verdict = (
                "-" if not flags else "backdoored" if all(flags)
                else "clean" if not any(flags) else f"flagged in {sum(flags)}/{len(flags)}"
            )  # fmt: skip
            tds = [number_td(values.get(m, [])) for m in metrics]
            lines.append([group_td(g), str(len(g.runs)), detector, encoder, *tds, verdict])
            path = g.runs[0].artifacts.get(f"trigger_inverted:{detector}/{encoder}")
            if path:
                pictures.append(figure(file_uri(path), f"{g.label}: {detector}, {encoder} encoder"))
    if not lines:
        return None
    headers = ["setting", "runs", "detector", "encoder", *metrics, "verdict"]
    body = table(headers, lines)
    if pictures:
        body += (
            "<p class=note>inverted triggers (mask, mask · pattern), first run of each setting:</p>"
        )
        body += '<div class="gallery">' + "".join(pictures) + "</div>"
    return fold("Detectors", body)


def picture_order(name: str) -> tuple[int, str]:
    for i, prefix in enumerate(("trigger:", "confusion:", "defenses_plot")):
        if name.startswith(prefix):
            return i, name
    return 3, name


def pictures_section(groups: Sequence[Group]) -> str | None:
    parts = []
    for g in groups:
        run = g.runs[0]
        names = sorted(
            (n for n, p in run.artifacts.items()
             if str(p).endswith(".png") and not n.startswith("trigger_inverted:")),
            key=picture_order,
        )  # fmt: skip
        if not names:
            continue
        images = "".join(figure(file_uri(run.artifacts[n]), n) for n in names)
        title = f"{g.label}: run {run.id} ({Path(run.folder).name})"
        parts.append(fold(title, f'<div class="gallery">{images}</div>', open_=False, level=4))
    if not parts:
        return None
    return fold("Pictures: triggers, confusion matrices, figures", "".join(parts), open_=False)


def attack_section(attack: str | None, runs: Sequence[StoredRun]) -> str:
    groups = group_runs(runs)
    anchor = f"attack-{attack or 'none'}"
    head = (
        f'<section id="{esc(anchor)}"><h2>{esc(attack_title(attack))} '
        f"<small>{esc(attack or 'none')} · {len(runs)} runs · {len(groups)} settings</small></h2>"
    )
    parts = [
        encoders_section(groups),
        controls_section(groups),
        defenses_section(groups, attack),
        filters_section(groups),
        sweeps_section(groups),
        detectors_section(groups),
        pictures_section(groups),
    ]
    return head + "".join(p for p in parts if p) + "</section>"


# --- the runs ---------------------------------------------------------------------------------


def runs_section(runs: Sequence[StoredRun]) -> str:
    lines = []
    for run in runs:
        p = run.provenance
        defenses = ", ".join(run.label("defense")) or "-"
        datasets = ", ".join((run.config.get("eval") or {}).get("datasets") or []) or "-"
        total = run.timings.get("total")
        git = p.get("git") or {}
        commit = (git.get("commit") or "")[:10] + (" (dirty)" if git.get("dirty") else "")
        details = {"provenance": p, "timings": run.timings, "config": run.config}
        folded = (
            f"<td><details><summary>{esc(Path(run.folder).name)}</summary>"
            f"<p class=note>{esc(run.folder)} · rows from {esc(run.rows_source)}</p>"
            f"<pre>{esc(json.dumps(details, indent=1))}</pre></details></td>"
        )
        lines.append(
            [str(run.id), run.name, run.attack or "-", defenses, datasets, str(run.seed),
             str(p.get("precision") or "-"), str(p.get("device") or "-"),
             str(p.get("cpu_capability") or "-"), str(p.get("version") or "-"), commit or "-",
             str(p.get("finished") or "-"),
             number_td([total / 60] if total is not None else [], 1), Raw(folded)]
        )  # fmt: skip
    headers = ["id", "preset", "attack", "defenses", "datasets", "seed", "precision", "device"]
    headers += ["CPU", "version", "commit", "finished", "minutes", "folder, config, provenance"]
    return (
        '<section id="runs"><h2>Runs</h2>'
        + fold(f"{len(runs)} runs", table(headers, lines), open_=len(runs) <= FOLD_AFTER)
        + "</section>"
    )


def page_asset(name: str) -> str:
    """The text of ``name``, a data file of this package (``report.css``, ``report.js``)."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def attack_order(attack: str | None) -> tuple[int, str]:
    known = list(ATTACKS)
    if attack is None:
        return len(known) + 1, ""
    return (known.index(attack) if attack in known else len(known)), attack


def build_report(
    runs: Sequence[StoredRun], title: str = "sslpoison report", about: str = ""
) -> str:
    """The page (see the module doc) over ``runs``; ``about`` says where they came from."""
    by_attack: dict[str | None, list[StoredRun]] = {}
    for run in runs:
        by_attack.setdefault(run.attack, []).append(run)
    attacks = sorted(by_attack, key=attack_order)
    nav = "".join(
        f'<a href="#attack-{esc(a or "none")}">{esc(attack_title(a))} ({len(by_attack[a])})</a>'
        for a in attacks
    )
    built = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    settings = len({r.settings for r in runs})
    head = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>\n{page_asset('report.css')}</style></head><body>"
        f"<h1>{esc(title)}</h1><p class=note>{len(runs)} runs · {settings} settings · "
        f"{len(attacks)} attack sections · built {esc(built)}"
        + (f" · {esc(about)}" if about else "")
        + f'</p><nav>{nav}<a href="#runs">Runs</a></nav>'
    )
    if not runs:
        return head + "<p>No run matches.</p></body></html>\n"
    sections = "".join(attack_section(a, by_attack[a]) for a in attacks)
    return (
        head
        + sections
        + runs_section(runs)
        + f"<script>\n{page_asset('report.js')}</script></body></html>\n"
    )


def write_report(
    runs: Sequence[StoredRun], path: str | Path, title: str = "sslpoison report", about: str = ""
) -> Path:
    """Write :func:`build_report` to ``path`` (atomically)."""
    path = Path(path)
    atomic_write_text(path, build_report(runs, title, about))
    return path


__all__ = ["build_report", "encoder_cells", "write_report"]
