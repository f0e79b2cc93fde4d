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
    """One encoder of one setting on one dataset: accuracy and ASR, mean and std over seeds
    (std None for one run)."""

    encoder: str
    dataset: str
    acc: float
    asr: float
    acc_std: float | None = None
    asr_std: float | None = None


def defense_scatter(points: Sequence[Point], title: str) -> str:
    """Accuracy (x) against ASR (y), a colour per encoder (``clean`` and ``attacked`` in grey
    and black), a marker per dataset, error bars over seeds."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    encoders = list(dict.fromkeys(p.encoder for p in points))
    datasets = list(dict.fromkeys(p.dataset for p in points))
    palette = plt.get_cmap("tab10")
    fixed = {"clean": "0.6", "attacked": "black"}
    others = [e for e in encoders if e not in fixed]
    colors = fixed | {e: palette(i % 10) for i, e in enumerate(others)}
    for p in points:
        ax.errorbar(
            p.acc, p.asr, xerr=p.acc_std, yerr=p.asr_std, fmt="none",
            ecolor=colors[p.encoder], alpha=0.6, capsize=2,
        )  # fmt: skip
        marker = MARKERS[datasets.index(p.dataset) % len(MARKERS)]
        ax.scatter(p.acc, p.asr, color=colors[p.encoder], marker=marker, s=36, zorder=3)
    handles = [
        plt.Line2D([], [], color=colors[e], marker="o", ls="", label=e)
        for e in encoders if e in colors
    ]  # fmt: skip
    handles += [
        plt.Line2D([], [], color="0.3", marker=MARKERS[i % len(MARKERS)], ls="", label=d)
        for i, d in enumerate(datasets)
    ]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_xlabel("accuracy (CA for clean, BA otherwise)")
    ax.set_ylabel("ASR (ASR-B for clean)")
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


__all__ = ["Point", "Series", "defense_scatter", "figure_uri", "file_uri", "sweep_figure"]
