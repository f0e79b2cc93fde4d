"""Human-readable views of results."""

from __future__ import annotations

from typing import Any


def format_metrics(metrics: dict[str, float | int]) -> str:
    """A two-column table of metric keys and values (fractions to 4 places)."""
    if not metrics:
        return "(no metrics)"
    width = max(len(k) for k in metrics)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    for key, value in sorted(metrics.items()):
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<{width}}  {shown}")
    return "\n".join(lines)


def backdoor_rows(metrics: dict[str, float | int]) -> list[tuple[str, str, dict]]:
    """(dataset, encoder, {"acc", "asr", "fp"}) for every encoder a backdoor run measured:
    ``clean`` (CA, ASR-B, fp_clean), ``attacked`` (BA, ASR, fp_poisoned), then each defense
    (``<defense>/<dataset>/ba`` …), in that order per dataset."""
    datasets = sorted({k.split("/")[0] for k in metrics if k.count("/") == 1 and k.endswith("/ba")})
    defenses = sorted({k.split("/")[0] for k in metrics if k.count("/") == 2 and k.endswith("/ba")})
    rows = []
    for d in datasets:
        rows.append(("clean", d, {"acc": "ca", "asr": "asr_b", "fp": "fp_clean"}))
        rows.append(("attacked", d, {"acc": "ba", "asr": "asr", "fp": "fp_poisoned"}))
        rows += [(x, d, {"acc": "ba", "asr": "asr", "fp": "fp"}) for x in defenses]
    out = []
    for encoder, d, keys in rows:
        prefix = f"{d}/" if encoder in ("clean", "attacked") else f"{encoder}/{d}/"
        values = {col: metrics.get(prefix + key) for col, key in keys.items()}
        if values["acc"] is not None:
            out.append((d, encoder, values))
    return out


def _defense_cost(encoder: str, stages: dict[str, Any] | None) -> tuple[str, str]:
    """(clean images, wall seconds) of a defense's stage, as table cells ("-" otherwise)."""
    rec = (stages or {}).get(f"defense:{encoder}")
    if not rec:
        return "-", "-"
    seconds = rec.get("wall_s", rec.get("seconds"))
    return str(rec.get("clean_images", "-")), "-" if seconds is None else f"{seconds:.0f}"


def format_backdoor_table(
    metrics: dict[str, float | int], stages: dict[str, Any] | None = None
) -> str | None:
    """dataset | encoder | accuracy | ASR [| FP] [| clean images | time] for every encoder of
    a backdoor run, else None. Accuracy is CA for the clean encoder and BA for the others;
    the clean encoder's ASR is ASR-B. With defenses, ``stages`` (the run's stage records)
    gives each defense's clean images and wall time (training, MI estimation included; the
    original run's when the stage came from the cache)."""
    rows = backdoor_rows(metrics)
    if not rows:
        return None
    with_fp = any(v["fp"] is not None for _, _, v in rows)
    with_cost = any(e not in ("clean", "attacked") for _, e, _ in rows)
    dw = max(len("dataset"), *(len(d) for d, _, _ in rows))
    ew = max(len("encoder"), *(len(e) for _, e, _ in rows))
    head = f"{'dataset':<{dw}}  {'encoder':<{ew}}  {'acc':>6}  {'ASR':>6}"
    head += f"  {'FP':>6}" if with_fp else ""
    head += f"  {'clean':>6}  {'time s':>6}" if with_cost else ""
    lines = [head, "-" * len(head)]
    for d, e, v in rows:
        cells = [f"{v[c]:.4f}" if v[c] is not None else "-" for c in ("acc", "asr")]
        line = f"{d:<{dw}}  {e:<{ew}}  {cells[0]:>6}  {cells[1]:>6}"
        if with_fp:
            line += f"  {v['fp'] if v['fp'] is not None else '-':>6}"
        if with_cost:
            clean, seconds = _defense_cost(e, stages)
            line += f"  {clean:>6}  {seconds:>6}"
        lines.append(line)
    lines.append("acc: CA for the clean encoder, BA otherwise; the clean encoder's ASR is ASR-B.")
    if with_cost:
        lines.append("clean: clean images the defense used; time s: its wall time.")
    return "\n".join(lines)


def format_detections(metrics: dict[str, float | int]) -> str | None:
    """One line per detector and encoder (``<detector>/<encoder>_flagged`` keys), or None."""
    lines = []
    for key in sorted(k for k in metrics if k.endswith("_flagged")):
        det, _, rest = key.partition("/")
        role = rest.removesuffix("_flagged")
        score = metrics.get(f"{det}/{role}_pl1")
        verdict = "BACKDOORED" if metrics[key] else "clean"
        extra = f" (PL1 norm {score:.4f}, L1 {metrics.get(f'{det}/{role}_norm', 0):.1f})"
        lines.append(
            f"{det}: {role} encoder judged {verdict}" + (extra if score is not None else "")
        )
    return "\n".join(lines) or None


#: The zero-shot columns: (header, metric name) of ``<dataset>/<metric>[_clean]`` keys.
ZERO_SHOT_COLUMNS = (
    ("zs acc", "zs_acc"),
    ("zs ASR", "zs_asr"),
    ("targeted", "targeted_success"),
    ("probe tgt", "targeted_success_probe"),
)


def format_zero_shot(metrics: dict[str, float | int]) -> str | None:
    """dataset | CLIP | zero-shot accuracy | zero-shot ASR | targeted success (zero-shot,
    probe) for the clean and the poisoned CLIP model (``eval.zero_shot`` keys), else None."""
    datasets = sorted({k.split("/")[0] for k in metrics if k.endswith("/zs_acc")})
    if not datasets:
        return None
    used = [(h, m) for h, m in ZERO_SHOT_COLUMNS if any(f"{d}/{m}" in metrics for d in datasets)]
    dw = max(len("dataset"), *(len(d) for d in datasets))
    head = f"{'dataset':<{dw}}  {'CLIP':<8}" + "".join(f"  {h:>9}" for h, _ in used)
    lines = [head, "-" * len(head)]
    for d in datasets:
        for role, suffix in (("clean", "_clean"), ("poisoned", "")):
            if f"{d}/zs_acc{suffix}" not in metrics:
                continue
            cells = [metrics.get(f"{d}/{m}{suffix}") for _, m in used]
            shown = "".join(f"  {v:>9.4f}" if v is not None else f"  {'-':>9}" for v in cells)
            lines.append(f"{d:<{dw}}  {role:<8}{shown}")
    lines.append(
        "zero-shot with the class-prompt ensemble; zs ASR: triggered non-target test images "
        "called the target; targeted: share of trials flipped (zero-shot, and by the probe)."
    )
    return "\n".join(lines)
