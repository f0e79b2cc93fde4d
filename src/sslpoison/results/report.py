"""Human-readable views of a run's results, made from its rows (:class:`~sslpoison.eval.rows.Row`).

:func:`format_summary` is the text of ``summary.md`` and what ``sslpoison run`` prints: the
per-encoder backdoor table (or every metric, without an attack), the zero-shot table, the
filters of the pre-training data scored against the planted poisons, and the detectors'
verdicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sslpoison.attacks import ATTACKS
from sslpoison.defenses.base import FILTER
from sslpoison.detectors.base import FLAGGED
from sslpoison.eval.backdoor import ACC, ASR, ASR_OTHER_TRIGGER, BACKDOOR_METRICS
from sslpoison.eval.controls import ACC_DROP
from sslpoison.eval.rows import ATTACKED, CLEAN, ON_CLEAN, Metric, Row, metrics_of
from sslpoison.eval.zero_shot import TARGETED_SUCCESS, ZERO_SHOT, ZS_ACC, ZS_ASR
from sslpoison.experiment.results import defense_stage_name
from sslpoison.results.names import (
    attack_metrics,
    columns,
    defense_metrics,
    defense_title,
    detector_metrics,
)

#: One row of the backdoor table: (dataset, encoder, {metric name of
#: :data:`~sslpoison.eval.backdoor.BACKDOOR_METRICS` → value or None}).
TableRow = tuple[str, str, dict[str, float | int | None]]


def format_metrics(rows: Sequence[Row]) -> str:
    """A two-column table of metric keys and values (fractions to 4 places)."""
    metrics = metrics_of(rows)
    if not metrics:
        return "(no metrics)"
    width = max(len(k) for k in metrics)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    for key, value in sorted(metrics.items()):
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<{width}}  {shown}")
    return "\n".join(lines)


def backdoor_rows(rows: Sequence[Row], probe: str) -> list[TableRow]:
    """(dataset, encoder, {metric: value}) of :data:`BACKDOOR_METRICS` for every encoder a
    backdoor evaluation measured with ``probe`` (the first of ``eval.probes``): per dataset
    (sorted) ``clean`` (CA, ASR-B, FP), ``attacked`` (BA, ASR, FP), then each defense (by
    name), each followed by its control on the clean encoder."""
    names = [m.name for m in BACKDOOR_METRICS]
    found = {
        (r.dataset, r.encoder, r.metric): r.value
        for r in rows
        if r.probe == probe and r.target is None and r.metric in names
    }
    datasets = sorted({d for d, e, m in found if e == ATTACKED and m == ACC.name})
    defenses = sorted(
        {e for d, e, m in found if e not in (CLEAN, ATTACKED) and m == ACC.name},
        key=lambda e: (e.removesuffix(ON_CLEAN), e.endswith(ON_CLEAN)),
    )
    out = []
    for d in datasets:
        for encoder in (CLEAN, ATTACKED, *defenses):
            values = {m: found.get((d, encoder, m)) for m in names}
            if values[ACC.name] is not None:
                out.append((d, encoder, values))
    return out


def defense_seconds(record: dict[str, Any]) -> float | None:
    """A defense stage's wall seconds: the defense's own (training, or the filter) plus, for a
    filter of the pre-training data, the pre-training again on what it kept."""
    seconds = record.get("wall_s", record.get("seconds"))
    if not isinstance(seconds, (int, float)):
        return None
    again = record.get("retrain_s")
    return float(seconds) + (float(again) if isinstance(again, (int, float)) else 0.0)


def _defense_cost(encoder: str, stages: dict[str, Any] | None) -> tuple[str, str]:
    """(clean images, wall seconds) of a defense's stage, as table cells ("-" otherwise)."""
    rec = (stages or {}).get(defense_stage_name(encoder))
    if not rec:
        return "-", "-"
    seconds = defense_seconds(rec)
    return str(rec.get("clean_images", "-")), "-" if seconds is None else f"{seconds:.0f}"


