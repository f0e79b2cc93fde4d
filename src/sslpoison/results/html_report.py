"""``sslpoison report``: one self-contained HTML page comparing stored runs.

The page opens with each attack's **headline figure** (:attr:`AttackConfig.headline
<sslpoison.attacks.AttackConfig.headline>`, e.g. BA against ASR for BadEncoder, the accuracy
drop against its null control for an indiscriminate attack: a colour per setting, a marker
per encoder, error bars over seeds), then has one section per attack (``none`` for runs
without one), each with:

* **Encoders**: dataset × encoder × probe, with every number measured — accuracy (CA for the
  clean encoder, BA otherwise), accuracy drop (CA − BA, or an indiscriminate attack's own),
  ASR (ASR-B for the clean encoder), FP, zero-shot numbers, the attack's own
  (:attr:`AttackConfig.metrics <sslpoison.attacks.AttackConfig.metrics>`), the target and the
  class most triggered images went to, by name — as mean ± std over the seeds of each
  setting;
* **Effects against their null controls**: each effect beside its null control over the
  seeds of each setting, with the verdict of :func:`~sslpoison.results.stats.versus_control`;
* **Defenses compared**: accuracy against ASR (scatter plot, error bars over seeds), with
  the clean images each defense used and its wall time;
* **Filters of the pre-training data**: each filter's scores against the planted poisons;
* **Sweeps**: for settings of one preset that differ in a numeric key, the headline numbers
  against it (line plots);
* **Detectors**: each verdict, with the inverted triggers;
* **Pictures**: trigger examples, confusion matrices and the runs' other figures;

then every run with its config, provenance and timings folded away. A setting is labelled
by its preset and the keys where it departs from the preset's most common setting
(:attr:`~sslpoison.results.compare.Group.label`). Images are inlined as data URIs and the page
references nothing outside itself. Tables sort by a click on their header; long sections
start folded. What is shown is gathered by :mod:`.report_data`; this module only renders it.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from sslpoison.attacks import ATTACKS
from sslpoison.detectors.base import FLAGGED
from sslpoison.eval.backdoor import ACC, ASR, CATEGORICAL, FP
from sslpoison.eval.rows import Metric
from sslpoison.eval.zero_shot import ZS_ACC, ZS_ASR
from sslpoison.results.compare import Group, group_runs
from sslpoison.results.html_widgets import (
    Raw,
    esc,
    figure,
    fold,
    group_td,
    names_td,
    note,
    number_td,
    table,
)
from sslpoison.results.names import (
    attack_title,
    columns,
    defense_metrics,
    defense_title,
    detector_metrics,
    detector_title,
    encoder_metrics,
)
from sslpoison.results.report_data import (
    Classes,
    Line,
    defense_lines,
    detector_numbers,
    effects,
    encoder_numbers,
    filter_numbers,
    group_classes,
    headline_points,
    inverted_trigger_path,
    over_seeds,
    pictures,
    sweeps,
)
from sslpoison.results.report_figures import file_uri, scatter, sweep_figure
from sslpoison.results.stats import TEST
from sslpoison.results.store import StoredRun
from sslpoison.utils import atomic_write_text

#: Sections longer than this many table lines start folded.
FOLD_AFTER = 80


def anchor(attack: str | None) -> str:
    return f"attack-{attack or 'none'}"


# --- the page's opening: a headline figure per attack -------------------------------------------


def headline_figure(attack: str | None, runs: Sequence[StoredRun]) -> str | None:
    """The attack's headline figure over the settings of ``runs``, or None (no attack, no
    headline, or no setting measured both of its numbers)."""
    kind = ATTACKS.get(attack) if attack is not None else None
    headline = kind.headline if kind is not None else None
    if headline is None:
        return None
    points = headline_points(group_runs(runs), headline)
    if not points:
        return None
    x, y = headline.x.header, headline.y.header
    title = f"{attack_title(attack)}: {y} against {x}"
    uri = scatter(points, x, y, title, diagonal=headline.diagonal)
    caption = (
        f"{title}: a colour per setting, a marker per encoder (with its probe, target or "
        "countermeasure where those vary), error bars: std over seeds"
    )
    return f'<a href="#{esc(anchor(attack))}">{figure(uri, caption)}</a>'


def headlines_section(by_attack: dict[str | None, list[StoredRun]]) -> str:
    found = [f for a, runs in by_attack.items() if (f := headline_figure(a, runs))]
    if not found:
        return ""
    return f'<section id="headlines"><h2>At a glance</h2>{"".join(found)}</section>'


# --- the sections of one attack ---------------------------------------------------------------


def metric_td(metric: Metric, values: list[float], line: Line, names: Classes) -> Raw:
    """``metric``'s values over seeds on ``line``: a number, or a class by its name."""
    if metric.name in CATEGORICAL:
        return names_td([names.name(line.dataset, v) for v in values])
    return number_td(values, metric.digits)


