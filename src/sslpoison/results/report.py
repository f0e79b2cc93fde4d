"""Human-readable views of a run's results, made from its rows (:class:`~sslpoison.eval.rows.Row`).

:func:`format_summary` is the text of ``summary.md`` and what ``sslpoison run`` prints: the
per-encoder backdoor table (or every metric, without an attack), the zero-shot table, the
filters of the pre-training data scored against the planted poisons, and the detectors'
verdicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sslpoison.defenses import DEFENSES
from sslpoison.defenses.base import FILTER, FILTER_METRICS
from sslpoison.eval.rows import ATTACKED, CLEAN, ON_CLEAN, Row, metrics_of
from sslpoison.eval.zero_shot import ZERO_SHOT

#: One row of the backdoor table: (dataset, encoder, {metric of :data:`BACKDOOR_METRICS` →
#: value or None}).
TableRow = tuple[str, str, dict[str, float | int | None]]
#: The backdoor table's metrics: accuracy, ASR, FP and their other-trigger null controls.
BACKDOOR_METRICS = ("acc", "asr", "fp", "asr_other_trigger", "fp_other_trigger")


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
    found = {
        (r.dataset, r.encoder, r.metric): r.value
        for r in rows
        if r.probe == probe and r.target is None and r.metric in BACKDOOR_METRICS
    }
    datasets = sorted({d for d, e, m in found if e == ATTACKED and m == "acc"})
    defenses = sorted(
        {e for d, e, m in found if e not in (CLEAN, ATTACKED) and m == "acc"},
        key=lambda e: (e.removesuffix(ON_CLEAN), e.endswith(ON_CLEAN)),
    )
    out = []
    for d in datasets:
        for encoder in (CLEAN, ATTACKED, *defenses):
            values = {m: found.get((d, encoder, m)) for m in BACKDOOR_METRICS}
            if values["acc"] is not None:
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
    rec = (stages or {}).get(f"defense:{encoder}")
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
    has = {m: any(v[m] is not None for _, _, v in table) for m in BACKDOOR_METRICS}
    with_cost = any(e not in (CLEAN, ATTACKED) for _, e, _ in table)
    dw = max(len("dataset"), *(len(d) for d, _, _ in table))
    ew = max(len("encoder"), *(len(e) for _, e, _ in table))
    columns = [("acc", "acc"), ("asr", "ASR"), ("asr_other_trigger", "other")]
    columns += [("fp", "FP"), ("fp_other_trigger", "FP other")]
    columns = [(m, h) for m, h in columns if m in ("acc", "asr") or has[m]]
    head = f"{'dataset':<{dw}}  {'encoder':<{ew}}" + "".join(f"  {h:>6}" for _, h in columns)
    head += f"  {'clean':>6}  {'time s':>6}" if with_cost else ""
    lines = [head, "-" * len(head)]
    for d, e, v in table:
        line = f"{d:<{dw}}  {e:<{ew}}" + "".join(
            f"  {_cell(v[m], m.startswith('fp')):>{max(6, len(h))}}" for m, h in columns
        )
        if with_cost:
            clean, seconds = _defense_cost(e, stages)
            line += f"  {clean:>6}  {seconds:>6}"
        lines.append(line)
    lines.append("acc: CA for the clean encoder, BA otherwise; the clean encoder's ASR is ASR-B.")
    if has["asr_other_trigger"]:
        lines.append(
            "other, FP other: the same encoder with unseen triggers of the same size and "
            "place (the null control; mean over eval.other_triggers patterns)."
        )
    if with_cost:
        lines.append(
            "clean: clean images the defense used; time s: its wall time (a filter of the "
            "pre-training data: the filter and the pre-training again on what it kept)."
        )
    ca = {d: v["acc"] for d, e, v in table if e == CLEAN}
    for d, e, v in table:
        if e.endswith(ON_CLEAN) and v["acc"] is not None and ca.get(d) is not None:
            lines.append(
                f"{d}, {e}: {e.removesuffix(ON_CLEAN)} applied to the clean encoder (its "
                f"control): accuracy cost CA − acc {ca[d] - v['acc']:.4f}, ASR {_cell(v['asr'])}"
            )
    return "\n".join(lines)


def _cell(value: float | int | None, count: bool = False) -> str:
    """A table cell: ``-``, a count as it is, a fraction to 4 places (a mean FP to 1)."""
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:.1f}" if count else f"{value:.4f}"


def format_detections(rows: Sequence[Row]) -> str | None:
    """One line per detector and encoder (the rows of metric ``flagged``), or None."""
    found = {(r.probe, r.encoder, r.metric): r.value for r in rows if r.dataset is None}
    lines = []
    for det, role in sorted((d, e) for d, e, m in found if m == "flagged"):
        verdict = "BACKDOORED" if found[det, role, "flagged"] else "clean"
        line = f"{det}: {role} encoder judged {verdict}"
        if (score := found.get((det, role, "pl1"))) is not None:
            line += f" (PL1 norm {score:.4f}, L1 {found.get((det, role, 'norm'), 0):.1f})"
        lines.append(line)
    return "\n".join(lines) or None


#: The zero-shot columns: (header, metric, whether read zero-shot rather than by a probe).
ZERO_SHOT_COLUMNS = (
    ("zs acc", "zs_acc", True),
    ("zs ASR", "zs_asr", True),
    ("targeted", "targeted_success", True),
    ("probe tgt", "targeted_success", False),
)


def format_zero_shot(rows: Sequence[Row]) -> str | None:
    """dataset | CLIP | zero-shot accuracy | zero-shot ASR | targeted success (zero-shot,
    probe) for the clean and the poisoned CLIP model and each one a defense trained, else
    None."""
    found = {
        (r.dataset, r.encoder, r.metric, r.probe == ZERO_SHOT): r.value
        for r in rows
        if r.metric in ("zs_acc", "zs_asr", "targeted_success")
    }
    datasets = sorted({d for d, e, m, _ in found if e != CLEAN and m == "zs_acc"})
    if not datasets:
        return None
    others = sorted({e for _, e, m, _ in found if e not in (CLEAN, ATTACKED) and m == "zs_acc"})
    roles = [("clean", CLEAN), ("poisoned", ATTACKED), *((e, e) for e in others)]
    used = [
        (h, m, zs)
        for h, m, zs in ZERO_SHOT_COLUMNS
        if any((d, r, m, zs) in found for d in datasets for _, r in roles[1:])
    ]
    dw = max(len("dataset"), *(len(d) for d in datasets))
    cw = max(8, *(len(shown) for shown, _ in roles))
    head = f"{'dataset':<{dw}}  {'CLIP':<{cw}}" + "".join(f"  {h:>9}" for h, _, _ in used)
    lines = [head, "-" * len(head)]
    for d in datasets:
        for shown, role in roles:
            if (d, role, "zs_acc", True) not in found:
                continue
            cells = [found.get((d, role, m, zs)) for _, m, zs in used]
            text = "".join(f"  {v:>9.4f}" if v is not None else f"  {'-':>9}" for v in cells)
            lines.append(f"{d:<{dw}}  {shown:<{cw}}{text}")
    lines.append(
        "zero-shot with the class-prompt ensemble; zs ASR: triggered non-target test images "
        "called the target; targeted: share of trials flipped (zero-shot, and by the probe)."
    )
    return "\n".join(lines)


#: The poisoning table's columns: (header, metric).
POISONING_COLUMNS = (
    ("clean acc", "acc_clean"),
    ("poisoned", "acc_poisoned"),
    ("drop", "acc_drop"),
    ("drop null", "acc_drop_null"),
    ("poisons out", "removed_poisons"),
    ("clean out", "removed_clean"),
)


def format_poisoning_table(rows: Sequence[Row]) -> str | None:
    """dataset | victim | countermeasure | accuracy trained clean | trained poisoned | drop |
    poisons and clean points the countermeasure removed — for an indiscriminate
    downstream-data attack, else None."""
    found = {
        (r.dataset, r.probe, r.setting, r.metric): r.value
        for r in rows
        if r.metric in {m for _, m in POISONING_COLUMNS}
    }
    lines_of = sorted(
        {(d, p, s) for d, p, s, m in found if m == "acc_drop"},
        key=lambda t: (t[0], t[1] != "linear", t[1], t[2] or ""),
    )
    if not lines_of:
        return None
    head = f"{'dataset':<14}  {'victim':<8}  {'sanitized':<9}" + "".join(
        f"  {h:>11}" for h, _ in POISONING_COLUMNS
    )
    lines = [head, "-" * len(head)]
    for d, p, s in lines_of:
        cells = ""
        for _, m in POISONING_COLUMNS:
            v = found.get((d, p, s, m))
            cells += (
                f"  {'-':>11}"
                if v is None
                else (f"  {v:>11.4f}" if isinstance(v, float) else f"  {v:>11}")
            )
        lines.append(f"{d:<14}  {p:<8}  {s or '-':<9}{cells}")
    counts = {(r.dataset, r.metric): r.value for r in rows if r.metric.startswith("poison")}
    for d in sorted({d for d, _, _ in lines_of}):
        if (d, "poisons") in counts:
            lines.append(
                f"{d}: {counts[d, 'poisons']} poisons ({100 * counts[d, 'poison_rate']:.1f} % "
                f"of the clean set), mean distance to their base image L∞ "
                f"{counts[d, 'poison_linf']:.3f}, L2 {counts[d, 'poison_l2']:.3f}"
            )
    lines.append(
        "victim features: the linear head on the poisoned features before inversion; drop: "
        "accuracy trained clean minus trained poisoned (both sanitized, with a countermeasure); "
        "drop null: the same with as many clean duplicates (the poisons' base images, true "
        "labels) instead of the poisons — the null control."
    )
    return "\n".join(lines)


#: The filters table's columns: (header, metric, digits; None: a count).
FILTER_COLUMNS = dict(
    zip(
        FILTER_METRICS,
        (("precision", 4), ("recall", 4), ("AUROC", 4), ("clean out", 4), ("removed", None),
         ("filter s", 0), ("again s", 0)),
        strict=True,
    )
)  # fmt: skip


def defense_title(name: str) -> str:
    """How reports name a defense: its class's title, or ``name`` (not registered)."""
    kind = DEFENSES.get(name)
    return kind.title or name if kind is not None else name


def format_filters(rows: Sequence[Row]) -> str | None:
    """defense | poison precision | recall | AUROC | share of clean items removed | removed |
    filter s | pre-training again s — one line per pre-training-data defense, else None."""
    found = {(r.encoder, r.metric): r.value for r in rows if r.probe == FILTER}
    names = sorted({e for e, _ in found})
    if not names:
        return None
    used = [m for m in FILTER_METRICS if any((e, m) in found for e in names)]
    nw = max(len("defense"), *(len(e) for e in names))
    head = f"{'defense':<{nw}}" + "".join(f"  {FILTER_COLUMNS[m][0]:>9}" for m in used)
    lines = [head, "-" * len(head)]
    for e in names:
        cells = ""
        for m in used:
            v, digits = found.get((e, m)), FILTER_COLUMNS[m][1]
            text = "-" if v is None else str(int(v)) if digits is None else f"{v:.{digits}f}"
            cells += f"  {text:>9}"
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
        bars = {"accuracy": v["acc"]} | ({"ASR": v["asr"]} if v["asr"] is not None else {})
        panels.setdefault(dataset, {})[encoder] = bars
    return panels