def format_backdoor_table(
    rows: Sequence[Row], probe: str, stages: dict[str, Any] | None = None
) -> str | None:
    """dataset | encoder | accuracy | ASR [| ASR other] [| FP [| FP other]] [| clean images |
    time] for every encoder of a backdoor evaluation (``probe``'s numbers), else None.
    Accuracy is CA for the clean encoder and BA for the others; the clean encoder's ASR is
    ASR-B; "other": the null control with unseen triggers. With defenses, ``stages`` (the
    run's stage records) gives each defense's clean images and wall time (training, MI
    estimation included; the original run's when the stage came from the cache), and a
    defense's control on the clean encoder gets a line: its accuracy cost and ASR."""
    table = backdoor_rows(rows, probe)
    if not table:
        return None
    has = {m.name: any(v[m.name] is not None for _, _, v in table) for m in BACKDOOR_METRICS}
    with_cost = any(e not in (CLEAN, ATTACKED) for _, e, _ in table)
    dw = max(len("dataset"), *(len(d) for d, _, _ in table))
    ew = max(len("encoder"), *(len(e) for _, e, _ in table))
    shown = [m for m in BACKDOOR_METRICS if m in (ACC, ASR) or has[m.name]]
    head = f"{'dataset':<{dw}}  {'encoder':<{ew}}" + "".join(f"  {m.header:>6}" for m in shown)
    head += f"  {'clean':>6}  {'time s':>6}" if with_cost else ""
    lines = [head, "-" * len(head)]
    for d, e, v in table:
        line = f"{d:<{dw}}  {e:<{ew}}" + "".join(
            f"  {_cell(v[m.name], m.digits):>{max(6, len(m.header))}}" for m in shown
        )
        if with_cost:
            clean, seconds = _defense_cost(e, stages)
            line += f"  {clean:>6}  {seconds:>6}"
        lines.append(line)
    lines.append(
        f"{ACC.header}: CA for the clean encoder, BA otherwise; the clean encoder's ASR is ASR-B."
    )
    if has[ASR_OTHER_TRIGGER.name]:
        lines.append(
            "ASR other, FP other: the same encoder with unseen triggers of the same size and "
            "place (the null control; mean over eval.other_triggers patterns)."
        )
    if with_cost:
        lines.append(
            "clean: clean images the defense used; time s: its wall time (a filter of the "
            "pre-training data: the filter and the pre-training again on what it kept)."
        )
    ca = {d: v[ACC.name] for d, e, v in table if e == CLEAN}
    for d, e, v in table:
        acc, asr = v[ACC.name], v[ASR.name]
        if e.endswith(ON_CLEAN) and acc is not None and ca.get(d) is not None:
            lines.append(
                f"{d}, {e}: {e.removesuffix(ON_CLEAN)} applied to the clean encoder (its "
                f"control): accuracy cost CA − acc {ca[d] - acc:.4f}, ASR {_cell(asr)}"
            )
    return "\n".join(lines)


def _cell(value: float | int | None, digits: int = 4) -> str:
    """A table cell: ``-``, a count as it is, a number to ``digits`` places."""
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:.{digits}f}"


def format_detections(rows: Sequence[Row]) -> str | None:
    """One line per detector and encoder (the rows of metric ``flagged``), with the numbers
    its class lists (``metrics``), or None."""
    found = {(r.probe, r.encoder, r.metric): r.value for r in rows if r.dataset is None}
    lines = []
    for det, role in sorted((d, e) for d, e, m in found if m == FLAGGED.name):
        verdict = "BACKDOORED" if found[det, role, FLAGGED.name] else "clean"
        numbers = [
            f"{m.header} {_cell(found[det, role, m.name], m.digits)}"
            for m in detector_metrics()
            if (det, role, m.name) in found
        ]
        more = f" ({', '.join(numbers)})" if numbers else ""
        lines.append(f"{det}: {role} encoder judged {verdict}{more}")
    return "\n".join(lines) or None


