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