def encoders_section(groups: Sequence[Group]) -> str:
    per_group = [(g, over_seeds(g, encoder_numbers), group_classes(g)) for g in groups]
    used = {m for _, lines, _ in per_group for numbers in lines.values() for m in numbers}
    shown = columns(used, encoder_metrics())
    with_target = any(c.target(k) for _, lines, c in per_group for k in lines)
    with_setting = any(k.setting for _, lines, _ in per_group for k in lines)
    headers = ["setting", "runs", "dataset", "encoder", "probe"]
    headers += ["target"] * with_target + ["countermeasure"] * with_setting
    out = []
    for g, lines, names in per_group:
        for k in sorted(lines, key=Line.order):
            numbers = lines[k]
            line = [group_td(g), str(len(g.runs)), k.dataset, k.encoder, k.probe]
            line += [names.target(k) or "-"] * with_target + [k.setting or "-"] * with_setting
            out.append(line + [metric_td(m, numbers.get(m.name, []), k, names) for m in shown])
    notes = ["mean ± std over the seeds of each setting (each run's value in the tooltip)"]
    if ASR.name in used:
        notes.append("accuracy, ASR and FP of the first probe of eval.probes only")
    notes += [f"{m.header}: {m.about}" for m in shown if m.about]
    body = table([*headers, *(m.header for m in shown)], out) + note("; ".join(notes) + ".")
    return fold("Encoders", body, open_=len(out) <= FOLD_AFTER)


def controls_section(groups: Sequence[Group]) -> str | None:
    """Each effect beside its null control, mean ± std over the seeds of each setting, and
    the verdict."""
    lines = [
        [group_td(e.group), str(len(e.group.runs)), e.effect.key, number_td(e.effects),
         e.control.key, number_td(e.controls), e.what, e.verdict.text()]
        for e in effects(groups)
    ]  # fmt: skip
    if not lines:
        return None
    headers = ["setting", "runs", "effect", "mean ± std", "null control", "mean ± std"]
    headers += ["control is", "verdict"]
    body = table(headers, lines) + note(f"test: {TEST}; untested with fewer than two seeds.")
    return fold("Effects against their null controls", body, open_=len(lines) <= FOLD_AFTER)


def defenses_section(groups: Sequence[Group], attack: str | None) -> str | None:
    found = defense_lines(groups)
    if not found:
        return None
    fp = [FP] if any(FP.name in d.numbers for d in found) else []
    zero_shot = [ZS_ACC, ZS_ASR] if any(ZS_ASR.name in d.zero_shot for d in found) else []
    lines = []
    for d in found:
        line = [group_td(d.group), str(len(d.group.runs)), d.dataset, d.encoder]
        line += [number_td(d.numbers[m.name], m.digits) for m in (ACC, ASR)]
        line += [number_td(d.numbers.get(m.name, []), m.digits) for m in fp]
        line += [number_td(d.zero_shot.get(m.name, []), m.digits) for m in zero_shot]
        line += [number_td(d.clean_images, 0), number_td(d.wall_s, 1)]
        lines.append(line)
    headers = ["setting", "runs", "dataset", "encoder"]
    headers += [m.header for m in (ACC, ASR, *fp, *zero_shot)] + ["clean images", "wall s"]
    text = (
        "clean images: the clean pre-training images the defense used; wall s: its wall time "
        "(training, and MI estimation for MIMIC; for a filter of the pre-training data the "
        "filter and the pre-training again on what it kept; the original run's when the stage "
        "came from the cache). clean and attacked are the references."
    )
    body = table(headers, lines) + note(text)
    listed = fold(f"{len(lines)} lines", body, len(lines) <= FOLD_AFTER, 4)
    title = f"{attack_title(attack)}: accuracy against ASR per encoder (best: bottom right)"
    uri = scatter(
        [d.point() for d in found], "accuracy (CA for clean, BA otherwise)",
        "ASR (ASR-B for clean)", title, unit_y=True,
    )  # fmt: skip
    return fold("Defenses compared", figure(uri, "accuracy against ASR") + listed)