#: The zero-shot columns: (metric, whether read zero-shot rather than by a probe).
ZERO_SHOT_COLUMNS = (
    (ZS_ACC, True), (ZS_ASR, True), (TARGETED_SUCCESS, True), (TARGETED_SUCCESS, False)
)  # fmt: skip


def _zs_header(metric: Metric, zero_shot: bool) -> str:
    return metric.header if zero_shot else f"{metric.header} (probe)"


def format_zero_shot(rows: Sequence[Row]) -> str | None:
    """dataset | CLIP | zero-shot accuracy | zero-shot ASR | targeted success (zero-shot,
    probe) for the clean and the poisoned CLIP model and each one a defense trained, else
    None."""
    wanted = {m.name for m, _ in ZERO_SHOT_COLUMNS}
    found = {
        (r.dataset, r.encoder, r.metric, r.probe == ZERO_SHOT): r.value
        for r in rows
        if r.metric in wanted
    }
    acc = ZS_ACC.name
    datasets = sorted({d for d, e, m, _ in found if e != CLEAN and m == acc})
    if not datasets:
        return None
    others = sorted({e for _, e, m, _ in found if e not in (CLEAN, ATTACKED) and m == acc})
    roles = [("clean", CLEAN), ("poisoned", ATTACKED), *((e, e) for e in others)]
    used = [
        (m.name, zs, _zs_header(m, zs))
        for m, zs in ZERO_SHOT_COLUMNS
        if any((d, r, m.name, zs) in found for d in datasets for _, r in roles[1:])
    ]
    dw = max(len("dataset"), *(len(d) for d in datasets))
    cw = max(8, *(len(shown) for shown, _ in roles))
    widths = [max(9, len(h)) for _, _, h in used]
    head = f"{'dataset':<{dw}}  {'CLIP':<{cw}}" + "".join(
        f"  {h:>{w}}" for (_, _, h), w in zip(used, widths, strict=True)
    )
    lines = [head, "-" * len(head)]
    for d in datasets:
        for shown, role in roles:
            if (d, role, acc, True) not in found:
                continue
            cells = [found.get((d, role, m, zs)) for m, zs, _ in used]
            text = "".join(
                f"  {v:>{w}.4f}" if v is not None else f"  {'-':>{w}}"
                for v, w in zip(cells, widths, strict=True)
            )
            lines.append(f"{d:<{dw}}  {shown:<{cw}}{text}")
    lines.append(
        "zero-shot with the class-prompt ensemble; zs ASR: triggered non-target test images "
        "called the target; targeted: share of trials flipped (zero-shot, and by the probe)."
    )
    return "\n".join(lines)


def poisoning_columns() -> tuple[Metric, ...]:
    """The columns of the poisoning table: the registered attacks' ``summary_columns``."""
    return tuple(dict.fromkeys(m for kind in ATTACKS.values() for m in kind.summary_columns))


