"""Human-readable views of results."""

from __future__ import annotations


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


BACKDOOR_COLUMNS = (("CA", "ca"), ("BA", "ba"), ("ASR-B", "asr_b"), ("ASR", "asr"))


def format_backdoor_table(metrics: dict[str, float | int]) -> str | None:
    """dataset | CA | BA | ASR-B | ASR for every dataset with backdoor metrics, else None."""
    datasets = sorted({k.split("/")[0] for k in metrics if k.endswith("/ba")})
    if not datasets:
        return None
    width = max(len("dataset"), *(len(d) for d in datasets))
    head = f"{'dataset':<{width}}" + "".join(f"  {name:>6}" for name, _ in BACKDOOR_COLUMNS)
    lines = [head, "-" * len(head)]
    for d in datasets:
        cells = [metrics.get(f"{d}/{key}") for _, key in BACKDOOR_COLUMNS]
        lines.append(
            f"{d:<{width}}"
            + "".join(f"  {c:>6.4f}" if c is not None else f"  {'-':>6}" for c in cells)
        )
    return "\n".join(lines)