def filters_section(groups: Sequence[Group]) -> str | None:
    """One line per setting and filter of the pre-training data: its scores against the
    planted poisons, the clean data it removed, its wall time (filter, pre-training again)."""
    per_group = [(g, over_seeds(g, filter_numbers)) for g in groups]
    used = {m for _, found in per_group for numbers in found.values() for m in numbers}
    shown = columns(used, defense_metrics())
    lines = []
    for g, found in per_group:
        for name, numbers in sorted(found.items()):
            tds = [number_td(numbers.get(m.name, []), m.digits) for m in shown]
            lines.append([group_td(g), str(len(g.runs)), name, defense_title(name), *tds])
    if not lines:
        return None
    headers = ["setting", "runs", "defense", "what", *(m.header for m in shown)]
    text = (
        "precision and recall of the removed items against the planted poisons, AUROC of the "
        "filter's scores, clean out: the share of clean items removed (without a "
        "pre-training-data attack only this); filter s / again s: wall seconds of the filter "
        "and of the pre-training again on what it kept. The encoder pre-trained again is in "
        "the tables above under the defense's name."
    )
    return fold("Filters of the pre-training data", table(headers, lines) + note(text))


def sweeps_section(groups: Sequence[Group]) -> str | None:
    """Line plots of the headline numbers against each numeric setting that differs between
    the groups of one preset."""
    figures = []
    for s in sweeps(groups):
        title = f"{s.name}: against {s.x}"
        panels = {m.header: series for m, series in s.panels.items()}
        figures.append(figure(sweep_figure(panels, s.x, title), title))
    return fold("Sweeps", "".join(figures)) if figures else None


def detectors_section(groups: Sequence[Group]) -> str | None:
    per_group = [(g, over_seeds(g, detector_numbers)) for g in groups]
    used = {m for _, found in per_group for numbers in found.values() for m in numbers}
    shown = columns(used - {FLAGGED.name}, detector_metrics())
    lines, found_pictures = [], []
    for g, found in per_group:
        for judged, numbers in sorted(found.items(), key=lambda j: (j[0].detector, j[0].encoder)):
            flags = numbers.get(FLAGGED.name, [])
            verdict = (
                "-" if not flags else "backdoored" if all(flags)
                else "clean" if not any(flags) else f"flagged in {sum(flags)}/{len(flags)}"
            )  # fmt: skip
            tds = [number_td(numbers.get(m.name, []), m.digits) for m in shown]
            title = detector_title(judged.detector)
            lines.append([group_td(g), str(len(g.runs)), title, judged.encoder, *tds, verdict])
            if path := inverted_trigger_path(g.runs[0], judged):
                caption = f"{g.label}: {judged.detector}, {judged.encoder} encoder"
                found_pictures.append(figure(file_uri(path), caption))
    if not lines:
        return None
    headers = ["setting", "runs", "detector", "encoder", *(m.header for m in shown), "verdict"]
    body = table(headers, lines)
    if found_pictures:
        body += note("inverted triggers (mask, mask · pattern), first run of each setting:")
        body += '<div class="gallery">' + "".join(found_pictures) + "</div>"
    return fold("Detectors", body)


def pictures_section(groups: Sequence[Group]) -> str | None:
    parts = []
    for g in groups:
        run = g.runs[0]
        if found := pictures(run):
            images = "".join(figure(file_uri(path), name) for name, path in found)
            title = f"{g.label}: run {run.id} ({Path(run.folder).name})"
            parts.append(fold(title, f'<div class="gallery">{images}</div>', open_=False, level=4))
    if not parts:
        return None
    return fold("Pictures: triggers, confusion matrices, figures", "".join(parts), open_=False)


def attack_section(attack: str | None, runs: Sequence[StoredRun]) -> str:
    groups = group_runs(runs)
    head = (
        f'<section id="{esc(anchor(attack))}"><h2>{esc(attack_title(attack))} '
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
    """The registry's order, unknown attacks after, runs without an attack last."""
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
    by_attack = {a: by_attack[a] for a in sorted(by_attack, key=attack_order)}
    nav = "".join(
        f'<a href="#{esc(anchor(a))}">{esc(attack_title(a))} ({len(found)})</a>'
        for a, found in by_attack.items()
    )
    built = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    settings = len({r.settings for r in runs})
    head = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>\n{page_asset('report.css')}</style></head><body>"
        f"<h1>{esc(title)}</h1><p class=note>{len(runs)} runs · {settings} settings · "
        f"{len(by_attack)} attack sections · built {esc(built)}"
        + (f" · {esc(about)}" if about else "")
        + f'</p><nav>{nav}<a href="#runs">Runs</a></nav>'
    )
    if not runs:
        return head + "<p>No run matches.</p></body></html>\n"
    sections = "".join(attack_section(a, found) for a, found in by_attack.items())
    return (
        head
        + headlines_section(by_attack)
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


__all__ = ["build_report", "write_report"]