def format_poisoning_table(rows: Sequence[Row]) -> str | None:
    """dataset | victim | countermeasure | the attack's summary columns (accuracy trained
    clean, trained poisoned, drop, its null control, poisons and clean points the
    countermeasure removed) — for an indiscriminate downstream-data attack, else None."""
    shown = poisoning_columns()
    found = {
        (r.dataset, r.probe, r.setting, r.metric): r.value
        for r in rows
        if r.metric in {m.name for m in shown}
    }
    lines_of = sorted(
        {(d, p, s) for d, p, s, m in found if m == ACC_DROP.name},
        key=lambda t: (t[0], t[1] != "linear", t[1], t[2] or ""),
    )
    if not lines_of:
        return None
    widths = [max(11, len(m.header)) for m in shown]
    head = f"{'dataset':<14}  {'victim':<8}  {'sanitized':<9}" + "".join(
        f"  {m.header:>{w}}" for m, w in zip(shown, widths, strict=True)
    )
    lines = [head, "-" * len(head)]
    for d, p, s in lines_of:
        cells = "".join(
            f"  {_cell(found.get((d, p, s, m.name)), m.digits):>{w}}"
            for m, w in zip(shown, widths, strict=True)
        )
        lines.append(f"{d:<14}  {p:<8}  {s or '-':<9}{cells}")
    once = [m for m in attack_metrics() if m not in shown]  # per dataset: the linear victim's
    for d in sorted({d for d, _, _ in lines_of}):
        mine = {
            r.metric: r.value
            for r in rows
            if r.dataset == d and r.probe == "linear" and r.setting is None
        }
        if numbers := [
            f"{m.header} {_cell(mine[m.name], m.digits)}" for m in once if m.name in mine
        ]:
            lines.append(f"{d}: {', '.join(numbers)}")
    lines.append(
        "victim features: the linear head on the poisoned features before inversion; acc. "
        "drop: accuracy trained clean minus trained poisoned (both sanitized, with a "
        "countermeasure); its null control: the same with as many clean duplicates (the "
        "poisons' base images, true labels) instead of the poisons; poison L∞, L2: the mean "
        "distance of a poison to its base image."
    )
    return "\n".join(lines)


def format_filters(rows: Sequence[Row]) -> str | None:
    """defense | poison precision | recall | AUROC | share of clean items removed | removed |
    filter s | pre-training again s — one line per pre-training-data defense, else None."""
    found = {(r.encoder, r.metric): r.value for r in rows if r.probe == FILTER}
    names = sorted({e for e, _ in found})
    if not names:
        return None
    used = columns({m for _, m in found}, defense_metrics())
    nw = max(len("defense"), *(len(e) for e in names))
    head = f"{'defense':<{nw}}" + "".join(f"  {m.header:>9}" for m in used)
    lines = [head, "-" * len(head)]
    for e in names:
        cells = "".join(f"  {_cell(found.get((e, m.name)), m.digits):>9}" for m in used)
        lines.append(f"{e:<{nw}}{cells}")
    lines.append(
        "Filters of the pre-training data, against the planted poisons: precision and recall "
        "of what they removed, AUROC of their scores, the share of clean items removed "
        "(n/a without a pre-training-data attack: then only the clean items removed); the "
        "encoder pre-trained again on what each kept is in the tables above under its name."
    )
    lines += [f"{e}: {defense_title(e)}" for e in names if defense_title(e) != e]
    return "\n".join(lines)


def summary_tables(
    rows: Sequence[Row], probe: str, stages: dict[str, Any] | None = None
) -> list[str]:
    """A run's tables: the backdoor table (``probe``'s numbers), or the poisoning table, or
    every metric when there is neither; then the zero-shot table, the filters and the
    detections where there are."""
    main = format_backdoor_table(rows, probe, stages) or format_poisoning_table(rows)
    tables = [main or format_metrics(rows)]
    more = (format_zero_shot(rows), format_filters(rows), format_detections(rows))
    return tables + [t for t in more if t]


def format_summary(name: str, tables: Sequence[str]) -> str:
    """``summary.md``: the run's name, then each table in a code block."""
    parts = [f"# {name}"]
    for table in tables:
        parts += ["", "```", table, "```"]
    return "\n".join(parts) + "\n"


def defense_panels(rows: Sequence[Row], probe: str) -> dict[str, dict[str, dict[str, float]]]:
    """``{dataset: {encoder: {"accuracy": …, "ASR": …}}}`` of the backdoor table, for the
    bar plot of the defenses."""
    panels: dict[str, dict[str, dict[str, float]]] = {}
    for dataset, encoder, v in backdoor_rows(rows, probe):
        acc, asr = v[ACC.name], v[ASR.name]
        bars = {ACC.header: acc} | ({ASR.header: asr} if asr is not None else {})
        panels.setdefault(dataset, {})[encoder] = bars
    return panels
