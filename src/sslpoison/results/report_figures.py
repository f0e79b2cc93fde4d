"""The HTML report's figures, drawn with matplotlib and returned as inline PNG data URIs
(``data:image/png;base64,...``), so the page needs no other file and no network."""

from __future__ import annotations

import base64
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sslpoison.results.plots import plt

#: Marker per dataset (cycled).
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def file_uri(path: str | Path) -> str | None:
    """A PNG file as a data URI, or None when it cannot be read."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    return png_uri(data) if data.startswith(b"\x89PNG") else None


def figure_uri(fig) -> str:
    """The figure as a PNG data URI (and closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96)
    plt.close(fig)
    return png_uri(buf.getvalue())


@dataclass(frozen=True)
class Point:
    """One point of a scatter: ``x`` and ``y`` as mean and std over seeds (std None for one
    run); ``colour`` and ``marker`` name what its colour and its marker stand for."""

    colour: str
    marker: str
    x: float
    y: float
    x_std: float | None = None
    y_std: float | None = None


def scatter(
    points: Sequence[Point], xlabel: str, ylabel: str, title: str, *,
    unit_y: bool = False, diagonal: bool = False,
) -> str:  # fmt: skip
    """``y`` against ``x``, a colour per ``colour`` (``clean`` and ``attacked`` in grey and
    black), a marker per ``marker``, error bars over seeds; ``unit_y``: y is a share, drawn
    on [0, 1]; ``diagonal``: the line y = x ("no effect" when x is y's null control)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colours = list(dict.fromkeys(p.colour for p in points))
    markers = list(dict.fromkeys(p.marker for p in points))
    palette = plt.get_cmap("tab10")
    fixed = {"clean": "0.6", "attacked": "black"}
    others = [c for c in colours if c not in fixed]
    shade = fixed | {c: palette(i % 10) for i, c in enumerate(others)}
    for p in points:
        ax.errorbar(
            p.x, p.y, xerr=p.x_std, yerr=p.y_std, fmt="none",
            ecolor=shade[p.colour], alpha=0.6, capsize=2,
        )  # fmt: skip
        marker = MARKERS[markers.index(p.marker) % len(MARKERS)]
        ax.scatter(p.x, p.y, color=shade[p.colour], marker=marker, s=36, zorder=3)
    if diagonal and points:
        ends = [min(min(p.x, p.y) for p in points), max(max(p.x, p.y) for p in points)]
        ax.plot(ends, ends, ls="--", color="0.5", lw=1, label="y = x: no effect")
    handles = [plt.Line2D([], [], color=shade[c], marker="o", ls="", label=c) for c in colours]
    handles += [
        plt.Line2D([], [], color="0.3", marker=MARKERS[i % len(MARKERS)], ls="", label=m)
        for i, m in enumerate(markers)
    ]
    if diagonal:
        handles.append(plt.Line2D([], [], ls="--", color="0.5", label="y = x: no effect"))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if unit_y:
        ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return figure_uri(fig)


@dataclass(frozen=True)
class Series:
    """One line of a sweep plot: (x, mean y, std y or None) points."""

    label: str
    points: tuple[tuple[float, float, float | None], ...]


def sweep_figure(panels: dict[str, list[Series]], xlabel: str, title: str) -> str:
    """One panel per metric (``panels``: y label → lines), lines with markers and error bars
    over seeds, x on a log scale when it spans more than a factor of 50 and is positive."""
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n + 1.6, 3.6), squeeze=False)
    for ax, (ylabel, lines) in zip(axes[0], panels.items(), strict=True):
        xs = [x for s in lines for x, _, _ in s.points]
        for s in lines:
            pts = sorted(s.points)
            ax.errorbar(
                [x for x, _, _ in pts], [y for _, y, _ in pts],
                yerr=[e or 0 for _, _, e in pts], marker="o", ms=4, capsize=2, label=s.label,
            )  # fmt: skip
        if min(xs) > 0 and max(xs) / min(xs) > 50:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    with warnings.catch_warnings():  # long legends: the layout is tightened as far as it goes
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    return figure_uri(fig)


__all__ = ["Point", "Series", "figure_uri", "file_uri", "scatter", "sweep_figure"]
