"""Tables of numbers for people: plain text for the terminal, Markdown for reports.

Both take a header and rows of cells; floats are printed with `digits` significant decimals, None
as "-". `text_table` left-aligns the first column and right-aligns the rest; `markdown_table` is a
GitHub table.

    print(text_table(["metric", "value"], [["chair_i", 0.0712], ["n_captions", 500]]))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def cell(value: Any, digits: int = 4) -> str:
    """One table cell: floats with `digits` decimals, None as "-", anything else as str()."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def text_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 4) -> str:
    """A fixed-width table with a dashed rule under the header."""
    cells = [list(header)] + [[cell(v, digits) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *(line(r) for r in cells[1:])])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 4) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v, digits) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def dict_rows(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """(header, rows) from dict rows, columns in first-seen order; a missing key is None."""
    header: list[str] = []
    for row in rows:
        header += [c for c in row if c not in header]
    return header, [[row.get(c) for c in header] for row in rows]
