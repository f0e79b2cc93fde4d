"""Figures of a run, written as PNG with matplotlib's non-interactive backend."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from sslpoison.utils import atomic_write_via


def save_png(fig, path: str | Path) -> Path:
    """``fig`` laid out and written to ``path`` as a PNG, atomically; the figure closed."""
    fig.tight_layout()
    path = Path(path)
    atomic_write_via(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return path


def plot_confusions(
    matrices: dict[str, list[list[int]]], classes: list[str], path: Path, title: str
) -> Path:
    """One heat map per encoder, side by side: rows = true class, columns = predicted,
    each row normalised to shares (the counts are written in the cells)."""
    n = len(matrices)
    c = len(classes)
    fig, axes = plt.subplots(1, n, figsize=(0.5 * c * n + 1.5, 0.5 * c + 1.8), squeeze=False)
    for ax, (encoder, counts) in zip(axes[0], matrices.items(), strict=True):
        m = np.asarray(counts, dtype=float)
        shares = m / np.maximum(m.sum(1, keepdims=True), 1)
        ax.imshow(shares, vmin=0, vmax=1, cmap="Blues")
        for i in range(c):
            for j in range(c):
                if m[i, j]:
                    color = "white" if shares[i, j] > 0.5 else "black"
                    ax.text(
                        j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=6, color=color
                    )
        ax.set_title(encoder)
        ax.set_xticks(range(c), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(c), classes if ax is axes[0][0] else [], fontsize=7)
        ax.set_xlabel("predicted")
    axes[0][0].set_ylabel("true class")
    fig.suptitle(title)
    return save_png(fig, path)


def line_plot(
    series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, path: Path
) -> Path:
    """One line per named series of (x, y) points (sorted by x), markers on the points."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, points in series.items():
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_png(fig, path)


def heat_map(
    values: dict[str, dict[str, float | None]], xlabel: str, ylabel: str, path: Path, title: str
) -> Path:
    """A grid of numbers in [0, 1]: ``values[row][column]`` (None: not measured), each cell
    coloured and written out."""
    rows = list(values)
    cols = list(dict.fromkeys(c for r in rows for c in values[r]))
    m = np.array(
        [[np.nan if values[r].get(c) is None else values[r][c] for c in cols] for r in rows]
    )
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(cols), 1.4 + 0.4 * len(rows)))
    ax.imshow(m, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    for i in range(len(rows)):
        for j in range(len(cols)):
            text = "-" if np.isnan(m[i, j]) else f"{m[i, j]:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    return save_png(fig, path)


def plot_trigger(mask: torch.Tensor, trigger: torch.Tensor, path: Path, title: str) -> Path:
    """An inverted trigger: its mask (H×W in [0, 1]) and the stamped pattern mask·pattern
    (C×H×W in [0, 1]) side by side."""
    fig, axes = plt.subplots(1, 2, figsize=(5.0, 2.8))
    axes[0].imshow(mask.float().numpy(), vmin=0, vmax=1, cmap="gray")
    axes[0].set_title("mask")
    t = trigger.float().permute(1, 2, 0).numpy()
    axes[1].imshow(t[:, :, 0] if t.shape[2] == 1 else t, vmin=0, vmax=1, cmap="gray")
    axes[1].set_title("mask · pattern")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save_png(fig, path)


def bar_plot(
    panels: dict[str, dict[str, dict[str, float]]], ylabel: str, path: Path, title: str
) -> Path:
    """Grouped bars, one panel per key of ``panels``: ``panels[panel][group][series]``
    (e.g. dataset → encoder → {"acc": …, "ASR": …}); values in [0, 1]."""
    n = len(panels)
    fig, axes = plt.subplots(
        1, n, figsize=(max(4.5, 1.1 * _groups(panels)) * n, 3.8), squeeze=False
    )
    for ax, (panel, groups) in zip(axes[0], panels.items(), strict=True):
        series = sorted({s for values in groups.values() for s in values})
        width = 0.8 / max(1, len(series))
        x = np.arange(len(groups))
        for i, name in enumerate(series):
            ys = [groups[g].get(name, np.nan) for g in groups]
            ax.bar(x + (i - (len(series) - 1) / 2) * width, ys, width, label=name)
        ax.set_xticks(x, list(groups), rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(panel)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title)
    return save_png(fig, path)


def _groups(panels: dict[str, dict]) -> int:
    return max((len(g) for g in panels.values()), default=1)
