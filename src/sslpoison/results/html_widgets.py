"""The HTML pieces of the report: escaped text, table cells (a number over seeds, a setting, a
class), sortable tables, folded sections and figures. Pure functions of their arguments."""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Sequence
from typing import Any

from sslpoison.results.compare import Group, format_cell, mean_std


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


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


def names_td(names: Sequence[str]) -> Raw:
    """A cell of names over seeds (a class each run found): the name, or each with its count
    when they differ."""
    if not names:
        return Raw("<td>-</td>")
    counts = Counter(names).most_common()
    text = counts[0][0] if len(counts) == 1 else ", ".join(f"{n} ×{c}" for n, c in counts)
    return Raw(f"<td>{esc(text)}</td>")


def group_td(group: Group) -> Raw:
    """A setting's cell: its short label, every setting that differs in the tooltip."""
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
    """A section that folds away under its title."""
    opened = " open" if open_ else ""
    return f"<details{opened}><summary><h{level}>{esc(title)}</h{level}></summary>{body}</details>"


def figure(uri: str | None, caption: str) -> str:
    """An image (a data URI) with its caption; a note when the file could not be read."""
    text = esc(caption)
    if uri is None:
        return f'<figure class="missing"><figcaption>{text}: file not found</figcaption></figure>'
    return f'<figure><img src="{uri}" alt="{text}"><figcaption>{text}</figcaption></figure>'


def note(text: str) -> str:
    return f"<p class=note>{esc(text)}</p>"


__all__ = ["Raw", "esc", "figure", "fold", "group_td", "names_td", "note", "number_td", "table"]
